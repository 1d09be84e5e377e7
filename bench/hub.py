#!/usr/bin/env python
"""Hub benchmark: one generated model version (~500 MB in 4 safetensors shards) pulled by 1, 2, 4 and 8
agents at once through Fleet's /hf mirror (real Daphne, embedded default, real fleet-agent processes
deploying it over their sockets), fetched from an HF-compatible upstream served by this script.

Then the node's pull (--pull-mb, default 1 GiB): one file stored in the mirror, deployed by 1 and by 4 agents
at once (the fast path: parallel Range requests, sha256 verified), the agents' pull rate (as each agent reports
it: bytes ÷ seconds from starting the download to verified) ÷ curl's rate for the same blob from the same
server in the same run (1 and 4 curls at once), best of --pull-repeat each, and the agents' peak memory. The
last line is one JSON object: {"pull_ratio_1", "pull_ratio_4", "agent_rss_mb_peak", ...} (target ratio ≥ 0.7).

Per N it reports: upstream bytes fetched (target 1× the version size: pull-through fetches each blob
once however many nodes ask), wall time until every agent has the version staged (downloaded and
verified with verify_repo_checksums), and the mirror's throughput with a plain HTTP client (N parallel
`curl -L` of every shard through /hf, bodies written to disk) ÷ a plain local file copy of the same bytes
(read + write through user space, as any receiver does) measured in the same run (target ≥ 0.7). It also
shows an in-kernel copy (sendfile between files: bytes never reach user space, a bound no download can
reach) and, with Debian's nginx installed, nginx serving the same files to the same client. Each N uses a
fresh version, so every round starts cold at the upstream.

    .venv/bin/python bench/hub.py                     # 500 MB, agents 1,2,4,8
    .venv/bin/python bench/hub.py --size-mb 64 --agents 1,2 --repeat 1   # quick
    .venv/bin/python bench/hub.py --agents "" --pull-agents 1,4          # only the pull measure (make bench-hub)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hub.fakehub import FakeHub  # noqa: E402
from tests.integration.harness import Agent, Stack, free_port, wait_until  # noqa: E402

SHARDS = 4
MB = 1000 * 1000


def make_files(base: bytearray, round_no: int) -> dict[str, bytes]:
    """The version of one round: the shared random base with a round marker, so every round is new."""
    shard = len(base) // SHARDS
    files = {"config.json": json.dumps({"model_type": "llama", "round": round_no}).encode(),
             "tokenizer.json": json.dumps({"round": round_no}).encode()}
    for i in range(SHARDS):
        body = bytearray(base[i * shard:(i + 1) * shard])
        body[:16] = f"round{round_no:04d}shard{i}".encode()[:16].ljust(16, b"-")
        files[f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"] = bytes(body)
    return files


COPY_SCRIPTS = {
    # read() + write() through user space, 1 MiB at a time: what any client receiving bytes does
    "plain": "import shutil,sys; shutil.copyfileobj(open(sys.argv[1],'rb'), open(sys.argv[2],'wb'), 1 << 20)",
    # in-kernel (sendfile between files), bytes never reach user space: an upper bound no download reaches
    "kernel": "import shutil,sys; shutil.copyfile(sys.argv[1], sys.argv[2])",
}


def local_copy_rate(folder: Path, files: dict[str, bytes], parallel: int, kind: str = "plain") -> float:
    """MB/s of copying the same shards locally (page cache warm, like the mirror's), ``parallel`` at once."""
    sources = []
    for name, data in files.items():
        if name.endswith(".safetensors"):
            path = folder / f"src-{name}"
            path.write_bytes(data)
            sources.append(path)
    os.sync()
    jobs = [(src, folder / f"copy-{n}-{src.name}") for n in range(parallel) for src in sources]
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", COPY_SCRIPTS[kind], str(src), str(dst)]) for src, dst in jobs]
    for proc in procs:
        proc.wait()
    elapsed = time.perf_counter() - started
    total = sum(dst.stat().st_size for _, dst in jobs)
    for _, dst in jobs:
        dst.unlink()
    for src in sources:
        src.unlink()
    return total / MB / elapsed


def curl_rate(urls: list[str], parallel: int, folder: Path, token: str | None = None) -> float:
    """MB/s of ``parallel`` clients each fetching every URL with curl (following the mirror's redirect)."""
    folder.mkdir(parents=True, exist_ok=True)
    header = ["-H", f"Authorization: Bearer {token}"] if token else []
    started = time.perf_counter()
    procs = []
    for n in range(parallel):
        for i, url in enumerate(urls):
            out = folder / f"c{n}-{i}"
            procs.append((subprocess.Popen(["curl", "-sfL", *header, "-o", str(out), url]), out))
    total = 0
    for proc, out in procs:
        if proc.wait() != 0:
            raise SystemExit(f"curl failed for {out.name}")
        total += out.stat().st_size
        out.unlink()
    return total / MB / (time.perf_counter() - started)


class PeakRss:
    """Samples a process's resident memory every 50 ms: the server's must stay flat whatever the file size."""

    def __init__(self, pid: int) -> None:
        import threading

        import psutil

        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.peak


def _wall(stack: Stack, commands: list[str]) -> float | None:
    """Seconds from the first command reaching an agent to the last one staged (the server's clock)."""
    marks = ",".join("?" * len(commands))
    rows = stack.query(f"SELECT sent_at, finished_at FROM hub_nodecommand WHERE command_id IN ({marks})",
                       tuple(commands))
    from datetime import datetime

    sent = [datetime.fromisoformat(str(r[0])) for r in rows if r[0]]
    done = [datetime.fromisoformat(str(r[1])) for r in rows if r[1]]
    return (max(done) - min(sent)).total_seconds() if sent and done else None


def start_nginx(root: Path, tmp: Path) -> tuple[subprocess.Popen, int] | None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not nginx:
        return None
    port = free_port()
    conf = tmp / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read the 0700 temporary store
    conf.write_text(f"""{user} daemon off; worker_processes 2; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; tcp_nopush on; client_body_temp_path {tmp};
  proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{port}; location /blobs/ {{ alias {root}/blobs/; }} }} }}
""")
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return (proc, port) if proc.poll() is None else None


def create_commands(stack: Stack, kind: str, names: list[str], sha: str) -> list[str]:
    """Commands for several nodes in one transaction, so one poll tick sends them all at once."""
    code = ("import json; from django.db import transaction; from fleet.hub import commands; "
            "from fleet.hub.models import ModelVersion; from fleet.inventory.models import Node\n"
            f"version = ModelVersion.objects.get(sha={sha!r})\n"
            "with transaction.atomic():\n"
            f"    ids = [commands.create('bench', Node.objects.get(name=n), {kind!r}, version).command_id "
            f"for n in {names!r}]\n"
            "print(json.dumps(ids))")
    return json.loads(stack.manage("shell", "-c", code).splitlines()[-1])


def measure_pull(stack: Stack, upstream: FakeHub, agents: list[Agent], secret: str, tmp: Path, size_mb: int,
                 counts: list[int], repeat: int) -> dict:
    """Agents' pull rate ÷ curl's for the same blob, N agents / N curls at once; the agents' peak RSS."""
    data = bytearray(os.urandom(size_mb * MB))
    data[:16] = b"pull-measure----"
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": bytes(data)}
    del data
    upstream.add("bench/pull", files, revision="pull")
    sha = stack.manage("addmodel", "bench/pull", "--revision", "pull").splitlines()[-1]
    wait_until(lambda: stack.query("SELECT count(*) FROM hub_blob WHERE state != 'present'") == [(0,)], 600,
               "the mirror to store the file")
    size = sum(len(v) for v in files.values())
    url = f"{stack.url()}/hf/bench/pull/resolve/{sha}/model.safetensors"
    rss = [PeakRss(agent.process.pid) for agent in agents]
    result: dict = {"pull_mb": size_mb, "agent_rss_mb_before": round(max(r.peak for r in rss) / MB)}
    for count in counts:
        names = [f"bench-{n}" for n in range(count)]
        agent_rates, curl_rates = [], []
        for _ in range(repeat):
            os.sync()
            commands = create_commands(stack, "deploy", names, sha)
            marks = ",".join("?" * len(commands))

            def rows(commands=commands, marks=marks):
                return stack.query(f"SELECT state, error, bytes_per_second FROM hub_nodecommand WHERE command_id IN "
                                   f"({marks})", tuple(commands))

            wait_until(lambda: all(r[0] in ("staged", "failed") for r in rows()), 1800, f"{count} agents staged")
            failed = [r[1] for r in rows() if r[0] == "failed"]
            if failed:
                raise SystemExit(f"deploy failed: {failed[0]}")
            # they start together (one poll tick), so the slowest sets the pace of all of them
            agent_rates.append(count * size / MB / max(size / r[2] for r in rows()))
            for command_id in create_commands(stack, "remove", names, sha):  # the next run starts from nothing
                wait_until(lambda c=command_id: stack.query("SELECT state FROM hub_nodecommand WHERE command_id = ?",
                                                            (c,))[0][0] in ("removed", "failed"), 120, "removal")
            os.sync()
            curl_rates.append(curl_rate([url], count, tmp / "curl", secret))
        agent, curl = max(agent_rates), max(curl_rates)
        result[f"agent_mb_s_{count}"], result[f"curl_mb_s_{count}"] = round(agent), round(curl)
        result[f"pull_ratio_{count}"] = round(agent / curl, 3)
        print(f"pull of {size / MB:.0f} MB by {count} agent(s) at once: agents {agent:.0f} MB/s, curl {curl:.0f} MB/s "
              f"(ratio {agent / curl:.2f}; runs: agents {', '.join(f'{r:.0f}' for r in agent_rates)}, curl "
              f"{', '.join(f'{r:.0f}' for r in curl_rates)} MB/s)", flush=True)
    result["agent_rss_mb_peak"] = round(max(r.close() for r in rss) / MB)  # flat: no file is held in memory
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=500, help="version size in MB (default 500)")
    parser.add_argument("--agents", default="1,2,4,8", help="agent counts, comma-separated (default 1,2,4,8)")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs per N, best kept (default 3)")
    parser.add_argument("--pull-mb", type=int, default=1024, help="file size of the pull measure (0: skip it)")
    parser.add_argument("--pull-agents", default="1,4", help="agents at once in the pull measure (default 1,4)")
    parser.add_argument("--pull-repeat", type=int, default=3, help="pull runs per count, best kept (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    try:
        counts = [int(n) for n in args.agents.split(",") if n.strip()]
        pull_counts = [int(n) for n in args.pull_agents.split(",") if n.strip()] if args.pull_mb else []
    except ValueError:
        raise SystemExit("--agents and --pull-agents take whole numbers, comma-separated") from None
    if args.size_mb < SHARDS or any(n < 1 or n > 64 for n in counts + pull_counts) or not 1 <= args.repeat <= 20 \
            or not 1 <= args.pull_repeat <= 20 or args.pull_mb < 0:
        raise SystemExit("--size-mb must be at least 4, --agents and --pull-agents between 1 and 64, --repeat and "
                         "--pull-repeat between 1 and 20")
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-hub-"))
    if counts:
        print(f"generating {args.size_mb} MB of random weights ...", flush=True)
    base = bytearray(os.urandom(args.size_mb * MB)) if counts else bytearray()
    upstream = FakeHub().start()
    stack = Stack(tmp, offline_after=10, engine=True)
    stack.env.update({"FLEET_HF_UPSTREAM": upstream.url, "FLEET_HUB_DISK_MARGIN": "0", "FLEET_LOG_LEVEL": "WARNING"})
    agents: list[Agent] = []
    nginx = None
    rows = []
    summary: dict = {}
    try:
        stack.start()
        nodes = max(counts + pull_counts)
        token = stack.manage("createenrollmenttoken", "--expires", "1h", "--uses", str(nodes))
        for n in range(nodes):
            pull_env = {k: v for k, v in os.environ.items() if k.startswith("FLEET_AGENT_PULL_")}  # to try settings
            agent = Agent(tmp / f"agent-{n}", {**stack.env, "FLEET_AGENT_DISK_MARGIN": "0", **pull_env})
            result = agent.cli("enroll", "--server", stack.url(), "--token", token, "--name", f"bench-{n}")
            assert result.returncode == 0, result.stderr
            agents.append(agent.run("--simulate", "jetson-orin", "--runtime", "none", "--log-level", "warning"))
        wait_until(lambda: all(stack.node_status(f"bench-{n}") == "online" for n in range(len(agents))), 60,
                   "agents online")
        secret = json.loads((agents[0].home / "credentials.json").read_text())["secret"]
        nginx = start_nginx(tmp / "var" / "hub", tmp)
        for round_no, count in enumerate(counts, start=1):
            files = make_files(base, round_no)
            size = sum(len(v) for v in files.values())
            upstream.add("bench/model", files, revision=f"r{round_no}")
            sent_before = upstream.bytes_sent
            rss = PeakRss(stack.processes[0].pid)
            rss_before = rss.peak
            sha = stack.manage("addmodel", "bench/model", "--revision", f"r{round_no}").splitlines()[-1]
            started = time.perf_counter()
            commands = [stack.manage("deploymodel", "deploy", "--node", f"bench-{n}", "--repo", "bench/model",
                                     "--revision", sha) for n in range(count)]

            def states(commands=commands):
                marks = ",".join("?" * len(commands))
                return stack.query(f"SELECT state, error FROM hub_nodecommand WHERE command_id IN ({marks})",
                                   tuple(commands))

            wait_until(lambda: all(s in ("staged", "failed") for s, _ in states()), 1800, f"{count} agents staged")
            wall = _wall(stack, commands) or time.perf_counter() - started
            failed = [e for s, e in states() if s == "failed"]
            if failed:
                raise SystemExit(f"deploy failed: {failed[0]}")
            upstream_bytes = upstream.bytes_sent - sent_before
            shards = [name for name in files if name.endswith(".safetensors")]
            urls = [f"{stack.url()}/hf/bench/model/resolve/{sha}/{name}" for name in shards]
            # Each phase starts with the page cache's dirty data written back, so no phase pays for the
            # previous one's writes (the agents just wrote N copies of the version).
            # Best of --repeat runs each, interleaved, every run starting with the page cache's dirty data
            # written back: on a small VM disk writeback makes single runs differ by 2x.
            digests = [hashlib.sha256(files[u.rsplit("/", 1)[1]]).hexdigest() for u in urls]
            nginx_urls = [f"http://127.0.0.1:{nginx[1]}/blobs/sha256/{d[:2]}/{d}" for d in digests] if nginx else []
            copies, kernels, mirrors, nginxes = [], [], [], []
            for _ in range(args.repeat):
                os.sync()
                copies.append(local_copy_rate(tmp, files, count))
                os.sync()
                kernels.append(local_copy_rate(tmp, files, count, "kernel"))
                os.sync()
                mirrors.append(curl_rate(urls, count, tmp / "curl", secret))
                if nginx:
                    os.sync()
                    nginxes.append(curl_rate(nginx_urls, count, tmp / "curl"))
            copy, kernel, mirror = max(copies), max(kernels), max(mirrors)
            peak = rss.close()
            nginx_rate = max(nginxes) if nginxes else None
            rows.append((count, size, upstream_bytes, wall, mirror, copy, kernel, nginx_rate))
            print(f"N={count}: upstream {upstream_bytes / size:.2f}x of {size / MB:.0f} MB, all staged in {wall:.1f}s "
                  f"({count * size / MB / wall:.0f} MB/s via agents), mirror {mirror:.0f} MB/s, plain copy "
                  f"{copy:.0f} MB/s (ratio {mirror / copy:.2f}), in-kernel copy {kernel:.0f} MB/s"
                  + (f", nginx {nginx_rate:.0f} MB/s" if nginx_rate else ""), flush=True)
            print(f"     server memory {rss_before / MB:.0f} MB before the round, peak {peak / MB:.0f} MB while "
                  f"the mirror sent {(1 + args.repeat) * count} copies of {size / MB:.0f} MB", flush=True)
            for key in [k for k in upstream.repos["bench/model"].files if k.startswith(sha)]:
                del upstream.repos["bench/model"].files[key]  # keep the script's memory flat
            for n in range(count):  # free the agents' disks for the next round
                stack.manage("deploymodel", "remove", "--node", f"bench-{n}", "--repo", "bench/model",
                             "--revision", sha)
        del base  # the rounds' weights are no longer needed
        if pull_counts:
            summary = measure_pull(stack, upstream, agents, secret, tmp, args.pull_mb, pull_counts, args.pull_repeat)
    finally:
        for agent in agents:
            agent.kill()
        if nginx:
            nginx[0].terminate()
        stack.stop()
        upstream.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if rows:
        print_table(rows)
    print(json.dumps({"pull_ratio_1": None, "pull_ratio_4": None, "agent_rss_mb_peak": None, **summary}))


def print_table(rows: list[tuple]) -> None:
    print()
    nginx_col = any(r[7] for r in rows)
    print("| agents | version | upstream fetched | wall (staged, verified) | mirror (curl) | plain copy | mirror ÷ "
          "plain copy | in-kernel copy |" + (" nginx (curl) | mirror ÷ nginx |" if nginx_col else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if nginx_col else ""))
    for count, size, up, wall, mirror, copy, kernel, nginx_rate in rows:
        print(f"| {count} | {size / MB:.0f} MB | {up / size:.2f}× | {wall:.1f} s | {mirror:.0f} MB/s | {copy:.0f} MB/s "
              f"| {mirror / copy:.2f} | {kernel:.0f} MB/s |"
              + (f" {nginx_rate:.0f} MB/s | {mirror / nginx_rate:.2f} |" if nginx_rate else ""))


if __name__ == "__main__":
    main()
