"""The ceiling for bench/telemetry.py: a bare `websockets` server that only parses and counts frames.

Writes ``<frames> <bytes>`` to the file given as argv[2] ten times a second. Usage: bare_server.py PORT FILE
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from websockets.asyncio.server import serve

frames = 0
size = 0


async def handler(ws) -> None:
    global frames, size
    async for message in ws:
        json.loads(message)
        frames += 1
        size += len(message)


async def main(port: int, path: str) -> None:
    async with serve(handler, "127.0.0.1", port, max_size=2**20, ping_interval=None, backlog=4096):
        while True:
            await asyncio.sleep(0.1)
            with open(path + ".tmp", "w") as handle:
                handle.write(f"{frames} {size}")
            os.replace(path + ".tmp", path)  # readers never see a half-written file


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
