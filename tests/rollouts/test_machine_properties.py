"""The rollout state machine under random sequences of agent reports, timeouts, pauses, aborts, retries and
engine restarts (a restart rebuilds the rollout from its stored snapshot alone). After every input: never
more than max_unavailable targets unavailable, never an activation of an unstaged node, never a node
activated twice. Then every node comes back and answers: the rollout must end, and each target is on
exactly one known version, the one its node really serves."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.rollouts import machine as m
from tests.rollouts.sim import Sim, make_rollout

strategies = st.fixed_dictionaries({
    "count": st.integers(1, 7),
    "canary": st.sampled_from([0, 1, 2, "30%"]),
    "batch": st.sampled_from([1, 2, 3, "50%"]),
    "max_unavailable": st.sampled_from([1, 2, "40%"]),
    "canary_failure_budget": st.integers(0, 1),
    "failure_budget_percent": st.sampled_from([0.0, 10.0, 50.0]),
    "auto_rollback": st.booleans(),
    "min_ready_seconds": st.sampled_from([0.0, 30.0]),
    "offline_grace_seconds": st.sampled_from([0.0, 60.0]),
    "progress_deadline_seconds": st.sampled_from([100.0, 600.0]),
    "serving_new": st.sampled_from([(), (2,)]),
    "healthcheck": st.sampled_from([{}, {}, None]),
})

node = st.integers(1, 7)
deliver = st.tuples(st.just("deliver"), node, st.sampled_from(["ok"] * 6 + ["fail", "unhealthy"]), st.booleans())
tick = st.tuples(st.just("tick"), st.sampled_from([1.0, 10.0, 31.0, 31.0, 61.0, 150.0, 700.0]))
actions = st.one_of(  # weighted: mostly agents answering and time passing, now and then an operator
    deliver, deliver, deliver, deliver, deliver, deliver, tick, tick, tick,
    st.tuples(st.just("offline"), node),
    st.tuples(st.just("online"), node),
    st.tuples(st.just("repeat"), node),
    st.tuples(st.sampled_from(["pause", "timed-pause", "resume", "abort", "rollback", "restart", "supersede"])),
    st.tuples(st.just("retry"), node),
    st.tuples(st.just("burst"), st.sampled_from(["ok", "ok", "fail"])),
)


def run(sim: Sim, action: tuple) -> None:
    kind, *args = action
    nodes = sorted(sim.nodes)
    pick = nodes[(args[0] - 1) % len(nodes)] if args and isinstance(args[0], int) else None
    try:
        if kind == "deliver":
            pending = sim.pending()
            if pending:
                sim.deliver(pending[(args[0] - 1) % len(pending)], args[1], progress=args[2])
        elif kind == "burst":
            sim.deliver_all(args[0])
        elif kind == "tick":
            sim.tick(args[0])
        elif kind in ("offline", "online"):
            sim.set_online(pick, kind == "online")
        elif kind == "repeat" and sim.nodes[pick].last_report is not None:
            sim.apply(sim.nodes[pick].last_report)
        elif kind == "pause":
            sim.apply(m.Pause())
        elif kind == "timed-pause":
            sim.apply(m.Pause(until=sim.now + 120))
        elif kind == "resume":
            sim.apply(m.Resume())
        elif kind == "abort":
            sim.apply(m.Abort())
        elif kind == "rollback":
            sim.apply(m.Rollback())
        elif kind == "restart":
            sim.restart()
        elif kind == "supersede":
            sim.apply(m.Supersede(by=sim.rollout.id + 1))
        elif kind == "retry":
            sim.apply(m.RetryTarget(pick))
    except m.Rejected:
        pass  # an operator action that does not fit the state changes nothing


def finish(sim: Sim, limit: int = 3000) -> None:
    for node, fake in sim.nodes.items():
        if not fake.online:
            sim.set_online(node, True)
    for _ in range(limit):
        if sim.rollout.state in m.TERMINAL:
            return
        if sim.rollout.state == m.RolloutState.PAUSED:
            sim.apply(m.Resume())
        elif pending := sim.pending():
            sim.deliver(pending[0])
        else:
            sim.tick(31)
    raise AssertionError(f"the rollout never finished: {sim.rollout}")


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategies, st.lists(actions, max_size=80))
def test_invariants_hold_under_any_sequence(params: dict, sequence: list) -> None:
    params = dict(params)
    sim = Sim(make_rollout(params.pop("count"), serving_new=params.pop("serving_new"), **params))
    for action in sequence:
        run(sim, action)  # Sim.check asserts the invariants after every input
    finish(sim)
    assert sim.rollout.state in m.TERMINAL
    if sim.rollout.state == m.RolloutState.ABORTED:
        assert sim.rollout.reason


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.lists(st.tuples(st.integers(1, 7), st.sampled_from(["ok", "fail"])), max_size=40))
def test_a_restart_after_any_input_changes_nothing_but_resends(count: int, deliveries: list) -> None:
    """Rebuilding from the snapshot and restarting yields the same rollout; its commands are resends of
    ids already issued."""
    sim = Sim(make_rollout(count, max_unavailable=2))
    issued = {c.id for c in sim.tick(0).commands}
    for node, outcome in deliveries:
        result = sim.deliver((node - 1) % count + 1, outcome)
        if result is not None:
            issued |= {c.id for c in result.commands}
        before = sim.rollout
        restart = sim.restart()
        assert sim.rollout == before and restart.transitions == ()
        assert {c.id for c in restart.commands} <= issued | {c.id for c in m.step(before, m.Tick(), sim.now).commands}
