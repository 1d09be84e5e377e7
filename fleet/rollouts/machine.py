"""The rollout state machine, as pure functions: no Django, no I/O, no clock of its own.

``step(rollout, event, now)`` takes a snapshot of one rollout (its state, strategy, stored deadlines and
every target) and one input (an agent's report, a timer tick, an operator action, an engine restart) and
returns the new snapshot, the commands to send and the transitions to log. Everything it needs is in the
snapshot, so after an engine restart the rollout continues from the stored rows alone.

The rules (DESIGN §5):
- stage everywhere first (the old version keeps serving), then activate wave by wave: the canary, then
  batches; a target is activated only once it is staged, and never more than ``max_unavailable`` targets
  are switching or proving themselves (activating, verifying, rolling back, reverting) at once;
- an activated target soaks ``min_ready_seconds`` and must then answer a health check; a failing one
  rolls back locally and counts against the failure budget (the canary's, else a share of the rest);
- over the budget: aborting (wait for switches in flight) → rolling_back (committed targets return to the
  old version, ``max_unavailable`` at a time) → aborted, with the reason;
- a target offline before it started switching is deferred after ``offline_grace_seconds`` (not failed)
  and rejoins when it returns; one that is switching keeps its place and its commands are resent;
- pause stops every clock (deadlines move on by the paused time at resume); no progress for
  ``progress_deadline_seconds`` pauses the rollout with the reason; a newer rollout supersedes it.

Commands carry stable ids (rollout, node, attempt, kind, retry), so a resent command is never done twice.
Times are seconds since the epoch (floats).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from fleet.rollouts.planner import max_unavailable
from fleet.rollouts.strategy import Strategy, resolve
from fleet.rollouts.vocabulary import (  # re-exported: callers use machine.X
    BEFORE_SWITCH,
    DONE,
    FAILING,
    MAX_TRIES,
    RUNNING,
    TERMINAL,
    UNAVAILABLE,
    WINDING_DOWN,
    Abort,
    Command,
    CommandKind,
    Event,
    Pause,
    Rejected,
    Report,
    ReportKind,
    Restart,
    Result,
    Resume,
    RetryTarget,
    Rollback,
    Rollout,
    RolloutState,
    Side,
    Supersede,
    Target,
    TargetState,
    Tick,
    Transition,
    command_id,
)

R, T = RolloutState, TargetState
__all__ = [  # the vocabulary is part of this module's interface
    "RolloutState", "TargetState", "Side", "CommandKind", "ReportKind", "RUNNING", "WINDING_DOWN", "TERMINAL",
    "BEFORE_SWITCH", "UNAVAILABLE", "DONE", "FAILING", "MAX_TRIES", "Target", "command_id", "Rollout", "Command",
    "Transition", "Result", "Report", "Tick", "Restart", "Pause", "Resume", "Abort", "Rollback", "RetryTarget",
    "Supersede", "Event", "Rejected", "step", "step_all",
]


# ---- the step ----------------------------------------------------------------------------------------


@dataclass
class _Work:
    rollout: Rollout
    now: float
    targets: list[Target] = field(default_factory=list)
    changes: dict[str, Any] = field(default_factory=dict)
    commands: list[Command] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.targets = list(self.rollout.targets)
        self.index = {target.node: i for i, target in enumerate(self.targets)}

    def get(self, name: str) -> Any:
        return self.changes.get(name, getattr(self.rollout, name))

    @property
    def state(self) -> RolloutState:
        return self.get("state")

    @property
    def strategy(self) -> Strategy:
        return self.rollout.strategy

    def move(self, state: RolloutState, why: str, **changes: Any) -> None:
        self.transitions.append(Transition(None, self.state, state, why))
        self.changes.update(state=state, **changes)

    def update(self, index: int, why: str = "", **changes: Any) -> Target:
        old = self.targets[index]
        new = self.targets[index] = replace(old, **changes)
        if new.state != old.state:
            self.transitions.append(Transition(old.node, old.state, new.state, why))
            if self.state in RUNNING and self.get("deadline_at") is not None:
                self.changes["deadline_at"] = self.now + self.strategy.progress_deadline_seconds
        return new

    def issue(self, index: int, kind: CommandKind) -> None:
        target = self.targets[index]
        self.commands.append(Command(command_id(self.rollout.id, target, kind), target.node, kind, target.attempt))

    def unavailable(self) -> int:
        return sum(t.state in UNAVAILABLE for t in self.targets)

    def result(self) -> Result:
        rollout = replace(self.rollout, targets=tuple(self.targets), **self.changes)
        return Result(rollout, tuple(self.commands), tuple(self.transitions))


def step(rollout: Rollout, event: Event, now: float) -> Result:
    """Apply one input to a rollout snapshot; raises `Rejected` for an operator action it cannot take."""
    return step_all(rollout, [event], now)


def step_all(rollout: Rollout, events: list[Event], now: float) -> Result:
    """Apply several inputs that arrived at the same moment, in order: the same as one `step` each, but
    agent reports are taken together before the rollout advances (one pass of the engine over many nodes
    costs one copy of the snapshot, not one per report)."""
    work = _Work(rollout, now)
    for position, event in enumerate(events):
        if isinstance(event, Report):
            _report(work, event)
            if position + 1 < len(events) and isinstance(events[position + 1], Report):
                continue  # advance once after the last of a run of reports
        elif isinstance(event, Restart):
            for index, target in enumerate(work.targets):
                kind = target.outstanding()
                if kind is not None and target.online and work.state not in TERMINAL:
                    work.issue(index, kind)
        elif not isinstance(event, Tick):
            _operator(work, event)
        _advance(work)
    return work.result()


def _operator(work: _Work, event: Event) -> None:
    state = work.state
    if isinstance(event, Pause):
        if state == R.PAUSED:
            return
        if state not in RUNNING:
            raise Rejected(f"a rollout that is {state.value.replace('_', ' ')} cannot be paused")
        work.move(R.PAUSED, event.reason, paused_at=work.now, pause_reason=event.reason, resume_at=event.until)
    elif isinstance(event, Resume):
        if state in RUNNING - {R.PAUSED}:
            return
        if state != R.PAUSED:
            raise Rejected(f"a rollout that is {state.value.replace('_', ' ')} cannot be resumed")
        _resume(work, "resumed by an operator")
    elif isinstance(event, Abort | Rollback):
        if state in WINDING_DOWN:
            if isinstance(event, Rollback) and not work.get("revert"):
                work.changes["revert"] = True
            return
        if state in TERMINAL:
            hint = " start a rollout back to the previous version instead" if isinstance(event, Rollback) else ""
            raise Rejected(f"the rollout already {state.value};{hint}".rstrip(";"))
        _abort(work, event.reason, revert=isinstance(event, Rollback) or work.strategy.auto_rollback)
    elif isinstance(event, RetryTarget):
        index = work.index.get(event.node)
        if index is None:
            raise Rejected(f"node {event.node} is not a target of this rollout")
        target = work.targets[index]
        if state not in RUNNING:
            raise Rejected(f"targets cannot be retried once the rollout is {state.value.replace('_', ' ')}")
        if target.state not in (T.FAILED, T.DEFERRED):
            raise Rejected(f"{target.name or target.node} is {target.state.value.replace('_', ' ')}, not failed")
        work.update(index, "retried by an operator", state=T.QUEUED, attempt=target.attempt + 1, tries=0, error="")
    elif isinstance(event, Supersede):
        if state in TERMINAL:
            raise Rejected(f"the rollout already {state.value}")
        why = f"superseded by rollout {event.by}" if event.by is not None else "superseded by a newer rollout"
        for index, target in enumerate(work.targets):
            if target.state not in DONE:
                work.update(index, why, state=T.ABORTED)
        work.move(R.SUPERSEDED, why, reason=why, paused_at=None, resume_at=None)


def _report(work: _Work, report: Report) -> None:
    index = work.index.get(report.node)
    if index is None or work.state in TERMINAL:
        return
    target = work.targets[index]
    strategy = work.strategy
    if report.kind == ReportKind.OFFLINE:
        if target.online:
            work.update(index, online=False, offline_until=work.now + strategy.offline_grace_seconds)
        return
    if report.kind == ReportKind.ONLINE:
        if target.online:
            return
        target = work.update(index, online=True, offline_until=None)
        if target.state == T.DEFERRED and work.state in RUNNING:
            work.update(index, "back online", state=T.QUEUED, attempt=target.attempt + 1, tries=0)
        elif (kind := target.outstanding()) is not None:
            if kind == CommandKind.HEALTHCHECK and strategy.healthcheck is not None:
                target = work.update(index, check_until=work.now + strategy.healthcheck.timeout_seconds)
            work.issue(index, kind)  # the same id: an agent that already did it does not do it again
        return
    kind = target.outstanding()
    if kind is None or report.command_id != command_id(work.rollout.id, target, kind):
        return  # a late or repeated report of an older command
    error = (report.error or "").strip()[:500]
    if kind == CommandKind.STAGE:
        if report.kind == ReportKind.DOWNLOADING and target.state == T.SCHEDULED:
            work.update(index, "downloading", state=T.DOWNLOADING)
        elif report.kind == ReportKind.DOWNLOADING and work.get("deadline_at") is not None and work.state in RUNNING:
            work.changes["deadline_at"] = work.now + strategy.progress_deadline_seconds  # bytes still arrive
        elif report.kind == ReportKind.STAGED:
            work.update(index, "staged", state=T.STAGED)
        elif report.kind == ReportKind.FAILED:
            work.update(index, f"staging failed: {error}", state=T.FAILED, error=f"staging failed: {error}")
    elif kind == CommandKind.ACTIVATE:
        if report.kind == ReportKind.ACTIVATED:
            work.update(index, "activated; soaking", state=T.VERIFYING, on=Side.NEW,
                        soak_until=work.now + strategy.min_ready_seconds, check_until=None)
        elif report.kind == ReportKind.FAILED:
            work.update(index, f"activation failed: {error}", state=T.FAILED, error=f"activation failed: {error}")
    elif kind == CommandKind.HEALTHCHECK:
        if report.kind == ReportKind.HEALTHY:
            work.update(index, "health check passed", state=T.COMMITTED, soak_until=None, check_until=None)
        elif report.kind in (ReportKind.UNHEALTHY, ReportKind.FAILED):
            _roll_back_locally(work, index, f"health check failed: {error or 'no reason given'}")
    elif kind == CommandKind.ROLLBACK_LOCAL:
        if report.kind == ReportKind.ROLLED_BACK:
            work.update(index, "rolled back locally", state=T.FAILED, on=Side.OLD)
        elif report.kind == ReportKind.FAILED:
            _retry_or_give_up(work, index, kind, f"local rollback failed: {error}")
    elif kind == CommandKind.REVERT:
        if report.kind == ReportKind.REVERTED:
            work.update(index, "reverted to the old version", state=T.REVERTED, on=Side.OLD)
        elif report.kind == ReportKind.FAILED:
            _retry_or_give_up(work, index, kind, f"revert failed: {error}")


def _roll_back_locally(work: _Work, index: int, why: str) -> None:
    work.update(index, why, state=T.ROLLING_BACK_LOCAL, tries=0, soak_until=None, check_until=None, error=why)
    work.issue(index, CommandKind.ROLLBACK_LOCAL)


def _retry_or_give_up(work: _Work, index: int, kind: CommandKind, why: str) -> None:
    target = work.targets[index]
    if target.tries + 1 < MAX_TRIES:
        work.update(index, tries=target.tries + 1, error=why)
        work.issue(index, kind)
    else:
        work.update(index, f"{why} ({MAX_TRIES} tries); it still serves the new version",
                    state=T.FAILED, error=f"{why}; still on the new version")


def _resume(work: _Work, why: str) -> None:
    paused_at = work.get("paused_at")
    shift = max(0.0, work.now - paused_at) if paused_at is not None else 0.0

    def later(value: float | None) -> float | None:
        return None if value is None else value + shift

    for index, target in enumerate(work.targets):
        work.update(index, offline_until=later(target.offline_until), soak_until=later(target.soak_until),
                    check_until=later(target.check_until))
    started = work.get("deadline_at") is not None
    work.move(R.PROGRESSING if started else R.PENDING, why, paused_at=None, resume_at=None, pause_reason="",
              paused_total=work.get("paused_total") + shift,
              deadline_at=work.now + work.strategy.progress_deadline_seconds if started else None)


def _abort(work: _Work, reason: str, revert: bool) -> None:
    paused_at = work.get("paused_at")
    paused = max(0.0, work.now - paused_at) if paused_at is not None else 0.0
    work.move(R.ABORTING, reason, reason=reason, revert=revert, paused_at=None, resume_at=None,
              paused_total=work.get("paused_total") + paused)


def _over_budget(work: _Work) -> str | None:
    targets = work.targets
    has_canary = resolve(work.strategy.canary, len(targets), minimum=0) > 0
    canary = [t for t in targets if has_canary and t.wave == 0]
    later = [t for t in targets if not (has_canary and t.wave == 0)]
    for group, budget, what in ((canary, work.strategy.canary_failure_budget, "canary"),
                                (later, work.strategy.later_failure_budget(len(later)), "later")):
        failed = [t for t in group if t.state in FAILING]
        if len(failed) > budget:
            first = failed[0]
            return (f"{len(failed)} of {len(group)} {what} targets failed (budget {budget}); "
                    f"{first.name or first.node}: {first.error or 'failed'}")
    return None


def _advance(work: _Work) -> None:
    if work.state in TERMINAL:
        return
    resume_at = work.get("resume_at")
    if work.state == R.PAUSED and resume_at is not None and work.now >= resume_at:
        _resume(work, "the pause ended")
    if work.state != R.PAUSED:
        _timers(work)
    if work.state in RUNNING and (reason := _over_budget(work)):
        _abort(work, reason, revert=work.strategy.auto_rollback)
    if work.state == R.PENDING:
        for index, target in enumerate(work.targets):
            if target.state == T.QUEUED and target.on == Side.NEW:
                work.update(index, "already serves the new version", state=T.SKIPPED)
        work.move(R.PROGRESSING, "started", deadline_at=work.now + work.strategy.progress_deadline_seconds)
    if work.state in (R.PROGRESSING, R.VERIFYING):
        _progress(work)
    if work.state == R.ABORTING:
        _settle(work)
    if work.state == R.ROLLING_BACK:
        _revert(work)


def _timers(work: _Work) -> None:
    now, strategy = work.now, work.strategy
    for index, target in enumerate(work.targets):
        offline_over = not target.online and target.offline_until is not None and now >= target.offline_until
        if offline_over and (target.state in BEFORE_SWITCH
                             or target.state == T.COMMITTED and work.state == R.ROLLING_BACK):
            work.update(index, f"offline for over {strategy.offline_grace_seconds:g}s", state=T.DEFERRED)
        elif target.state != T.VERIFYING or not target.online:
            continue
        elif target.check_until is None and work.state in RUNNING and now >= (target.soak_until or 0.0):
            if strategy.healthcheck is None:
                work.update(index, f"soaked {strategy.min_ready_seconds:g}s (no health check configured)",
                            state=T.COMMITTED, soak_until=None)
                continue
            work.update(index, check_until=now + strategy.healthcheck.timeout_seconds)
            work.issue(index, CommandKind.HEALTHCHECK)
        elif target.check_until is not None and now >= target.check_until:
            timeout = strategy.healthcheck.timeout_seconds if strategy.healthcheck else 0
            _roll_back_locally(work, index, f"health check failed: no answer within {timeout:g}s")


def _progress(work: _Work) -> None:
    for index, target in enumerate(work.targets):
        if target.state == T.QUEUED and target.online:
            work.update(index, "staging while the old version serves", state=T.SCHEDULED)
            work.issue(index, CommandKind.STAGE)
    open_targets = [t for t in work.targets if t.state not in DONE]
    if open_targets:
        _activate(work, min(t.wave for t in open_targets))
    elif any(t.state in (T.COMMITTED, T.SKIPPED) for t in work.targets):
        work.move(R.SUCCEEDED, "every target is done", deadline_at=None)
        return
    elif not any(t.state == T.DEFERRED for t in work.targets):
        _abort(work, "no target took the new version", revert=work.strategy.auto_rollback)
        return
    # (every remaining target offline: wait for one to return; the progress deadline pauses meanwhile)
    deadline = work.get("deadline_at")
    if deadline is not None and work.now >= deadline:
        why = f"no progress for {work.strategy.progress_deadline_seconds:g}s"
        work.move(R.PAUSED, why, paused_at=work.now, pause_reason=why, resume_at=None)


def _activate(work: _Work, wave: int) -> None:
    """Activate the current wave's staged targets while slots are free; verifying when all soak or check."""
    slots = max_unavailable(work.strategy, len(work.targets)) - work.unavailable()
    for index, target in enumerate(work.targets):
        if slots <= 0:
            break
        if target.wave == wave and target.state == T.STAGED and target.online:
            work.update(index, f"activating (wave {wave})", state=T.ACTIVATING)
            work.issue(index, CommandKind.ACTIVATE)
            slots -= 1
    in_wave = [t for t in work.targets if t.wave == wave and t.state not in DONE]
    wanted = R.VERIFYING if all(t.state == T.VERIFYING for t in in_wave) else R.PROGRESSING
    if wanted != work.state:
        work.move(wanted, f"wave {wave} {'soaking and checking' if wanted == R.VERIFYING else 'in progress'}")


