"""Waves from a strategy, and strategy validation that names the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fleet.rollouts.planner import PlanNode, max_unavailable, ordered, plan_waves
from fleet.rollouts.strategy import Strategy, resolve


def names(waves: list[list[PlanNode]]) -> list[list[str]]:
    return [[node.name for node in wave] for wave in waves]


def fleet(count: int, zones: str = "") -> list[PlanNode]:
    return [PlanNode(i, f"gpu-{i:02d}", {"zone": zones[i % len(zones)]} if zones else {}) for i in range(count, 0, -1)]


def test_defaults_canary_one_then_quarters() -> None:
    strategy = Strategy()
    assert (strategy.canary, strategy.batch, strategy.max_unavailable, strategy.min_ready_seconds) == (1, "25%", 1, 30)
    assert (strategy.canary_failure_budget, strategy.failure_budget_percent, strategy.auto_rollback) == (0, 10, True)
    assert strategy.progress_deadline_seconds == 600
    assert [len(wave) for wave in plan_waves(fleet(10), strategy)] == [1, 3, 3, 3]
    assert names(plan_waves(fleet(3), strategy)) == [["gpu-01"], ["gpu-02"], ["gpu-03"]]


def test_ordered_by_zone_then_name_with_unlabelled_nodes_last() -> None:
    nodes = [PlanNode(1, "b", {"zone": "z2"}), PlanNode(2, "a", {}), PlanNode(3, "c", {"zone": "z1"}),
             PlanNode(4, "a2", {"zone": "z2"})]
    assert [n.name for n in ordered(nodes, "zone")] == ["c", "a2", "b", "a"]
    assert [n.name for n in ordered(nodes, "")] == ["a", "a2", "b", "c"]


def test_percentages_round_up_and_counts_are_capped() -> None:
    waves = plan_waves(fleet(10), Strategy(canary="10%", batch="30%"))
    assert [len(wave) for wave in waves] == [1, 3, 3, 3]
    assert [len(wave) for wave in plan_waves(fleet(4), Strategy(canary=0, batch=10))] == [4]
    assert [len(wave) for wave in plan_waves(fleet(2), Strategy(canary=5))] == [2]
    assert plan_waves([], Strategy()) == []
    assert resolve("25%", 1000) == 250 and resolve("0.1%", 1000) == 1 and resolve("33%", 3) == 1
    assert max_unavailable(Strategy(max_unavailable="50%"), 5) == 3


def test_every_node_is_in_exactly_one_wave() -> None:
    for count in range(0, 40):
        for strategy in (Strategy(), Strategy(canary="5%", batch=7), Strategy(canary=0, batch="1%")):
            planned = [node.id for wave in plan_waves(fleet(count, "abc"), strategy) for node in wave]
            assert sorted(planned) == list(range(1, count + 1))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("canary", "ten", "neither a number of nodes nor a share"),
    ("canary", -1, "at least 0"),
    ("batch", 0, "at least 1"),
    ("batch", "0%", "neither a number of nodes nor a share"),
    ("max_unavailable", "150%", "neither a number of nodes nor a share"),
    ("max_unavailable", True, "use a number of nodes"),
    ("min_ready_seconds", -5, "greater than or equal to 0"),
    ("progress_deadline_seconds", 1, "greater than or equal to 10"),
    ("order_by", "zone; drop", "should match pattern"),
    ("surprise", 1, "Extra inputs are not permitted"),
])
def test_bad_strategies_name_the_field(field: str, value, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        Strategy.model_validate({field: value})
    assert error.value.errors()[0]["loc"][0] == field and message in str(error.value)


def test_health_check_settings_are_validated_too() -> None:
    with pytest.raises(ValidationError) as error:
        Strategy.model_validate({"healthcheck": {"prompt": "", "timeout_seconds": 0}})
    assert {e["loc"] for e in error.value.errors()} == {("healthcheck", "prompt"), ("healthcheck", "timeout_seconds")}
    assert Strategy.model_validate({"healthcheck": {"expect": "Paris"}}).healthcheck.expect == "Paris"
