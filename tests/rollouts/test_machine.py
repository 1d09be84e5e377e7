"""The rollout state machine, rule by rule (the property test in test_machine_properties.py covers the
combinations)."""

from __future__ import annotations

import pytest

from fleet.rollouts import machine as m
from tests.rollouts.sim import Sim, make_rollout

R, T, K = m.RolloutState, m.TargetState, m.CommandKind


def states(sim: Sim) -> dict[int, str]:
    return {t.node: t.state.value for t in sim.rollout.targets}


def kinds(result: m.Result) -> list[tuple[int, str]]:
    return [(c.node, c.kind.value) for c in result.commands]


def stage_all(sim: Sim) -> None:
    for node in list(sim.nodes):
        sim.deliver(node)


def drive(sim: Sim, outcomes: dict[int, str] | None = None, limit: int = 500) -> None:
    """Answer every command (ok, or the outcome given for a node) and let soaks pass until it ends."""
    outcomes = outcomes or {}
    for _ in range(limit):
        if sim.rollout.state in m.TERMINAL:
            return
        if sim.rollout.state == R.PAUSED:
            sim.apply(m.Resume())
        elif pending := sim.pending():
            sim.deliver(pending[0], outcomes.get(pending[0], "ok"))
        else:
            sim.tick(31)
    raise AssertionError(f"rollout did not finish: {sim.rollout}")


def test_start_stages_every_target_while_the_old_version_serves() -> None:
    sim = Sim(make_rollout(3))
    result = sim.tick(0)
    assert sim.rollout.state == R.PROGRESSING and sim.rollout.deadline_at == sim.now + 600
    assert kinds(result) == [(1, "stage"), (2, "stage"), (3, "stage")]
    assert [c.id for c in result.commands] == ["ro7-n1-a0-stage", "ro7-n2-a0-stage", "ro7-n3-a0-stage"]
    assert states(sim) == {1: "scheduled", 2: "scheduled", 3: "scheduled"}
    assert (None, "pending", "progressing", "started") in [(t.node, t.from_state, t.to_state, t.why)
                                                         for t in result.transitions]


def test_the_canary_is_activated_only_once_staged_and_alone() -> None:
    sim = Sim(make_rollout(3))  # waves: [n01], [n02], [n03] (batch 25% of 3 rounds up to 1)
    sim.tick(0)
    assert [t.wave for t in sim.rollout.targets] == [0, 1, 2]
    sim.deliver(2, progress=True)
    assert sim.rollout.target(2).state == T.STAGED
    assert not sim.nodes[1].inbox[1:] and kinds(sim.deliver(3)) == []  # later waves wait for the canary
    result = sim.deliver(1)
    assert kinds(result) == [(1, "activate")]
    assert states(sim) == {1: "activating", 2: "staged", 3: "staged"}


def test_an_activated_node_soaks_then_passes_a_health_check_before_the_next_wave() -> None:
    sim = Sim(make_rollout(2, min_ready_seconds=30))
    sim.tick(0)
    stage_all(sim)
    sim.deliver(1)  # activated
    assert sim.rollout.state == R.VERIFYING and sim.rollout.target(1).on == m.Side.NEW
    assert kinds(sim.tick(29)) == []
    assert kinds(sim.tick(2)) == [(1, "healthcheck")]
    result = sim.deliver(1)
    assert sim.rollout.target(1).state == T.COMMITTED
    assert kinds(result) == [(2, "activate")] and sim.rollout.state == R.PROGRESSING
    drive(sim)
    assert sim.rollout.state == R.SUCCEEDED and set(states(sim).values()) == {"committed"}
    assert all(fake.actual == m.Side.NEW and fake.activations == 1 for fake in sim.nodes.values())


def test_max_unavailable_lets_several_switch_at_once_within_a_wave() -> None:
    sim = Sim(make_rollout(5, canary=1, batch=4, max_unavailable=2))
    sim.tick(0)
    stage_all(sim)
    drive_canary = [sim.deliver(1), sim.tick(31), sim.deliver(1)]
    assert kinds(drive_canary[-1]) == [(2, "activate"), (3, "activate")]
    drive(sim)
    assert sim.rollout.state == R.SUCCEEDED