def _settle(work: _Work) -> None:
    """Aborting: targets that never switched stop; wait for switches in flight, then revert or finish."""
    for index, target in enumerate(work.targets):
        if target.state in BEFORE_SWITCH:
            work.update(index, "rollout aborted before it switched", state=T.ABORTED)
    if any(t.state == T.ACTIVATING for t in work.targets):
        return
    if work.get("revert") and any(t.state in (T.VERIFYING, T.COMMITTED) for t in work.targets):
        work.move(R.ROLLING_BACK, "returning switched targets to the old version")
        return
    for index, target in enumerate(work.targets):
        if target.state == T.VERIFYING:
            work.update(index, "rollout aborted; left on the new version", state=T.ABORTED,
                        soak_until=None, check_until=None)
    if not any(t.state in (T.ROLLING_BACK_LOCAL, T.REVERTING) for t in work.targets):
        work.move(R.ABORTED, work.get("reason") or "aborted")


def _revert(work: _Work) -> None:
    slots = max_unavailable(work.strategy, len(work.targets)) - work.unavailable()
    for index, target in enumerate(work.targets):
        if target.state == T.VERIFYING:  # already counted as unavailable: reverting takes no new slot
            work.update(index, "reverting", state=T.REVERTING, tries=0, soak_until=None, check_until=None)
            work.issue(index, CommandKind.REVERT)
        elif target.state == T.COMMITTED and target.online and slots > 0:
            work.update(index, "reverting", state=T.REVERTING, tries=0)
            work.issue(index, CommandKind.REVERT)
            slots -= 1
    busy = (T.ACTIVATING, T.VERIFYING, T.COMMITTED, T.REVERTING, T.ROLLING_BACK_LOCAL)
    if not any(t.state in busy for t in work.targets):
        work.move(R.ABORTED, work.get("reason") or "aborted")
