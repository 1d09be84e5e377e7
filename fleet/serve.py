"""`python -m fleet.serve [daphne options] fleet.asgi:application`: Daphne's own command line, with one
protocol option changed (and one expected warning kept off the terminal), run as one process or, with
``FLEET_WEB_PROCESSES=N``, as N Daphne processes sharing one listening socket.

Autobahn, under Daphne, fails a connection by dropping TCP (``failByDrop``): a frame over the
websocket message limit (1 MiB, Daphne's default) then reaches the agent as an abnormal close with no
code, and it cannot tell why. With ``failByDrop=False`` it sends the close frame the RFC asks for:
1009 "message too big", with the limit in the reason.

Several processes: this process binds the address given with ``-b``/``-p``, starts N children that all
accept on that socket (``--fd``; the kernel hands each new connection to one of them), restarts a
child that dies and stops them all on SIGTERM/SIGINT. One Daphne process is one core at most; agents
and browsers are spread over the processes, which share PostgreSQL and the Redis channel layer, so
REDIS_URL is required (the in-memory layer cannot cross processes).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings

from daphne import server as daphne_server
from daphne.cli import CommandLineInterface
from daphne.ws_protocol import WebSocketFactory

from fleet.lib.env import ConfigError, env_int, env_str

MAX_PROCESSES = 64
RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0)  # seconds before restarting a child that keeps dying


class _ClosingWebSocketFactory(WebSocketFactory):
    def setProtocolOptions(self, **options) -> None:  # noqa: N802 - Autobahn's name
        super().setProtocolOptions(failByDrop=False, **options)


def serve_one(argv: list[str]) -> None:
    daphne_server.WebSocketFactory = _ClosingWebSocketFactory
    # Static files (WhiteNoise, small) are file iterators that Django's ASGI handler reads in a thread: it
    # warns about that on the first one, which is expected here and not something to put on the terminal.
    warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous iterators")
    CommandLineInterface().run(argv)


def split_bind(argv: list[str]) -> tuple[str, int, list[str]]:
    """(host, port, the other arguments) from Daphne's ``-b HOST -p PORT`` (either spelling, ``=`` or not).
    Raises ConfigError for what several processes cannot share (a unix socket, an fd, endpoints)."""
    host, port, rest = "127.0.0.1", 8000, []
    args = iter(argv)
    for arg in args:
        name, eq, value = arg.partition("=")
        if name in ("-b", "--bind", "-p", "--port"):
            value = value if eq else next(args, "")
            if name in ("-b", "--bind"):
                host = value
            else:
                try:
                    port = int(value)
                except ValueError:
                    raise ConfigError(f"--port {value!r} is not a port number; give one such as 8000") from None
        elif name in ("-u", "--unix-socket", "--fd", "-e", "--endpoint"):
            raise ConfigError(f"FLEET_WEB_PROCESSES > 1 shares one TCP socket: use -b HOST -p PORT, not {name}")
        else:
            rest.append(arg)
    return host, port, rest


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); pick a free port with -p") from None
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """N Daphne children on one socket; a child that exits is restarted (with backoff) until we stop."""

    def __init__(self, count: int, fd: int, argv: list[str]) -> None:
        self.count, self.fd, self.argv = count, fd, argv
        self.children: dict[int, subprocess.Popen] = {}
        self.failures = [0] * count
        self.stopping = False

    def start(self, index: int) -> None:
        env = {**os.environ, "FLEET_WEB_PROCESSES": "1", "FLEET_WEB_PROCESS_INDEX": str(index)}
        if index:  # one embedded engine per deployment (it holds the engine lock anyway); the others serve
            env["FLEET_EMBEDDED_ENGINE"] = "0"
        command = [sys.executable, "-m", "fleet.serve", *self.argv, "--fd", str(self.fd)]
        self.children[index] = subprocess.Popen(command, env=env, pass_fds=(self.fd,))

    def stop(self, *_: object) -> None:
        self.stopping = True
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for index in range(self.count):
            self.start(index)
        print(f"fleet: {self.count} Daphne processes share the socket "
              f"(pids {', '.join(str(c.pid) for c in self.children.values())})", flush=True)
        while not self.stopping:
            time.sleep(0.5)
            for index, child in list(self.children.items()):
                if child.poll() is None or self.stopping:
                    continue
                delay = RESTART_BACKOFF[min(self.failures[index], len(RESTART_BACKOFF) - 1)]
                self.failures[index] += 1
                print(f"fleet: web process {index} (pid {child.pid}) exited with {child.returncode}; "
                      f"restarting in {delay:g}s", file=sys.stderr, flush=True)
                time.sleep(delay)
                if not self.stopping:
                    self.start(index)
        deadline = time.monotonic() + 15
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        count = env_int("FLEET_WEB_PROCESSES", 1, minimum=1, maximum=MAX_PROCESSES)
        if count == 1:
            serve_one(argv)
            return
        if not env_str("REDIS_URL"):
            raise ConfigError(f"FLEET_WEB_PROCESSES={count} needs REDIS_URL: processes share live telemetry "
                              "and events through Redis; set REDIS_URL=redis://host:6379/0 or use 1 process")
        host, port, rest = split_bind(argv)
        sock = listening_socket(host, port)
    except ConfigError as error:
        print(f"fleet: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(Supervisor(count, sock.fileno(), rest).run())


if __name__ == "__main__":
    main()
