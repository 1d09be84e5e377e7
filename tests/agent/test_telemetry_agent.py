"""Agent-side telemetry: fault injection, the reconnect buffer and catch-up, control frames, NVML XID
events and processes (against pynvml's real error classes)."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pynvml
import pytest

from fleet.agent.buffer import BATCH_POINTS, MetricsBuffer
from fleet.agent.cli import main
from fleet.agent.collectors.faults import Fault, parse_fault
from fleet.agent.collectors.nvml import NvmlCollector
from fleet.agent.collectors.simulated import SimulatedCollector
from fleet.agent.protocol import Control, GpuProcess, GpuSample, Metrics, dump, parse_agent_frame
from tests.agent.test_connection import FakeServer, start, welcome
from tests.agent.test_nvml import FakeNvml, nvml_error

T = 1_750_000_000.0


# ---- faults ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "fault"), [
    ("lost:gpu=3@30s", Fault("lost", gpu=3, after=30)),
    ("xid:79", Fault("xid", code=79)),
    ("xid:48,gpu=2@2m", Fault("xid", gpu=2, after=120, code=48)),
    ("ecc", Fault("ecc")),
    ("overheat:gpu=1@5", Fault("overheat", gpu=1, after=5)),
])
def test_parse_fault(text, fault):
    assert parse_fault(text) == fault


@pytest.mark.parametrize(("text", "message"), [
    ("melt", "kind must be one of lost, xid, ecc, overheat"),
    ("lost:gpu=x", "parameter 'gpu=x' must be gpu=N"),
    ("lost:79", "parameter '79' must be gpu=N"),
    ("xid:79@soon", "delay 'soon' must be seconds"),
])
def test_bad_fault_is_refused_with_the_form(text, message):
    with pytest.raises(ValueError, match=message):
        parse_fault(text)


def test_cli_rejects_bad_fault_and_fault_without_simulation(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEET_AGENT_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--simulate", "h100x8", "--fault", "melt"])
    assert exit_info.value.code == 2
    assert "argument --fault: fault 'melt': kind must be one of" in capsys.readouterr().err


def test_simulated_faults_over_time():
    faults = [parse_fault(f) for f in ("lost:gpu=3@30s", "xid:79,gpu=0@10s", "ecc:gpu=2", "overheat:gpu=4")]
    sim = SimulatedCollector("h100x8", "faulty", faults=faults, started=T)
    early = {s.index: s for s in sim.sample(T + 1)}
    assert not early[3].lost and early[0].xids == []
    assert early[2].ecc_uncorrected == 1 and early[4].temperature_c == 96.0
    at_ten = {s.index: s for s in sim.sample(T + 10)}
    assert at_ten[0].xids == [79]
    assert {s.index: s for s in sim.sample(T + 11)}[0].xids == []  # an XID is reported once
    later = {s.index: s for s in sim.sample(T + 31)}
    assert later[3].lost and later[3].utilization_gpu is None
    assert [g.index for g in sim.inventory()[0]] == [0, 1, 2, 4, 5, 6, 7]
    parse_agent_frame(dump(Metrics(type="metrics", ts=T, gpus=list(later.values()))))


def test_simulated_memory_jumps_when_a_model_loads_and_processes_follow():
    sim = SimulatedCollector("h100x8", "curves")
    bursty = [i for i in range(8) if sim.pattern(i) == "bursty"]
    busy = [i for i in range(8) if sim.pattern(i) == "busy"]
    assert bursty and busy, "seed 'curves' should give both patterns"
    index = bursty[0]
    memory = {sim.model_loaded(index, T + s): sim.sample(T + s)[index] for s in range(0, 1800, 30)}
    assert memory[True].memory_used_bytes > 10 * memory[False].memory_used_bytes
    assert memory[True].processes and not memory[False].processes
    assert sim.sample(T)[busy[0]].processes[0].name == "vllm"


# ---- buffer and catch-up ---------------------------------------------------------------------------


def sample(ts: float) -> Metrics:
    gpu = GpuSample(index=0, uuid="GPU-0", utilization_gpu=1.0,
                    processes=[GpuProcess(pid=1, used_memory_bytes=1, name="python3")])
    return Metrics(type="metrics", ts=ts, gpus=[gpu])


def test_buffer_keeps_the_last_minutes_compactly(monkeypatch):
    buffer = MetricsBuffer(seconds=300)
    for i in range(400):
        buffer.add(sample(T + i))
    assert len(buffer) == 301 and buffer.points[0].ts == T + 99
    assert buffer.points[0].gpus[0].processes == []  # left out of catch-ups
    monkeypatch.setattr("fleet.agent.buffer.time.time", lambda: T + 399)
    batch = buffer.next_batch()
    assert len(batch.points) == BATCH_POINTS and batch.points[0].ts == T + 99
    assert parse_agent_frame(dump(batch)).type == "metrics.batch"
    buffer.accepted(batch)
    assert len(buffer) == 301 - BATCH_POINTS


def big_sample(ts: float, gpus: int = 16) -> Metrics:
    return Metrics(type="metrics", ts=ts, gpus=[
        GpuSample(index=i, uuid=f"GPU-{i:036d}", utilization_gpu=55.5, utilization_memory=12.25,
                  memory_used_bytes=40 << 30, memory_total_bytes=80 << 30, temperature_c=61.5, power_w=312.25,
                  power_limit_w=700.0, sm_clock_mhz=1980, mem_clock_mhz=2619, fan_percent=40.0,
                  energy_j=123456789.5, ecc_corrected=0, ecc_uncorrected=0) for i in range(gpus)])


def test_catch_up_batches_fit_the_servers_metrics_frame_cap(monkeypatch):
    """A full 60-point batch of a 16-GPU node was ~334 KB, over the server's 256 KiB cap, and was lost."""
    buffer = MetricsBuffer(seconds=300)
    for i in range(180):
        buffer.add(big_sample(T + i))
    monkeypatch.setattr("fleet.agent.buffer.time.time", lambda: T + 180)
    cap = 256 * 1024
    sent = []
    while (batch := buffer.next_batch(max_bytes=cap)) is not None:
        frame = batch.model_dump_json(exclude_none=True, exclude_defaults=True)
        assert len(frame) <= cap
        parse_agent_frame(frame)
        sent += [p.ts for p in batch.points]
        buffer.accepted(batch)
    assert sent == [T + i for i in range(180)]  # every point, in order, none dropped
    assert buffer.dropped == 0


