"""`/ws/live/` telemetry topics: coalesced (at most one message a second), only what was subscribed,
stopped by unsubscribing (a hidden tab), permission-checked. The pacing is checked on fake time; the
socket tests only wait for events (with generous limits) and bound what load cannot raise."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from channels.db import database_sync_to_async

from fleet.agent.protocol import Metrics
from fleet.telemetry.browser import BUCKET, MIN_GAP, RATE, TICK, Pacer, TelemetryStream
from fleet.telemetry.live import live_telemetry
from tests.server.test_live_socket import live
from tests.telemetry.conftest import gpu, metrics_frame

pytestmark = pytest.mark.django_db(transaction=True)


def feed(node_id: int, util: float, now: float | None = None) -> None:
    frame = Metrics.model_validate(metrics_frame(time.time(), [gpu(0, utilization_gpu=util), gpu(1)]))
    live_telemetry.ingest(node_id, frame, now=now)


async def subscribe(comm, *topics: str, action: str = "subscribe") -> dict:
    await comm.send_json_to({"type": action, "topics": list(topics)})
    while True:
        message = await comm.receive_json_from(timeout=5)
        if message["kind"] in {"subscribed", "error"}:
            return message


async def next_telemetry(comm, timeout: float = 30) -> dict:
    while True:
        message = await comm.receive_json_from(timeout=timeout)
        if message["kind"] == "telemetry":
            return message


def drive(pacer: Pacer, changes: list[float], until: float) -> list[tuple[float, float]]:
    """Tick the pacer on fake time from 0 to ``until``, with something new at each of ``changes``;
    (sent at, oldest change it carried) per message."""
    sent, pending, queue = [], None, sorted(changes)
    for step in range(1, round(until / TICK) + 1):
        now = step * TICK
        while queue and queue[0] <= now:
            change = queue.pop(0)
            pending = change if pending is None else pending
        if pacer.ready(now) and pending is not None:
            pacer.spent(now)
            sent.append((now, pending))
            pending = None
    return sent


def test_pacer_sends_about_once_a_second_under_a_flood():
    changes = [step / 10 for step in range(1, 400)]  # 10 Hz for 40 s
    sent = [at for at, _ in drive(Pacer(), changes, 40.0)]
    assert all(b - a >= MIN_GAP - 1e-9 for a, b in zip(sent, sent[1:], strict=False)), sent
    for start in sent:  # in any window, at most the bucket plus the refill
        window = [at for at in sent if start <= at < start + 5.0]
        assert len(window) <= BUCKET + 5.0 * RATE, window
    assert 38 <= len(sent) <= 41, sent


def test_pacer_slack_lets_one_hertz_frames_through_without_waiting_a_second():
    """Agent frames 0.95 s then 1.05 s apart: each goes out a tick or two after it arrived, never a
    whole second later."""
    changes, at = [], 0.05
    for step in range(30):
        changes.append(round(at, 3))
        at += 0.95 if step % 2 == 0 else 1.05
    sent = drive(Pacer(), changes, 32.0)
    assert [change for _, change in sent] == changes
    assert all(at - change <= 2 * TICK + 1e-9 for at, change in sent), sent


def test_pacer_catches_up_after_a_send_was_held_back():
    """1 Hz frames, and one event-loop stall of 1.5 s: the frames caught in it go out together when it
    ends, and from the next one on each goes out a tick or two after it arrived again (a bucket of one
    token and a half kept every later frame about a second late: the pacer ran in step with the frames,
    a second behind)."""
    changes = [round(0.05 + step, 3) for step in range(30)]
    stalled = [change if not 10 <= change < 11.6 else 11.6 for change in changes]  # seen only at 11.6
    sent = drive(Pacer(), stalled, 32.0)
    late = [(at, change) for at, change in sent if at - change > 2 * TICK + 1e-9]
    assert [change for _, change in late] == [11.6] or not late, late
    assert all(at - change <= 2 * TICK + 1e-9 for at, change in sent if change > 11.6), sent
    assert len(sent) == 29  # the two caught in the stall went out as one


def test_pacer_quiet_time_refills_but_only_up_to_the_bucket():
    pacer = Pacer()
    assert pacer.ready(0.0)
    pacer.spent(0.0)
    assert not pacer.ready(0.4)  # no token, and within the minimum gap
    assert not pacer.ready(0.9)  # past the gap, still short of a token
    assert pacer.ready(100.0)  # a long quiet spell ...
    pacer.spent(100.0)
    assert not pacer.ready(100.1)  # ... never two messages within MIN_GAP
    sent = [100.0]
    for step in range(1, 41):  # then asked every half second for 20 s
        if pacer.ready(100.0 + step / 2):
            pacer.spent(100.0 + step / 2)
            sent.append(100.0 + step / 2)
    assert sent[:3] == [100.0, 100.5, 101.0]  # the tokens saved go out MIN_GAP apart ...
    assert len(sent) <= BUCKET + 20 * RATE  # ... no more than BUCKET of them
    assert all(b - a == 1.0 for a, b in zip(sent[-10:], sent[-9:], strict=False))  # then once a second


async def test_node_topic_streams_coalesced_updates(make_node, charlie):
    node, _ = await database_sync_to_async(make_node)("a")
    other, _ = await database_sync_to_async(make_node)("b")
    comm = await live(charlie)
    assert (await comm.connect())[0]
    reply = await subscribe(comm, f"telemetry:node:{node.pk}")
    assert reply == {"kind": "subscribed", "topics": [f"telemetry:node:{node.pk}"]}
    feed(node.pk, 10.0)
    feed(other.pk, 99.0)  # not subscribed: never sent
    first = await next_telemetry(comm)
    assert list(first["nodes"]) == [str(node.pk)]
    assert first["nodes"][str(node.pk)]["latest"]["gpus"][0]["utilization_gpu"] == 10.0
    assert len(first["nodes"][str(node.pk)]["points"]) == 1

    # Frames at up to 10 Hz: coalesced (however slowly this box runs, never more than the pacing
    # allows for the time that passed), every point delivered once and in order.
    messages, fed = [], []
    started = time.monotonic()
    for step in range(40):
        util = float(step)
        feed(node.pk, util)
        fed.append(util)
        await asyncio.sleep(0.1)
        while not comm.output_queue.empty():
            message = await comm.receive_json_from()
            if message["kind"] == "telemetry":
                messages.append(message)
    while not messages or messages[-1]["nodes"][str(node.pk)]["latest"]["gpus"][0]["utilization_gpu"] != 39.0:
        messages.append(await next_telemetry(comm))
    elapsed = time.monotonic() - started
    assert len(messages) <= BUCKET + elapsed * RATE, (len(messages), elapsed)
    delivered = [p[1][0][1] for m in messages for p in m["nodes"][str(node.pk)]["points"]]
    assert delivered == fed

    # A hidden tab unsubscribes: the stream stops. The next frame of another subscription proves the
    # stream ran on after the unsubscribe, and it carries nothing of the unsubscribed node.
    await subscribe(comm, f"telemetry:node:{node.pk}", action="unsubscribe")
    await subscribe(comm, f"telemetry:node:{other.pk}")
    feed(node.pk, 70.0)
    feed(other.pk, 5.0)
    message = await next_telemetry(comm)
    assert list(message["nodes"]) == [str(other.pk)]
    await comm.disconnect()


async def test_a_stream_has_something_to_send_only_when_something_changed(make_node, charlie):
    node, _ = await database_sync_to_async(make_node)("a")
    stream = TelemetryStream(send=None)
    assert stream.change(charlie, "subscribe", f"telemetry:node:{node.pk}") is None
    assert stream.change(charlie, "subscribe", "telemetry:fleet") is None
    stream.stop()  # collect() is driven by hand here
    assert await stream.collect() is None  # nothing fed yet
    feed(node.pk, 10.0, now=time.time() - 1)
    first = json.loads(await stream.collect())
    assert first["nodes"][str(node.pk)]["latest"]["gpus"][0]["utilization_gpu"] == 10.0
    assert first["heat"][str(node.pk)][0][1] == 10.0
    assert await stream.collect() is None  # nothing new: nothing sent
    feed(node.pk, 20.0)
    second = json.loads(await stream.collect())
    assert [p[1][0][1] for p in second["nodes"][str(node.pk)]["points"]] == [20.0]  # only the new point
    assert second["heat"][str(node.pk)][0][1] == 20.0
    assert await stream.collect() is None


async def test_fleet_topic_sends_the_heatmap_cells(make_node, charlie):
    node, _ = await database_sync_to_async(make_node)("a")
    comm = await live(charlie)
    assert (await comm.connect())[0]
    await subscribe(comm, "telemetry:fleet")
    feed(node.pk, 77.0)
    message = await next_telemetry(comm)
    cells = message["heat"][str(node.pk)]
    assert cells[0][:2] == [0, 77.0] and cells[0][3] == 60.0 and cells[0][4] == 0
    assert json.dumps(message).count('"heat"') == 1
    await comm.disconnect()


async def test_bad_or_forbidden_telemetry_topics_are_refused(charlie):
    comm = await live(charlie)
    assert (await comm.connect())[0]
    error = await subscribe(comm, "telemetry:node:abc")
    assert error == {"kind": "error", "detail": "topics.0: unknown or not permitted: 'telemetry:node:abc'"}
    await comm.disconnect()
