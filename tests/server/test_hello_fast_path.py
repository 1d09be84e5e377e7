"""Reconnect storms (issue 11): a hello with unchanged facts costs no query of its own; the flusher tick
writes every such arrival in a fixed number of statements; pong and metrics frames never query."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db.backends import utils as db_utils
from django.utils import timezone

from fleet import events
from fleet.agent.protocol import Hello
from fleet.agents import arrivals, consumers, presence
from fleet.inventory import summary
from fleet.inventory.models import Gpu, GpuState, Node, NodeRuntime, NodeStatus
from fleet.telemetry import flusher
from fleet.telemetry.models import Alert, AlertKind
from tests.server.test_agent_socket import connect_and_hello, hello

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sql(monkeypatch):
    """Every SQL statement in every thread (the consumer reaches the DB from worker threads)."""
    counted: list[str] = []
    lock = threading.Lock()
    original = db_utils.CursorWrapper._execute

    def execute(self, statement, params, *args):
        with lock:
            counted.append(statement)
        return original(self, statement, params, *args)

    monkeypatch.setattr(db_utils.CursorWrapper, "_execute", execute)
    return counted


@pytest.fixture
def quiet(settings, monkeypatch):
    """No timer but the flusher's tick, whose database writes are captured instead of run: what is left
    of the statements is the consumer's own."""
    settings.FLEET_HEARTBEAT_INTERVAL = 600  # no bulk last_seen, no pending-command poll, site caches kept
    settings.FLEET_PRESENCE_SWEEP = False
    settings.FLEET_METRICS_INTERVAL = 1e-6
    monkeypatch.setattr(summary, "is_stale", lambda: False)
    monkeypatch.setattr(consumers, "COMMAND_CHECK_EVERY", 600)
    ticks: list[dict] = []
    monkeypatch.setattr(flusher, "write_db", lambda rollups, alerts, seen=None, arrived=None: ticks.append(
        {"seen": seen, "arrived": arrived}))
    arrivals.take()
    consumers._welcomed.clear()
    yield ticks
    arrivals.take()
    consumers._welcomed.clear()


RUNTIME = {"repo": "acme/tiny", "sha": "a" * 40, "runtime": "llamacpp", "state": "ready", "port": 8001,
           "tokens_served": 9}


def test_digest_is_canonical_and_covers_the_stored_facts():
    base = Hello.model_validate(hello())
    assert presence.hello_digest(base) == presence.hello_digest(Hello.model_validate(
        {key: hello()[key] for key in reversed(list(hello()))}))  # key order does not matter
    serving = {**hello(), "serving": [RUNTIME]}
    busier = {**hello(), "serving": [{**RUNTIME, "tokens_served": 90, "requests_active": 3, "log_tail": ["x"]}]}
    assert presence.hello_digest(Hello.model_validate(serving)) == presence.hello_digest(Hello.model_validate(busier))
    failed = {**hello(), "serving": [{**RUNTIME, "state": "failed", "reason": "out of memory"}]}
    assert presence.hello_digest(Hello.model_validate(serving)) != presence.hello_digest(Hello.model_validate(failed))
    assert presence.hello_digest(Hello.model_validate(serving)) != presence.hello_digest(base)
    for changed in ({**hello(), "agent_version": "0.2.0"}, hello(gpus=3), hello(hostname="other"),
                    {**hello(), "installed": [{"repo": "acme/tiny", "sha": "a" * 40}]},
                    {**hello(), "site_cache": {"url": "http://10.0.0.5:8090"}}):
        assert presence.hello_digest(Hello.model_validate(changed)) != presence.hello_digest(base), changed


async def test_pong_and_metrics_frames_run_no_query(make_node, quiet, sql):
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    await asyncio.sleep(0.2)
    sql.clear()
    await comm.send_json_to({"type": "pong", "nonce": "1"})
    await comm.send_json_to({"type": "metrics", "v": 1, "ts": 1000.0, "gpus": []})
    await comm.send_json_to({"type": "pong", "nonce": "2"})
    await asyncio.sleep(0.3)
    assert comm.output_queue.empty()  # no error frame: both were taken
    assert sql == []
    from fleet.telemetry.live import live_telemetry
    assert node.pk in live_telemetry.seen  # last_seen waits for the flusher's one UPDATE
    await comm.disconnect()