def test_points_are_kept_until_the_server_acknowledges_them(monkeypatch):
    buffer = MetricsBuffer(seconds=300)
    for i in range(10):
        buffer.add(sample(T + i))
    monkeypatch.setattr("fleet.agent.buffer.time.time", lambda: T + 10)
    first = buffer.next_batch(size=4)
    again = buffer.next_batch(size=4)  # the connection died before an ack: the same points go again
    assert [p.ts for p in again.points] == [p.ts for p in first.points]
    buffer.accepted(again)
    assert buffer.points[0].ts == T + 4 and len(buffer) == 6


def short_backoff(monkeypatch) -> None:
    """Reconnect within half a second (the library's default first delay is up to 5 s)."""
    monkeypatch.setenv("WEBSOCKETS_BACKOFF_INITIAL_DELAY", "0.5")
    monkeypatch.setenv("WEBSOCKETS_BACKOFF_MIN_DELAY", "0.5")


def buffered_at_least(monkeypatch, count: int) -> asyncio.Event:
    """An event set once the agent's buffer holds ``count`` points: what a test waits on, not a clock."""
    reached = asyncio.Event()
    add = MetricsBuffer.add

    def spy(self: MetricsBuffer, metrics: Metrics) -> None:
        add(self, metrics)
        if len(self) >= count:
            reached.set()

    monkeypatch.setattr(MetricsBuffer, "add", spy)
    return reached


