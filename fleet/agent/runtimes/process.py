"""One runtime process for one active model version: start it on a free port, wait until it answers, keep the
tail of its log, restart it with exponential backoff when it dies, stop it (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx2

from fleet.agent.protocol import RuntimeStatus
from fleet.agent.runtimes.base import HOST, Adapter, RuntimeUnavailable

log = logging.getLogger("fleet.agent.runtime")
LOG_LINES = 50
LOG_LINE_CHARS = 400
PROBE_EVERY = 0.2


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class RuntimeSettings:
    ready_timeout: float = 900.0  # a 70B model takes minutes to load
    stop_grace: float = 10.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    max_restarts: int = 5  # consecutive failures before giving up; a run that stayed up resets the count
    stable_after: float = 60.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RuntimeSettings:
        """FLEET_RUNTIME_READY_TIMEOUT, _STOP_GRACE, _BACKOFF_INITIAL, _BACKOFF_MAX (seconds), _MAX_RESTARTS."""
        environ = os.environ if environ is None else environ
        values: dict[str, float | int] = {}
        for field, kind in (("ready_timeout", float), ("stop_grace", float), ("backoff_initial", float),
                            ("backoff_max", float), ("max_restarts", int), ("stable_after", float)):
            name = f"FLEET_RUNTIME_{field.upper()}"
            raw = environ.get(name, "").strip()
            if not raw:
                continue
            try:
                value = kind(raw)
                if not 0 <= value <= 86400:
                    raise ValueError
            except ValueError:
                raise SettingsError(f"{name}={raw!r} must be a {'whole ' if kind is int else ''}number from 0 "
                                    "to 86400") from None
            values[field] = value
        return cls(**values)


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_the_agent() -> None:
    """In the child before exec: SIGTERM it when the agent dies, even by SIGKILL (Linux PR_SET_PDEATHSIG), so a
    crashed agent leaves no runtime holding a port and GPU memory that its successor would start again."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def clean_line(raw: str) -> str:
    return raw.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")[:LOG_LINE_CHARS].rstrip()


class RuntimeProcess:
    def __init__(self, adapter: Adapter, repo: str, sha: str, snapshot: Path, settings: RuntimeSettings,
                 on_change: Callable[[bool], None]):
        self.adapter, self.repo, self.sha, self.snapshot = adapter, repo, sha, snapshot
        self.settings = settings
        self.on_change = on_change  # called with True for a state change, False for counters only
        self.state = "starting"
        self.reason: str | None = None
        self.port: int | None = None
        self.restarts = 0
        self.tokens_served = 0
        self.requests_active = 0
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.ready = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.given_up = False

    # ---- what the agent reports and the relay uses --------------------------------------------------

    def status(self) -> RuntimeStatus:
        return RuntimeStatus(runtime=self.adapter.name, repo=self.repo, sha=self.sha, state=self.state,
                             reason=self.reason[:512] if self.reason else None, port=self.port,
                             tokens_served=self.tokens_served, requests_active=self.requests_active,
                             restarts=self.restarts, log_tail=list(self.log))

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def begin_request(self) -> None:
        self.requests_active += 1
        self.on_change(False)

    def end_request(self, completion_tokens: int) -> None:
        self.requests_active = max(0, self.requests_active - 1)
        self.tokens_served += max(0, completion_tokens)
        self.on_change(False)

    def set_state(self, state: str, reason: str | None) -> None:
        self.state, self.reason = state, reason
        if state == "ready":
            self.ready.set()
        else:
            self.ready.clear()
        log.info("runtime %s %s@%s: %s%s", self.adapter.name, self.repo, self.sha[:12], state,
                 f" ({reason})" if reason else "")
        self.on_change(True)

    # ---- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(self._supervise(), name=f"runtime {self.repo}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.state, self.reason = "stopped", None
        self.ready.clear()

    async def _supervise(self) -> None:
        failures = 0
        while True:
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                reason = await self._run_once()
            except RuntimeUnavailable as exc:
                self.given_up = True
                self.set_state("failed", str(exc))
                return
            failures = 1 if loop.time() - started >= self.settings.stable_after else failures + 1
            if failures > self.settings.max_restarts:
                self.given_up = True
                self.set_state("failed", f"{reason}; gave up after {self.restarts} restarts (fix the cause, then "
                                         "activate the version again or restart the agent)")
                return
            delay = min(self.settings.backoff_initial * 2 ** (failures - 1), self.settings.backoff_max)
            self.set_state("failed", f"{reason}; restarting in {delay:g}s")
            await asyncio.sleep(delay)
            self.restarts += 1

    async def _run_once(self) -> str:
        """Run the process until it exits; the reason it is not serving any more."""
        self.port = free_port()
        argv = self.adapter.command(self.snapshot, self.repo, self.port)
        self.set_state("starting", "loading the model")
        self.log.append(clean_line(f"$ {' '.join(argv)}"))
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,  # its own group: kill its children too
                preexec_fn=_die_with_the_agent)
        except OSError as exc:
            raise RuntimeUnavailable(f"cannot start {argv[0]}: {exc}") from None
        reader = asyncio.create_task(self._read_log(self.proc))
        exited = asyncio.create_task(self.proc.wait())
        try:
            if not await self._wait_ready(exited):
                if not exited.done():
                    await self._terminate()
                    await reader
                    return f"not ready after {self.settings.ready_timeout:g}s{self._last_line()}"
            else:
                self.set_state("ready", None)
                await exited
            await reader
            return f"exited with code {self.proc.returncode}{self._last_line()}"
        finally:
            if self.proc.returncode is None:  # cancelled: the agent is stopping the runtime
                await asyncio.shield(self._terminate())
            reader.cancel()
            exited.cancel()

    async def _wait_ready(self, exited: asyncio.Task) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.ready_timeout
        async with httpx2.AsyncClient(timeout=5.0, trust_env=False) as client:
            while loop.time() < deadline and not exited.done():
                for path in self.adapter.probe_paths:
                    with contextlib.suppress(httpx2.HTTPError):
                        if (await client.get(self.base_url + path)).status_code == 200:
                            return True
                await asyncio.wait({exited}, timeout=PROBE_EVERY)
        return False

    async def _terminate(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        for sig, wait in ((signal.SIGTERM, self.settings.stop_grace), (signal.SIGKILL, None)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), wait)
                return
            except TimeoutError:
                log.warning("runtime %s did not stop within %gs of SIGTERM; killing it", self.repo, wait)

    async def _read_log(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        pending = ""
        while chunk := await proc.stdout.read(65536):
            pending += chunk.decode("utf-8", "replace").replace("\r", "\n")  # progress bars redraw with \r
            *lines, pending = pending.split("\n")
            for line in lines:
                if line.strip():
                    self.log.append(clean_line(line))
                    log.debug("[%s] %s", self.repo, line)
        if pending.strip():
            self.log.append(clean_line(pending))

    def _last_line(self) -> str:
        for line in reversed(self.log):
            if not line.startswith("$ "):
                return f": {line[:300]}"
        return ""
