"""The shared telemetry poller: however many browser sockets a process holds, one tick reads the store's
change counter once, each followed node's latest frame and new points once, and the heatmap once; a
tick where no socket may send reads nothing; the poller runs only while a socket subscribes."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest
from channels.db import database_sync_to_async

from fleet.telemetry import browser
from fleet.telemetry.browser import Poller, TelemetryStream, collect
from fleet.telemetry.store import LocalStore
from tests.telemetry.test_browser_stream import feed

pytestmark = pytest.mark.django_db(transaction=True)


class CountingStore(LocalStore):
    """The embedded store, counting the reads a tick makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    async def seq(self) -> int:
        self.calls["seq"] += 1
        return await super().seq()

    async def latest(self, node_ids: list[int]) -> dict[int, str]:
        self.calls["latest"] += 1
        return await super().latest(node_ids)

    async def points(self, node_id: int, since: float = 0.0) -> str:
        self.calls[f"points:{node_id}"] += 1
        return await super().points(node_id, since)

    async def heat(self) -> dict[int, str]:
        self.calls["heat"] += 1
        return await super().heat()


@pytest.fixture
def store(monkeypatch) -> CountingStore:
    counting = CountingStore()
    monkeypatch.setattr(browser, "get_store", lambda: counting)
    return counting


def utils(message: str, node_id: int) -> list[float]:
    return [point[1][0][1] for point in json.loads(message)["nodes"][str(node_id)]["points"]]


async def test_one_read_per_node_whatever_the_number_of_sockets(make_node, charlie, store):
    a, _ = await database_sync_to_async(make_node)("a")
    b, _ = await database_sync_to_async(make_node)("b")
    streams = [TelemetryStream(send=None) for _ in range(6)]
    for index, stream in enumerate(streams):
        assert stream.change(charlie, "subscribe", f"telemetry:node:{a.pk}") is None
        if index < 2:
            assert stream.change(charlie, "subscribe", f"telemetry:node:{b.pk}") is None
        if index == 5:
            assert stream.change(charlie, "subscribe", "telemetry:fleet") is None
        stream.stop()  # driven by hand below
    start = time.time()  # points a few ms apart: their times (to the millisecond) differ
    feed(a.pk, 10.0, now=start)
    feed(b.pk, 20.0, now=start)

    messages = await collect(streams)
    assert store.calls == {"seq": 1, "latest": 1, f"points:{a.pk}": 1, f"points:{b.pk}": 1, "heat": 1}
    assert set(messages) == set(streams)
    for index, stream in enumerate(streams):
        body = json.loads(messages[stream])
        assert set(body["nodes"]) == ({str(a.pk), str(b.pk)} if index < 2 else {str(a.pk)})
        assert ("heat" in body) == (index == 5)
        assert utils(messages[stream], a.pk) == [10.0]

    # Two sockets sent a moment ago, the others were paced: one read from the oldest point still
    # needed, and each socket gets exactly the points it has not had, as the store itself gives them.
    feed(a.pk, 11.0, now=start + 0.01)
    early = await collect(streams[:2])
    assert [utils(early[s], a.pk) for s in streams[:2]] == [[11.0], [11.0]]
    feed(a.pk, 12.0, now=start + 0.02)
    store.calls.clear()
    late = await collect(streams)
    assert store.calls == {"seq": 1, "latest": 1, f"points:{a.pk}": 1, "heat": 1}
    assert [utils(late[s], a.pk) for s in streams] == [[12.0]] * 2 + [[11.0, 12.0]] * 4
    since = json.loads(early[streams[0]])["nodes"][str(a.pk)]["points"][-1][0]
    raw = late[streams[0]].split('"points":', 1)[1].split("}", 1)[0]
    assert raw == await LocalStore().points(a.pk, since)  # the very same JSON text

    store.calls.clear()
    assert await collect(streams) == {}  # nothing new: the change counter is all that is read
    assert store.calls == {"seq": 1}


async def test_a_tick_where_no_socket_may_send_reads_nothing(make_node, charlie, store):
    node, _ = await database_sync_to_async(make_node)("a")
    now = [100.0]
    sent: list[str] = []

    async def send(text_data: str) -> None:
        sent.append(text_data)

    stream = TelemetryStream(send=send, clock=lambda: now[0])
    stream.change(charlie, "subscribe", f"telemetry:node:{node.pk}")
    stream.stop()
    poller = Poller()
    poller.streams.add(stream)  # ticked by hand, on fake time
    start = time.time()
    feed(node.pk, 0.0, now=start)
    await poller.tick()
    assert len(sent) == 1 and store.calls["seq"] == 1
    for step in range(1, 5):  # within the minimum gap and short of a token: no read, nothing sent
        now[0] = 100.0 + step * 0.1
        feed(node.pk, float(step), now=start + step * 0.01)
        await poller.tick()
    assert len(sent) == 1 and store.calls["seq"] == 1
    now[0] = 101.0
    await poller.tick()
    assert len(sent) == 2 and utils(sent[1], node.pk) == [1.0, 2.0, 3.0, 4.0]


async def test_the_poller_runs_only_while_a_socket_subscribes(make_node, charlie, store):
    node, _ = await database_sync_to_async(make_node)("a")
    inboxes: list[asyncio.Queue] = [asyncio.Queue(), asyncio.Queue()]
    streams = []
    for inbox in inboxes:
        async def send(text_data: str, inbox: asyncio.Queue = inbox) -> None:
            inbox.put_nowait(text_data)

        stream = TelemetryStream(send=send)
        stream.change(charlie, "subscribe", f"telemetry:node:{node.pk}")
        streams.append(stream)
    shared = streams[0].poller
    assert shared is not None and shared is streams[1].poller and shared.task is not None
    feed(node.pk, 42.0)
    for inbox in inboxes:
        assert utils(await asyncio.wait_for(inbox.get(), 30), node.pk) == [42.0]

    task = shared.task
    streams[0].change(charlie, "unsubscribe", f"telemetry:node:{node.pk}")
    assert shared.task is task and not task.done()  # the other socket still follows the node
    streams[1].stop()
    assert shared.task is None
    await asyncio.sleep(0)
    assert task.done()
    reads = store.calls["seq"]
    await asyncio.sleep(3 * browser.TICK)
    assert store.calls["seq"] == reads  # stopped: no more reads

    streams[1].change(charlie, "subscribe", f"telemetry:node:{node.pk}")  # a visible tab again
    feed(node.pk, 43.0)
    assert utils(await asyncio.wait_for(inboxes[1].get(), 30), node.pk) == [43.0]
    streams[1].stop()
