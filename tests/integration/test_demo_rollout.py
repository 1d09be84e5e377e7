"""Issue 8's acceptance, as a pipeline runs it against `make demo` through the JSON API: roll `chat-default`
to SmolLM2 `v2`, poll until it succeeded with every target committed and the gateway answers from `v2`; then
roll to `v3-broken`, whose canary cannot load it, and see the rollout end `aborted` with a reason while every
node serves `v2` again."""

from __future__ import annotations

import time

import pytest

from tests.integration.demo_process import Demo, running_demo
from tests.integration.harness import wait_until

pytestmark = [pytest.mark.integration]
TERMINAL = {"succeeded", "aborted", "superseded"}


def chat_nodes(demo: Demo, key: str) -> dict[str, tuple[str, bool]]:
    status, deployments = demo.request("GET", "/api/deployments/", key)
    assert status == 200, deployments
    chat = next(d for d in deployments if d["name"] == "chat-default")
    return {node["name"]: ((node["serving"] or {}).get("revision"), node["in_sync"]) for node in chat["nodes"]}


def roll(demo: Demo, key: str, version: str, timeout: float = 420) -> dict:
    status, rollout = demo.request("POST", "/api/rollouts/", key, {"deployment": "chat-default", "version": version})
    assert status == 201, rollout
    seen: list[str] = []

    def finished() -> dict | None:
        status, body = demo.request("GET", f"/api/rollouts/{rollout['id']}/", key)
        assert status == 200, body
        seen.append(body["state"])
        return body if body["state"] in TERMINAL else None

    try:
        return wait_until(finished, timeout, f"the rollout to {version} to finish")
    except AssertionError:
        raise AssertionError(f"states seen: {sorted(set(seen))}\n{demo.log.read_text()[-4000:]}") from None


def fingerprint(demo: Demo, key: str) -> str:
    status, answer = demo.request("POST", "/v1/chat/completions", key, {
        "model": "chat-default", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}]})
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"].strip()
    return answer["system_fingerprint"]


def test_a_pipeline_rolls_chat_default_to_v2_and_a_broken_v3_rolls_itself_back(tmp_path, demo_models) -> None:
    # Three GPU servers (chat-default) and one edge device; the runtimes give up on a broken model after one
    # restart instead of five, which only shortens the wait for the canary's failure.
    with running_demo(tmp_path, demo_models, FLEET_DEMO_NODES="h100x8:3,jetson-orin:1",
                      FLEET_RUNTIME_MAX_RESTARTS="1") as demo:
        key = demo.manage("createapikey", "--user", "admin", "--scope", "rollouts", "--scope", "chat")
        wait_until(lambda: set(chat_nodes(demo, key).values()) == {("v1", True)}, 300, "chat-default on v1")
        status, versions = demo.request("GET", "/api/versions/?repo=HuggingFaceTB/SmolLM2-135M-Instruct", key)
        shas = {version["revision"]: version["sha"] for version in versions}
        assert status == 200 and {"v1", "v2", "v3-broken"} <= set(shas), versions

        started = time.monotonic()
        rollout = roll(demo, key, "v2")
        assert rollout["state"] == "succeeded", rollout
        assert {(t["node"], t["state"]) for t in rollout["targets"]} == {
            ("gpu-01", "committed"), ("gpu-02", "committed"), ("gpu-03", "committed")}
        print(f"v1 → v2 on 3 nodes: {time.monotonic() - started:.0f} s")
        assert set(chat_nodes(demo, key).values()) == {("v2", True)}
        assert fingerprint(demo, key) == f"fleet-{shas['v2'][:12]}"

        rollout = roll(demo, key, "v3-broken")
        assert rollout["state"] == "aborted", rollout
        assert "canary" in rollout["reason"] and "health check failed" in rollout["reason"], rollout["reason"]
        canary = rollout["targets"][0]
        assert canary["state"] == "failed" and canary["error"], rollout
        assert {t["state"] for t in rollout["targets"][1:]} == {"aborted"}, rollout  # no other node switched
        status, deployments = demo.request("GET", "/api/deployments/", key)
        chat = next(d for d in deployments if d["name"] == "chat-default")
        assert chat["version"] == {"sha": shas["v2"], "revision": "v2"}
        assert set(chat_nodes(demo, key).values()) == {("v2", True)}
        assert fingerprint(demo, key) == f"fleet-{shas['v2'][:12]}"