async def waited(event: asyncio.Event, seconds: float = 30.0) -> bool:
    """Wait for ``event``; False after ``seconds`` (a bound for a failure, not a timing the test relies on)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def test_unacknowledged_catch_up_is_resent_on_the_next_connection(tmp_path, monkeypatch):
    short_backoff(monkeypatch)
    monkeypatch.setattr("fleet.agent.connection.DEFAULT_METRICS_INTERVAL", 0.1)  # until a welcome says
    monkeypatch.setattr("fleet.agent.metrics_sender.ACK_TIMEOUT", 0.5)
    buffered = buffered_at_least(monkeypatch, 1)
    firsts: list[str] = []  # the first frame after each welcome
    batches: list[list[float]] = []
    done = asyncio.Event()

    async def handler(ws, n):
        await ws.recv()  # hello
        if n == 1:  # connected but never welcomed: the agent buffers
            if not await waited(buffered):
                done.set()  # it never did: the assertions below say so
            await ws.close()
            return
        await ws.send(welcome(0.05))
        frame = json.loads(await ws.recv())
        firsts.append(frame["type"])
        if frame["type"] != "metrics.batch":  # nothing buffered: the assertions below say so
            done.set()
            await ws.wait_closed()
            return
        batches.append([p["ts"] for p in frame["points"]])
        if n == 2:
            await ws.close()  # no ack: the agent must keep these points
            return
        await ws.send(json.dumps({"type": "ack", "v": 1, "seq": frame["seq"]}))
        done.set()
        await ws.wait_closed()

    stop = asyncio.Event()
    async with FakeServer(handler) as server:
        task = start(server.url, tmp_path / "home", stop)
        await asyncio.wait_for(done.wait(), 60)  # a bound for a failure, not a wait for the agent
        stop.set()
        await asyncio.wait_for(task, 15)
    assert firsts == ["metrics.batch", "metrics.batch"]  # what was buffered goes first, again if not acked
    assert batches[0]
    assert set(batches[0]) <= set(batches[1])  # nothing sent before the lost connection was forgotten


async def test_agent_buffers_while_away_then_catches_up_and_obeys_control(tmp_path, monkeypatch):
    """Welcomed at 0.05 s, dropped, away briefly (a short backoff): the samples taken while away go first
    after the next welcome. The buffer used to sample on its own clock, still in the sleep it began before
    the first welcome (1 s by default; an hour here), so an absence shorter than that left nothing to
    catch up: this test then never sees the buffer fill."""
    short_backoff(monkeypatch)
    # Before any welcome the agent would sample hourly: whatever it buffers follows the welcome's 0.05 s.
    monkeypatch.setattr("fleet.agent.connection.DEFAULT_METRICS_INTERVAL", 3600.0)
    buffered = buffered_at_least(monkeypatch, 2)  # a live sample whose send failed at the drop is 1 at most
    received: dict[int, list[dict]] = {1: [], 2: []}
    welcomed_at: list[float] = []
    done = asyncio.Event()

    async def handler(ws, n):
        await ws.recv()  # hello
        if n == 1:
            await ws.send(welcome(0.05))
            for _ in range(2):
                received[1].append(json.loads(await ws.recv()))
            await ws.close()
            return
        if not await waited(buffered):  # the agent is connected but not welcomed: it keeps buffering
            done.set()  # it buffered nothing: the assertions below say so
            return
        welcomed_at.append(time.time())
        await ws.send(welcome(0.05))
        received[2].append(json.loads(await ws.recv()))  # a live sample first: nothing was buffered
        await ws.send(json.dumps({"type": "ack", "v": 1, "seq": received[2][0].get("seq", 0)}))
        await ws.send(dump(Control(type="control", metrics_interval=0.3, reason="test")))
        loop = asyncio.get_running_loop()
        stamps = []
        while len(stamps) < 6:
            frame = json.loads(await ws.recv())
            if frame["type"] == "metrics":
                stamps.append(loop.time())
            elif frame["type"] == "metrics.batch":  # the rest of the catch-up
                await ws.send(json.dumps({"type": "ack", "v": 1, "seq": frame["seq"]}))
        received[2].append({"gaps": [b - a for a, b in zip(stamps, stamps[1:], strict=False)]})
        done.set()
        await ws.wait_closed()

    stop = asyncio.Event()
    async with FakeServer(handler) as server:
        task = start(server.url, tmp_path / "home", stop)
        await asyncio.wait_for(done.wait(), 60)  # a bound for a failure, not a wait for the agent
        stop.set()
        await asyncio.wait_for(task, 15)
    assert [f["type"] for f in received[1]] == ["metrics", "metrics"]
    assert welcomed_at, "nothing was buffered while the agent was away"
    catch_up = received[2][0]
    assert catch_up["type"] == "metrics.batch" and len(catch_up["points"]) >= 2
    # The two points the server waited for were sampled while no connection streamed (more may follow
    # until the agent reads the welcome).
    assert all(p["ts"] < welcomed_at[0] for p in catch_up["points"][:2])
    assert all("processes" not in gpu for p in catch_up["points"] for gpu in p["gpus"])
    times = [p["ts"] for p in catch_up["points"]]
    assert times == sorted(times)
    # The control frame's 0.3 s, not the welcome's 0.05 s: the mean of the gaps after the first (a sample
    # of the replaced stream may come first), so one late frame on a loaded box cannot fail it.
    gaps = received[2][1]["gaps"][1:]
    assert sum(gaps) / len(gaps) > 0.2


# ---- NVML XID events and processes ---------------------------------------------------------------


class EventNvml(FakeNvml):
    def __init__(self):
        super().__init__()
        self.events: list[tuple[int, int]] = []  # (gpu index, xid)
        self.registered: list[int] = []

    def nvmlEventSetCreate(self):
        return "event-set"

    def nvmlDeviceRegisterEvents(self, handle, types, event_set):
        self._check("nvmlDeviceRegisterEvents", handle)
        assert types == pynvml.nvmlEventTypeXidCriticalError and event_set == "event-set"
        self.registered.append(handle.index)

    def nvmlEventSetWait_v2(self, event_set, timeout_ms):
        assert timeout_ms == 0  # never blocks the sample
        if not self.events:
            raise nvml_error(pynvml.NVML_ERROR_TIMEOUT)
        index, xid = self.events.pop(0)
        return SimpleNamespace(eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=xid,
                               device=SimpleNamespace(index=index))

    def nvmlDeviceGetIndex(self, handle):
        return handle.index

    def nvmlEventSetFree(self, event_set):
        pass

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        self._check("nvmlDeviceGetComputeRunningProcesses", handle)
        if handle.index == 0:
            return [SimpleNamespace(pid=999_999_999, usedGpuMemory=2 << 30), SimpleNamespace(pid=1, usedGpuMemory=None)]
        return []


def test_xid_events_are_read_without_blocking_and_land_on_their_gpu(monkeypatch):
    nvml = EventNvml().install(monkeypatch)
    nvml.unsupported.add(("nvmlDeviceRegisterEvents", 5))  # one GPU without events: the others still work
    collector = NvmlCollector()
    collector.inventory()
    first = collector.sample()
    assert all(s.xids == [] for s in first)
    assert sorted(nvml.registered) == [0, 1, 2, 3, 4, 6, 7]
    nvml.events = [(2, 79), (2, 48), (6, 13)]
    second = {s.index: s for s in collector.sample()}
    assert second[2].xids == [79, 48] and second[6].xids == [13]  # the server decides what to ignore
    assert all(s.xids == [] for s in collector.sample())  # reported once
    collector.close()


def test_processes_per_gpu(monkeypatch):
    nvml = EventNvml().install(monkeypatch)
    nvml.unsupported.add(("nvmlDeviceGetComputeRunningProcesses", 1))
    collector = NvmlCollector()
    collector.inventory()
    samples = {s.index: s for s in collector.sample()}
    procs = samples[0].processes
    assert [(p.pid, p.used_memory_bytes, p.name) for p in procs][0] == (999_999_999, 2 << 30, None)  # no such pid
    assert procs[1].used_memory_bytes is None and procs[1].name  # pid 1 exists here
    assert samples[1].processes == [] and samples[1].utilization_gpu is not None


def test_lost_gpu_still_reports_its_xid(monkeypatch):
    nvml = EventNvml().install(monkeypatch)
    collector = NvmlCollector()
    collector.inventory()
    nvml.lost[4] = {"*"}
    nvml.events = [(4, 79)]
    samples = {s.index: s for s in collector.sample()}
    assert samples[4].lost and samples[4].xids == [79]