def test_a_canary_failing_its_health_check_rolls_back_and_aborts_with_no_other_node_changed() -> None:
    sim = Sim(make_rollout(4))
    sim.tick(0)
    stage_all(sim)
    sim.deliver(1)
    sim.tick(31)
    result = sim.deliver(1, "unhealthy")
    assert kinds(result) == [(1, "rollback_local")] and sim.rollout.target(1).state == T.ROLLING_BACK_LOCAL
    assert sim.rollout.state == R.ABORTING and "1 of 1 canary targets failed (budget 0)" in sim.rollout.reason
    assert states(sim)[2] == states(sim)[3] == "aborted"
    sim.deliver(1)  # rolled back
    assert sim.rollout.state == R.ABORTED and sim.rollout.target(1).state == T.FAILED
    assert all(fake.actual == m.Side.OLD for fake in sim.nodes.values())
    assert [fake.activations for fake in sim.nodes.values()] == [1, 0, 0, 0]


def test_failures_within_the_budget_continue_and_over_it_revert_committed_targets() -> None:
    sim = Sim(make_rollout(5, batch=1, failure_budget_percent=25))  # later waves: 4 targets, budget 1
    sim.tick(0)
    stage_all(sim)
    for node in (1, 2):
        sim.deliver(node)
        sim.tick(31)
        sim.deliver(node)
    sim.deliver(3)
    sim.tick(31)
    sim.deliver(3, "unhealthy")
    sim.deliver(3)  # rolled back: one failure, within the budget
    assert sim.rollout.state in (R.PROGRESSING, R.VERIFYING) and sim.rollout.target(4).state == T.ACTIVATING
    sim.deliver(4, "fail")  # activation failed: a second failure, over the budget
    assert sim.rollout.state == R.ROLLING_BACK and "2 of 4 later targets failed (budget 1)" in sim.rollout.reason
    drive(sim)
    assert sim.rollout.state == R.ABORTED
    assert states(sim) == {1: "reverted", 2: "reverted", 3: "failed", 4: "failed", 5: "aborted"}
    assert all(fake.actual == m.Side.OLD for fake in sim.nodes.values())


def test_without_auto_rollback_an_abort_leaves_committed_targets_on_the_new_version() -> None:
    sim = Sim(make_rollout(3, auto_rollback=False))
    sim.tick(0)
    sim.deliver(1)  # only the canary is staged: nothing else switches meanwhile
    sim.deliver(1)
    sim.tick(31)
    sim.deliver(1)
    sim.apply(m.Abort())
    assert sim.rollout.state == R.ABORTED and sim.rollout.reason == "aborted by an operator"
    assert states(sim) == {1: "committed", 2: "aborted", 3: "aborted"} and sim.nodes[1].actual == m.Side.NEW
    sim2 = Sim(make_rollout(3, auto_rollback=False))
    sim2.tick(0)
    sim2.deliver(1)
    sim2.deliver(1)
    sim2.tick(31)
    sim2.deliver(1)
    sim2.apply(m.Rollback())  # an explicit rollback reverts whatever auto_rollback says
    drive(sim2)
    assert states(sim2)[1] == "reverted" and sim2.nodes[1].actual == m.Side.OLD


def test_an_offline_target_is_deferred_after_the_grace_and_rejoins_when_it_returns() -> None:
    sim = Sim(make_rollout(3, offline_grace_seconds=60))
    sim.tick(0)
    sim.set_online(3, False)
    sim.tick(59)
    assert sim.rollout.target(3).state == T.SCHEDULED
    sim.tick(2)
    assert sim.rollout.target(3).state == T.DEFERRED and sim.rollout.target(3).error == ""
    drive(sim)
    assert sim.rollout.state == R.SUCCEEDED and states(sim) == {1: "committed", 2: "committed", 3: "deferred"}
    sim = Sim(make_rollout(3, offline_grace_seconds=60))
    sim.tick(0)
    sim.set_online(3, False)
    sim.tick(61)
    result = sim.set_online(3, True)
    assert sim.rollout.target(3).attempt == 1 and (3, "stage") in kinds(result)
    assert "ro7-n3-a1-stage" in [c.id for c in result.commands]
    drive(sim)
    assert states(sim) == {1: "committed", 2: "committed", 3: "committed"}


def test_a_switching_target_that_goes_offline_keeps_its_place_and_gets_its_check_when_back() -> None:
    sim = Sim(make_rollout(2, offline_grace_seconds=10))
    sim.tick(0)
    stage_all(sim)
    sim.deliver(1)
    sim.set_online(1, False)
    assert kinds(sim.tick(100)) == [] and sim.rollout.target(1).state == T.VERIFYING
    assert kinds(sim.set_online(1, True)) == [(1, "healthcheck")]


