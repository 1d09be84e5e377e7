#!/usr/bin/env python
"""Chat path benchmark: what the Fleet gateway (`/v1/chat/completions`, SSE) and the playground socket
(`/ws/chat/`) add on top of calling the node's runtime directly, all measured in one run against one real
stack (Daphne, a real fleet-agent, the builtin runtime serving the tiny Llama on one CPU thread).

    .venv/bin/python bench/chat.py                              # defaults (about two minutes here)
    .venv/bin/python bench/chat.py --requests 50 --tokens 256 --concurrency 1,4,16

Latency: ``--requests`` streamed answers of ``--latency-tokens`` tokens per path, one at a time, the paths
taking turns; time to first token (TTFT: request sent → first text) and inter-token latency (ITL: first → last
text over the tokens in between). Throughput: ``C`` concurrent streams of ``--tokens`` tokens each per path,
aggregate completion tokens per second of wall time, the median of ``--rounds`` runs (paths taking turns). The
runtime generates one answer at a time, so concurrency queues there: the figures show what the relay costs, not
batching.

Targets (issue 7): added TTFT p50 < 5 ms; streaming throughput ≥ 0.95× direct. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.chat_stack import GOOD, ChatWorld  # noqa: E402

PATHS = ("direct", "gateway", "socket")
TARGET_ADDED_TTFT_MS = 5.0
TARGET_THROUGHPUT_RATIO = 0.95


@dataclass
class Sample:
    ttft: float  # seconds from sending the request to the first text
    span: float  # seconds from the first text to the last
    tokens: int  # completion tokens the runtime counted


@dataclass
class Bench:
    world: ChatWorld
    http: httpx2.AsyncClient = field(init=False)
    runtime_url: str = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx2.AsyncClient(timeout=httpx2.Timeout(600.0), trust_env=False,
                                       limits=httpx2.Limits(max_connections=None, max_keepalive_connections=64))
        self.runtime_url = self.world.runtime_url(GOOD)

    def body(self, tokens: int, seed: int) -> dict:
        return {"model": GOOD, "messages": [{"role": "user", "content": f"Tell me a story, number {seed}."}],
                "max_tokens": tokens, "temperature": 0.7, "seed": seed, "stream": True,
                "stream_options": {"include_usage": True}}

    async def sse(self, url: str, headers: dict[str, str], body: dict) -> Sample:
        begin = time.perf_counter()
        first = last = None
        tokens = 0
        async with self.http.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk.get("error"):
                    raise RuntimeError(f"{url}: {chunk['error']}")
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        last = time.perf_counter()
                        first = first or last
        if first is None:
            raise RuntimeError(f"{url}: no text came back")
        return Sample(first - begin, last - first, tokens)

    async def direct(self, tokens: int, seed: int) -> Sample:
        return await self.sse(f"{self.runtime_url}/v1/chat/completions", {}, self.body(tokens, seed))

    async def gateway(self, tokens: int, seed: int) -> Sample:
        return await self.sse(f"{self.world.stack.url()}/v1/chat/completions",
                              {"Authorization": f"Bearer {self.world.key}"}, self.body(tokens, seed))

    async def socket(self, tokens: int, seed: int) -> Sample:
        base = self.world.stack.url()
        async with websockets.connect(base.replace("http://", "ws://") + "/ws/chat/", open_timeout=30,
                                      additional_headers={"Cookie": self.world.cookie, "Origin": base}) as ws:
            body = self.body(tokens, seed)
            begin = time.perf_counter()
            await ws.send(json.dumps({"type": "chat.start", "request_id": "b", "target": {"model": GOOD},
                                      "messages": body["messages"],
                                      "params": {"max_tokens": tokens, "temperature": 0.7, "seed": seed}}))
            first = last = None
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "chat.delta" and message["text"]:
                    last = time.perf_counter()
                    first = first or last
                elif message["type"] == "chat.done":
                    break
                elif message["type"] in ("chat.error", "error"):
                    raise RuntimeError(f"/ws/chat/: {message}")
        if first is None:
            raise RuntimeError("/ws/chat/: no text came back")
        return Sample(first - begin, last - first, int(message["usage"]["completion_tokens"] or 0))

    def path(self, name: str) -> Callable[[int, int], Awaitable[Sample]]:
        return getattr(self, name)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(bench: Bench, args: argparse.Namespace) -> dict:
    for name in PATHS:  # warm up every path (connections, first-call costs)
        await bench.path(name)(4, 0)
    latency: dict[str, list[Sample]] = {name: [] for name in PATHS}
    for index in range(args.requests):
        order = PATHS[index % 3:] + PATHS[:index % 3]  # take turns: a noisy neighbour hits every path alike
        for name in order:
            latency[name].append(await bench.path(name)(args.latency_tokens, index + 1))
    rates: dict[str, dict[int, list[float]]] = {name: {c: [] for c in args.concurrency} for name in PATHS}
    for concurrency in args.concurrency:
        for round_ in range(args.rounds):
            turn = (concurrency + round_) % 3
            for name in PATHS[turn:] + PATHS[:turn]:
                seeds = [10000 * concurrency + 100 * round_ + n for n in range(concurrency)]
                begin = time.perf_counter()
                samples = await asyncio.gather(*(bench.path(name)(args.tokens, seed) for seed in seeds))
                rates[name][concurrency].append(sum(s.tokens for s in samples) / (time.perf_counter() - begin))
    throughput = {name: {c: statistics.median(values) for c, values in by_c.items()} for name, by_c in rates.items()}
    result: dict = {"model": GOOD, "runtime": "builtin", "threads": 1, "requests": args.requests,
                    "latency_tokens": args.latency_tokens, "tokens": args.tokens, "rounds": args.rounds, "paths": {}}
    for name in PATHS:
        ttfts = [s.ttft * 1000 for s in latency[name]]
        itls = [s.span * 1000 / (s.tokens - 1) for s in latency[name] if s.tokens > 1]
        result["paths"][name] = {
            "ttft_ms": {"p50": round(statistics.median(ttfts), 2), "p95": round(percentile(ttfts, 0.95), 2)},
            "itl_ms": {"p50": round(statistics.median(itls), 3) if itls else None},
            "tokens_per_s": {str(c): round(v, 1) for c, v in throughput[name].items()},
        }
    direct = result["paths"]["direct"]
    for name in ("gateway", "socket"):
        path = result["paths"][name]
        path["added_ttft_ms_p50"] = round(path["ttft_ms"]["p50"] - direct["ttft_ms"]["p50"], 2)
        path["throughput_ratio"] = {c: round(v / direct["tokens_per_s"][c], 3) if direct["tokens_per_s"][c] else None
                                    for c, v in path["tokens_per_s"].items()}
        path["meets_targets"] = path["added_ttft_ms_p50"] < TARGET_ADDED_TTFT_MS and all(
            ratio is not None and ratio >= TARGET_THROUGHPUT_RATIO for ratio in path["throughput_ratio"].values())
    result["targets"] = {"added_ttft_ms_p50_below": TARGET_ADDED_TTFT_MS,
                         "throughput_ratio_at_least": TARGET_THROUGHPUT_RATIO}
    return result


def report(result: dict) -> None:
    paths = result["paths"]
    concurrency = list(paths["direct"]["tokens_per_s"])
    print(f"\nbuiltin runtime, tiny Llama, 1 thread; latency over {result['requests']} answers of "
          f"{result['latency_tokens']} tokens; throughput: median of {result['rounds']} runs of C streams of "
          f"{result['tokens']} tokens")
    header = f"{'path':<9}{'TTFT p50':>10}{'TTFT p95':>10}{'added p50':>11}{'ITL p50':>10}"
    header += "".join(f"{f'tok/s C={c}':>13}{'÷direct':>9}" for c in concurrency)
    print(header)
    for name in PATHS:
        path = paths[name]
        added = f"{path['added_ttft_ms_p50']:+.2f}" if name != "direct" else "-"
        line = (f"{name:<9}{path['ttft_ms']['p50']:>8.2f}ms{path['ttft_ms']['p95']:>8.2f}ms{added:>9}ms"
                f"{path['itl_ms']['p50'] or 0:>8.3f}ms")
        for c in concurrency:
            ratio = path.get("throughput_ratio", {}).get(c)
            line += f"{path['tokens_per_s'][c]:>13.1f}{(f'{ratio:.3f}' if ratio is not None else '1'):>9}"
        print(line)
    print(f"targets: added TTFT p50 < {TARGET_ADDED_TTFT_MS:g} ms, throughput >= {TARGET_THROUGHPUT_RATIO:g}x direct; "
          + ", ".join(f"{name}: {'met' if paths[name]['meets_targets'] else 'NOT met'}"
                      for name in ("gateway", "socket")))


def concurrency_list(raw: str) -> list[int]:
    try:
        values = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("--concurrency must be whole numbers separated by commas, e.g. 1,4,16") \
            from None
    if not values or any(not 1 <= value <= 64 for value in values):
        raise argparse.ArgumentTypeError("--concurrency values must be from 1 to 64, e.g. 1,4,16")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30, help="answers per path for the latency figures")
    parser.add_argument("--latency-tokens", type=int, default=32, help="max_tokens of the latency answers")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens of each throughput stream")
    parser.add_argument("--rounds", type=int, default=3, help="throughput runs per path and concurrency (median)")
    parser.add_argument("--concurrency", type=concurrency_list, default=[1, 4, 16], help="e.g. 1,4,16")
    args = parser.parse_args()
    for name in ("requests", "latency_tokens", "tokens"):
        if not 2 <= getattr(args, name) <= 4000:
            parser.error(f"--{name.replace('_', '-')} must be from 2 to 4000")
    if not 1 <= args.rounds <= 100:
        parser.error("--rounds must be from 1 to 100")
    with tempfile.TemporaryDirectory(prefix="fleet-bench-chat-") as scratch:
        print("starting Daphne, a fleet-agent and the builtin runtime (tens of seconds)...", flush=True)
        world = ChatWorld(Path(scratch), offline_after=15,
                          env={"FLEET_GATEWAY_REQUESTS_PER_MINUTE": "1000000", "FLEET_LOG_LEVEL": "WARNING"})
        try:
            world.start()
            result = asyncio.run(run(world, args))
        except Exception:
            print(f"runtime: {world.runtime(GOOD)}\nagent log:\n{world.agent.log()}", file=sys.stderr)
            raise
        finally:
            world.stop()
    report(result)
    print(json.dumps(result))
    return 0


async def run(world: ChatWorld, args: argparse.Namespace) -> dict:
    bench = Bench(world)
    try:
        return await measure(bench, args)
    finally:
        await bench.http.aclose()


if __name__ == "__main__":
    sys.exit(main())
