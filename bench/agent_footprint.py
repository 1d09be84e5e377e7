#!/usr/bin/env python
"""The light agent's footprint on a CPU-only node: the ``fleet-agent`` wheel installed offline into a
fresh venv (no runtime extra), its installed size, and the idle RSS of ``fleet-agent run`` connected to a
stand-in server that welcomes it and takes its metrics (one frame a second).

    .venv/bin/python bench/agent_footprint.py                 # 30 s idle, last line: JSON
    .venv/bin/python bench/agent_footprint.py --idle 120
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from websockets.asyncio.server import serve  # noqa: E402

from fleet.agent.protocol import Welcome, dump  # noqa: E402
from fleet.agent.state import Credentials, save_credentials  # noqa: E402
from tests.agent.agent_dist import clean_env, install_fresh, site_packages_bytes  # noqa: E402

MB = 1024 * 1024


def rss(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process, in bytes (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


async def measure(venv: Path, home: Path, idle: float) -> dict:
    frames = {"metrics": 0}

    async def handler(ws):
        await ws.recv()  # hello
        await ws.send(dump(Welcome(type="welcome", node_id=1, node_name="cpu-1", heartbeat_interval=10,
                                   metrics_interval=1.0, offline_after=30)))
        async for message in ws:
            frames["metrics"] += '"metrics"' in str(message)[:40]

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        save_credentials(Credentials(f"http://127.0.0.1:{port}", 1, "cpu-1", "fns_bench"), home)
        env = {**clean_env(), "FLEET_AGENT_HOME": str(home)}
        proc = await asyncio.create_subprocess_exec(
            str(venv / "bin" / "fleet-agent"), "run", "--runtime", "none", env=env, cwd=str(home),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            started = time.monotonic()
            samples = []
            while time.monotonic() - started < idle:
                await asyncio.sleep(1)
                samples.append(rss(proc.pid)["VmRSS"])
            final = rss(proc.pid)
        finally:
            proc.terminate()
            await proc.wait()
    return {"rss_mb": round(final["VmRSS"] / MB, 1), "peak_rss_mb": round(final["VmHWM"] / MB, 1),
            "rss_median_mb": round(sorted(samples)[len(samples) // 2] / MB, 1), "metrics_frames": frames["metrics"],
            "exit_code": proc.returncode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=30.0, help="seconds connected before reading RSS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        venv = install_fresh(work)
        wheel = next((work / "dist").glob("*.whl"))
        home = work / "home"
        result = {
            "wheel_kb": round(wheel.stat().st_size / 1024, 1),
            "site_packages_mb": round(site_packages_bytes(venv) / MB, 1),
            **asyncio.run(measure(venv, home, args.idle)),
            "idle_s": args.idle,
        }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
