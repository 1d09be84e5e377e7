"""Model commands over the agent socket: the welcome carries the mirror URL, a queued command reaches a
connected agent at once, unfinished ones are re-sent after a reconnect, event frames update the command
table, and the hello's installed/active lists become the node's install rows."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from fleet.asgi import application
from fleet.hub import commands
from fleet.hub.importer import import_folder
from fleet.hub.models import CommandKind, InstallState, NodeCommand, NodeInstall
from tests.hub.conftest import sample_files, write_folder

pytestmark = pytest.mark.django_db(transaction=True)


def hello(**extra) -> dict:
    return {"type": "hello", "v": 1, "agent_version": "0.1.0", "host": {"hostname": "gpu-01.lan"}, **extra}


async def connect(secret: str, frame: dict) -> tuple[WebsocketCommunicator, dict]:
    comm = WebsocketCommunicator(application, "/ws/agent/", headers=[
        (b"authorization", f"Bearer {secret}".encode()), (b"host", b"fleet.example:8443")])
    connected, _ = await comm.connect()
    assert connected
    await comm.send_json_to(frame)
    welcome = await comm.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome"
    return comm, welcome


async def next_of(comm: WebsocketCommunicator, kind: str) -> dict:
    for _ in range(20):
        frame = await comm.receive_json_from(timeout=5)
        if frame["type"] == kind:
            return frame
    raise AssertionError(f"no {kind} frame")


async def test_commands_reach_the_agent_and_events_update_them(make_node, tmp_path, hub_root, settings):
    settings.FLEET_PUBLIC_URL = ""
    node, secret = await database_sync_to_async(make_node)()
    version, _ = await database_sync_to_async(import_folder)(
        "test", write_folder(tmp_path / "m", sample_files(1)), "acme/tiny", "v1")
    comm, welcome = await connect(secret, hello())
    assert welcome["mirror_url"] == "http://fleet.example:8443/hf"

    command = await database_sync_to_async(commands.create)("test", node, CommandKind.DEPLOY, version, activate=True)
    frame = await next_of(comm, "deploy")
    assert frame["command_id"] == command.command_id and frame["sha"] == version.sha and frame["activate"]
    assert {entry["path"] for entry in frame["manifest"]} == set(sample_files(1))
    await comm.send_json_to({"type": "event", "v": 1, "command_id": command.command_id, "state": "downloading",
                             "bytes_done": 5, "bytes_total": version.total_size})
    await comm.disconnect()

    # a reconnect re-sends the unfinished command; the agent reports the state it reached
    comm, _ = await connect(secret, hello(in_flight=[command.command_id]))
    again = await next_of(comm, "deploy")
    assert again["command_id"] == command.command_id
    await comm.send_json_to({"type": "event", "v": 1, "command_id": command.command_id, "state": "active",
                             "bytes_done": version.total_size, "bytes_total": version.total_size})
    for _ in range(100):
        stored = await database_sync_to_async(NodeCommand.objects.get)(pk=command.pk)
        if stored.state == "active":
            break
        await asyncio.sleep(0.05)
    assert stored.state == "active" and stored.finished_at is not None and stored.bytes_done == version.total_size
    install = await database_sync_to_async(NodeInstall.objects.get)(node=node)
    assert install.state == InstallState.ACTIVE and install.version_id == version.pk
    await comm.disconnect()

    # the hello's lists replace what the server knew
    comm, _ = await connect(secret, hello(installed=[{"repo": "acme/tiny", "sha": version.sha},
                                                     {"repo": "other/model", "sha": "b" * 40}], active=[]))
    rows = await database_sync_to_async(lambda: sorted(NodeInstall.objects.filter(node=node).values_list(
        "repo", "state", "version_id")))()
    assert rows == [("acme/tiny", "staged", version.pk), ("other/model", "staged", None)]
    await comm.disconnect()