def test_pause_stops_every_clock() -> None:
    sim = Sim(make_rollout(2, min_ready_seconds=30))
    sim.tick(0)
    stage_all(sim)
    sim.deliver(1)
    soak_until = sim.rollout.target(1).soak_until
    sim.tick(10)
    sim.apply(m.Pause("looking at the canary"))
    assert sim.rollout.state == R.PAUSED and sim.rollout.pause_reason == "looking at the canary"
    assert kinds(sim.tick(1000)) == [] and sim.rollout.state == R.PAUSED
    sim.apply(m.Resume())
    assert sim.rollout.paused_total == 1000 and sim.rollout.target(1).soak_until == soak_until + 1000
    assert kinds(sim.tick(19)) == []
    assert kinds(sim.tick(2)) == [(1, "healthcheck")]


def test_a_timed_pause_resumes_by_itself() -> None:
    sim = Sim(make_rollout(2))
    sim.tick(0)
    sim.apply(m.Pause(until=sim.now + 50))
    sim.tick(49)
    assert sim.rollout.state == R.PAUSED
    sim.tick(2)
    assert sim.rollout.state == R.PROGRESSING and sim.rollout.resume_at is None


def test_no_progress_within_the_deadline_pauses_with_the_reason() -> None:
    sim = Sim(make_rollout(2, progress_deadline_seconds=100))
    sim.tick(0)
    sim.tick(99)
    assert sim.rollout.state == R.PROGRESSING
    sim.tick(2)
    assert sim.rollout.state == R.PAUSED and sim.rollout.pause_reason == "no progress for 100s"
    sim.apply(m.Resume())
    assert sim.rollout.state == R.PROGRESSING and sim.rollout.deadline_at == sim.now + 100


def test_operator_actions_that_do_not_fit_the_state_are_rejected_with_the_reason() -> None:
    sim = Sim(make_rollout(2))
    sim.tick(0)
    sim.apply(m.Pause())
    sim.apply(m.Abort())
    assert sim.rollout.state == R.ABORTED
    with pytest.raises(m.Rejected, match="aborted cannot be resumed"):
        sim.apply(m.Resume())
    with pytest.raises(m.Rejected, match="cannot be paused"):
        sim.apply(m.Pause())
    done = Sim(make_rollout(1))
    drive(done)
    with pytest.raises(m.Rejected, match="already succeeded; start a rollout back to the previous version"):
        done.apply(m.Rollback())
    with pytest.raises(m.Rejected, match="not a target"):
        Sim(make_rollout(1)).apply(m.RetryTarget(99))


def test_retrying_a_failed_target_sends_fresh_command_ids() -> None:
    sim = Sim(make_rollout(4, failure_budget_percent=50))
    sim.tick(0)
    sim.deliver(3, "fail")  # staging failed: within the later budget (1 of 3)
    assert sim.rollout.target(3).state == T.FAILED and "staging failed" in sim.rollout.target(3).error
    with pytest.raises(m.Rejected, match="not failed"):
        sim.apply(m.RetryTarget(2))
    result = sim.apply(m.RetryTarget(3))
    assert [c.id for c in result.commands] == ["ro7-n3-a1-stage"] and sim.rollout.target(3).error == ""
    drive(sim)
    assert sim.rollout.state == R.SUCCEEDED and set(states(sim).values()) == {"committed"}


def test_a_newer_rollout_supersedes() -> None:
    sim = Sim(make_rollout(2))
    sim.tick(0)
    sim.deliver(1)
    sim.apply(m.Supersede(by=8))
    assert sim.rollout.state == R.SUPERSEDED and sim.rollout.reason == "superseded by rollout 8"
    assert set(states(sim).values()) == {"aborted"}
    with pytest.raises(m.Rejected):
        sim.apply(m.Supersede(by=9))


def test_a_restart_resends_the_same_command_ids_and_the_snapshot_round_trips() -> None:
    sim = Sim(make_rollout(3))
    sim.tick(0)
    sim.deliver(1)
    before = sim.rollout
    assert m.Rollout.from_json(before.to_json()) == before
    result = sim.restart()
    assert [c.id for c in result.commands] == ["ro7-n1-a0-activate", "ro7-n2-a0-stage", "ro7-n3-a0-stage"]
    assert sim.nodes[2].inbox == [c for c in result.commands if c.node == 2]  # not queued twice


