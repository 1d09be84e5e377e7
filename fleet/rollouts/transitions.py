"""Rows ⇄ the state machine: read a rollout's snapshot, apply inputs, write the result back.

Every write is one transaction: a compare-and-set UPDATE of the rollout on its ``revision`` (a writer that
lost the race retries from the fresh rows), the changed targets, one RolloutEvent per transition, and the
machine's commands as hub NodeCommands under their stable ids (so a resent command is never done twice).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.utils import timezone

from fleet.accounts import audit
from fleet.hub import commands as hub_commands
from fleet.hub.models import CommandKind as HubKind
from fleet.rollouts import machine
from fleet.rollouts.models import Rollout, RolloutEvent, RolloutTarget
from fleet.rollouts.strategy import Strategy

CAS_TRIES = 5
_TIMES = ("deadline_at", "paused_at", "resume_at")
_TARGET_TIMES = ("offline_until", "soak_until", "check_until")


class Conflict(Exception):
    """Another writer kept changing the rollout; the caller may try again."""


def _seconds(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _datetime(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value is not None else None


class TargetRow(NamedTuple):
    """One target as read for a pass: plain values, no model instances (a pass reads every target)."""

    id: int
    node_id: int
    node_name: str
    node_status: str
    wave: int
    state: str
    on: str
    attempt: int
    tries: int
    online: bool
    offline_until: datetime | None
    soak_until: datetime | None
    check_until: datetime | None
    error: str
    command_id: str


def snapshot(row: Rollout, targets: list[TargetRow]) -> machine.Rollout:
    return machine.Rollout(
        id=row.pk, strategy=Strategy.model_validate(row.strategy), state=machine.RolloutState(row.state),
        deadline_at=_seconds(row.deadline_at), paused_at=_seconds(row.paused_at), paused_total=row.paused_total,
        resume_at=_seconds(row.resume_at), pause_reason=row.pause_reason, reason=row.reason, revert=row.revert,
        targets=tuple(machine.Target(
            node=t.node_id, name=t.node_name, wave=t.wave, state=machine.TargetState(t.state),
            on=machine.Side(t.on), attempt=t.attempt, tries=t.tries, online=t.online,
            offline_until=_seconds(t.offline_until), soak_until=_seconds(t.soak_until),
            check_until=_seconds(t.check_until), error=t.error,
        ) for t in targets),
    )


def load(rollout_id: int) -> tuple[Rollout, list[TargetRow]]:
    row = Rollout.objects.select_related("deployment__model", "from_version__model", "to_version__model").get(
        pk=rollout_id)
    targets = [TargetRow(*values) for values in RolloutTarget.objects.filter(rollout_id=rollout_id)
               .order_by("position", "id").values_list(*TargetRow._fields[:2], "node__name", "node__status",
                                                         *TargetRow._fields[4:])]
    return row, targets


Inputs = list[machine.Event] | Callable[[Rollout, list[TargetRow], machine.Rollout], list[machine.Event]]


def apply(rollout_id: int, events: Inputs, actor: Any = "engine", now: datetime | None = None) -> machine.Result:
    """Feed ``events`` (or what ``events(row, targets, snapshot)`` makes of the rows just read) to the
    rollout in order and store the outcome in one transaction.

    Raises `machine.Rejected` (an operator action that does not fit) or `Conflict`."""
    now = now or timezone.now()
    for _ in range(CAS_TRIES):
        with transaction.atomic():
            row, targets = load(rollout_id)
            before = snapshot(row, targets)
            inputs = events(row, targets, before) if callable(events) else events
            result = machine.step_all(before, inputs, now.timestamp())
            if result.rollout == before and not result.commands:
                return result
            if not _store(row, targets, before, result.rollout, list(result.transitions), list(result.commands),
                          actor, now):
                continue  # another writer got there first: read again
            return result
    raise Conflict(f"rollout {rollout_id} kept changing under {CAS_TRIES} attempts; try again")


def _store(row: Rollout, targets: list[TargetRow], before: machine.Rollout, after: machine.Rollout,
           moves: list[machine.Transition], commands: list[machine.Command], actor: Any, now: datetime) -> bool:
    changes: dict[str, Any] = {"revision": row.revision + 1, "updated_at": now}
    for name in ("state", "paused_total", "pause_reason", "reason", "revert", *_TIMES):
        value = getattr(after, name)
        value = _datetime(value) if name in _TIMES else value
        changes[name] = str(value) if isinstance(value, StrEnum) else value
    for name in ("pause_reason", "reason"):  # the machine quotes node errors: keep within the columns
        changes[name] = clip(changes[name], Rollout._meta.get_field(name).max_length)
    soaks = [t.soak_until for t in after.targets if t.state == machine.TargetState.VERIFYING and t.soak_until]
    changes["soak_until"] = _datetime(max(soaks)) if soaks else None
    if after.state in machine.TERMINAL and before.state not in machine.TERMINAL:
        changes["finished_at"] = now
    if not Rollout.objects.filter(pk=row.pk, revision=row.revision).update(**changes):
        return False
    by_node = {t.node_id: t.id for t in targets}
    _update_targets(row.pk, [new for old, new in zip(before.targets, after.targets, strict=True) if old != new],
                    after.id, now)
    actor_name = actor.get_username() if hasattr(actor, "get_username") else str(actor)
    RolloutEvent.objects.bulk_create([
        RolloutEvent(rollout_id=row.pk, target_id=by_node.get(move.node), from_state=str(move.from_state),
                     to_state=str(move.to_state), why=clip(move.why, 500), actor_name=actor_name[:150])
        for move in moves
    ])
    _dispatch(row, commands)
    if after.state in machine.TERMINAL and before.state not in machine.TERMINAL:
        _finished(row, after)
    return True


_TARGET_COLUMNS = ("state", "on", "attempt", "tries", "online", "error", "command_id", *_TARGET_TIMES)


_ERROR_LENGTH = RolloutTarget._meta.get_field("error").max_length


def clip(text: str, length: int) -> str:
    """``text`` within ``length`` characters, with an ellipsis when cut."""
    return text if len(text) <= length else text[: length - 1] + "…"


def _update_targets(rollout_id: int, changed: list[machine.Target], snapshot_id: int, now: datetime) -> None:
    """One UPDATE per changed target, sent as one batch (executemany): far cheaper than bulk_update's
    CASE expressions for hundreds of targets."""
    if not changed:
        return
    fields = {name: RolloutTarget._meta.get_field(name) for name in (*_TARGET_COLUMNS, "updated_at")}
    rows = []
    for target in changed:
        kind = target.outstanding()
        values = {name: getattr(target, name) for name in _TARGET_COLUMNS if name != "command_id"}
        values.update({name: _datetime(values[name]) for name in _TARGET_TIMES})
        values["command_id"] = machine.command_id(snapshot_id, target, kind) if kind else ""
        values["error"] = clip(values["error"], _ERROR_LENGTH)
        values["updated_at"] = now
        rows.append([fields[name].get_db_prep_save(str(value) if isinstance(value, StrEnum) else value, connection)
                     for name, value in values.items()] + [rollout_id, target.node])
    table = connection.ops.quote_name(RolloutTarget._meta.db_table)
    columns = ", ".join(f"{connection.ops.quote_name(fields[name].column)} = %s" for name in
                        (*[n for n in _TARGET_COLUMNS if n != "command_id"], "command_id", "updated_at"))
    with connection.cursor() as cursor:
        cursor.executemany(f"UPDATE {table} SET {columns} WHERE rollout_id = %s AND node_id = %s", rows)


def _dispatch(row: Rollout, commands: list[machine.Command]) -> None:
    """Machine commands as hub NodeCommands: stage = deploy, activate = activate the new version, a health
    check = the strategy's prompt to the new version, a local rollback or a revert = activate the old
    version again."""
    items = []
    for command in commands:
        if command.kind == machine.CommandKind.STAGE:
            items.append((command.node, HubKind.DEPLOY, row.to_version, command.id))
        elif command.kind == machine.CommandKind.ACTIVATE:
            items.append((command.node, HubKind.ACTIVATE, row.to_version, command.id))
        elif command.kind == machine.CommandKind.HEALTHCHECK:
            items.append((command.node, HubKind.HEALTHCHECK, row.to_version, command.id))
        elif command.kind in (machine.CommandKind.ROLLBACK_LOCAL, machine.CommandKind.REVERT):
            items.append((command.node, HubKind.ACTIVATE, row.from_version, command.id))
    if items:
        check = (row.strategy or {}).get("healthcheck") or {}
        hub_commands.ensure("engine", items, healthcheck={
            "prompt": check.get("prompt") or "", "expect": check.get("expect"),
            "timeout": check.get("timeout_seconds") or 60.0})


def _finished(row: Rollout, after: machine.Rollout) -> None:
    deployment = row.deployment
    if after.state == machine.RolloutState.SUCCEEDED and deployment.desired_version_id != row.to_version_id:
        deployment.desired_version = row.to_version
        deployment.save(update_fields=["desired_version", "updated_at"])
    audit.record("engine", f"rollout.{after.state.value}", row, deployment=deployment.name,
                 version=row.to_version.sha, **({"reason": after.reason} if after.reason else {}))
