"""Against real Daphne (`python -m fleet.serve`): a frame over the 1 MiB websocket limit ends the
agent's connection with 1009 and says why, instead of a dropped TCP connection with no code."""

from __future__ import annotations

import json

import pytest
import websockets

from tests.integration.harness import Agent, Stack

pytestmark = pytest.mark.integration


async def test_a_frame_over_one_mib_is_closed_with_1009_and_a_reason(tmp_path):
    stack = Stack(tmp_path).start()
    try:
        token = stack.manage("createenrollmenttoken", "--expires", "10m")
        agent = Agent(tmp_path / "agent", stack.env)
        assert agent.cli("enroll", "--server", stack.url(), "--token", token, "--name", "big").returncode == 0
        secret = json.loads((tmp_path / "agent" / "credentials.json").read_text())["secret"]
        url = stack.url().replace("http://", "ws://") + "/ws/agent/"
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {secret}"},
                                      max_size=None) as ws:
            await ws.send(json.dumps({"type": "pong", "v": 1, "nonce": "x" * (1536 * 1024)}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None, "the server dropped the connection without a close frame"
        assert closed.value.rcvd.code == 1009
        assert "1048576" in closed.value.rcvd.reason
    finally:
        stack.stop()
