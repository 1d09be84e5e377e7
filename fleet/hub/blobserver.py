"""Fleet's own small blob server: the embedded default for blob bodies, so they never go through Daphne.

The mirror answers a blob GET with a 302 to ``/blobs/<digest>?s=<size>&e=<expiry>&sig=<hmac>`` here. The
server checks the signature, honours Range, and sends with ``socket.sendfile`` (the kernel copies; memory
stays flat whatever the size). A blob still being fetched from upstream is followed as its partial file
grows (pull-through); a follower gives up when the file stops growing for FLEET_HUB_STALL_TIMEOUT, and
the client resumes with a Range request. In production nginx does this job (FLEET_HUB_ACCEL_REDIRECT).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

from django.conf import settings

from fleet.hub import store
from fleet.lib.httprange import parse_range, send_file_headers

log = logging.getLogger(__name__)
POLL = 0.05

_lock = threading.Lock()
_server: ThreadingHTTPServer | None = None
stats = {"requests": 0, "bytes_sent": 0}


def _key() -> bytes:
    return hashlib.sha256(b"fleet.hub.blob-url:" + settings.SECRET_KEY.encode()).digest()


def signature(digest: str, size: int, expires: int) -> str:
    return hmac.new(_key(), f"{digest}:{size}:{expires}".encode(), hashlib.sha256).hexdigest()


def signed_path(digest: str, size: int, ttl: float | None = None) -> str:
    expires = int(time.time() + (ttl if ttl is not None else settings.FLEET_BLOB_URL_TTL))
    query = urlencode({"s": size, "e": expires, "sig": signature(digest, size, expires)})
    return f"/blobs/{digest}?{query}"


class _Handler(BaseHTTPRequestHandler):
    server_version = "fleet-blobs"
    timeout = 60  # seconds a silent client (or one that stops reading) may hold a connection slot
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:  # access lines go through logging, not stderr
        log.debug("blobserver: " + fmt, *args)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _error(self, status: int, message: str) -> None:
        data = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Error-Message", message)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _serve(self, body: bool) -> None:
        url = urlparse(self.path)
        match = re.fullmatch(r"/blobs/([0-9a-f]{40}|[0-9a-f]{64})", url.path)
        query = parse_qs(url.query)
        try:
            digest = match.group(1)
            size, expires, sig = int(query["s"][0]), int(query["e"][0]), query["sig"][0]
        except (AttributeError, KeyError, ValueError, IndexError):
            return self._error(404, "not a blob URL")
        if not hmac.compare_digest(sig, signature(digest, size, expires)):
            return self._error(403, "bad signature: ask the mirror for a fresh URL")
        if expires < time.time():
            return self._error(403, "this blob URL has expired: ask the mirror for a fresh URL")
        try:
            span = parse_range(self.headers.get("Range"), size)
        except ValueError:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        handle, growing = self._open(digest)
        if handle is None:
            return self._error(503, "this file is not stored yet and no download is running; retry shortly")
        with handle:
            start, length = send_file_headers(self, size, span, digest)
            stats["requests"] += 1
            if not body or length == 0:
                return
            sent = self._send(handle, start, length, growing)
            stats["bytes_sent"] += sent
            shown = f"{start}-{start + length - 1}" if span else "all"
            log.info("blob %s range=%s sent=%d%s", digest[:12], shown, sent, " (pull-through)" if growing else "")
            if sent < length:
                self.close_connection = True

    def _open(self, digest: str):
        """(file, growing): the stored blob, else the partial file a download is writing (waits for it)."""
        deadline = time.monotonic() + settings.FLEET_HUB_STALL_TIMEOUT
        while True:
            for path, growing in ((store.blob_path(digest), False), (store.partial_path(digest), True)):
                try:
                    return open(path, "rb"), growing  # noqa: SIM115 - closed by the caller
                except FileNotFoundError:
                    continue
            if time.monotonic() > deadline:
                return None, False
            time.sleep(POLL)

    def _send(self, handle, start: int, length: int, growing: bool) -> int:
        rate = settings.FLEET_HUB_RATE_LIMIT
        stall = settings.FLEET_HUB_STALL_TIMEOUT
        pos, end = start, start + length
        last_growth = time.monotonic()
        began = time.monotonic()
        try:
            while pos < end:
                available = os.fstat(handle.fileno()).st_size if growing else end
                if available <= pos:
                    if time.monotonic() - last_growth > stall:
                        log.warning("blob follow stalled at %d of %d; closing (the client resumes)", pos, end)
                        break
                    time.sleep(POLL)
                    continue
                last_growth = time.monotonic()
                count = min(available, end) - pos
                if rate:
                    count = min(count, max(64 * 1024, rate // 10))
                sent = self.connection.sendfile(handle, offset=pos, count=count)
                if not sent:
                    break
                pos += sent
                if rate:
                    ahead = (pos - start) / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass
        return pos - start


BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 5\r\n"
        b"Content-Length: 51\r\nConnection: close\r\n\r\nthe blob server is at capacity; retry in 5 seconds\n")


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most FLEET_BLOB_MAX_CONNECTIONS at once: one more is answered 503 with
    Retry-After on the accepting thread (which huggingface_hub and the agent's deployer retry) and closed."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.active = 0
        self.active_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self.active_lock:
            full = self.active >= settings.FLEET_BLOB_MAX_CONNECTIONS
            if not full:
                self.active += 1
        if full:
            stats["refused"] = stats.get("refused", 0) + 1
            try:
                request.settimeout(2)
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self.active_lock:
            self.active -= 1


def ensure_started() -> int:
    """Start the blob server in this process (once); returns its port."""
    global _server
    with _lock:
        if _server is None:
            _server = _Server((settings.FLEET_BLOB_BIND, settings.FLEET_BLOB_PORT), _Handler)
            thread = threading.Thread(target=_server.serve_forever, name="fleet-blobserver", daemon=True)
            thread.start()
            log.info("blob server listening on %s:%d", settings.FLEET_BLOB_BIND, _server.server_address[1])
        return _server.server_address[1]


def base_url(request_host: str) -> str:
    """Where clients reach this process's blob server: FLEET_BLOB_URL, else the request's host name."""
    if settings.FLEET_BLOB_URL:
        return settings.FLEET_BLOB_URL
    port = ensure_started()
    host = request_host
    if host.startswith("["):
        host = host[: host.index("]") + 1]
    else:
        host = host.rsplit(":", 1)[0] if ":" in host else host
    return f"http://{host}:{port}"  # plain HTTP: the URL is signed and short-lived; nginx does TLS in production
