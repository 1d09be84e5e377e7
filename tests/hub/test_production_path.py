"""The production path: PostgreSQL + Redis, two Daphne processes. Two agents on different server processes
pull the same unsynced version at once: the blob claims (compare-and-set on PostgreSQL) still give one
upstream fetch per blob, and commands queued by another process reach the agents through Redis."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.hub.conftest import sample_files
from tests.hub.fakehub import FakeHub
from tests.hub.test_deploy_end_to_end import SERVED, enroll, snapshot_files, wait_state
from tests.integration.harness import Stack, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def production(tmp_path, services):
    import psycopg

    upstream = FakeHub().start()
    name = f"fleet_hub_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services["postgres"], autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    stack = Stack(tmp_path, database_url=services["postgres"].rsplit("/", 1)[0] + f"/{name}",
                  redis_url=services["redis"], servers=2, offline_after=3, engine=True)
    stack.env.update({"FLEET_CHANNEL_PREFIX": name, "FLEET_HF_UPSTREAM": upstream.url,
                      "FLEET_HUB_INLINE_MAX": "65536", "FLEET_HUB_DISK_MARGIN": "0"})
    try:
        yield stack.start(), upstream
    finally:
        stack.stop()
        upstream.stop()
        with psycopg.connect(services["postgres"], autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_server_processes_fetch_each_blob_once(production, tmp_path) -> None:
    stack, upstream = production
    files = sample_files(weights_mib=6, seed=b"p")
    upstream.add("acme/tiny", files, revision="main")
    upstream.delay_per_mb = 0.2
    stack.manage("addmodel", "acme/tiny", "--revision", "main")
    token = stack.manage("createenrollmenttoken", "--expires", "10m", "--uses", "2")
    a = enroll(stack, tmp_path, "node-a", token)
    b = enroll(stack, tmp_path, "node-b", token)
    creds = json.loads((b.home / "credentials.json").read_text())
    creds["server"] = stack.url(1)  # node-b talks to the second server process
    (b.home / "credentials.json").write_text(json.dumps(creds))
    agents = [node.run("--simulate", "jetson-orin", "--runtime", "none") for node in (a, b)]
    try:
        wait_until(lambda: stack.node_status("node-a") == stack.node_status("node-b") == "online", 90, "online")
        cmd_a = stack.manage("deploymodel", "deploy", "--node", "node-a", "--repo", "acme/tiny", "--revision", "main")
        cmd_b = stack.manage("deploymodel", "deploy", "--node", "node-b", "--repo", "acme/tiny", "--revision", "main",
                             "--activate")
        assert wait_state(stack, cmd_a, {"staged"}, agents) == "staged"
        assert wait_state(stack, cmd_b, {"active"}, agents) == "active"
        assert dict(upstream.fetches) == {("acme/tiny", name): 1 for name in SERVED}
        sha = stack.query("SELECT sha FROM hub_modelversion")[0][0]
        expected = {k: v for k, v in files.items() if k in SERVED}
        assert snapshot_files(a.home, "acme/tiny", sha) == snapshot_files(b.home, "acme/tiny", sha) == expected
        assert stack.query("SELECT count(*) FROM hub_blob WHERE state = 'present'") == [(len(SERVED),)]
    finally:
        for agent in agents:
            agent.kill()