async def test_a_hello_with_unchanged_facts_runs_no_query_and_is_written_by_the_tick(make_node, quiet, sql):
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)  # the first hello: stored in full, with its digest
    stored = await database_sync_to_async(Node.objects.get)(pk=node.pk)
    assert stored.hello_digest == presence.hello_digest(Hello.model_validate(hello()))
    await comm.disconnect()
    arrivals.take()

    comm = await _connect(secret)
    sql.clear()
    await comm.send_json_to(hello())
    welcome = await comm.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome" and sql == []  # no transaction, no offer query, no command query
    assert node.pk in consumers._welcomed  # its unfinished commands: one query for all, at the next tick
    for _ in range(50):
        if any(tick["arrived"] for tick in quiet):
            break
        await asyncio.sleep(0.05)
    assert [node.pk] in [list(tick["arrived"] or {}) for tick in quiet]
    await comm.disconnect()

    # changed facts (a third GPU) take the full transaction: GPUs and digest updated
    comm = await connect_and_hello(secret, hello(gpus=3))
    assert await database_sync_to_async(Gpu.objects.filter(node=node, state=GpuState.PRESENT).count)() == 3
    stored = await database_sync_to_async(Node.objects.get)(pk=node.pk)
    assert stored.hello_digest == presence.hello_digest(Hello.model_validate(hello(gpus=3)))
    await comm.disconnect()


async def _connect(secret: str):
    from tests.server.test_agent_socket import agent

    comm = agent(secret)
    connected, _ = await comm.connect()
    assert connected
    return comm


async def test_an_offline_node_reconnecting_unchanged_comes_online_published_and_its_alert_resolved(
        make_node, settings, monkeypatch):
    settings.FLEET_PRESENCE_SWEEP = False
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret)
    await comm.disconnect()
    stale = timezone.now() - timedelta(seconds=settings.FLEET_OFFLINE_AFTER + 5)
    await database_sync_to_async(Node.objects.filter(pk=node.pk).update)(last_seen=stale)
    assert await database_sync_to_async(presence.sweep_offline)() == [node.pk]
    assert await database_sync_to_async(Alert.objects.filter(node=node, resolved_at__isnull=True).count)() == 1

    layer = get_channel_layer()
    listener = await layer.new_channel()
    await layer.group_add(events.FLEET_GROUP, listener)
    def no_transaction(*args, **kwargs):
        raise AssertionError("an unchanged hello took the hello transaction")

    monkeypatch.setattr(presence, "record_hello", no_transaction)
    comm = await connect_and_hello(secret)  # unchanged: the fast path (a refusal would not be a welcome)
    statuses = []
    for _ in range(20):
        message = await asyncio.wait_for(layer.receive(listener), timeout=5)
        if message["payload"].get("kind") == "node":
            statuses.append(message["payload"]["node"]["status"])
            break
    assert statuses == [NodeStatus.ONLINE]
    stored = await database_sync_to_async(Node.objects.get)(pk=node.pk)
    assert stored.status == NodeStatus.ONLINE and stored.last_seen > stale
    alert = await database_sync_to_async(Alert.objects.get)(node=node, kind=AlertKind.NODE_OFFLINE)
    assert alert.resolved_at is not None
    await comm.disconnect()


async def test_a_runtime_frame_that_changes_more_than_counters_forgets_the_digest(make_node, quiet):
    node, secret = await database_sync_to_async(make_node)()
    comm = await connect_and_hello(secret, {**hello(), "serving": [RUNTIME]})
    digest = (await database_sync_to_async(Node.objects.get)(pk=node.pk)).hello_digest
    assert digest
    stored = database_sync_to_async(lambda: Node.objects.get(pk=node.pk).hello_digest)
    runtime_state = database_sync_to_async(lambda: list(NodeRuntime.objects.filter(node=node).values_list(
        "state", "tokens_served")))
    await comm.send_json_to({"type": "runtime", "v": 1, "serving": [{**RUNTIME, "tokens_served": 500}]})
    for _ in range(50):
        if await runtime_state() == [("ready", 500)]:
            break
        await asyncio.sleep(0.05)
    assert await runtime_state() == [("ready", 500)] and await stored() == digest  # counters only: kept
    await comm.send_json_to({"type": "runtime", "v": 1, "serving": [{**RUNTIME, "state": "failed"}]})
    for _ in range(50):
        if await stored() == "":
            break
        await asyncio.sleep(0.05)
    assert await stored() == "" and (await runtime_state())[0][0] == "failed"
    await comm.disconnect()
