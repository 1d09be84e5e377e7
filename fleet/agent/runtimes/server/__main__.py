"""``python -m fleet.agent.runtimes.server --model DIR --served-model-name NAME --port N [--host H]``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fleet.agent.runtimes.server",
                                     description="Fleet's builtin OpenAI-compatible runtime (transformers)")
    parser.add_argument("--model", required=True, type=Path, help="a Hugging Face model folder (snapshot)")
    parser.add_argument("--served-model-name", required=True, help="the name clients send as 'model'")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("FLEET_RUNTIME_THREADS") or 0),
                        help="CPU threads for torch (default: $FLEET_RUNTIME_THREADS, else torch's choice). A small "
                             "model on a busy CPU is many times faster on one thread than on several")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    log = logging.getLogger("fleet.runtime")
    if not args.model.is_dir():
        log.error("--model %s is not a folder", args.model)
        return 2
    # Nothing to save on SIGTERM, and tearing down an interpreter with torch loaded takes seconds: exit now.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    started = time.monotonic()
    from fleet.agent.runtimes.server.app import RuntimeHTTPServer
    from fleet.agent.runtimes.server.engine import Engine, LoadError

    try:
        engine = Engine(args.model, device=args.device, threads=args.threads)
    except LoadError as exc:
        log.error("%s", " ".join(str(exc).split()))  # one line: the agent reports a failure's last log line
        return 1
    try:
        httpd = RuntimeHTTPServer((args.host, args.port), engine, args.served_model_name)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 1
    log.info("ready in %.1fs: serving %s (%s, context %d) on http://%s:%d", time.monotonic() - started,
             args.served_model_name, engine.device, engine.context, args.host, args.port)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
