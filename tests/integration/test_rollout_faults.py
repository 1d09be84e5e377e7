"""Rollouts survive what goes wrong in production, with real processes on SQLite (engine inside Daphne) and
on PostgreSQL + Redis (engine as its own process): four real agents serve the tiny model through the
builtin runtime, and one scenario per backend walks through the faults of issue 8's acceptance.

1. v1 → v2: an agent is SIGKILLed mid-download; restarted, it resumes while its runtime keeps serving v1.
   Once the canary committed, the engine is SIGKILLed and restarted (on SQLite it runs inside Daphne: Daphne
   is); after the next wave, Daphne is. The rollout finishes with every node activated exactly once.
2. v2 → v1 with one node offline throughout: it ends `deferred`, the rollout succeeds, and the node converges
   to v1 when it returns.
3. v1 → v3-broken: the canary fails its health check, the rollout aborts, the canary is back on v1, and no
   other node ever switched.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.hub.tiny_llama import write_tiny_llama
from tests.integration.chat_stack import broken_copy
from tests.integration.harness import Agent, Stack, wait_until

pytestmark = [pytest.mark.integration]
REPO = "tiny/llama"
NODES = ["gpu-01", "gpu-02", "gpu-03", "gpu-04"]
PAD = 12 * 1024 * 1024  # v2 carries this much more: at RATE it takes seconds to stage, time to kill an agent
RATE = "3MB"
STRATEGY = {"canary": 1, "batch": 1, "min_ready_seconds": 1, "offline_grace_seconds": 3,
            "healthcheck": {"prompt": "Say hello.", "timeout_seconds": 60}}

SETUP = """
import json
from datetime import timedelta
from pathlib import Path
from django.contrib.auth import get_user_model
from fleet.accounts.apikeys import create_api_key
from fleet.hub.importer import import_folder
from fleet.inventory.services import create_enrollment_token
bob = get_user_model().objects.create_user("bob", password="fault-test-password", role="operator")
shas = {revision: import_folder("test", Path(folder), REPO, revision)[0].sha for revision, folder in FOLDERS}
print(json.dumps({"key": create_api_key("test", bob, ["rollouts", "chat"])[1], "shas": shas,
                  "token": create_enrollment_token("test", ttl=timedelta(minutes=10), uses=4)[1]}))