def test_late_and_repeated_reports_are_ignored() -> None:
    sim = Sim(make_rollout(2))
    sim.tick(0)
    sim.deliver(1)
    before = sim.rollout
    repeat = sim.apply(sim.nodes[1].last_report)
    assert repeat.transitions == () and repeat.commands == () and sim.rollout.targets == before.targets
    forged = sim.apply(m.Report(2, m.ReportKind.STAGED, "ro7-n2-a5-stage"))
    assert forged.transitions == () and sim.rollout.target(2).state == T.SCHEDULED
    assert sim.apply(m.Report(99, m.ReportKind.STAGED, "x")).transitions == ()


def test_a_node_already_on_the_new_version_is_skipped() -> None:
    sim = Sim(make_rollout(2, serving_new=(1,)))
    result = sim.tick(0)
    assert kinds(result) == [(2, "stage")] and sim.rollout.target(1).state == T.SKIPPED
    drive(sim)
    assert states(sim) == {1: "skipped", 2: "committed"}


def test_a_revert_that_keeps_failing_leaves_the_target_failed_on_the_new_version() -> None:
    sim = Sim(make_rollout(2))
    sim.tick(0)
    sim.deliver(1)
    sim.deliver(1)
    sim.tick(31)
    sim.deliver(1)
    sim.apply(m.Abort())
    assert sim.rollout.state == R.ROLLING_BACK
    ids = []
    for _ in range(m.MAX_TRIES):
        ids.append(sim.nodes[1].inbox[0].id)
        sim.deliver(1, "fail")
    assert ids == ["ro7-n1-a0-revert", "ro7-n1-a0-revert.1", "ro7-n1-a0-revert.2"]
    target = sim.rollout.target(1)
    assert sim.rollout.state == R.ABORTED and target.state == T.FAILED and target.on == m.Side.NEW
    assert "still on the new version" in target.error


def test_a_health_check_without_an_answer_fails_the_target() -> None:
    sim = Sim(make_rollout(2, canary_failure_budget=1))
    sim.tick(0)
    stage_all(sim)
    sim.deliver(1)
    sim.tick(31)
    sim.tick(61)
    target = sim.rollout.target(1)
    assert target.state == T.ROLLING_BACK_LOCAL and "no answer within 60s" in target.error
    assert sim.rollout.state != R.ABORTING  # one canary failure is within a budget of 1


def test_machine_states_match_the_model_choices() -> None:
    from fleet.rollouts.models import RolloutStatus, ServedSide, TargetStatus

    assert [s.value for s in R] == RolloutStatus.values
    assert [s.value for s in T] == TargetStatus.values
    assert [s.value for s in m.Side] == ServedSide.values
    assert all(RolloutStatus(v).colour and TargetStatus(w).colour for v in R for w in T)


def test_the_machine_imports_no_django() -> None:
    import subprocess
    import sys

    code = "import sys, fleet.rollouts.machine; assert not [m for m in sys.modules if m.startswith('django')]"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_without_a_health_check_the_soak_alone_commits() -> None:
    sim = Sim(make_rollout(2, healthcheck=None, min_ready_seconds=10))
    sim.tick(0)
    stage_all(sim)
    sim.deliver(1)
    assert kinds(sim.tick(9)) == []
    result = sim.tick(2)
    assert sim.rollout.target(1).state == T.COMMITTED and kinds(result) == [(2, "activate")]
    assert any(t.why == "soaked 10s (no health check configured)" for t in result.transitions)


def test_a_rollout_where_no_target_switched_does_not_claim_success() -> None:
    sim = Sim(make_rollout(2, offline_grace_seconds=10, progress_deadline_seconds=100))
    sim.tick(0)
    sim.set_online(1, False)
    sim.set_online(2, False)
    sim.tick(11)
    assert set(states(sim).values()) == {"deferred"} and sim.rollout.state == R.PROGRESSING
    sim.tick(100)
    assert sim.rollout.state == R.PAUSED and sim.rollout.pause_reason == "no progress for 100s"
    lonely = Sim(make_rollout(1, canary_failure_budget=1))
    lonely.tick(0)
    lonely.deliver(1, "fail")
    assert lonely.rollout.state == R.ABORTED and lonely.rollout.reason == "no target took the new version"
