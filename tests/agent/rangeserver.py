"""A small HTTP server for the fast-path tests: serves bytes with Range, records what was asked, can send
slowly (so a test can kill a download mid-file) and can flip a byte in the responses covering an offset."""

from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


class RangeServer:
    def __init__(self, files: dict[str, bytes], piece: int = 64 * 1024, delay: float = 0.0) -> None:
        self.files = files
        self.piece = piece
        self.delay = delay  # seconds between pieces
        self.flips: dict[int, int] = {}  # absolute offset -> how many more responses get it flipped
        self.cuts = 0  # how many more data responses stop halfway (the connection closes)
        self.requests: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                data = server.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                match = RANGE.match(self.headers.get("Range", ""))
                start, end = (int(match.group(1)), min(len(data) - 1, int(match.group(2)))) if match else \
                    (0, len(data) - 1)
                with server.lock:
                    server.requests.append((self.path, start, end))
                body = bytearray(data[start:end + 1])
                with server.lock:
                    for offset, left in server.flips.items():
                        if left and start <= offset <= end:
                            body[offset - start] ^= 0xFF
                            server.flips[offset] = left - 1
                self.send_response(206 if match else 200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if match:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                with server.lock:  # never the one-byte probe
                    cut = server.cuts > 0 and len(body) > 1
                    server.cuts -= cut
                if cut:
                    body = body[: len(body) // 2]
                    self.close_connection = True
                try:
                    for pos in range(0, len(body), server.piece):
                        self.wfile.write(body[pos:pos + server.piece])
                        if server.delay:
                            time.sleep(server.delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> RangeServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def ranges(self, path: str) -> list[tuple[int, int]]:
        """The data ranges asked for (not the one-byte probe that finds where the bytes come from)."""
        with self.lock:
            return [(s, e) for p, s, e in self.requests if p == path and (s, e) != (0, 0)]
