"""Runtime state reported by agents: one `NodeRuntime` row per (node, repo), replaced wholesale by each
report (`Hello.serving`, the `runtime` frame), then pushed to open node pages after commit."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from fleet import events
from fleet.inventory.models import NodeRuntime, NodeStatus, RuntimeState

LOG_LINES = 50


def replace_runtimes(node_id: int, serving: Iterable[Any], now: datetime | None = None) -> list[NodeRuntime]:
    """Make the node's rows exactly ``serving`` (protocol `RuntimeStatus` objects, already validated).

    The report is the agent's full list, so a runtime it no longer mentions is gone; two entries for
    one repo (a broken agent) keep the last, as the unique constraint allows one row per repo.
    """
    now = now or timezone.now()
    rows = _rows(node_id, serving, now)
    with transaction.atomic():
        NodeRuntime.objects.filter(node_id=node_id).delete()
        NodeRuntime.objects.bulk_create(rows)
        events.publish(events.node_live_group(node_id), _message(node_id, rows))
    return rows


def replace_many(serving_by_node: dict[int, list[Any]], now: datetime | None = None) -> None:
    """`replace_runtimes` for many nodes at once (reconnects that skipped the hello transaction): a read, a
    DELETE and one INSERT per thousand rows, whatever the number of nodes. Call with existing nodes only."""
    if not serving_by_node:
        return
    now = now or timezone.now()
    rows = {node_id: _rows(node_id, serving, now) for node_id, serving in serving_by_node.items()}
    with transaction.atomic():
        current = NodeRuntime.objects.filter(node_id__in=list(rows))
        had = set(current.order_by().values_list("node_id", flat=True).distinct())
        if had:
            current.delete()
        NodeRuntime.objects.bulk_create([row for node_rows in rows.values() for row in node_rows], batch_size=1000)
        # node pages redraw where something was or is: a node that serves nothing and served nothing is quiet
        events.publish_many([(events.node_live_group(node_id), _message(node_id, node_rows))
                             for node_id, node_rows in rows.items() if node_rows or node_id in had])


def _rows(node_id: int, serving: Iterable[Any], now: datetime) -> list[NodeRuntime]:
    by_repo = {status.repo: status for status in serving}
    return [
        NodeRuntime(
            node_id=node_id, repo=status.repo, sha=status.sha, runtime=status.runtime,
            state=status.state if status.state in RuntimeState.values else RuntimeState.FAILED,
            reason=(status.reason or "")[:512], port=status.port, tokens_served=status.tokens_served,
            requests_active=status.requests_active, restarts=status.restarts,
            log_tail=list(status.log_tail)[-LOG_LINES:], updated_at=now,
        )
        for status in by_repo.values()
    ]


def _message(node_id: int, rows: list[NodeRuntime]) -> dict[str, Any]:
    return {"type": "live.message",
            "payload": {"kind": "runtimes", "node_id": node_id, "runtimes": [runtime_payload(r) for r in rows]}}


def runtime_payload(runtime: NodeRuntime) -> dict[str, Any]:
    """What the node page needs to redraw one runtime."""
    return {
        "repo": runtime.repo,
        "sha": runtime.sha,
        "runtime": runtime.runtime,
        "state": runtime.state,
        "state_label": RuntimeState(runtime.state).label,
        "state_colour": runtime.state_colour,
        "reason": runtime.reason,
        "port": runtime.port,
        "tokens_served": runtime.tokens_served,
        "requests_active": runtime.requests_active,
        "restarts": runtime.restarts,
        "log_tail": runtime.log_tail,
        "updated_at": runtime.updated_at.isoformat(),
    }


def ready_runtimes(repo: str | None = None, sha: str | None = None, node_id: int | None = None):
    """Runtimes that can answer now: state ready on an online node (never failed, never offline)."""
    queryset = NodeRuntime.objects.filter(state=RuntimeState.READY, node__status=NodeStatus.ONLINE)
    if repo is not None:
        queryset = queryset.filter(repo=repo)
    if sha is not None:
        queryset = queryset.filter(sha=sha)
    if node_id is not None:
        queryset = queryset.filter(node_id=node_id)
    return queryset.select_related("node")
