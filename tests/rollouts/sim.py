"""A fake fleet for the rollout state machine: nodes that carry out its commands (each command id once,
only while online), answer with reports, and remember what they really serve, so tests can compare the
machine's view with the truth after any sequence of inputs."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from fleet.rollouts import machine as m
from fleet.rollouts.planner import PlanNode, max_unavailable, plan_waves
from fleet.rollouts.strategy import Strategy

START = 1_000_000.0


def make_rollout(count: int = 3, rollout_id: int = 7, serving_new: tuple[int, ...] = (), **strategy) -> m.Rollout:
    strategy_model = Strategy(**strategy)
    nodes = [PlanNode(i, f"n{i:02d}") for i in range(1, count + 1)]
    targets = tuple(
        m.Target(node=node.id, name=node.name, wave=wave, on=m.Side.NEW if node.id in serving_new else m.Side.OLD)
        for wave, members in enumerate(plan_waves(nodes, strategy_model)) for node in members
    )
    return m.Rollout(id=rollout_id, strategy=strategy_model, targets=targets)


@dataclass
class FakeNode:
    actual: m.Side = m.Side.OLD
    staged: bool = False
    online: bool = True
    inbox: list[m.Command] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    activations: int = 0
    healthy_checks: set[int] = field(default_factory=set)  # attempts whose health check passed
    last_report: m.Report | None = None


class Sim:
    def __init__(self, rollout: m.Rollout, now: float = START):
        self.rollout = rollout
        self.now = now
        self.nodes = {t.node: FakeNode(actual=t.on) for t in rollout.targets}
        self.retries: Counter[int] = Counter()
        self.activate_ids: dict[tuple[int, int], set[str]] = {}
        self.transitions: list[m.Transition] = []
        self.limit = max_unavailable(rollout.strategy, len(rollout.targets))

    # ---- inputs
    def apply(self, event: m.Event) -> m.Result:
        result = m.step(self.rollout, event, self.now)
        if isinstance(event, m.RetryTarget):
            self.retries[event.node] += 1
        self.rollout = result.rollout
        self.transitions += result.transitions
        for command in result.commands:
            self._receive(result, command)
        self.check()
        return result

    def tick(self, seconds: float) -> m.Result:
        self.now += seconds
        return self.apply(m.Tick())

    def restart(self) -> m.Result:
        self.rollout = m.Rollout.from_json(json.loads(json.dumps(self.rollout.to_json())))
        return self.apply(m.Restart())

    def set_online(self, node: int, online: bool) -> m.Result:
        self.nodes[node].online = online
        return self.apply(m.Report(node, m.ReportKind.ONLINE if online else m.ReportKind.OFFLINE))

    def deliver_all(self, outcome: str = "ok") -> m.Result | None:
        """Every online node with a pending command answers at the same moment: one `step_all`."""
        reports = []
        real_apply = self.apply
        self.apply = reports.append  # collect instead of applying one by one
        try:
            for node in self.pending():
                self.deliver(node, outcome)
        finally:
            self.apply = real_apply
        if not reports:
            return None
        result = m.step_all(self.rollout, reports, self.now)
        self.rollout = result.rollout
        self.transitions += result.transitions
        for command in result.commands:
            self._receive(result, command)
        self.check()
        return result

    def deliver(self, node: int, outcome: str = "ok", progress: bool = False) -> m.Result | None:
        """The node carries out its oldest pending command and reports (outcome: ok, fail, unhealthy)."""
        fake = self.nodes[node]
        if not fake.online or not fake.inbox:
            return None
        command = fake.inbox.pop(0)
        fake.done.add(command.id)
        kind, ok = command.kind, outcome == "ok"
        if kind == m.CommandKind.STAGE:
            if progress:
                self.apply(m.Report(node, m.ReportKind.DOWNLOADING, command.id))
            fake.staged = fake.staged or ok
            report = m.ReportKind.STAGED if ok else m.ReportKind.FAILED
        elif kind == m.CommandKind.ACTIVATE:
            if ok:
                assert fake.staged, f"node {node} activated without the new version staged"
                fake.actual = m.Side.NEW
                fake.activations += 1
            report = m.ReportKind.ACTIVATED if ok else m.ReportKind.FAILED
        elif kind == m.CommandKind.HEALTHCHECK:
            if ok:
                fake.healthy_checks.add(command.attempt)
            report = m.ReportKind.HEALTHY if ok else m.ReportKind.UNHEALTHY if outcome == "unhealthy" \
                else m.ReportKind.FAILED
        else:
            if ok:
                fake.actual = m.Side.OLD
            success = m.ReportKind.ROLLED_BACK if kind == m.CommandKind.ROLLBACK_LOCAL else m.ReportKind.REVERTED
            report = success if ok else m.ReportKind.FAILED
        fake.last_report = m.Report(node, report, command.id, "" if ok else f"{kind} went wrong")
        return self.apply(fake.last_report)

    def pending(self) -> list[int]:
        return [node for node, fake in self.nodes.items() if fake.online and fake.inbox]

    # ---- what must always hold
    def _receive(self, result: m.Result, command: m.Command) -> None:
        fake = self.nodes[command.node]
        if command.kind == m.CommandKind.ACTIVATE:
            moves = [(t.from_state, t.to_state) for t in result.transitions if t.node == command.node]
            ids = self.activate_ids.setdefault((command.node, command.attempt), set())
            resent = command.id in ids
            ids.add(command.id)
            assert len(ids) == 1, f"two activations of node {command.node} in attempt {command.attempt}"
            assert resent or moves and moves[-1] == ("staged", "activating"), f"activated after {moves}"
            assert fake.staged, f"activate sent to node {command.node} before it staged the new version"
        if command.id not in fake.done and all(c.id != command.id for c in fake.inbox):
            fake.inbox.append(command)

    def check(self) -> None:
        targets = self.rollout.targets
        unavailable = sum(t.state in m.UNAVAILABLE for t in targets)
        assert unavailable <= self.limit, f"{unavailable} unavailable, limit {self.limit}"
        for node, fake in self.nodes.items():
            assert fake.activations <= 1 + self.retries[node], f"node {node} activated {fake.activations} times"
        if self.rollout.state == m.RolloutState.SUCCEEDED:
            for t in targets:
                assert t.state in (m.TargetState.COMMITTED, m.TargetState.SKIPPED, m.TargetState.FAILED,
                                   m.TargetState.DEFERRED), f"succeeded with {t}"
                if t.state == m.TargetState.COMMITTED and self.rollout.strategy.healthcheck is not None:
                    assert t.attempt in self.nodes[t.node].healthy_checks, f"committed without a health check: {t}"
        if self.rollout.state in (m.RolloutState.SUCCEEDED, m.RolloutState.ABORTED):
            for t in targets:
                fake = self.nodes[t.node]
                assert t.state in m.DONE, f"{self.rollout.state} with {t}"
                assert t.on == fake.actual, f"{t} but the node serves {fake.actual}"
                switching = {m.CommandKind.ACTIVATE, m.CommandKind.ROLLBACK_LOCAL, m.CommandKind.REVERT}
                assert not any(c.kind in switching for c in fake.inbox), f"{t} still has {fake.inbox}"
            for t in targets:
                if t.state == m.TargetState.REVERTED:
                    assert t.on == m.Side.OLD, t
