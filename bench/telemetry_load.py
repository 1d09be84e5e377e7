"""The load side of bench/telemetry.py: the agents' frames, the agent generator processes, and the
"browser" probe sockets that time an agent's send to the coalesced update a node page receives."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import multiprocessing as mp
import time

# ---- frames ------------------------------------------------------------------------------------------


def frames(gpus: int) -> tuple[str, str, str]:
    """(hello JSON, metrics prefix, metrics suffix): a frame is prefix + ts + suffix (no per-send dumps).
    Every agent must claim its own GPUs (the server refuses a UUID another online node reports):
    ``agent_frames`` makes each agent's copy."""
    from fleet.agent.collectors.simulated import SimulatedCollector
    from fleet.agent.protocol import Hello, HostFacts, Metrics, dump

    profile = "h100x8" if gpus == 8 else "a100x4"
    sim = SimulatedCollector(profile, "bench")
    inventory, _ = sim.inventory()
    hello = dump(Hello(type="hello", agent_version="bench", host=HostFacts(hostname="bench"), gpus=inventory))
    metrics = dump(Metrics(type="metrics", ts=123.456, gpus=sim.sample(time.time())))
    prefix, suffix = metrics.split("123.456", 1)
    return hello, prefix, suffix


def agent_frames(base: tuple[str, str, str], number: int) -> tuple[str, str, str]:
    """This agent's copy of the frames: the GPU UUIDs end in its number (same length, same shape)."""
    hello, prefix, suffix = base
    for uuid in {part.split('"', 1)[0] for part in hello.split('"uuid":"')[1:]}:
        own = uuid[:-8] + f"{number:08x}"
        hello, prefix, suffix = (text.replace(uuid, own) for text in (hello, prefix, suffix))
    return hello, prefix, suffix


# ---- load generator (one process, many agents) ----------------------------------------------------------


def generator(url: str, secrets: list[tuple[int, str]], start_at: float, ramp: float, timing, bare: bool, gpus: int,
              out: mp.Queue, welcomes=None) -> None:
    """Agents ``(number, secret)`` of this process. ``timing`` (shared doubles, set by the parent while we
    run): [measured window start, window end, stop]; ``welcomes`` (a shared counter) counts welcome frames."""
    import websockets

    base = frames(gpus)
    stats = collections.Counter()

    async def agent(number: int, secret: str, delay: float) -> None:
        """Like the real agent: connect (retrying with backoff, as websockets' reconnect loop does), hello,
        then a frame every interval until the end; a refused or dropped connection is retried."""
        hello, prefix, suffix = agent_frames(base, number)
        await asyncio.sleep(max(0.0, start_at + delay - time.time()))
        backoff = 1.0
        interval = [1.0]
        loop = asyncio.get_running_loop()
        next_at = loop.time() + (hash(secret) % 1000) / 1000  # spread sends over the second
        counted = False
        while time.time() < timing[2]:
            try:
                ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {secret}"},
                                              max_size=2**24, ping_interval=None, open_timeout=60, close_timeout=1)
            except Exception as exc:
                stats[f"connect_failed:{type(exc).__name__}"] += 1
                await asyncio.sleep(backoff * (0.5 + (hash((secret, backoff)) % 100) / 100))
                backoff = min(backoff * 2, 8.0)
                continue
            backoff = 1.0

            async def reader(ws=ws) -> None:
                with contextlib.suppress(Exception):
                    async for message in ws:
                        frame = json.loads(message)
                        if frame.get("type") == "welcome" and welcomes is not None:
                            with welcomes.get_lock():
                                welcomes.value += 1
                        if frame.get("type") in ("welcome", "control"):
                            interval[0] = frame["metrics_interval"]
                            stats["control"] += frame["type"] == "control"

            read = None
            try:
                await ws.send(hello)
                read = asyncio.create_task(reader())
                if not counted:
                    counted = True
                    stats["connected"] += 1
                while time.time() < timing[2]:
                    next_at = max(next_at + interval[0], loop.time())
                    await asyncio.sleep(next_at - loop.time())
                    now = time.time()
                    await ws.send(prefix + repr(now) + suffix)
                    if timing[0] <= now < timing[1]:
                        stats["sent"] += 1
                with contextlib.suppress(Exception):
                    await ws.close()
            except Exception as exc:
                stats[f"dropped:{type(exc).__name__}"] += 1
                await asyncio.sleep(backoff * (0.5 + (hash((secret, backoff)) % 100) / 100))
            finally:
                if read is not None:
                    read.cancel()

    async def main() -> None:
        spread = ramp / max(1, len(secrets))
        await asyncio.gather(*(agent(number, s, i * spread) for i, (number, s) in enumerate(secrets)))

    asyncio.run(main())
    out.put(dict(stats))


# ---- the "browser" ----------------------------------------------------------------------------------------


async def browser(base: str, cookie: str, node_ids: list[int], timing, latencies: list[float],
                  dashboards: int = 0, in_server: list[float] | None = None) -> None:
    """Node pages timing updates inside the window ``timing`` [start, end, stop], and open dashboards.
    ``in_server`` gets the part of each latency spent between the frame's arrival and the message leaving."""
    await asyncio.gather(*(node_page(base, cookie, n, timing, latencies, in_server) for n in node_ids),
                         *(dashboard(base, cookie, timing) for _ in range(dashboards)))


async def dashboard(base: str, cookie: str, timing) -> None:
    """An open overview page: the fleet heatmap topic, every update read and decoded."""
    import websockets

    url = base.replace("http://", "ws://") + "/ws/live/"
    async with websockets.connect(url, additional_headers={"Cookie": cookie, "Origin": base},
                                  max_size=2**26, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topics": ["telemetry:fleet"]}))
        with contextlib.suppress(TimeoutError):
            while time.time() < timing[2]:
                json.loads(await asyncio.wait_for(ws.recv(), max(0.1, timing[2] - time.time())))


async def node_page(base: str, cookie: str, node_id: int, timing, latencies: list[float],
                    in_server: list[float] | None = None) -> None:
    import websockets

    url = base.replace("http://", "ws://") + "/ws/live/"
    async with websockets.connect(url, additional_headers={"Cookie": cookie, "Origin": base},
                                  max_size=2**24, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topics": [f"telemetry:node:{node_id}"]}))
        while time.time() < timing[2]:
            try:
                message = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, timing[2] - time.time())))
            except TimeoutError:
                break
            now = time.time()
            if message.get("kind") != "telemetry" or not timing[0] <= now < timing[1]:
                continue
            for entry in message.get("nodes", {}).values():
                latencies.append(now - entry["latest"]["agent_ts"])
                if in_server is not None:  # "ts": when the server took the frame; "sent": when it wrote this
                    in_server.append(message["sent"] - entry["latest"]["ts"])