"""

DEPLOYMENT = """
from fleet.rollouts import services
services.create_deployment("test", "chat-default", REPO, "v1", selector={"role": "chat"})
"""


def folders(tmp: Path) -> list[tuple[str, str]]:
    v1 = write_tiny_llama(tmp / "v1")
    v2 = tmp / "v2"
    shutil.copytree(v1, v2)
    (v2 / "extra.bin").write_bytes(uuid.uuid4().bytes * (PAD // 16))  # a file no runtime reads
    return [("v1", str(v1)), ("v2", str(v2)), ("v3-broken", str(broken_copy(tmp / "v3")))]


class World:
    def __init__(self, tmp: Path, database_url: str | None, redis_url: str | None):
        self.stack = Stack(tmp, database_url=database_url, redis_url=redis_url, engine=database_url is not None,
                           offline_after=3)
        self.stack.env.update({"FLEET_HUB_RATE_LIMIT": RATE})
        agent_env = {**self.stack.env, "FLEET_RUNTIME_THREADS": "1", "FLEET_RUNTIME_MAX_RESTARTS": "1",
                     "FLEET_RUNTIME_BACKOFF_INITIAL": "0.5", "WEBSOCKETS_BACKOFF_INITIAL_DELAY": "0.5",
                     "WEBSOCKETS_BACKOFF_MIN_DELAY": "0.5", "WEBSOCKETS_BACKOFF_MAX_DELAY": "2"}
        self.agents = {name: Agent(tmp / name, agent_env) for name in NODES}
        self.tmp = tmp

    def start(self) -> World:
        stack = self.stack.start()
        code = f"REPO = {REPO!r}\nFOLDERS = {folders(self.tmp / 'models')!r}\n" + SETUP
        made = json.loads(stack.manage("shell", "-c", code).splitlines()[-1])
        self.key, self.shas = made["key"], made["shas"]
        for name, agent in self.agents.items():
            enrolled = agent.cli("enroll", "--server", stack.url(), "--token", made["token"], "--name", name,
                                 "--label", "role=chat")
            assert enrolled.returncode == 0, enrolled.stderr
        stack.manage("shell", "-c", f"REPO = {REPO!r}\n" + DEPLOYMENT)
        for agent in self.agents.values():
            self.run(agent)
        self.wait(lambda: set(self.serving().values()) == {self.shas["v1"]}, 300, "every node serving v1")
        return self

    def run(self, agent: Agent) -> None:
        agent.run("--simulate", "h100x8", "--runtime", "builtin", "--label", "role=chat")

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.kill()
        self.stack.stop()

    # ---- what the database and the API say ----------------------------------------------------------------

    def serving(self) -> dict[str, str]:
        """Node → the sha its runtime serves, for the runtimes that are ready."""
        return dict(self.stack.query(
            "SELECT n.name, r.sha FROM inventory_noderuntime r JOIN inventory_node n ON n.id = r.node_id "
            "WHERE r.repo = ? AND r.state = 'ready'", (REPO,)))

    def activations(self, sha: str) -> dict[str, int]:
        rows = self.stack.query(
            "SELECT n.name, COUNT(*) FROM hub_nodecommand c JOIN inventory_node n ON n.id = c.node_id "
            "WHERE c.sha = ? AND (c.kind = 'activate' OR (c.kind = 'deploy' AND c.activate)) GROUP BY n.name",
            (sha,))
        return dict(rows)

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            self.stack.url() + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")
        except OSError as error:  # the server is being restarted
            return 0, {"error": str(error)}

    def rollout(self, version: str, **strategy) -> int:
        status, body = self.api("POST", "/api/rollouts/", {"deployment": "chat-default", "version": version,
                                                           "strategy": {**STRATEGY, **strategy}})
        assert status == 201, body
        return body["id"]

    def get(self, rollout_id: int) -> dict:
        status, body = self.api("GET", f"/api/rollouts/{rollout_id}/")
        return body if status == 200 else {"state": "?", "targets": [], "status": status}

    def targets(self, rollout_id: int) -> dict[str, dict]:
        return {target["node"]: target for target in self.get(rollout_id)["targets"]}

    def wait(self, predicate, timeout: float, what: str):
        try:
            return wait_until(predicate, timeout, what)
        except AssertionError:
            agents = "\n".join(f"--- {name}\n{agent.log()[-1500:]}" for name, agent in self.agents.items())
            raise AssertionError(f"timed out waiting for {what}\n{self.stack.logs()}\n{agents}") from None

    def finished(self, rollout_id: int, timeout: float = 300) -> dict:
        return self.wait(lambda: (r := self.get(rollout_id))["state"] in ("succeeded", "aborted") and r, timeout,
                         f"rollout {rollout_id} to finish")


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request, tmp_path) -> Iterator[World]:
    database_url = redis_url = None
    if request.param == "postgresql":
        import psycopg

        services = request.getfixturevalue("services")
        name = f"fleet_faults_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(services["postgres"], autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        database_url, redis_url = services["postgres"].rsplit("/", 1)[0] + f"/{name}", services["redis"]
    world = World(tmp_path, database_url, redis_url)
    try:
        yield world.start()
    finally:
        world.stop()
        if database_url:
            with psycopg.connect(request.getfixturevalue("services")["postgres"], autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_rollouts_survive_killed_agents_servers_and_engines_offline_nodes_and_a_bad_canary(world: World) -> None:
    v1, v2, v3 = world.shas["v1"], world.shas["v2"], world.shas["v3-broken"]
    postgres = world.stack.engine

    # 1. v1 → v2. gpu-02 is killed while it downloads v2's 12 MB (at 3 MB/s per connection).
    first = world.rollout("v2")
    world.wait(lambda: world.targets(first).get("gpu-02", {}).get("bytes_done", 0) > 0, 60, "gpu-02 downloading")
    world.agents["gpu-02"].kill()
    world.run(world.agents["gpu-02"])
    world.wait(lambda: world.targets(first)["gpu-02"]["state"] in ("downloading", "staged")
               and world.serving().get("gpu-02") == v1, 60, "gpu-02 back, serving v1 while it stages v2")
    assert world.targets(first)["gpu-02"]["state"] != "failed"

    def committed(count: int) -> bool:
        return sum(t["state"] == "committed" for t in world.targets(first).values()) >= count

    world.wait(lambda: committed(1), 180, "the canary committed")
    if postgres:  # the engine is its own process: kill it alone
        world.stack.kill_engine()
        world.stack.restart_engine()
    else:  # the engine runs inside Daphne
        world.stack.kill_server()
        world.stack.restart_server()
    world.wait(lambda: committed(2), 180, "the second wave committed")
    world.stack.kill_server()
    world.stack.restart_server()
    done = world.finished(first)
    assert done["state"] == "succeeded", done
    assert {t["node"]: t["state"] for t in done["targets"]} == dict.fromkeys(NODES, "committed")
    assert world.activations(v2) == dict.fromkeys(NODES, 1)  # across the kills, each node switched once
    world.wait(lambda: world.serving() == dict.fromkeys(NODES, v2), 60, "every runtime on v2")

    # 2. v2 → v1 with gpu-04 offline throughout: deferred, not failed; it converges when it returns.
    world.agents["gpu-04"].kill()
    world.wait(lambda: world.stack.node_status("gpu-04") == "offline", 30, "gpu-04 offline")
    second = world.rollout("v1")
    done = world.finished(second)
    assert done["state"] == "succeeded", done
    states = {t["node"]: t["state"] for t in done["targets"]}
    assert states == {"gpu-01": "committed", "gpu-02": "committed", "gpu-03": "committed", "gpu-04": "deferred"}
    world.run(world.agents["gpu-04"])
    world.wait(lambda: world.serving() == dict.fromkeys(NODES, v1), 120, "gpu-04 converged to v1")

    # 3. v1 → v3-broken: the canary cannot load it, fails its health check and goes back to v1; nobody else moves.
    third = world.rollout("v3-broken")
    done = world.finished(third)
    assert done["state"] == "aborted" and "health check failed" in done["reason"], done
    canary, *others = done["targets"]
    assert canary["state"] == "failed" and {t["state"] for t in others} == {"aborted"}, done
    assert list(world.activations(v3)) == [canary["node"]]
    world.wait(lambda: world.serving() == dict.fromkeys(NODES, v1), 60, "the canary back on v1")
