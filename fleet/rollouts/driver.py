"""The engine's `rollouts` task: read what happened since the last pass from the rows (each target's
outstanding NodeCommand and its node's status), feed it to the state machine with a timer tick, store the
outcome. Nothing lives in memory between passes, so any engine (after a restart, or a new leader) carries
on from the rows; its first pass resends every outstanding command (stable ids: never done twice)."""

from __future__ import annotations

import logging
from datetime import datetime

from django.utils import timezone

from fleet.hub.models import CommandState, NodeCommand
from fleet.inventory.models import NodeStatus
from fleet.rollouts import machine, transitions
from fleet.rollouts.models import ACTIVE_ROLLOUT_STATES, Rollout

log = logging.getLogger(__name__)
INTERVAL = 1.0
_restarted = False  # has this process's engine made its first pass yet

_DONE = {
    machine.CommandKind.STAGE: machine.ReportKind.STAGED,
    machine.CommandKind.ACTIVATE: machine.ReportKind.ACTIVATED,
    machine.CommandKind.ROLLBACK_LOCAL: machine.ReportKind.ROLLED_BACK,
    machine.CommandKind.REVERT: machine.ReportKind.REVERTED,
    machine.CommandKind.HEALTHCHECK: machine.ReportKind.HEALTHY,
}
_FINISHED = {CommandState.STAGED, CommandState.ACTIVE, CommandState.SUCCEEDED}
_TRANSFER = {CommandState.DOWNLOADING, CommandState.VERIFYING}


def report_for(kind: machine.CommandKind, command: NodeCommand) -> machine.ReportKind | None:
    """What a hub command's state says to the machine (None: nothing new)."""
    if command.state == CommandState.FAILED:
        return machine.ReportKind.UNHEALTHY if kind == machine.CommandKind.HEALTHCHECK else machine.ReportKind.FAILED
    if command.state in _FINISHED:
        return _DONE.get(kind)
    if kind == machine.CommandKind.STAGE and command.state in _TRANSFER:
        return machine.ReportKind.DOWNLOADING
    return None


def reports(row: Rollout, targets: list[transitions.TargetRow], snapshot: machine.Rollout) -> list[machine.Report]:
    ids = [t.command_id for t in targets if t.command_id]
    commands = {c.command_id: c for c in NodeCommand.objects.filter(command_id__in=ids).only(
        "command_id", "state", "error", "updated_at")} if ids else {}
    found: list[machine.Report] = []
    for target, current in zip(targets, snapshot.targets, strict=True):
        online = target.node_status == NodeStatus.ONLINE
        if online != target.online:
            found.append(machine.Report(target.node_id, machine.ReportKind.ONLINE if online
                                        else machine.ReportKind.OFFLINE))
        command = commands.get(target.command_id)
        kind = current.outstanding()
        if command is None or kind is None:
            continue
        report = report_for(kind, command)
        stale_progress = (report == machine.ReportKind.DOWNLOADING and target.state == "downloading"
                          and command.updated_at <= row.updated_at)
        if report is not None and not stale_progress:
            found.append(machine.Report(target.node_id, report, command.command_id, command.error))
    return found


def advance(rollout_id: int, now: datetime | None = None, restart: bool = False) -> machine.Result:
    timer = machine.Restart() if restart else machine.Tick()
    return transitions.apply(rollout_id, lambda row, targets, snapshot: [*reports(row, targets, snapshot), timer],
                             now=now)


def tick(now: datetime | None = None) -> int:
    """The engine task: advance every active rollout once. Returns how many it advanced."""
    global _restarted
    restart, _restarted = not _restarted, True
    now = now or timezone.now()
    done = 0
    for rollout_id in Rollout.objects.filter(state__in=ACTIVE_ROLLOUT_STATES).values_list("pk", flat=True):
        try:
            advance(rollout_id, now, restart)
            done += 1
        except transitions.Conflict:
            log.info("rollout %s changed meanwhile; the next pass takes it", rollout_id)
        except Exception:
            log.exception("advancing rollout %s failed; the next pass retries", rollout_id)
    return done
