#!/usr/bin/env python
"""`make demo` budgets: time to "Fleet is running", time until every model command the demo queued has
finished (deployed and activated, or failed), and the memory of the whole demo process tree (server,
agents and whatever they start, such as runtimes), for a first start and then a restart of the same demo.

Budgets on a 2-core, 24 GiB machine: first start ready < 4 min (the venv install comes on top when
`make demo` creates it), later start < 60 s, whole demo < 8 GiB.

    .venv/bin/python bench/demo.py                          # a fresh var/ in a temporary folder
    .venv/bin/python bench/demo.py --models var/demo/models # reuse a converted SmolLM2 (not a first start)
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.harness import free_port  # noqa: E402

FINAL = ("active", "staged", "removed", "failed")
GIB = 1024 ** 3


def tree_rss(pid: int) -> tuple[int, int]:
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total, len(processes)


def commands(db: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT n.name, c.repo, c.state, c.error FROM hub_nodecommand c JOIN inventory_node n ON n.id = c.node_id"
        ).fetchall()


def run(var: Path, models: Path | None, label: str, settle: float, limit: float) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "FLEET_"))}
    env.update(FLEET_VAR_DIR=str(var), FLEET_ADMIN_PASSWORD="bench-demo-password", PYTHONUNBUFFERED="1")
    if models:
        env["FLEET_DEMO_MODELS"] = str(models)
    log_path = var.parent / f"{var.name}.{label}.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        demo = subprocess.Popen([sys.executable, "manage.py", "demo", "--port", str(free_port())], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    peak = 0
    try:
        while "Fleet is running" not in log_path.read_text():
            if demo.poll() is not None or time.monotonic() - started > limit:
                sys.exit(f"{label}: the demo did not start; see {log_path}")
            peak = max(peak, tree_rss(demo.pid)[0])
            time.sleep(0.2)
        ready = time.monotonic() - started
        rows = []
        while time.monotonic() - started < limit:
            peak = max(peak, tree_rss(demo.pid)[0])
            rows = commands(var / "fleet.sqlite3")
            if all(row[2] in FINAL for row in rows):
                break
            time.sleep(1)
        done = time.monotonic() - started
        settled = time.monotonic() + settle
        while time.monotonic() < settled:
            peak = max(peak, tree_rss(demo.pid)[0])
            time.sleep(1)
        rss, count = tree_rss(demo.pid)
        states = {}
        for _, repo, state, _ in rows:
            states[(repo, state)] = states.get((repo, state), 0) + 1
        print(f"{label}: ready {ready:.1f} s; {len(rows)} commands final at {done:.1f} s "
              f"({', '.join(f'{n}× {repo} {state}' for (repo, state), n in sorted(states.items()))}); "
              f"memory {rss / GIB:.2f} GiB in {count} processes {settle:.0f} s later, peak {peak / GIB:.2f} GiB")
        for name, repo, state, error in rows:
            if state == "failed":
                print(f"  {name}: {repo} failed: {error}")
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="FLEET_DEMO_MODELS to reuse (default: inside the fresh var/)")
    parser.add_argument("--settle", type=float, default=20, help="seconds to watch memory after the deploys")
    parser.add_argument("--limit", type=float, default=600, help="seconds allowed per start")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-demo-") as tmp:
        var = Path(tmp) / "var"
        run(var, args.models, "first start", args.settle, args.limit)
        run(var, args.models, "restart", args.settle, args.limit)


if __name__ == "__main__":
    main()
