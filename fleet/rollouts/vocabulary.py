"""The rollout state machine's vocabulary: states, the snapshot of a rollout and its targets, the inputs
it takes and the commands and transitions it returns. Plain values (no Django): stored as rows by
`fleet.rollouts.transitions`, serialisable as JSON (`Rollout.to_json`) for tests and tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fleet.rollouts.strategy import Strategy


class RolloutState(StrEnum):
    PENDING = "pending"
    PROGRESSING = "progressing"
    VERIFYING = "verifying"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ABORTING = "aborting"
    ROLLING_BACK = "rolling_back"
    ABORTED = "aborted"
    SUPERSEDED = "superseded"


class TargetState(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    DOWNLOADING = "downloading"
    STAGED = "staged"
    ACTIVATING = "activating"
    VERIFYING = "verifying"
    COMMITTED = "committed"
    DEFERRED = "deferred"
    ROLLING_BACK_LOCAL = "rolling_back_local"
    REVERTING = "reverting"
    SKIPPED = "skipped"
    FAILED = "failed"
    REVERTED = "reverted"
    ABORTED = "aborted"


class Side(StrEnum):
    """Which of the rollout's two versions a target serves, as far as its reports tell."""

    OLD = "old"
    NEW = "new"


class CommandKind(StrEnum):
    STAGE = "stage"
    ACTIVATE = "activate"
    HEALTHCHECK = "healthcheck"
    ROLLBACK_LOCAL = "rollback_local"
    REVERT = "revert"


class ReportKind(StrEnum):
    DOWNLOADING = "downloading"
    STAGED = "staged"
    ACTIVATED = "activated"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    REVERTED = "reverted"
    OFFLINE = "offline"
    ONLINE = "online"


R, T = RolloutState, TargetState
RUNNING = frozenset({R.PENDING, R.PROGRESSING, R.VERIFYING, R.PAUSED})
WINDING_DOWN = frozenset({R.ABORTING, R.ROLLING_BACK})
TERMINAL = frozenset({R.SUCCEEDED, R.ABORTED, R.SUPERSEDED})
BEFORE_SWITCH = frozenset({T.QUEUED, T.SCHEDULED, T.DOWNLOADING, T.STAGED})
UNAVAILABLE = frozenset({T.ACTIVATING, T.VERIFYING, T.ROLLING_BACK_LOCAL, T.REVERTING})
DONE = frozenset({T.COMMITTED, T.SKIPPED, T.FAILED, T.DEFERRED, T.REVERTED, T.ABORTED})
FAILING = frozenset({T.FAILED, T.ROLLING_BACK_LOCAL})
MAX_TRIES = 3  # sends of a local rollback or revert before the target is left failed on the new version
_SHORT = {CommandKind.STAGE: "stage", CommandKind.ACTIVATE: "activate", CommandKind.HEALTHCHECK: "health",
          CommandKind.ROLLBACK_LOCAL: "rollback", CommandKind.REVERT: "revert"}


@dataclass(frozen=True)
class Target:
    node: int
    name: str = ""
    wave: int = 0
    state: TargetState = T.QUEUED
    on: Side = Side.OLD
    attempt: int = 0  # raised by an operator's retry and by a deferred target's return: new command ids
    tries: int = 0  # re-sends of a failed local rollback or revert
    online: bool = True
    offline_until: float | None = None  # deferred after this, if still offline and not yet switching
    soak_until: float | None = None  # verifying: the health check is sent after this
    check_until: float | None = None  # verifying: set once the health check is sent, its answer is due
    error: str = ""

    def outstanding(self) -> CommandKind | None:
        """The command this target waits on in its state (the one a report must answer)."""
        if self.state in (T.SCHEDULED, T.DOWNLOADING):
            return CommandKind.STAGE
        if self.state == T.ACTIVATING:
            return CommandKind.ACTIVATE
        if self.state == T.VERIFYING and self.check_until is not None:
            return CommandKind.HEALTHCHECK
        if self.state == T.ROLLING_BACK_LOCAL:
            return CommandKind.ROLLBACK_LOCAL
        if self.state == T.REVERTING:
            return CommandKind.REVERT
        return None


def command_id(rollout_id: int, target: Target, kind: CommandKind) -> str:
    retry = f".{target.tries}" if kind in (CommandKind.ROLLBACK_LOCAL, CommandKind.REVERT) and target.tries else ""
    return f"ro{rollout_id}-n{target.node}-a{target.attempt}-{_SHORT[kind]}{retry}"


@dataclass(frozen=True)
class Rollout:
    id: int
    strategy: Strategy
    targets: tuple[Target, ...]
    state: RolloutState = R.PENDING
    deadline_at: float | None = None  # progress deadline; None until the rollout starts
    paused_at: float | None = None
    paused_total: float = 0.0
    resume_at: float | None = None
    pause_reason: str = ""
    reason: str = ""
    revert: bool = False  # winding down: committed targets return to the old version

    def target(self, node: int) -> Target | None:
        return next((t for t in self.targets if t.node == node), None)

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in ("strategy", "targets")}
        data["strategy"] = self.strategy.model_dump(mode="json")
        data["targets"] = [{name: getattr(t, name) for name in t.__dataclass_fields__} for t in self.targets]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rollout:
        targets = tuple(Target(**{**t, "state": T(t["state"]), "on": Side(t["on"])}) for t in data["targets"])
        fields = {k: v for k, v in data.items() if k not in ("strategy", "targets", "state")}
        return cls(strategy=Strategy.model_validate(data["strategy"]), targets=targets,
                   state=R(data["state"]), **fields)


@dataclass(frozen=True)
class Command:
    id: str
    node: int
    kind: CommandKind
    attempt: int


@dataclass(frozen=True)
class Transition:
    node: int | None  # None: the rollout itself
    from_state: str
    to_state: str
    why: str


@dataclass(frozen=True)
class Result:
    rollout: Rollout
    commands: tuple[Command, ...] = ()
    transitions: tuple[Transition, ...] = ()


# ---- inputs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    node: int
    kind: ReportKind
    command_id: str | None = None  # required for command results; reports of older commands are ignored
    error: str = ""


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class Restart:
    """The engine (re)started from the stored snapshot: resend every outstanding command."""


@dataclass(frozen=True)
class Pause:
    reason: str = "paused by an operator"
    until: float | None = None  # resume by itself then


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Abort:
    reason: str = "aborted by an operator"


@dataclass(frozen=True)
class Rollback:
    """Stop and return every committed target to the old version, whatever ``auto_rollback`` says."""

    reason: str = "rolled back by an operator"


@dataclass(frozen=True)
class RetryTarget:
    node: int


@dataclass(frozen=True)
class Supersede:
    by: int | None = None  # the newer rollout, when it already has an id


Event = Report | Tick | Restart | Pause | Resume | Abort | Rollback | RetryTarget | Supersede


class Rejected(Exception):
    """An operator action the rollout cannot take in its state; the message says why and what to do."""
