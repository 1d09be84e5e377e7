"""The agent's one websocket to the server: hello, welcome, pings, metrics, and reconnects.

Reconnecting is websockets' own ``async for ws in connect(...)`` loop: failed opens are retried with
its exponential backoff and jitter. That loop resets its backoff as soon as a handshake succeeds, so
a server that accepts and then drops us at once would be re-dialled in a tight loop; connections that
die within ``STABLE_AFTER`` seconds therefore wait for the next delay of a second backoff series (same
settings) before the library dials again, and that series restarts after a connection that lasted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from fleet.agent import AGENT_VERSION
from fleet.agent.buffer import MetricsBuffer
from fleet.agent.chat import ChatRelay
from fleet.agent.collectors import Collector
from fleet.agent.deployer import Deployer
from fleet.agent.hostfacts import collect_host_facts
from fleet.agent.metrics_sender import MetricsSender
from fleet.agent.protocol import (
    Ack,
    Activate,
    Chat,
    ChatCancel,
    CommandEvent,
    Control,
    Deploy,
    Error,
    FrameError,
    HealthCheck,
    Hello,
    HostFacts,
    MetricsBatch,
    NodeKindName,
    Ping,
    Pong,
    Remove,
    Rollback,
    Site,
    SiteCacheAdvert,
    Welcome,
    dump,
    parse_server_frame,
)
from fleet.agent.reconnect import backoff_delays, ws_log, ws_url
from fleet.agent.runtimes import NONE, available_runtimes, choose_adapter
from fleet.agent.runtimes.supervisor import Supervisor
from fleet.agent.sitecache import SiteCache, cache_report
from fleet.agent.state import Credentials, agent_home, now_iso, write_status

log = logging.getLogger("fleet.agent")


EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REFUSED = 3
EXIT_REPLACED = 4

CLOSE_REFUSED = 4401
CLOSE_REPLACED = 4409
REFUSED_STATUSES = (401, 403)

REFUSED_MESSAGE = (
    "the server refused this node's credential (revoked or unknown): re-enroll with fleet-agent enroll"
)
REPLACED_MESSAGE = "another agent connected with this node's credential; this one stops"
UNSUPPORTED = "not supported by this agent version"

MAX_SIZE = 16 * 1024 * 1024
PING_INTERVAL = 20.0
CLOSE_TIMEOUT = 10.0
STABLE_AFTER = 5.0
CLOSE_TRY_AGAIN_LATER = 1013
DEFAULT_METRICS_INTERVAL = 1.0  # until a welcome says otherwise
CACHE_REPORT_EVERY = 5.0

COMMAND_FRAMES = (Deploy, Activate, Rollback, Remove, HealthCheck)
MODEL_COMMANDS = (Deploy, Activate, Rollback, Remove)  # handled by the deployer


class _Fatal(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class AgentSession(MetricsSender):
    """What survives reconnects: credentials, collector, status.json contents."""

    def __init__(
        self,
        creds: Credentials,
        collector: Collector,
        *,
        labels: dict[str, str] | None,
        kind: NodeKindName | None,
        home: str | os.PathLike[str] | None,
        stop_event: asyncio.Event,
        reconnect_delays: Callable[[], Iterator[float]] = backoff_delays,
        runtime: str = NONE,
        collector_report: dict[str, Any] | None = None,
        site_cache: tuple[SiteCache, str] | None = None,
    ) -> None:
        self.creds = creds
        self.site_cache, self.site_cache_url = site_cache or (None, "")  # this node serves its site
        self.stop_event = stop_event
        self.serving = False
        self.collector = collector
        self.labels = dict(labels or {})
        self.kind = kind
        self.home = home
        self.reconnect_delays = reconnect_delays
        self.url = ws_url(creds.server)
        self.welcome: Welcome | None = None
        self.status: dict[str, Any] = {
            "connected": False,
            "server": creds.server,
            "node_id": creds.node_id,
            "node_name": creds.node_name,
            "since": now_iso(),
            "last_error": None,
            "collector": collector_report,  # which collector runs and why the others were skipped
        }
        self._sample_failed = False
        self.deployer = Deployer(agent_home(home), creds.secret, creds.server)
        self.buffer = MetricsBuffer.from_env()
        self.streaming = 0  # metrics tasks sending now (a replaced one may still be unwinding); 0: buffer
        self.stream_changed = asyncio.Event()  # set when that count changes
        self.sampled_at: float | None = None  # loop time of the last sample, sent or buffered
        self.metrics_interval = DEFAULT_METRICS_INTERVAL
        self.batch_seq = 0
        self.awaiting_ack: tuple[MetricsBatch, asyncio.Future] | None = None  # the catch-up batch in flight
        # Runtimes: one per active version, (re)started when the deployer activates one; chats relayed to them.
        self.runtimes = Supervisor(choose_adapter(runtime), self.deployer.active_snapshots)
        self.deployer.on_activated = lambda repo: self.runtimes.sync(retry=repo)
        self.chat = ChatRelay(self.runtimes)
        self.runtimes.listeners.append(self.runtimes_changed)

    # ---- status.json ------------------------------------------------------------------------------

    def set_status(self, **changes: Any) -> None:
        if "connected" in changes and changes["connected"] != self.status["connected"]:
            changes.setdefault("since", now_iso())
        self.status.update(changes)
        try:
            write_status(self.home, **self.status)
        except OSError as exc:
            log.warning("cannot write status.json: %s", exc)

    def runtimes_changed(self, state_changed: bool) -> None:
        """status.json lists the runtimes (and their ports) too, for `fleet-agent status` and local tools."""
        if state_changed:
            self.set_status(serving=[s.model_dump(exclude={"log_tail"}) for s in self.runtimes.statuses()])

    # ---- frames we send ---------------------------------------------------------------------------

    def host_facts(self) -> HostFacts:
        overrides = self.collector.host_overrides()
        kind = self.kind or overrides.get("kind")
        facts = collect_host_facts(kind=kind, labels=self.labels, home=self.home)
        extra = {key: value for key, value in overrides.items() if key != "kind"}
        return HostFacts(**{**facts.model_dump(), **extra}) if extra else facts

    async def hello(self) -> Hello:
        try:
            gpus, note = await asyncio.to_thread(self.collector.inventory)
        except Exception as exc:  # a collector bug must not keep the node offline
            log.exception("GPU inventory failed")
            gpus, note = [], f"GPU inventory failed ({exc}): reporting 0 GPUs"
        return Hello(
            type="hello",
            agent_version=AGENT_VERSION,
            host=self.host_facts(),
            gpus=gpus,
            gpu_note=note[:512] if note else None,
            runtimes=sorted(available_runtimes(), key=lambda name: name != self.runtimes.runtime),
            serving=self.runtimes.statuses(),
            installed=self.deployer.installed(),
            active=self.deployer.active(),
            in_flight=self.deployer.in_flight(),
            site_cache=SiteCacheAdvert(url=self.site_cache_url) if self.site_cache else None,
        )

    # ---- frames we receive ------------------------------------------------------------------------

    async def handle(self, ws: ClientConnection, frame: Any, tasks: dict[str, asyncio.Task]) -> None:
        if isinstance(frame, Welcome):
            self.welcome = frame
            log.info("welcomed as node %s (id %d); metrics every %gs", frame.node_name, frame.node_id,
                     frame.metrics_interval)
            self.set_status(connected=True, node_id=frame.node_id, node_name=frame.node_name)

            async def send_event(event: CommandEvent) -> None:
                await ws.send(dump(event))

            self.deployer.attach(send_event, frame.mirror_url, frame.site_cache)
            if self.site_cache is not None:
                self.site_cache.mirror = (frame.mirror_url or f"{self.creds.server}/hf").rstrip("/")
                self.site_cache.key = (frame.site_cache.key if frame.site_cache else None) or self.site_cache.key
                if "cache" not in tasks:
                    tasks["cache"] = asyncio.create_task(self.report_cache(ws))
            if "metrics" in tasks:
                tasks.pop("metrics").cancel()
            tasks["metrics"] = asyncio.create_task(self.send_metrics(ws, frame.metrics_interval))
        elif isinstance(frame, Site):
            log.info("site cache: %s", frame.site_cache.url if frame.site_cache and frame.site_cache.url else "none")
            self.deployer.site = frame.site_cache
            if self.site_cache is not None and frame.site_cache and frame.site_cache.key:
                self.site_cache.key = frame.site_cache.key
        elif isinstance(frame, Ping):
            await ws.send(dump(Pong(type="pong", nonce=frame.nonce)))
        elif isinstance(frame, Control):
            log.warning("server asks for metrics every %gs (%s)", frame.metrics_interval, frame.reason or "load")
            if "metrics" in tasks:
                tasks.pop("metrics").cancel()
            tasks["metrics"] = asyncio.create_task(self.send_metrics(ws, frame.metrics_interval))
        elif isinstance(frame, Ack):
            self._settle_batch(frame)
        elif isinstance(frame, Error):
            log.warning("server reported an error: %s: %s", frame.code, frame.detail)
            self.set_status(last_error=f"server: {frame.code}: {frame.detail}")
            self._settle_batch(frame)
        elif isinstance(frame, MODEL_COMMANDS):
            await self.deployer.handle(frame)
        elif isinstance(frame, (Chat, ChatCancel, HealthCheck)):
            await self.chat.handle(frame)
        elif isinstance(frame, COMMAND_FRAMES):
            log.warning("%s command %s is not supported by this agent version", frame.type, frame.command_id)
            event = CommandEvent(type="event", command_id=frame.command_id, state="failed", error=UNSUPPORTED)
            await ws.send(dump(event))

    async def report_cache(self, ws: ClientConnection) -> None:
        """The site cache's disk use and hit counts, every CACHE_REPORT_EVERY seconds (one small frame)."""
        while True:
            report = await asyncio.to_thread(cache_report, self.site_cache)
            await ws.send(dump(report))
            await asyncio.sleep(CACHE_REPORT_EVERY)

    async def close_on_stop(self, ws: ClientConnection) -> None:
        await self.stop_event.wait()
        await ws.close(1000, "agent stopping")

    async def serve(self, ws: ClientConnection) -> int | None:
        """Run one connection until it closes; the close code the server sent (None if it sent none).

        A stop closes the connection from here with 1000: unwinding the library's loop instead would
        close it with 1011 (internal error).
        """
        tasks: dict[str, asyncio.Task] = {"stop": asyncio.create_task(self.close_on_stop(ws))}
        self.serving = True
        try:
            await ws.send(dump(await self.hello()))
            self.chat.attach(lambda frame: ws.send(dump(frame)))
            while True:
                message = await ws.recv()
                try:
                    frame = parse_server_frame(message)
                except FrameError as exc:
                    log.warning("ignoring an invalid frame from the server: %s", exc)
                    continue
                await self.handle(ws, frame, tasks)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None
        finally:
            self.serving = False
            self.deployer.detach()
            self.chat.detach()
            for task in tasks.values():
                task.cancel()
            for task in tasks.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # ---- the reconnect loop -----------------------------------------------------------------------

    def process_exception(self, exc: Exception) -> Exception | None:
        """websockets' hook for a failed open: None retries (with its backoff), an exception is fatal."""
        if isinstance(exc, InvalidStatus) and exc.response.status_code in REFUSED_STATUSES:
            return exc
        if isinstance(exc, (OSError, TimeoutError, InvalidHandshake)):
            reason = str(exc) or type(exc).__name__  # a TimeoutError's str() is empty
            log.warning("cannot connect to %s: %s", self.url, reason)
            self.set_status(connected=False, last_error=f"cannot connect: {reason}")
            return None
        return exc

    async def connect_loop(self) -> int:
        loop = asyncio.get_running_loop()
        short_lived: Iterator[float] | None = None
        connector = connect(
            self.url,
            additional_headers={"Authorization": f"Bearer {self.creds.secret}"},
            user_agent_header=f"fleet-agent/{AGENT_VERSION}",
            max_size=MAX_SIZE,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_INTERVAL,
            close_timeout=CLOSE_TIMEOUT,
            process_exception=self.process_exception,
            reconnect_delays=self.reconnect_delays,
            logger=ws_log,
        )
        try:
            async with contextlib.aclosing(connector.__aiter__()) as connections:
                async for ws in connections:
                    log.info("connected to %s", self.url)
                    opened = loop.time()
                    code = await self.serve(ws)
                    self.welcome = None
                    if self.stop_event.is_set():
                        return EXIT_OK
                    if code == CLOSE_REFUSED:
                        raise _Fatal(EXIT_REFUSED, REFUSED_MESSAGE)
                    if code == CLOSE_REPLACED:
                        raise _Fatal(EXIT_REPLACED, REPLACED_MESSAGE)
                    lived = loop.time() - opened
                    if code == CLOSE_TRY_AGAIN_LATER:
                        log.warning("the server is at capacity (close 1013); retrying with backoff")
                    self.set_status(connected=False, last_error=f"connection closed (code {code})")
                    if lived >= STABLE_AFTER:
                        short_lived = None
                        log.warning("connection closed (code %s); reconnecting", code)
                        continue
                    short_lived = short_lived or self.reconnect_delays()
                    delay = next(short_lived)
                    log.warning("connection closed after %.1fs (code %s); reconnecting in %.1fs",
                                lived, code, delay)
                    await asyncio.sleep(delay)
        except InvalidStatus as exc:
            if exc.response.status_code in REFUSED_STATUSES:
                return self.fail(EXIT_REFUSED, REFUSED_MESSAGE)
            return self.fail(EXIT_ERROR, f"cannot connect: {exc}")
        except _Fatal as fatal:
            return self.fail(fatal.code, str(fatal))
        except Exception as exc:  # fatal per process_exception (bad URI, proxy, ...)
            return self.fail(EXIT_ERROR, f"cannot connect to {self.url}: {exc}")
        return EXIT_ERROR  # the library's loop never ends on its own

    def fail(self, code: int, message: str) -> int:
        log.error("%s", message)
        self.set_status(connected=False, last_error=message)
        return code


