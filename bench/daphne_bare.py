"""A second ceiling for bench/telemetry.py: the bare server's work (parse and count each frame) as a plain
ASGI application on Daphne, the server Fleet's stack fixes. What Daphne, Twisted and Autobahn cost per
frame before any of Fleet's own work.

    FLEET_BENCH_COUNT_FILE=FILE daphne -b 127.0.0.1 -p PORT daphne_bare:application   (from bench/)

Writes ``<frames> <bytes>`` to FILE ten times a second, as bare_server.py does.
"""

from __future__ import annotations

import asyncio
import json
import os

frames = 0
size = 0
_writer: asyncio.Task | None = None


async def _write_counts(path: str) -> None:
    while True:
        with open(path + ".tmp", "w") as handle:
            handle.write(f"{frames} {size}")
        os.replace(path + ".tmp", path)
        await asyncio.sleep(0.1)


async def application(scope, receive, send) -> None:
    global frames, size, _writer
    if _writer is None:
        _writer = asyncio.get_running_loop().create_task(_write_counts(os.environ["FLEET_BENCH_COUNT_FILE"]))
    if scope["type"] == "http":  # the bench's "is it up" probe
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if scope["type"] != "websocket":
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            text = message.get("text") or message.get("bytes") or b""
            json.loads(text)
            frames += 1
            size += len(text)
        elif message["type"] == "websocket.disconnect":
            return
