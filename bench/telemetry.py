#!/usr/bin/env python
"""Telemetry ingest benchmark: how many agents (1 Hz metrics frames with 8 GPUs, asyncio tasks in a few
generator processes) a server holds on this box, searched in one run for (a) a bare `websockets` server
that only parses and counts the same frames (the ceiling), (b) the same work as a plain ASGI application
on Daphne (the ceiling of the stack Fleet runs on), (c) Fleet with one Daphne process and (d) Fleet with
two (FLEET_WEB_PROCESSES=2), both on the production path (PostgreSQL + Redis).

"Held" at N: every agent connected, >= 98% of the frames sent accepted, the agents still sending at 1 Hz
(not told to slow down), and a browser socket on 16 node pages sees each update with p99 < 1 s, over a
window of --duration seconds after the ramp and a warm-up. Then, at the largest N Fleet held with two
processes: server memory per agent, the /metrics scrape time, the same N with 50 dashboards open, memory
while offered twice that N (--overload), and a reconnect storm (all N agents online again after the server
is restarted; N = --storm-nodes). The last line is one JSON object:
{"bare_max_n", "fleet_max_n_1proc", "fleet_max_n_2proc", "ratio_1proc", "ratio_2proc", "p99_ms",
 "rss_per_agent_kb", "reconnect_storm_s", "daphne_max_n", "ratio_2proc_of_daphne", ...}

    make bench-telemetry                                   # the whole search (~60 min on 2 cores)
    .venv/bin/python bench/telemetry.py --nodes 500        # one N, Fleet with 1 and 2 processes and bare
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROBES = 16  # "browser" sockets, each subscribed to one node (16 open node pages)

from telemetry_load import browser, frames, generator  # noqa: E402  (bench/ is on sys.path)
from telemetry_servers import Bare, Fleet, drain, fresh, scrape_twice, tree_cpu, tree_rss  # noqa: E402

# ---- one phase --------------------------------------------------------------------------------------------


def phase(server: Fleet | Bare, n: int, args: argparse.Namespace, processes: int = 1, dashboards: int = 0,
          profile_to: Path | None = None) -> dict:
    bare = isinstance(server, Bare)
    if not bare:
        server.reset()
    base = server.start(processes)
    time.sleep(1.0)
    rss_idle = tree_rss(server.process.pid)
    agents = list(enumerate(server.secrets[:n]))
    url = base.replace("http://", "ws://") + ("/" if bare else "/ws/agent/")
    ramp = max(2.0, n / args.connect_rate)
    start_at = time.time() + 1.0
    # The window opens once every agent has its welcome (a node's first hello ever is a transaction: a
    # fresh fleet's first connect is slower than any later one), then a settle for backlogs to drain.
    timing = mp.RawArray("d", [math.inf, math.inf, time.time() + 3600])
    welcomes = mp.Value("i", 0)
    queue: mp.Queue = mp.Queue()
    procs = [mp.Process(target=generator, args=(url, agents[i::args.procs], start_at, ramp, timing, bare, args.gpus,
                                                queue, welcomes)) for i in range(args.procs)]
    for proc in procs:
        proc.start()
    latencies: list[float] = []
    in_server: list[float] = []
    pid = server.process.pid
    extra: dict = {}

    async def measure() -> tuple[float, float, float]:
        browser_task = None
        if not bare:
            probes = server.node_ids[: min(PROBES, n)]
            browser_task = asyncio.create_task(browser(base, server.cookie, probes, timing, latencies, dashboards,
                                                       in_server))
        await asyncio.sleep(max(0.0, start_at + ramp - time.time()))
        deadline = time.time() + 60 + n / 20
        while not bare and welcomes.value < n and time.time() < deadline:
            await asyncio.sleep(0.2)
        extra["welcomed_after_s"] = time.time() - start_at
        settle = args.settle if args.settle is not None else max(5.0, n / 1000)
        await asyncio.sleep(settle)
        if not bare:  # frames queued behind first hellos drain before the window: it measures steady state
            extra["drained_after_s"] = await asyncio.to_thread(drain, server, n, 120.0) - start_at
        timing[0] = time.time()
        timing[1] = timing[0] + args.duration
        timing[2] = timing[1] + 0.5
        await asyncio.sleep(max(0.0, timing[0] - time.time()))
        scrapes = None
        if not bare:  # as Prometheus would, while the N agents send (not as they leave: a storm of its own)
            scrapes = asyncio.create_task(scrape_twice(server, timing[0], args.duration))
        c0, t0 = await asyncio.to_thread(fresh, server.frames)
        cpu0 = tree_cpu(pid)
        extra["rss_start"] = tree_rss(pid)
        spy = None
        py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if profile_to is not None and py_spy:
            command = [py_spy, "record", "-p", str(pid), "-d", str(int(args.duration)), "-r", "50",
                       "-f", "raw", "-o", str(profile_to), "--subprocesses"]
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(max(0.0, timing[1] - time.time()))
        c1, t1 = await asyncio.to_thread(fresh, server.frames)
        cpu1 = tree_cpu(pid)
        extra["rss_end"] = tree_rss(pid)
        if scrapes is not None:
            extra["scrapes_s"] = await scrapes
            extra["scrape_s"] = max(extra["scrapes_s"])
        if spy is not None:
            spy.wait(30)
        if browser_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(browser_task, timing[2] - time.time() + 5)
        return (c1 - c0) / (t1 - t0), cpu1 - cpu0, timing[1] - timing[0]

    try:
        accepted_rate, cpu, seconds = asyncio.run(measure())
        stats = collections.Counter()
        for _ in procs:
            stats.update(queue.get(timeout=max(30.0, timing[2] - time.time() + 60)))
        for proc in procs:
            proc.join(30)
        time.sleep(10.0)  # the agents have left: memory should be back near idle (fleet.lib.memory trims)
        extra["rss_after"] = tree_rss(pid)
    finally:
        for proc in procs:
            proc.join(1)
            if proc.is_alive():
                proc.kill()
        server.stop()
    latencies.sort()
    in_server.sort()
    pct = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]) if latencies else (lambda q: None)
    sent = stats["sent"] / seconds
    kind = ("daphne" if server.daphne else "bare") if bare else f"fleet/{processes}"
    return {"n": n, "server": kind, "frames_per_s": accepted_rate,
            "sent_per_s": sent, "accepted": accepted_rate / sent if sent else 0.0,
            "cpu_percent": 100 * cpu / seconds, "connected": stats["connected"], "control_frames": stats["control"],
            "failures": {k: v for k, v in stats.items() if k.startswith(("connect_failed", "dropped"))},
            "p50": pct(0.5), "p99": pct(0.99), "samples": len(latencies), "dashboards": dashboards,
            "p99_in_server": in_server[int(0.99 * len(in_server))] if in_server else None,
            "rss_idle": rss_idle, **extra}


CEILINGS = ("bare", "daphne")  # servers that only parse and count: no browser latency to measure
SERVERS = ("bare", "daphne", "fleet_1proc", "fleet_2proc")


def holds(result: dict) -> bool:
    n = result["n"]
    latency_ok = result["server"] in CEILINGS or (result["p99"] is not None and result["p99"] < 1.0)
    return (result["connected"] == n and result["accepted"] >= 0.98 and result["sent_per_s"] >= 0.95 * n
            and latency_ok)


def show(result: dict) -> None:
    lat = (f"p50 {result['p50'] * 1000:5.0f} ms p99 {result['p99'] * 1000:6.0f} ms ({result['samples']}; "
           f"p99 in the server {result['p99_in_server'] * 1000:.0f} ms)"
           if result["p50"] is not None else "latency n/a")
    mib = 1024 * 1024
    memory = (f"  RSS {result['rss_idle'] / mib:.0f}→{result['rss_end'] / mib:.0f}→{result['rss_after'] / mib:.0f} MiB"
              if "rss_after" in result else "")
    print(f"  {result['server']:7s} N={result['n']:6d}  accepted {result['frames_per_s']:7.0f}/s "
          f"({100 * result['accepted']:5.1f}% of {result['sent_per_s']:.0f}/s sent)"
          f"  CPU {result['cpu_percent']:4.0f}%  "
          f"connected {result['connected']}/{result['n']}  {lat}{memory}"
          + (f"  /metrics {'/'.join(f'{t:.2f}' for t in result['scrapes_s'])}s" if "scrapes_s" in result else "")
          + (f"  all welcomed {result['welcomed_after_s']:.0f}s after the start"
             if result["server"] not in CEILINGS else "")
          + (f"  dashboards {result['dashboards']}" if result["dashboards"] else "")
          + (f"  control frames {result['control_frames']}" if result["control_frames"] else "")
          + (f"  retried: {result['failures']}" if result["failures"] else "")
          + ("  HELD" if holds(result) else "  not held"), flush=True)


def search(run, start: int, limit: int) -> tuple[int, dict | None]:
    """Double N from ``start`` until a run does not hold (or ``limit``), then bisect twice; the largest N
    held and its result."""
    good, best, bad, n = 0, None, None, start
    while n <= limit:
        result = run(n)
        if not holds(result):
            bad = n
            break
        good, best, n = n, result, n * 2
    for _ in range(2):
        if bad is None or bad - good <= max(50, good // 10):
            break
        middle = (good + bad) // 2
        result = run(middle)
        if holds(result):
            good, best = middle, result
        else:
            bad = middle
    return good, best


def storm(fleet: Fleet, n: int, args: argparse.Namespace, processes: int) -> float | None:
    """Seconds from a restart of the server processes until all N agents have a welcome again."""
    fleet.reset()
    base = fleet.start(processes)
    port = fleet.port
    url = base.replace("http://", "ws://") + "/ws/agent/"
    welcomes = mp.Value("i", 0)
    queue: mp.Queue = mp.Queue()
    agents = list(enumerate(fleet.secrets[:n]))
    start_at, far = time.time() + 1.0, time.time() + 3600
    timing = mp.RawArray("d", [far, far, far])
    procs = [mp.Process(target=generator, args=(url, agents[i::args.procs], start_at, max(2.0, n / args.connect_rate),
                                                timing, False, args.gpus, queue, welcomes))
             for i in range(args.procs)]
    for proc in procs:
        proc.start()
    took = None
    try:
        deadline = time.time() + 120 + n / 50
        while welcomes.value < n and time.time() < deadline:
            time.sleep(0.2)
        if welcomes.value < n:
            print(f"  storm: only {welcomes.value}/{n} agents connected before the restart", flush=True)
            return None
        time.sleep(3.0)
        before = welcomes.value
        restarted = time.monotonic()
        fleet.stop()
        fleet.start(processes, port=port)
        deadline = time.monotonic() + 180
        while welcomes.value - before < n and time.monotonic() < deadline:
            time.sleep(0.1)
        back = welcomes.value - before
        took = time.monotonic() - restarted if back >= n else None
        print(f"  storm: {back}/{n} agents online again "
              + (f"{took:.1f} s after the restart began" if took is not None else "within 180 s"), flush=True)
    finally:
        for proc in procs:
            proc.kill()
            proc.join(5)
        fleet.stop()
    return took


def summarize_profile(path: Path, top: int = 18) -> None:
    """py-spy raw (collapsed) stacks → self time by function, and time by area (inclusive)."""
    if not path.exists():
        print("  (no profile: py-spy not available)")
        return
    own: collections.Counter = collections.Counter()
    areas: collections.Counter = collections.Counter()
    total = 0
    buckets = [("pydantic validation", ("pydantic",)), ("json", ("json/",)),
               ("fleet.telemetry ingest", ("fleet/telemetry/live.py", "fleet/telemetry/ingest.py")),
               ("consumer dispatch (channels)", ("channels/",)),
               ("daphne/twisted/autobahn", ("twisted", "autobahn", "daphne")),
               ("asyncio loop", ("asyncio/",)), ("DB (django.db)", ("django/db",)),
               ("thread hop (asgiref)", ("asgiref",))]
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        weight = int(count)
        total += weight
        frames_ = stack.split(";")
        own[frames_[-1].split(" (")[0] + " (" + frames_[-1].rsplit("/", 1)[-1]] += weight
        for name, needles in buckets:
            if any(needle in stack for needle in needles):
                areas[name] += weight
    if not total:
        print("  (empty profile)")
        return
    print(f"  profile of the Fleet server ({total} samples; inclusive share of CPU samples by area):")
    for name, weight in areas.most_common():
        print(f"    {100 * weight / total:5.1f}%  {name}")
    print("  top self time:")
    for name, weight in own.most_common(top):
        print(f"    {100 * weight / total:5.1f}%  {name[:110]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=None, help="one N instead of the search")
    parser.add_argument("--start", type=int, default=500, help="first N of Fleet's search (bare starts at 4x)")
    parser.add_argument("--max-nodes", type=int, default=16000, help="the search stops here")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per phase (default 20)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds between the last welcome and the window (default max(5, N/1000))")
    parser.add_argument("--connect-rate", type=float, default=800.0, help="agent connections opened per second")
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--gpus", type=int, choices=(4, 8), default=8)
    parser.add_argument("--storm-nodes", type=int, default=2000, help="agents in the reconnect storm (0: skip)")
    parser.add_argument("--dashboards", type=int, default=50, help="open dashboards for the extra point (0: skip)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="which of bare, daphne, fleet_1proc, fleet_2proc to measure (default all; ratios need "
                             "bare; daphne: the bare server's work as a plain ASGI app on Daphne)")
    parser.add_argument("--embedded", action="store_true",
                        help="Fleet on its embedded default (SQLite, in-memory layer; 1 process only)")
    parser.add_argument("--heartbeat", type=float, default=None,
                        help="FLEET_HEARTBEAT_INTERVAL for the server (default: Fleet's default, 5 s)")
    parser.add_argument("--profile", action="store_true", help="py-spy the Fleet server at its largest N")
    parser.add_argument("--overload", type=int, choices=(0, 1), default=1,
                        help="measure memory at twice the largest N held (1, the default) or not (0)")
    args = parser.parse_args()
    for name in ("start", "max_nodes", "procs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.nodes is not None and args.nodes < 1:
        parser.error("--nodes must be at least 1")
    if args.duration < 2:
        parser.error("--duration must be at least 2 seconds")
    chosen = set(args.servers.split(","))
    if chosen - set(SERVERS):
        parser.error(f"--servers: unknown {sorted(chosen - set(SERVERS))}; "
                     "use bare, fleet_1proc, fleet_2proc")

    hello, prefix, suffix = frames(args.gpus)
    top = max(args.nodes * (1 + args.overload) if args.nodes else args.max_nodes, args.storm_nodes)
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    path = "embedded default (SQLite, in-memory layer)" if args.embedded else "PostgreSQL + Redis"
    print(f"fleet telemetry bench: {os.cpu_count()} CPUs, frame {len(prefix) + len(suffix) + 18} bytes "
          f"({args.gpus} GPUs), {args.procs} generator processes, {args.duration:g} s windows, Fleet on {path}; "
          f"setting up {top} nodes", flush=True)
    fleet = Fleet(tmp, top, production=not args.embedded, heartbeat=args.heartbeat)
    bare = Bare(tmp)
    bare.secrets = fleet.secrets
    profile_path = Path(tempfile.gettempdir()) / "fleet-bench-profile.txt"  # kept: py-spy raw stacks
    on_daphne = Bare(tmp, daphne=True)
    on_daphne.secrets = fleet.secrets
    kinds = [("bare", bare, 1), ("daphne", on_daphne, 1), ("fleet_1proc", fleet, 1)]
    kinds += [] if args.embedded else [("fleet_2proc", fleet, 2)]
    kinds = [kind for kind in kinds if kind[0] in chosen]
    report: dict = {}
    held: dict[str, tuple[int, dict | None]] = {}
    try:
        for name, server, processes in kinds:
            print(f"{name}:", flush=True)

            def run(n: int, server=server, processes=processes, profile_to=None) -> dict:
                result = phase(server, n, args, processes, profile_to=profile_to)
                show(result)
                return result

            if args.nodes:  # one N: --profile profiles each Fleet phase at it
                profiled = args.profile and server is not bare
                result = run(args.nodes, profile_to=profile_path if profiled else None)
                held[name] = (args.nodes if holds(result) else 0, result)
                if profiled:
                    summarize_profile(profile_path)
            else:
                start = args.start * 4 if isinstance(server, Bare) else args.start
                held[name] = search(run, start, args.max_nodes)
                print(f"  → largest N held: {held[name][0]}", flush=True)
        bare_n = held["bare"][0] if "bare" in held else 0
        report["bare_max_n"] = bare_n if "bare" in held else None
        for name in [k for k, _, _ in kinds if k.startswith("fleet_")]:
            report[f"{name.replace('fleet_', 'fleet_max_n_')}"] = held[name][0]
            report[f"ratio_{name.split('_')[1]}"] = round(held[name][0] / bare_n, 3) if bare_n else None
        if "daphne" in held:  # the same work on the server the stack fixes: what is left for Fleet to win
            daphne_n = held["daphne"][0]
            report["daphne_max_n"] = daphne_n
            for name in [k for k, _, _ in kinds if k.startswith("fleet_")]:
                ratio = round(held[name][0] / daphne_n, 3) if daphne_n else None
                report[f"ratio_{name.split('_')[1]}_of_daphne"] = ratio
        last = "fleet_2proc" if "fleet_2proc" in held else "fleet_1proc"
        best_n, best = held.get(last, (0, None))
        processes = 2 if last == "fleet_2proc" else 1
        if best is not None and best_n:
            report["p99_ms"] = round(best["p99"] * 1000) if best["p99"] is not None else None
            report["rss_per_agent_kb"] = round((best["rss_end"] - best["rss_idle"]) / best_n / 1024, 1)
            report["rss_idle_mb"] = round(best["rss_idle"] / 2**20)
            report["rss_after_agents_left_mb"] = round(best["rss_after"] / 2**20)
            report["metrics_scrape_s"] = round(best["scrape_s"], 2)
            if args.dashboards:
                print(f"{last} at N={best_n} with {args.dashboards} dashboards open:", flush=True)
                crowded = phase(fleet, best_n, args, processes, dashboards=args.dashboards)
                show(crowded)
                report["with_dashboards"] = {
                    "dashboards": args.dashboards, "held": holds(crowded),
                    "p99_ms": round(crowded["p99"] * 1000) if crowded["p99"] is not None else None,
                    "frames_per_s": round(crowded["frames_per_s"]), "frames_per_s_without": round(best["frames_per_s"])}
            if args.overload:  # memory must stay flat: the server sheds (tells longer intervals), not queues
                double = min(2 * best_n, len(fleet.secrets))
                print(f"{last} offered twice its capacity, N={double}:", flush=True)
                over = phase(fleet, double, args, processes)
                show(over)
                growth = (over["rss_end"] - over["rss_start"]) / 2**20 * 60 / args.duration
                report["overload"] = {
                    "n": double, "rss_window_start_mb": round(over["rss_start"] / 2**20),
                    "rss_window_end_mb": round(over["rss_end"] / 2**20), "rss_growth_mb_per_min": round(growth, 1),
                    "accepted": round(over["accepted"], 3), "control_frames": over["control_frames"]}
            if args.profile and not args.nodes:
                print(f"profiling {last} at N={best_n}:", flush=True)
                show(phase(fleet, best_n, args, processes, profile_to=profile_path))
                summarize_profile(profile_path)
        if args.storm_nodes:
            print(f"reconnect storm, {args.storm_nodes} agents, Fleet with {processes} process(es):", flush=True)
            took = storm(fleet, args.storm_nodes, args, processes)
            report["reconnect_storm_s"] = round(took, 1) if took is not None else None
            report["storm_n"] = args.storm_nodes
    finally:
        fleet.stop()
        bare.stop()
        on_daphne.stop()
        fleet.drop()
        log = tmp / "daphne.log"
        if log.exists() and "Traceback" in log.read_text():
            print("server log (last lines):\n" + "\n".join(log.read_text().splitlines()[-25:]))
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    sys.exit(main())
