"""The engine: Fleet's background work. One engine leads at a time.

Two kinds of tasks, each a (name, interval seconds, function) tuple whose function is idempotent and
makes its changes with compare-and-set updates, so a task that runs twice does no harm:

- leader tasks (`tasks()`: retention, hub sync, rollouts) run only in the process that leads;
- process tasks (`process_tasks()`: the coalesced fleet summary, the offline sweep) run in every
  process that runs an engine, because what they publish goes through that process's channel layer.

Leadership is held on a connection of its own (a PostgreSQL session advisory lock) or a file lock
(SQLite), never on Django's connection: `close_old_connections()` drops that one after CONN_MAX_AGE and
with it the lock, which once let a second engine lead while the first still ran. The lock is re-checked
before every leader task; the moment it is gone the engine stops leading work and tries to regain it.

Where it runs: `manage.py engine` (PostgreSQL deployments), or inside the server process
(`FLEET_EMBEDDED_ENGINE`, the default with SQLite: `make demo` is one Daphne), started once per event
loop by the first request or socket (`ensure_embedded`, called from `fleet.asgi`) and released at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection

from fleet.agents import presence
from fleet.hub import sync as hub_sync
from fleet.inventory import summary
from fleet.rollouts import converge as deployments_converge
from fleet.rollouts import driver as rollouts_driver
from fleet.telemetry import records as telemetry_records

log = logging.getLogger("fleet.engine")

Task = tuple[str, float, Callable[[], object]]
LOCK_KEY = zlib.crc32(b"fleet.engine")  # advisory lock id shared by every engine of one database
RETRY_SECONDS = 2.0  # how often a follower tries to take over


def tasks() -> list[Task]:
    """Work only the leader does."""
    return [
        ("telemetry-retention", 3600.0, telemetry_records.prune),
        ("lost-gpu-retention", 3600.0, presence.prune_lost_gpus),
        ("hub-sync", 2.0, hub_sync.tick),
        ("rollouts", rollouts_driver.INTERVAL, rollouts_driver.tick),
        ("deployments", deployments_converge.INTERVAL, deployments_converge.tick),
    ]


def process_tasks(sweep: bool = True) -> list[Task]:
    """Work every engine process does for itself (its summary flag and its channel layer are local)."""
    work: list[Task] = [("fleet-summary", summary.INTERVAL, summary.publish_if_stale)]
    if sweep:
        work.append(("offline-sweep", presence.sweep_interval(), presence.sweep_offline))
    return work


# ---- leadership ---------------------------------------------------------------------------------------


class Leadership(Protocol):
    def acquire(self) -> bool: ...  # take the lock if free; never blocks for long
    def held(self) -> bool: ...  # is it still ours (asks the database for PostgreSQL)
    def release(self) -> None: ...


class PostgresLeadership:
    """A session advisory lock on a dedicated psycopg connection that nothing else closes.

    If that connection dies (server restart, network, `pg_terminate_backend`), PostgreSQL frees the lock
    at once; `held()` fails on the dead connection, so this engine stops leading before another starts.
    """

    def __init__(self, params: dict[str, Any], key: int = LOCK_KEY, name: str = "fleet-engine"):
        drop = {"cursor_factory", "context", "prepare_threshold"}  # Django's own psycopg extras
        self.params = {k: v for k, v in params.items() if k not in drop}
        self.key = key
        self.name = f"{name}:{os.getpid()}"[:63]
        self.conn: Any = None
        self._lock = threading.Lock()  # one psycopg connection, used from whichever thread steps

    @classmethod
    def for_django(cls, key: int = LOCK_KEY) -> PostgresLeadership:
        return cls(connection.get_connection_params(), key)

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(**self.params, autocommit=True, application_name=self.name, connect_timeout=5,
                               keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                               tcp_user_timeout=10000)
        conn.execute("SET statement_timeout = 5000")
        return conn

    def acquire(self) -> bool:
        import psycopg

        with self._lock:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = self._connect()
                return bool(self.conn.execute("SELECT pg_try_advisory_lock(%s)", [self.key]).fetchone()[0])
            except psycopg.Error as error:
                log.warning("engine leadership: cannot reach the database (%s)", str(error).strip())
                self._drop()
                return False

    def held(self) -> bool:
        import psycopg

        with self._lock:
            if self.conn is None or self.conn.closed:
                return False
            try:
                row = self.conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND pid = pg_backend_pid() AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
                    [self.key >> 32, self.key & 0xFFFFFFFF]).fetchone()
            except psycopg.Error:
                self._drop()
                return False
            return row[0] == 1

    def backend_pid(self) -> int | None:
        """The server process holding the lock (tests and operators: `pg_terminate_backend`)."""
        with self._lock:
            return self.conn.info.backend_pid if self.conn is not None and not self.conn.closed else None

    def release(self) -> None:
        with self._lock:
            if self.conn is not None and not self.conn.closed:
                with contextlib.suppress(Exception):
                    self.conn.execute("SELECT pg_advisory_unlock(%s)", [self.key])
            self._drop()

    def _drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None


class FileLeadership:
    """An exclusive `flock` on a file next to the SQLite database: held as long as the file stays open."""

    def __init__(self, path: Path):
        self.path = path
        self.handle: Any = None

    def acquire(self) -> bool:
        if self.handle is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a")  # noqa: SIM115 - kept open while leading
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self.handle = handle
        return True

    def held(self) -> bool:
        return self.handle is not None

    def release(self) -> None:
        if self.handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def default_leadership() -> Leadership:
    if connection.vendor == "postgresql":
        return PostgresLeadership.for_django()
    return FileLeadership(settings.VAR_DIR / "engine.lock")


# ---- the loop -----------------------------------------------------------------------------------------


class Engine:
    """Runs due tasks when stepped; `step()` returns how long to wait before the next step."""

    def __init__(self, leader_tasks: Sequence[Task], local_tasks: Sequence[Task] = (),
                 leadership: Leadership | None = None, retry: float = RETRY_SECONDS, name: str = "engine"):
        self.leader_tasks = list(leader_tasks)
        self.local_tasks = list(local_tasks)
        self.leadership = leadership or default_leadership()
        self.retry = retry
        self.name = name
        self.leading = False
        self.closed = False
        self._due: dict[str, float] = {}
        self._next_try = 0.0
        self._step_lock = threading.Lock()
        if any(task[2] is summary.publish_if_stale for task in self.local_tasks):
            summary.loop_started()  # changes made in this process are summarised by the fleet-summary task

    def step(self) -> float:
        with self._step_lock:
            if self.closed:
                return self.retry
            now = time.monotonic()
            if self.leading and not self.leadership.held():
                self._lose()
            if not self.leading and now >= self._next_try:
                if self._acquire():
                    self.leading = True
                    self._due.update({name: 0.0 for name, _, _ in self.leader_tasks})
                    log.info("%s leading: %s", self.name, ", ".join(name for name, _, _ in self.leader_tasks))
                else:
                    self._next_try = now + self.retry
            for task in self.local_tasks:
                self._run_if_due(task)
            for task in self.leader_tasks:
                if not self.leading:
                    break
                if time.monotonic() < self._due.get(task[0], 0.0):
                    continue
                if not self.leadership.held():  # the moment leadership is gone, leader work stops
                    self._lose()
                    break
                self._run_if_due(task)
            return self._wait()

    def _acquire(self) -> bool:
        try:
            return self.leadership.acquire()
        except OSError as error:  # the lock file's folder unwritable, say: say so, keep serving, retry
            log.error("%s cannot take leadership: %s", self.name, error)
            return False

    def _lose(self) -> None:
        log.warning("%s lost leadership; leader tasks stop until it leads again", self.name)
        self.leading = False
        self.leadership.release()
        # Try again after the usual interval: a healthy rival (polling at that interval) takes over first,
        # and with none this engine leads again once its connection is back.
        self._next_try = time.monotonic() + self.retry

    def _run_if_due(self, task: Task) -> None:
        name, interval, function = task
        if time.monotonic() < self._due.get(name, 0.0):
            return
        close_old_connections()
        try:
            function()
        except Exception:
            log.exception("engine task %s failed; it runs again next interval", name)
        self._due[name] = time.monotonic() + interval

    def _wait(self) -> float:
        now = time.monotonic()
        moments = [self._due.get(name, 0.0) for name, _, _ in self.local_tasks]
        if self.leading:
            moments += [self._due.get(name, 0.0) for name, _, _ in self.leader_tasks]
        else:
            moments.append(self._next_try)
        return min(max(0.05, min(moments, default=now + self.retry) - now), self.retry)

    def run_all_once(self) -> None:
        """Every task once, now, leading or not (`manage.py engine --once`: every task is idempotent)."""
        for task in [*self.local_tasks, *self.leader_tasks]:
            self._due.pop(task[0], None)
            self._run_if_due(task)

    def close(self) -> None:
        with self._step_lock:
            self.closed = True
            if self.leading:
                log.info("%s stops leading", self.name)
            self.leading = False
            self.leadership.release()


def run(stop: threading.Event, once: bool = False, engine: Engine | None = None) -> None:
    """`manage.py engine`: step until ``stop`` is set (or run every task once, with ``once``)."""
    engine = engine or Engine(tasks(), process_tasks(), name="engine")
    try:
        if once:
            engine.run_all_once()
            return
        while not stop.is_set():
            stop.wait(engine.step())
    finally:
        engine.close()


# ---- embedded in the server process ------------------------------------------------------------------

_embedded: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}


def ensure_embedded() -> None:
    """Start this process's engine on the running event loop (once per loop) when FLEET_EMBEDDED_ENGINE.

    Each step runs in an executor thread started from the loop, so what its tasks publish reaches this
    process's channel layer the usual way (the in-memory layer cannot be fed from a foreign thread).
    """
    if not settings.FLEET_EMBEDDED_ENGINE:
        return
    loop = asyncio.get_running_loop()
    task = _embedded.get(loop)
    if task is not None and not task.done():
        return
    engine = Engine(tasks(), process_tasks(sweep=settings.FLEET_PRESENCE_SWEEP), name="embedded engine")
    atexit.register(engine.close)  # releases the lock at exit; a file lock would go with the process anyway
    _embedded[loop] = loop.create_task(_embedded_loop(engine))


async def _embedded_loop(engine: Engine) -> None:
    step = sync_to_async(engine.step, thread_sensitive=False)
    try:
        while not engine.closed:
            try:
                wait = await step()
            except Exception:
                log.exception("embedded engine step failed; retrying")
                wait = engine.retry
            await asyncio.sleep(wait)
    finally:
        await sync_to_async(engine.close, thread_sensitive=False)()


async def stop_embedded() -> None:
    """Stop this loop's embedded engine and release its leadership (tests, orderly shutdown)."""
    task = _embedded.pop(asyncio.get_running_loop(), None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
