"""Rows ⇄ the state machine: read a rollout's snapshot, apply inputs, write the result back.

Every write is one transaction: a compare-and-set UPDATE of the rollout on its ``revision`` (a writer that
lost the race retries from the fresh rows), the changed targets, one RolloutEvent per transition, and the
machine's commands as hub NodeCommands under their stable ids (so a resent command is never done twice).
"""

from __future__ import annotations

from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from django.db import transaction
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


def snapshot(row: Rollout, targets: list[RolloutTarget]) -> machine.Rollout:
    return machine.Rollout(
        id=row.pk, strategy=Strategy.model_validate(row.strategy), state=machine.RolloutState(row.state),
        deadline_at=_seconds(row.deadline_at), paused_at=_seconds(row.paused_at), paused_total=row.paused_total,
        resume_at=_seconds(row.resume_at), pause_reason=row.pause_reason, reason=row.reason, revert=row.revert,
        targets=tuple(machine.Target(
            node=t.node_id, name=t.node.name, wave=t.wave, state=machine.TargetState(t.state),
            on=machine.Side(t.on), attempt=t.attempt, tries=t.tries, online=t.online,
            offline_until=_seconds(t.offline_until), soak_until=_seconds(t.soak_until),
            check_until=_seconds(t.check_until), error=t.error,
        ) for t in targets),
    )


def load(rollout_id: int) -> tuple[Rollout, list[RolloutTarget]]:
    row = Rollout.objects.select_related("deployment__model", "from_version__model", "to_version__model").get(
        pk=rollout_id)
    targets = list(row.targets.select_related("node").order_by("position", "id"))
    return row, targets


def apply(rollout_id: int, events: list[machine.Event], actor: Any = "engine",
          now: datetime | None = None) -> machine.Result:
    """Feed ``events`` to the rollout in order and store the outcome in one transaction.

    Raises `machine.Rejected` (an operator action that does not fit) or `Conflict`."""
    now = now or timezone.now()
    for _ in range(CAS_TRIES):
        with transaction.atomic():
            row, targets = load(rollout_id)
            before = snapshot(row, targets)
            after, commands, moves = before, [], []
            for event in events:
                result = machine.step(after, event, now.timestamp())
                after = result.rollout
                commands += result.commands
                moves += result.transitions
            if after == before and not commands:
                return machine.Result(after)
            if not _store(row, targets, before, after, moves, commands, actor, now):
                continue  # another writer got there first: read again
            return machine.Result(after, tuple(commands), tuple(moves))
    raise Conflict(f"rollout {rollout_id} kept changing under {CAS_TRIES} attempts; try again")


def _store(row: Rollout, targets: list[RolloutTarget], before: machine.Rollout, after: machine.Rollout,
           moves: list[machine.Transition], commands: list[machine.Command], actor: Any, now: datetime) -> bool:
    changes: dict[str, Any] = {"revision": row.revision + 1, "updated_at": now}
    for name in ("state", "paused_total", "pause_reason", "reason", "revert", *_TIMES):
        value = getattr(after, name)
        value = _datetime(value) if name in _TIMES else value
        changes[name] = str(value) if isinstance(value, StrEnum) else value
    soaks = [t.soak_until for t in after.targets if t.state == machine.TargetState.VERIFYING and t.soak_until]
    changes["soak_until"] = _datetime(max(soaks)) if soaks else None
    if after.state in machine.TERMINAL and before.state not in machine.TERMINAL:
        changes["finished_at"] = now
    if not Rollout.objects.filter(pk=row.pk, revision=row.revision).update(**changes):
        return False
    by_node = {t.node_id: t for t in targets}
    changed = []
    for old, new in zip(before.targets, after.targets, strict=True):
        if old == new:
            continue
        target = by_node[new.node]
        for field in dataclass_fields(new):
            if field.name in ("node", "name"):
                continue
            value = getattr(new, field.name)
            setattr(target, field.name, _datetime(value) if field.name in _TARGET_TIMES else str(value)
                    if isinstance(value, StrEnum) else value)
        kind = new.outstanding()
        target.command_id = machine.command_id(after.id, new, kind) if kind else ""
        target.updated_at = now
        changed.append(target)
    if changed:
        RolloutTarget.objects.bulk_update(changed, [
            "state", "on", "attempt", "tries", "online", "error", "command_id", "updated_at", "wave",
            *_TARGET_TIMES])
    actor_name = actor.get_username() if hasattr(actor, "get_username") else str(actor)
    RolloutEvent.objects.bulk_create([
        RolloutEvent(rollout_id=row.pk, target=by_node.get(move.node), from_state=str(move.from_state),
                     to_state=str(move.to_state), why=move.why[:500], actor_name=actor_name[:150])
        for move in moves
    ])
    _dispatch(row, by_node, commands)
    if after.state in machine.TERMINAL and before.state not in machine.TERMINAL:
        _finished(row, after)
    return True


def _dispatch(row: Rollout, by_node: dict[int, RolloutTarget], commands: list[machine.Command]) -> None:
    """Machine commands as hub NodeCommands: stage = deploy, activate = activate the new version, a local
    rollback or a revert = activate the old version again."""
    for command in commands:
        node = by_node[command.node].node
        if command.kind == machine.CommandKind.STAGE:
            hub_commands.ensure("engine", node, HubKind.DEPLOY, row.to_version, command.id)
        elif command.kind == machine.CommandKind.ACTIVATE:
            hub_commands.ensure("engine", node, HubKind.ACTIVATE, row.to_version, command.id)
        elif command.kind in (machine.CommandKind.ROLLBACK_LOCAL, machine.CommandKind.REVERT):
            hub_commands.ensure("engine", node, HubKind.ACTIVATE, row.from_version, command.id)
        else:  # refused when the rollout was created (services.SUPPORTED_CHECKS); never reached
            raise machine.Rejected("this server cannot send health checks yet")


def _finished(row: Rollout, after: machine.Rollout) -> None:
    deployment = row.deployment
    if after.state == machine.RolloutState.SUCCEEDED and deployment.desired_version_id != row.to_version_id:
        deployment.desired_version = row.to_version
        deployment.save(update_fields=["desired_version", "updated_at"])
    audit.record("engine", f"rollout.{after.state.value}", row, deployment=deployment.name,
                 version=row.to_version.sha, **({"reason": after.reason} if after.reason else {}))
