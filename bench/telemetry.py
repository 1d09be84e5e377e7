#!/usr/bin/env python
"""Telemetry ingest benchmark: N simulated agents (asyncio tasks in a few processes) send 1 Hz metrics
frames with 8 GPUs to a real Fleet server (Daphne, embedded default) and, in the same run, to a bare
`websockets` server that only parses and counts the same frames (the ceiling).

Reports, per N: sustained frames/s (accepted by the server), server CPU, p50/p99 latency from an
agent's send to a logged-in browser socket receiving the coalesced update (telemetry:node topics),
and Fleet ÷ bare. ``--search`` doubles N until 1 Hz with p99 < 1 s no longer holds, then bisects.

    .venv/bin/python bench/telemetry.py --nodes 500 --duration 10
    .venv/bin/python bench/telemetry.py --search --max-nodes 8000 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROBES = 16  # "browser" sockets, each subscribed to one node (16 open node pages)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


from telemetry_load import browser, frames, generator  # noqa: E402  (bench/ is on sys.path)

# ---- servers ----------------------------------------------------------------------------------------------


class Fleet:
    def __init__(self, tmp: Path, nodes: int, heartbeat: float | None = None):
        self.tmp = tmp
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "FLEET_"))}
        self.env = {**inherited, "DJANGO_SETTINGS_MODULE": "fleet.settings", "FLEET_VAR_DIR": str(tmp / "var"),
                    "FLEET_SECRET_KEY": "bench-secret-key-0123456789abcdef0123456789",
                    "FLEET_METRICS_ALLOW": "127.0.0.1", "FLEET_MAX_AGENT_CONNECTIONS": str(nodes + 100),
                    "FLEET_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
        if heartbeat:  # per-agent timers (ping, last_seen, command poll) scale with N / heartbeat
            self.env.update(FLEET_HEARTBEAT_INTERVAL=str(heartbeat), FLEET_OFFLINE_AFTER=str(3 * heartbeat))
        os.environ.update(self.env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        self.secrets, self.node_ids = self._nodes(nodes)
        self.cookie = self._session()
        self.process: subprocess.Popen | None = None

    def _nodes(self, count: int) -> tuple[list[str], list[int]]:
        from fleet.inventory.models import Node, NodeCredential
        from fleet.lib.secrets import hash_secret, hint, new_secret

        Node.objects.bulk_create([Node(name=f"bench-{i:05d}", hostname=f"bench-{i:05d}") for i in range(count)],
                                 batch_size=2000)
        nodes = list(Node.objects.order_by("name"))
        secrets = [new_secret("fns") for _ in nodes]
        NodeCredential.objects.bulk_create([NodeCredential(node=n, secret_hash=hash_secret(s), hint=hint(s))
                                            for n, s in zip(nodes, secrets, strict=True)], batch_size=2000)
        return secrets, [n.pk for n in nodes]

    def _session(self) -> str:
        from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
        from django.contrib.sessions.backends.db import SessionStore

        user = get_user_model().objects.create_user("bench", password="bench-password-1", role="viewer")
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        return f"sessionid={session.session_key}"

    def start(self) -> str:
        self.port = free_port()
        self.log = open(self.tmp / "daphne.log", "a")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fleet.serve", "-b", "127.0.0.1", "-p", str(self.port), "fleet.asgi:application"],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{self.port}"
        for _ in range(150):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(base + "/accounts/login/", timeout=2).close()
                return base
            time.sleep(0.2)
        raise RuntimeError("daphne did not start; see " + str(self.tmp / "daphne.log"))

    def frames(self) -> float:
        url = f"http://127.0.0.1:{self.port}/metrics?name[]=fleet_telemetry_frames_total"
        with urllib.request.urlopen(url, timeout=30) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("fleet_telemetry_frames_total "):
                    return float(line.split()[1])
        return 0.0

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Bare:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.process: subprocess.Popen | None = None

    def start(self) -> str:
        self.port = free_port()
        self.count_file = self.tmp / "bare.count"
        self.process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bare_server.py"), str(self.port),
                                         str(self.count_file)], cwd=ROOT)
        for _ in range(100):
            if self.count_file.exists():
                return f"http://127.0.0.1:{self.port}"
            time.sleep(0.1)
        raise RuntimeError("bare server did not start")

    def frames(self) -> float:
        return float(self.count_file.read_text().split()[0])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


# ---- one phase --------------------------------------------------------------------------------------------


def phase(server: Fleet | Bare, secrets: list[str], node_ids: list[int], args: argparse.Namespace,
          profile_to: Path | None = None) -> dict:
    import psutil

    n = len(secrets)
    bare = isinstance(server, Bare)
    base = server.start()
    url = base.replace("http://", "ws://") + ("/" if bare else "/ws/agent/")
    ramp = max(2.0, n / args.connect_rate)
    start_at = time.time() + 1.0
    settle = args.settle if args.settle is not None else max(5.0, n / 150)  # hellos finish, backlog drains
    window = (start_at + ramp + settle, start_at + ramp + settle + args.duration)
    stop_at = window[1] + 0.5
    queue: mp.Queue = mp.Queue()
    procs = [mp.Process(target=generator, args=(url, secrets[i::args.procs], start_at, ramp, window, stop_at,
                                                bare, args.gpus, queue)) for i in range(args.procs)]
    for proc in procs:
        proc.start()
    latencies: list[float] = []
    proc_info = psutil.Process(server.process.pid)

    async def measure() -> tuple[float, float, float]:
        browser_task = None
        if not bare:
            probes = node_ids[: min(PROBES, n)]
            browser_task = asyncio.create_task(browser(base, server.cookie, probes, window, latencies, stop_at))
        await asyncio.sleep(max(0.0, window[0] - time.time()))
        c0, cpu0 = server.frames(), sum(proc_info.cpu_times()[:2])
        spy = None
        py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if profile_to is not None and py_spy:
            command = [py_spy, "record", "-p", str(server.process.pid), "-d", str(int(args.duration)), "-r", "50",
                       "-f", "raw", "-o", str(profile_to)]
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(max(0.0, window[1] - time.time()))
        c1, cpu1 = server.frames(), sum(proc_info.cpu_times()[:2])
        if spy is not None:
            spy.wait(30)
        if browser_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(browser_task, stop_at - time.time() + 5)
        return c1 - c0, cpu1 - cpu0, window[1] - window[0]

    try:
        frames_done, cpu, seconds = asyncio.run(measure())
        stats = collections.Counter()
        for _ in procs:
            stats.update(queue.get(timeout=max(30.0, stop_at - time.time() + 60)))
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        server.stop()
    latencies.sort()
    pct = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]) if latencies else (lambda q: None)
    return {"n": n, "server": "bare" if bare else "fleet", "frames_per_s": frames_done / seconds,
            "sent_per_s": stats["sent"] / seconds, "cpu_percent": 100 * cpu / seconds,
            "connected": stats["connected"], "control_frames": stats["control"],
            "failures": {k: v for k, v in stats.items() if k.startswith(("connect_failed", "dropped"))},
            "p50": pct(0.5), "p99": pct(0.99), "samples": len(latencies)}


def holds(result: dict) -> bool:
    return (result["frames_per_s"] >= 0.95 * result["n"] and result["p99"] is not None and result["p99"] < 1.0
            and result["connected"] == result["n"])


def show(result: dict) -> None:
    lat = (f"p50 {result['p50'] * 1000:6.0f} ms  p99 {result['p99'] * 1000:6.0f} ms ({result['samples']} updates)"
           if result["p50"] is not None else "latency n/a")
    print(f"  {result['server']:5s} N={result['n']:6d}  accepted {result['frames_per_s']:8.0f} frames/s "
          f"(sent {result['sent_per_s']:8.0f})  server CPU {result['cpu_percent']:4.0f}%  "
          f"connected {result['connected']}/{result['n']}  {lat}"
          + (f"  control frames {result['control_frames']}" if result["control_frames"] else "")
          + (f"  retried: {result['failures']}" if result["failures"] else ""), flush=True)


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
    parser.add_argument("--nodes", type=int, default=200, help="agents for a single run (default 200)")
    parser.add_argument("--search", action="store_true", help="search the largest N holding 1 Hz with p99 < 1 s")
    parser.add_argument("--start", type=int, default=250, help="first N of the search")
    parser.add_argument("--max-nodes", type=int, default=4000, help="the search stops here")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds between the ramp and the window (default max(5, N/150))")
    parser.add_argument("--connect-rate", type=float, default=400.0, help="agent connections opened per second")
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--gpus", type=int, choices=(4, 8), default=8)
    parser.add_argument("--heartbeat", type=float, default=None,
                        help="FLEET_HEARTBEAT_INTERVAL for the server (default: Fleet's default, 5 s)")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare websockets ceiling")
    parser.add_argument("--profile", action="store_true", help="py-spy the Fleet server at the largest N")
    args = parser.parse_args()
    for name in ("nodes", "start", "max_nodes", "procs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration < 2:
        parser.error("--duration must be at least 2 seconds")

    hello, prefix, suffix = frames(args.gpus)
    top = max(args.max_nodes if args.search else args.nodes, args.nodes)
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    print(f"fleet telemetry bench: {os.cpu_count()} CPUs, frame {len(prefix) + len(suffix) + 18} bytes "
          f"({args.gpus} GPUs), {args.procs} generator processes, {args.duration:g} s windows; setting up {top} nodes",
          flush=True)
    fleet = Fleet(tmp, top, args.heartbeat)
    bare = Bare(tmp)
    results: dict[int, dict[str, dict]] = {}
    profile_path = tmp / "profile.txt"

    def run(n: int, profile: bool = False) -> dict:
        fleet_result = phase(fleet, fleet.secrets[:n], fleet.node_ids[:n], args, profile_path if profile else None)
        show(fleet_result)
        results.setdefault(n, {})["fleet"] = fleet_result
        if not args.no_bare:
            bare_result = phase(bare, fleet.secrets[:n], fleet.node_ids[:n], args)
            show(bare_result)
            results[n]["bare"] = bare_result
            ratio = fleet_result["frames_per_s"] / bare_result["frames_per_s"] if bare_result["frames_per_s"] else 0
            print(f"  → Fleet ÷ bare at N={n}: {ratio:.2f}", flush=True)
        return fleet_result

    try:
        if not args.search:
            run(args.nodes, profile=args.profile)
        else:
            good, bad, n = 0, None, args.start
            while n <= args.max_nodes:
                if holds(run(n)):
                    good, n = n, n * 2
                else:
                    bad = n
                    break
            for _ in range(2):  # bisect twice between the last good and the first bad N
                if bad is None or bad - good <= max(50, good // 10):
                    break
                middle = (good + bad) // 2
                if holds(run(middle)):
                    good = middle
                else:
                    bad = middle
            print(f"\nlargest N holding 1 Hz with p99 < 1 s: {good or 'none tested'}"
                  + (f" (fails at {bad})" if bad else f" (search stopped at --max-nodes {args.max_nodes})"))
            if args.profile:
                print(f"profiling the Fleet server at N={bad or good}:")
                run(bad or good, profile=True)
        if args.profile:
            summarize_profile(profile_path)
        best = max(results.values(), key=lambda r: r["fleet"]["frames_per_s"])
        if "bare" in best:
            print(f"\nsustained frames/s: Fleet {best['fleet']['frames_per_s']:.0f} vs bare "
                  f"{best['bare']['frames_per_s']:.0f} at N={best['fleet']['n']} "
                  f"(ratio {best['fleet']['frames_per_s'] / max(1, best['bare']['frames_per_s']):.2f}; target ≥ 0.5)")
    finally:
        fleet.stop()
        bare.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    sys.exit(main())
