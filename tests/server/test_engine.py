"""The engine: leader tasks only while leading, process tasks always, and leadership that survives Django
dropping its connections but not the loss of its own (two engines on PostgreSQL never both do leader work)."""

from __future__ import annotations

import random
import threading
import time

import pytest

from fleet import engine as engine_module
from fleet.engine import Engine, FileLeadership, PostgresLeadership


class FakeLeadership:
    def __init__(self, free: bool = True):
        self.free = free
        self.mine = False
        self.acquires = 0

    def acquire(self) -> bool:
        self.acquires += 1
        if self.free:
            self.mine = True
        return self.mine

    def held(self) -> bool:
        return self.mine

    def release(self) -> None:
        self.mine = False


def recorder(log: list, name: str):
    return lambda: log.append(name)


@pytest.mark.django_db  # each task starts with close_old_connections()
def test_leader_tasks_run_only_while_leading_and_process_tasks_always() -> None:
    log: list[str] = []
    leadership = FakeLeadership(free=False)
    engine = Engine([("lead", 0.0, recorder(log, "lead"))], [("local", 0.0, recorder(log, "local"))],
                    leadership=leadership, retry=0.0)
    engine.step()
    assert log == ["local"] and not engine.leading
    leadership.free = True
    engine.step()
    assert engine.leading and log == ["local", "local", "lead"]


@pytest.mark.django_db  # each task starts with close_old_connections()
def test_losing_the_lock_stops_leader_work_at_once_and_it_tries_to_regain() -> None:
    log: list[str] = []
    leadership = FakeLeadership()
    engine = Engine([("a", 0.0, recorder(log, "a"))], leadership=leadership, retry=0.0)
    engine.step()
    assert log == ["a"]
    leadership.mine = leadership.free = False  # the lock connection died and a rival took the lock
    engine.step()
    assert log == ["a"] and not engine.leading
    leadership.free = True
    engine.step()
    assert engine.leading and log == ["a", "a"]


@pytest.mark.django_db  # each task starts with close_old_connections()
def test_a_failing_task_does_not_stop_the_others() -> None:
    log: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    engine = Engine([("broken", 0.0, broken), ("ok", 0.0, recorder(log, "ok"))], leadership=FakeLeadership())
    engine.step()
    assert log == ["ok"]


@pytest.mark.django_db  # each task starts with close_old_connections()
def test_run_once_runs_every_task_without_leading() -> None:
    log: list[str] = []
    engine = Engine([("lead", 60.0, recorder(log, "lead"))], [("local", 60.0, recorder(log, "local"))],
                    leadership=FakeLeadership(free=False))
    engine_module.run(threading.Event(), once=True, engine=engine)
    assert log == ["local", "lead"] and engine.closed


def test_file_leadership_is_exclusive_and_released_on_close(tmp_path) -> None:
    first, second = FileLeadership(tmp_path / "engine.lock"), FileLeadership(tmp_path / "engine.lock")
    assert first.acquire() and first.held()
    assert not second.acquire() and not second.held()
    first.release()
    assert second.acquire()
    second.release()


def test_the_engine_tasks_are_registered() -> None:
    names = [name for name, _, _ in engine_module.tasks()]
    assert names == ["telemetry-retention", "lost-gpu-retention", "hub-sync", "rollouts", "deployments"]
    assert {name for name, _, _ in engine_module.process_tasks()} == {"fleet-summary", "offline-sweep"}
    assert [name for name, _, _ in engine_module.process_tasks(sweep=False)] == ["fleet-summary"]


# ---- two engines on PostgreSQL ---------------------------------------------------------------------------


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.services
def test_two_engines_on_postgresql_never_both_do_leader_work(services) -> None:
    """Kill the leader's lock connection (as a network drop or CONN_MAX_AGE-style close would): the other
    engine takes over, the first stops leading work before that and becomes the follower; repeatedly."""
    import psycopg

    key = random.randrange(1, 2**62)  # the PostgreSQL server is shared by other test runs
    work: list[tuple[float, str]] = []
    work_lock = threading.Lock()

    def leader_task(name: str):
        def run() -> None:
            with work_lock:
                work.append((time.monotonic(), name))
        return run

    engines = {
        name: Engine([(f"work-{name}", 0.01, leader_task(name))],
                     leadership=PostgresLeadership({"conninfo": services["postgres"]}, key=key, name=f"test-{name}"),
                     retry=0.05, name=f"engine {name}")
        for name in ("a", "b")
    }
    stop = threading.Event()

    def drive(engine: Engine) -> None:
        while not stop.is_set():
            stop.wait(engine.step())

    threads = [threading.Thread(target=drive, args=(e,), daemon=True) for e in engines.values()]
    for thread in threads:
        thread.start()
    kills: list[float] = []
    try:
        with psycopg.connect(services["postgres"], autocommit=True) as admin:
            for _ in range(6):
                _wait(lambda: sum(e.leading for e in engines.values()) == 1, 10, "one leader")
                leader = next(name for name, e in engines.items() if e.leading)
                other = "b" if leader == "a" else "a"
                seen = len(work)
                _wait(lambda n=leader, k=seen: any(name == n for _, name in work[k:]), 5, f"work by {leader}")
                time.sleep(random.uniform(0, 0.3))  # the drop lands anywhere in the leader's loop
                pid = engines[leader].leadership.backend_pid()
                kills.append(time.monotonic())
                assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
                _wait(lambda n=other, old=leader: engines[n].leading and not engines[old].leading, 10, "the takeover")
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        for e in engines.values():
            e.close()
    # Leader work changes hands only after a lock connection dies, once per kill: never back and forth.
    def switches(names: list[str]) -> int:
        return sum(1 for a, b in zip(names, names[1:], strict=False) if a != b)

    ordered = sorted(work)
    bounds = [float("-inf"), *kills, float("inf")]
    for start, end in zip(bounds, bounds[1:], strict=False):
        assert switches([name for at, name in ordered if start <= at < end]) <= 1, (start, end)
    assert switches([name for _, name in ordered]) == len(kills)  # each time the other engine took over


@pytest.mark.services
def test_leadership_outlives_djangos_connection(services, django_db_blocker) -> None:
    """The regression: the lock sat on Django's connection, which close_old_connections() drops after
    CONN_MAX_AGE. Now it is taken with Django's connection parameters on a connection of its own."""
    import dj_database_url
    from django.db.utils import ConnectionHandler

    handler = ConnectionHandler({"default": dj_database_url.parse(services["postgres"], conn_max_age=0)})
    django_connection = handler["default"]
    key = random.randrange(1, 2**62)
    mine = PostgresLeadership(django_connection.get_connection_params(), key=key)
    rival = PostgresLeadership({"conninfo": services["postgres"]}, key=key)
    try:
        with django_db_blocker.unblock():
            django_connection.ensure_connection()
            assert mine.acquire() and mine.held()
            django_connection.close()  # what close_old_connections() does once CONN_MAX_AGE has passed
        assert mine.held() and not rival.acquire()
        mine.release()
        assert rival.acquire()
    finally:
        mine.release()
        rival.release()
        with django_db_blocker.unblock():
            handler.close_all()
