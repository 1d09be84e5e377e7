#!/usr/bin/env python
"""Rollout benchmark: one rollout over N simulated nodes whose agents answer at once, driven by the engine's
`rollouts` task exactly as in production (rows → state machine → compare-and-set writes → hub commands),
the agents' answers entering through the hub's real event path (`fleet.hub.commands.record_event`, what the
agent consumer calls). Embedded default: SQLite in a temporary folder.

Reports the control plane's time per node (target < 5 ms), split into the engine's passes and the agents'
command events, and database queries per target transition (the engine's, and the engine's plus the hub's
for the agents' events). Against a baseline measured in the same run on the same database: the floor any
hub pays for these answers, one transaction holding one compare-and-set UPDATE of the command row per
agent event; the ratio says what the control plane costs over that floor, whatever the machine's load.

    .venv/bin/python bench/rollout.py                 # 1,000 nodes
    .venv/bin/python bench/rollout.py --nodes 200
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def setup(var_dir: str) -> None:
    os.environ["FLEET_VAR_DIR"] = var_dir
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.settings")
    os.environ["FLEET_LOG_LEVEL"] = "WARNING"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def build(count: int):
    from fleet.hub.models import HubModel, InstallState, ModelVersion, NodeInstall
    from fleet.inventory.models import Node, NodeStatus
    from fleet.rollouts import services

    model = HubModel.objects.create(repo_id="bench/tiny")
    v1 = ModelVersion.objects.create(model=model, revision="v1", sha="a" * 40)
    ModelVersion.objects.create(model=model, revision="v2", sha="b" * 40)
    Node.objects.bulk_create([Node(name=f"sim-{i:05d}", labels={"zone": f"z{i % 4}", "role": "chat"},
                                   status=NodeStatus.ONLINE) for i in range(count)])
    NodeInstall.objects.bulk_create([NodeInstall(node=node, repo=model.repo_id, sha=v1.sha, version=v1,
                                                 state=InstallState.ACTIVE) for node in Node.objects.all()])
    return services.create_deployment("bench", "chat-default", model.repo_id, "v1", selector={"role": "chat"})


def answer_all() -> int:
    from fleet.agent.protocol import CommandEvent
    from fleet.hub import commands as hub_commands
    from fleet.hub.models import CommandKind, NodeCommand

    pending = list(NodeCommand.objects.filter(finished_at__isnull=True).values_list("node_id", "command_id", "kind"))
    for node_id, command_id, kind in pending:
        state = "staged" if kind == CommandKind.DEPLOY else "active"
        hub_commands.record_event(node_id, CommandEvent(type="event", command_id=command_id, state=state))
    return len(pending)


@contextmanager
def counting() -> Iterator[list[int]]:
    """Count the statements sent to the database meanwhile (an executemany counts once)."""
    from django.db import connection

    count = [0]

    def wrapper(execute, sql, params, many, context):  # Django's execute_wrapper signature
        count[0] += 1
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield count


def floor(events: int) -> float:
    """Seconds for ``events`` transactions of one compare-and-set UPDATE each (of rows that exist)."""
    from django.db import transaction

    from fleet.hub.models import NodeCommand

    ids = list(NodeCommand.objects.order_by("pk").values_list("pk", flat=True)[:events])
    ids = (ids * (events // max(1, len(ids)) + 1))[:events]
    started = time.perf_counter()
    for pk in ids:
        with transaction.atomic():
            NodeCommand.objects.filter(pk=pk, finished_at__isnull=False).update(error="")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--max-unavailable", default="25%")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as var:
        setup(var)
        from datetime import timedelta

        from django.utils import timezone

        from fleet.rollouts import driver, services
        from fleet.rollouts.models import RolloutEvent

        deployment = build(args.nodes)
        strategy = {"healthcheck": None, "min_ready_seconds": 0, "max_unavailable": args.max_unavailable}
        engine_s = events_s = 0.0
        passes = answered = event_queries = 0
        with counting() as engine_queries:
            started = time.perf_counter()
            rollout = services.create_rollout("bench", deployment, "v2", strategy)
            engine_s += time.perf_counter() - started
        queries = engine_queries[0]
        now = timezone.now()
        while rollout.active:
            with counting() as hub_queries:
                started = time.perf_counter()
                answered += answer_all()
                events_s += time.perf_counter() - started
            event_queries += hub_queries[0]
            now += timedelta(seconds=1)
            with counting() as engine_queries:
                started = time.perf_counter()
                driver.tick(now)
                engine_s += time.perf_counter() - started
            queries += engine_queries[0]
            passes += 1
            rollout.refresh_from_db()
            if passes > 10 * args.nodes:
                raise SystemExit(f"the rollout did not finish: {rollout.state}")
        moves = RolloutEvent.objects.filter(rollout=rollout, target__isnull=False).count()
        with counting():  # measured as the events were
            floor_s = floor(answered)
        n = args.nodes
        print(f"rollout of {n} nodes ({args.max_unavailable} at once): {rollout.state} after {passes} engine passes")
        print(f"  engine (create + passes): {engine_s:7.2f} s  {1000 * engine_s / n:6.2f} ms/node")
        print(f"  agents' command events:   {events_s:7.2f} s  {1000 * events_s / n:6.2f} ms/node "
              f"({answered} events, the hub's path)")
        print(f"  control plane in all:     {engine_s + events_s:7.2f} s  {1000 * (engine_s + events_s) / n:6.2f} "
              f"ms/node (target < 5 ms)")
        print(f"  baseline (same run):      {floor_s:7.2f} s  {1000 * floor_s / n:6.2f} ms/node "
              f"({answered} one-UPDATE transactions, the floor for these answers)")
        print(f"  control plane ÷ baseline: {(engine_s + events_s) / floor_s:7.2f}")
        per = queries / max(1, moves)
        print(f"  engine queries: {queries} for {moves} target transitions = {per:.2f} per transition")
        print(f"  hub queries for the agents' events: {event_queries} for {answered} events = "
              f"{event_queries / max(1, answered):.2f} per event (with the simulated agents' one read a pass)")
        print(f"  all queries: {(queries + event_queries) / max(1, moves):.2f} per target transition")


if __name__ == "__main__":
    main()
