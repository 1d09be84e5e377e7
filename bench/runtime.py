#!/usr/bin/env python
"""Builtin runtime benchmark: start-to-ready time of ``python -m fleet.agent.runtimes.server`` and its
generation speed over HTTP (greedy, one request at a time), non-streamed and streamed (SSE), for a model
folder (default: the tiny Llama of fleet.hub.tiny_llama, written to a temporary folder).

    .venv/bin/python bench/runtime.py                         # tiny model, torch's default threads
    .venv/bin/python bench/runtime.py --threads 1 --tokens 500
    .venv/bin/python bench/runtime.py --model /path/to/SmolLM2-135M-Instruct --tokens 128
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet.agent.runtimes.process import free_port  # noqa: E402
from fleet.hub.tiny_llama import write_tiny_llama  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an HF model folder (default: the tiny Llama)")
    parser.add_argument("--threads", type=int, default=0, help="FLEET_RUNTIME_THREADS for the server")
    parser.add_argument("--tokens", type=int, default=300, help="max_tokens per request")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or write_tiny_llama(Path(scratch) / "tiny-llama")
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FLEET_RUNTIME_THREADS": str(args.threads)}
        started = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-m", "fleet.agent.runtimes.server", "--model", str(model),
                                   "--served-model-name", "bench", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=600, trust_env=False)
        try:
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                if server.poll() is not None:
                    print("the server exited before it was ready", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            print(f"start to ready: {time.perf_counter() - started:.1f} s")
            body = {"model": "bench", "messages": [{"role": "user", "content": "Tell me a story."}],
                    "temperature": 0, "max_tokens": args.tokens}
            client.post("/v1/chat/completions", json={**body, "max_tokens": 4})  # warm up
            for _ in range(args.repeat):
                begin = time.perf_counter()
                usage = client.post("/v1/chat/completions", json=body).json()["usage"]
                print(f"non-streamed: {usage['completion_tokens'] / (time.perf_counter() - begin):.0f} tokens/s")
            for _ in range(args.repeat):
                begin, first, chunks = time.perf_counter(), None, 0
                with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
                    for line in response.iter_lines():
                        if '"content"' in line and '"content": ""' not in line:
                            first = first or time.perf_counter() - begin
                            chunks += 1
                elapsed = time.perf_counter() - begin
                print(f"streamed: {chunks / elapsed:.0f} chunks/s, first token after {first * 1000:.0f} ms")
        finally:
            server.terminate()
            server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
