"""The builtin runtime's HTTP side: stdlib ``ThreadingHTTPServer`` (nodes need no web framework), HTTP/1.1
with keep-alive, streamed answers as Server-Sent Events in chunked transfer encoding.

A client that disconnects ends its generation: streamed answers notice when a write fails, and every
request (streamed or not) polls its socket for end-of-file once per generated token and while queued.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fleet.agent.runtimes.server.engine import Engine
from fleet.agent.runtimes.server.requests import ApiError, ChatRequest, parse_chat_request

log = logging.getLogger("fleet.runtime")
MAX_BODY = 16 * 1024 * 1024
QUIET_PATHS = {"/health", "/v1/models", "/fleet/stats"}  # probes: not worth a line in the log tail


class RuntimeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a burst of new connections (the agent opens one per chat in
    # flight) overflowed it and clients saw their connection dropped before any answer (httpx ReadError).
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], engine: Engine, served_name: str):
        super().__init__(address, Handler)
        self.engine = engine
        self.served_name = served_name
        self.created = int(time.time())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RuntimeHTTPServer

    # ---- plumbing -----------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.path not in QUIET_PATHS:
            super().log_request(code, size)

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, error: ApiError) -> None:
        self.send_json(error.status, error.body())

    def client_gone(self) -> bool:
        """True once the client closed its side (end-of-file waiting on the socket)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def write_chunk(self, data: bytes) -> bool:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            return True
        except OSError:
            self.close_connection = True
            return False

    def send_event(self, payload: dict[str, Any] | str) -> bool:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        return self.write_chunk(f"data: {text}\n\n".encode())

    # ---- routes -------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        engine, name = self.server.engine, self.server.served_name
        if self.path == "/health":
            self.send_json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{
                "id": name, "object": "model", "created": self.server.created, "owned_by": "fleet",
                "max_model_len": engine.context}]})
        elif self.path == "/fleet/stats":
            self.send_json(200, engine.stats.snapshot())
        else:
            self.send_error_json(ApiError(404, f"no route GET {self.path}", kind="not_found_error"))

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/v1/chat/completions":
            self.close_connection = True  # its body is left unread
            self.send_error_json(ApiError(404, f"no route POST {self.path}", kind="not_found_error"))
            return
        try:
            body = self.read_json()
            request = parse_chat_request(body, self.server.served_name, self.server.engine.context)
            prompt = self.server.engine.prompt_ids(request)
        except ApiError as error:
            self.send_error_json(error)
            return
        if request.stream:
            self.stream(request, prompt)
        else:
            self.complete(request, prompt)

    def read_json(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise ApiError(411, "a Content-Length header is required")
        if int(length) > MAX_BODY:
            self.close_connection = True
            raise ApiError(413, f"the request body is over {MAX_BODY} bytes")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None

    # ---- chat completions ---------------------------------------------------------------------------

    def envelope(self, request: ChatRequest, kind: str, completion_id: str) -> dict[str, Any]:
        return {"id": completion_id, "object": kind, "created": int(time.time()), "model": request.model}

    def complete(self, request: ChatRequest, prompt: list[int]) -> None:
        parts: list[str] = []

        def collect(text: str) -> bool:
            parts.append(text)
            return True

        try:
            outcome = self.server.engine.run(request, prompt, collect, self.client_gone)
        except Exception as exc:
            log.exception("generation failed")
            self.send_error_json(ApiError(500, f"generation failed: {type(exc).__name__}: {exc}",
                                          kind="server_error"))
            return
        if outcome.finish_reason is None:
            self.close_connection = True  # nobody is listening
            return
        body = self.envelope(request, "chat.completion", f"chatcmpl-{uuid.uuid4().hex}")
        body["choices"] = [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                            "finish_reason": outcome.finish_reason, "logprobs": None}]
        body["usage"] = usage(outcome.prompt_tokens, outcome.completion_tokens)
        self.send_json(200, body)

    def stream(self, request: ChatRequest, prompt: list[int]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        base = self.envelope(request, "chat.completion.chunk", f"chatcmpl-{uuid.uuid4().hex}")
        with_usage = {"usage": None} if request.include_usage else {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**base, "choices": [choice], **with_usage}

        if not self.send_event(chunk({"role": "assistant", "content": ""})):
            return
        try:
            outcome = self.server.engine.run(request, prompt, lambda text: self.send_event(chunk({"content": text})),
                                             self.client_gone)
        except Exception as exc:
            log.exception("generation failed")
            error = ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", kind="server_error")
            self.send_event(error.body()) and self.send_event("[DONE]") and self.write_chunk(b"")
            return
        if outcome.finish_reason is None:
            self.close_connection = True
            return
        ok = self.send_event(chunk({}, outcome.finish_reason))
        if ok and request.include_usage:
            ok = self.send_event({**base, "choices": [], "usage": usage(outcome.prompt_tokens,
                                                                         outcome.completion_tokens)})
        if ok and self.send_event("[DONE]"):
            self.write_chunk(b"")  # the chunked body's terminator


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