async def run_agent(
    creds: Credentials,
    collector: Collector,
    *,
    labels: dict[str, str] | None = None,
    kind: NodeKindName | None = None,
    home: str | os.PathLike[str] | None = None,
    stop_event: asyncio.Event | None = None,
    reconnect_delays: Callable[[], Iterator[float]] = backoff_delays,
    runtime: str = NONE,
    collector_report: dict[str, Any] | None = None,
    site_cache: tuple[SiteCache, str] | None = None,
) -> int:
    """Stay connected to the server until ``stop_event`` is set or the server says stop.

    Returns 0 after a stop, 3 when the credential is refused (4401 or HTTP 401/403), 4 when another
    agent took over this node (4409), 1 for a fatal connection error. ``runtime`` names the adapter that
    serves the active model versions (``none``: no runtime); the runtimes stop with the agent, not with a
    connection (a node cut off from the server keeps serving). ``site_cache``: (the running cache, the URL
    its neighbours dial), when this node serves its site.
    """
    stop_event = stop_event or asyncio.Event()
    session = AgentSession(creds, collector, labels=labels, kind=kind, home=home, stop_event=stop_event,
                           reconnect_delays=reconnect_delays, runtime=runtime, collector_report=collector_report,
                           site_cache=site_cache)
    session.set_status(connected=False)
    session.runtimes.start()
    runner = asyncio.create_task(session.connect_loop())
    stopper = asyncio.create_task(stop_event.wait())
    buffering = asyncio.create_task(session.buffer_while_down())
    try:
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not runner.done() and session.serving:
            # An open connection closes itself on stop (see serve); give that its close timeout.
            await asyncio.wait({runner}, timeout=CLOSE_TIMEOUT + 1)
    finally:
        stopper.cancel()
        buffering.cancel()
        if not runner.done():
            # Between connections (dialling, backing off): nothing to close cleanly.
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        await session.chat.close()
        await session.runtimes.close()
    code = EXIT_OK if runner.cancelled() else runner.result()
    if code == EXIT_OK:
        log.info("stopped")
        session.set_status(connected=False)
    return code
