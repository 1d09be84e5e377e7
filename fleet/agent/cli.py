"""``fleet-agent``: enroll, run, status, rotate."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from fleet.agent import AGENT_VERSION
from fleet.agent.collectors import Collector, make_selection, select_collector
from fleet.agent.collectors.faults import Fault, parse_fault
from fleet.agent.collectors.simulated import PROFILES
from fleet.agent.connection import EXIT_REFUSED, run_agent
from fleet.agent.enroll import EnrollError, enroll, rotate, validate_server_url
from fleet.agent.modelstore import DeployConfig, ModelStore
from fleet.agent.runtimes import CHOICES, choose_adapter, default_runtime
from fleet.agent.runtimes.process import RuntimeSettings
from fleet.agent.state import (
    Credentials,
    StateError,
    agent_home,
    load_credentials,
    pid_alive,
    read_status,
    save_credentials,
)

log = logging.getLogger("fleet.agent")

KINDS = ("gpu_server", "edge_device", "cpu_node")
LABEL_KEY = re.compile(r"[a-z0-9][a-z0-9._/-]{0,62}")
MAX_LABELS = 64


def parse_label(text: str) -> tuple[str, str]:
    """``key=value`` → (key, value); argparse reports the error against ``--label``."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    if not LABEL_KEY.fullmatch(key):
        raise argparse.ArgumentTypeError(
            f"label key {key!r} must be 1-63 characters of a-z 0-9 . _ / - and start with a letter or digit"
        )
    if len(value) > 63:
        raise argparse.ArgumentTypeError(f"label value for {key!r} is longer than 63 characters")
    return key, value


