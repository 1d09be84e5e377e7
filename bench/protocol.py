"""Agent frame parsing and the compact (v2) metrics encoding, on the simulated 8-GPU node's frame.

    python bench/protocol.py [--gpus 8] [--number 2000]

Prints bytes per metrics frame (v1, v2; and deflated, as a websocket with permessage-deflate would carry
it) and microseconds per parse: the old path (json.loads, then pydantic on the Python objects), the fast
path for v1 and for v2, and v2 read without the head the agent writes (the slow path's json.loads first).
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet.agent import protocol  # noqa: E402
from fleet.agent.collectors.simulated import SimulatedCollector  # noqa: E402
from fleet.agent.protocol import HostSample, Metrics, dump, dump_compact, parse_agent_frame  # noqa: E402


def sample_frame(gpus: int) -> Metrics:
    sim = SimulatedCollector("h100x8" if gpus == 8 else "a100x4", "bench")
    return Metrics(type="metrics", ts=time.time(), gpus=sim.sample(time.time()),
                   host=HostSample(cpu_percent=12.5, memory_used_bytes=64 << 30, memory_total_bytes=512 << 30,
                                   disk_used_bytes=1 << 40, disk_total_bytes=4 << 40))


def deflated(text: str) -> int:
    """permessage-deflate without context takeover: each message compressed on its own."""
    compressor = zlib.compressobj(wbits=-15)
    return len(compressor.compress(text.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)) - 4


def per_call_us(call, number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8, choices=(4, 8))
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()

    metrics = sample_frame(args.gpus)
    v1, v2 = dump(metrics), dump_compact(metrics)
    v2_unhinted = v2.replace('"v":2,', '"v": 2,', 1)  # another encoder's spacing: no fast-path hint
    assert parse_agent_frame(v1) == parse_agent_frame(v2) == parse_agent_frame(v2_unhinted) == metrics
    adapter = protocol._agent_adapter

    def old() -> object:  # the parse before this change: size, json.loads, checks, validate_python
        return protocol._explain(v1, adapter, compact=True)

    print(f"{args.gpus}-GPU metrics frame")
    print(f"  bytes      v1 {len(v1):6d}   v2 {len(v2):6d}   v2/v1 {len(v2) / len(v1):.2f}")
    print(f"  deflated   v1 {deflated(v1):6d}   v2 {deflated(v2):6d}   v2/v1 {deflated(v2) / deflated(v1):.2f}")
    timings = {
        "old path (json.loads + validate_python), v1": per_call_us(old, args.number),
        "fast path, v1 (validate_json)": per_call_us(lambda: parse_agent_frame(v1), args.number),
        "fast path, v2 (columns, validate_json)": per_call_us(lambda: parse_agent_frame(v2), args.number),
        "v2 without the agent's head (slow path)": per_call_us(lambda: parse_agent_frame(v2_unhinted), args.number),
        "agent: encode v1 (model_dump_json)": per_call_us(lambda: dump(metrics), args.number),
        "agent: encode v2 (dump_compact)": per_call_us(lambda: dump_compact(metrics), args.number),
    }
    base = next(iter(timings.values()))
    for name, us in timings.items():
        print(f"  {name:<44s} {us:7.1f} us   x{base / us:4.2f} vs old")


if __name__ == "__main__":
    main()
