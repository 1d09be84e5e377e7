"""A stand-in for ``vllm`` and ``llama-server`` in tests (stdlib only, starts in milliseconds).

Run as ``python fake_runtime.py NAME ARGS...`` by the small executables ``install_fakes`` puts on PATH. It
appends ``{"name", "argv", "pid"}`` to ``$FAKE_RUNTIME_RECORD``, then behaves per ``$FAKE_RUNTIME_MODE``:
``serve`` (default: /health, /v1/models and a streamed chat on ``--port``), ``crash`` (prints a config error
and exits 3), ``hang`` (never listens), ``stubborn`` (serves, and ignores SIGTERM).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ANSWER = ["Hello", " from", " a", " fake", " runtime."]


def option(argv: list[str], *names: str) -> str | None:
    for index, arg in enumerate(argv[:-1]):
        if arg in names:
            return argv[index + 1]
    return None


def install_fakes(folder: Path, python: str) -> Path:
    """Executables named vllm and llama-server in ``folder`` that run this script."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vllm", "llama-server"):
        path = folder / name
        path.write_text(f'#!/bin/sh\nexec "{python}" "{__file__}" {name} "$@"\n')
        path.chmod(0o755)
    return folder


def main() -> int:
    name, argv = sys.argv[1], sys.argv[2:]
    if record := os.environ.get("FAKE_RUNTIME_RECORD"):
        with open(record, "a") as handle:
            handle.write(json.dumps({"name": name, "argv": argv, "pid": os.getpid()}) + "\n")
    mode = os.environ.get("FAKE_RUNTIME_MODE", "serve")
    print(f"{name} starting with {' '.join(argv)}", flush=True)
    if mode == "crash":
        print("ValueError: config.json: hidden_size must be positive", flush=True)
        return 3
    if mode == "hang":
        time.sleep(3600)
        return 0
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, lambda *_: print("ignoring SIGTERM", flush=True))
    served = option(argv, "--served-model-name", "--alias") or "unknown"

    class Handler(BaseHTTPRequestHandler):
        def reply(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            if self.path == "/health":
                self.reply(200, b"{}")
            elif self.path == "/v1/models":
                self.reply(200, json.dumps({"object": "list", "data": [{"id": served}]}).encode())
            else:
                self.reply(404, b"{}")

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            chunks = [{"choices": [{"index": 0, "delta": {"content": part}, "finish_reason": None}]} for part in ANSWER]
            chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            chunks.append({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": len(ANSWER)}})
            body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
            self.reply(200, body.encode(), "text/event-stream")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", int(option(argv, "--port") or 0)), Handler)
    print(f"{name} ready, serving {served}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