def server_url(text: str) -> str:
    try:
        return validate_server_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fault_arg(text: str) -> Fault:
    try:
        return parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    # --home works before or after the subcommand; SUPPRESS keeps one from overwriting the other.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", default=argparse.SUPPRESS,
                        help="agent state folder (default: $FLEET_AGENT_HOME or ~/.fleet-agent)")
    labels = argparse.ArgumentParser(add_help=False)
    labels.add_argument("--label", dest="labels", action="append", type=parse_label, default=[],
                        metavar="KEY=VALUE", help="node label (repeatable)")
    labels.add_argument("--kind", choices=KINDS, help="node kind (default: detected)")

    parser = argparse.ArgumentParser(prog="fleet-agent", parents=[common],
                                     description="Fleet node agent")
    parser.add_argument("--version", action="version", version=f"fleet-agent {AGENT_VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("enroll", parents=[common, labels],
                       help="exchange an enrollment token for credentials")
    p.add_argument("--server", required=True, type=server_url, metavar="URL", help="https://fleet.example")
    p.add_argument("--token", required=True, metavar="TOKEN", help="one-time enrollment token")
    p.add_argument("--name", help="node name (default: the server derives it from the hostname)")

    p = sub.add_parser("run", parents=[common, labels], help="connect to the server and stay connected")
    p.add_argument("--simulate", metavar="PROFILE", choices=sorted(PROFILES),
                   help=f"fake GPUs instead of NVML: {', '.join(PROFILES)}")
    p.add_argument("--fault", dest="faults", action="append", type=fault_arg, default=[], metavar="FAULT",
                   help="with --simulate, inject a fault (repeatable): lost:gpu=3@30s, xid:79, ecc, overheat")
    p.add_argument("--runtime", choices=CHOICES, default=None,
                   help="what serves the active models: builtin (transformers), vllm, llamacpp or none "
                        "(default: builtin when torch and transformers are installed, else none)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    sub.add_parser("status", parents=[common], help="show enrollment and connection state")
    sub.add_parser("rotate", parents=[common], help="replace this node's secret with a new one")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    home = agent_home(getattr(args, "home", None))
    if len(getattr(args, "labels", [])) > MAX_LABELS:
        print(f"fleet-agent: error: argument --label: at most {MAX_LABELS} labels", file=sys.stderr)
        return 2
    handler = {"enroll": cmd_enroll, "run": cmd_run, "status": cmd_status, "rotate": cmd_rotate}
    return handler[args.command](args, home)


def detected_kind() -> str | None:
    """The node kind this host's accelerators make it (``--kind`` overrides): a Jetson is an edge device,
    a host with GPUs a GPU server, one with none a CPU node; None when unsure (a driver failing)."""
    selection = select_collector()
    try:
        return selection.collector.host_overrides().get("kind")
    finally:
        selection.collector.close()


def cmd_enroll(args: argparse.Namespace, home: Path) -> int:
    try:
        kind = args.kind or detected_kind()
        creds = enroll(args.server, args.token, name=args.name, kind=kind, labels=dict(args.labels))
        path = save_credentials(creds, home)
    except (EnrollError, ValueError) as exc:
        print(f"enrollment failed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"enrolled, but cannot save the credentials under {home}: {exc}", file=sys.stderr)
        return 1
    print(f"enrolled as node {creds.node_name} (id {creds.node_id}); credentials saved to {path}")
    return 0


def cmd_rotate(args: argparse.Namespace, home: Path) -> int:
    try:
        creds = rotate(load_credentials(home), home)
    except (StateError, EnrollError, ValueError, OSError) as exc:
        print(f"rotation failed: {exc}", file=sys.stderr)
        return 1
    print(f"new secret saved for node {creds.node_name} (id {creds.node_id}); "
          "a running agent uses it after its next restart")
    return 0


def cmd_status(args: argparse.Namespace, home: Path) -> int:
    try:
        creds = load_credentials(home)
    except StateError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"server:     {creds.server}")
    print(f"node:       {creds.node_name} (id {creds.node_id})")
    status = read_status(home)
    running = bool(status) and pid_alive(status.get("pid"))
    if not running:
        print("connected:  no (agent not running)")
    else:
        connected = "yes" if status.get("connected") else "no"
        print(f"connected:  {connected} (pid {status.get('pid')})")
        print(f"since:      {status.get('since') or '-'}")
    if status:
        print(f"last error: {status.get('last_error') or '-'}")
    collector = (status or {}).get("collector") or {}
    if collector:
        print(f"collector:  {collector.get('used')}")
        for name, why in (collector.get("skipped") or {}).items():
            print(f"skipped:    {name}: {why}")
    for runtime in status.get("serving") or [] if running else []:
        port = f" on 127.0.0.1:{runtime['port']}" if runtime.get("port") else ""
        reason = f" ({runtime['reason']})" if runtime.get("reason") else ""
        name = f"{runtime['repo']}@{runtime['sha'][:12]}"
        print(f"runtime:    {runtime['runtime']} {name} {runtime['state']}{port}{reason}")
    models = ModelStore(home)
    active = dict(models.active())
    for repo, sha in sorted(models.installed()):
        print(f"model:      {repo}@{sha[:12]}{' (active)' if active.get(repo) == sha else ' (staged)'}")
    return 0


ROTATION_WAIT_STEPS, ROTATION_WAIT_STEP = 20, 0.25


def cmd_run(args: argparse.Namespace, home: Path) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":  # one line per HTTP request: every runtime readiness probe, every download
        logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        creds = load_credentials(home)
    except StateError as exc:
        log.error("%s", exc)
        return 1
    try:
        DeployConfig.from_env()  # FLEET_AGENT_KEEP_VERSIONS, FLEET_AGENT_DISK_MARGIN, FLEET_AGENT_PULL_*
    except ValueError as exc:
        log.error("configuration error: %s", exc)
        return 2
    args.runtime = args.runtime or default_runtime()
    try:
        choose_adapter(args.runtime)
        RuntimeSettings.from_env()  # FLEET_RUNTIME_READY_TIMEOUT, ...
    except ValueError as exc:
        log.error("configuration error: %s", exc)
        return 2
    if args.faults and not args.simulate:
        log.error("--fault needs --simulate: faults are injected into simulated GPUs only")
        return 2
    selection = make_selection(args.simulate, seed=creds.node_name, faults=args.faults)
    collector = selection.collector
    for name, why in selection.skipped.items():
        log.info("collector %s skipped: %s", name, why)
    try:
        gpus, note = collector.inventory()
        if gpus:
            log.info("collector %s: %d GPU(s): %s", selection.used, len(gpus),
                     ", ".join(sorted({gpu.name for gpu in gpus})))
        if not gpus:
            log.warning("no GPUs: %s", note or "none found")
        elif note:
            log.warning("%s", note)
        args.collector_report = selection.report()
        return asyncio.run(_run(creds, collector, args, home))
    finally:
        collector.close()


async def _run(creds: Credentials, collector: Collector, args: argparse.Namespace, home: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while True:
        log.info("fleet-agent %s connecting to %s as node %s", AGENT_VERSION, creds.server, creds.node_name)
        code = await run_agent(creds, collector, labels=dict(args.labels), kind=args.kind, home=home,
                               stop_event=stop, runtime=args.runtime,
                               collector_report=getattr(args, "collector_report", None))
        if code != EXIT_REFUSED or stop.is_set():
            return code
        fresh = await _rotated_credentials(home, creds, stop)
        if fresh is None:
            return code
        log.info("credentials were rotated; reconnecting with the new secret")
        creds = fresh


async def _rotated_credentials(home: Path, creds: Credentials, stop: asyncio.Event) -> Credentials | None:
    """After a refusal: the new credentials if `fleet-agent rotate` replaced them, else None.

    The server drops the old secret's connection as soon as the rotation commits, a moment before
    `rotate` has written the new secret to disk, so wait a few seconds for the file to change.
    """
    for _ in range(ROTATION_WAIT_STEPS):
        try:
            fresh = load_credentials(home)
        except StateError:
            return None
        if fresh.secret != creds.secret:
            return fresh
        try:
            await asyncio.wait_for(stop.wait(), ROTATION_WAIT_STEP)
            return None
        except TimeoutError:
            continue
    return None
