"""`/metrics` carries the rollout series Prometheus alerts on: the running rollout and its targets, a stall
(paused by the progress deadline), finished rollouts by outcome, deployment membership and sync."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from fleet.accounts.apikeys import create_api_key
from fleet.rollouts import driver, services
from fleet.rollouts.models import Rollout
from tests.rollouts.test_services import SOAK_ONLY, _fresh_driver, agents_answer, deployment, fleet  # noqa: F401
from tests.telemetry.test_exporter import scrape, value


def families(client, alice) -> dict:
    _, key = create_api_key(alice, alice, ["metrics"])
    return scrape(client, HTTP_AUTHORIZATION=f"Bearer {key}")


def test_a_running_rollout_its_targets_and_the_deployment_sync(client, deployment, alice, bob) -> None:  # noqa: F811
    found = families(client, alice)
    assert value(found["fleet_deployment_nodes"], deployment="chat-default") == 3
    assert value(found["fleet_deployment_nodes_in_sync"], deployment="chat-default") == 3
    assert not found["fleet_rollout_active"].samples

    rollout = services.create_rollout(bob, deployment, "v2", SOAK_ONLY)
    found = families(client, alice)
    assert value(found["fleet_rollout_active"], deployment="chat-default", state="progressing") == 1
    assert value(found["fleet_rollout_stalled"], deployment="chat-default") == 0
    assert value(found["fleet_rollout_targets"], deployment="chat-default", state="scheduled") == 3

    # Nothing answers: after the progress deadline the rollout pauses, and the series say it stalled.
    driver.tick(timezone.now() + timedelta(seconds=601))
    rollout.refresh_from_db()
    assert rollout.state == "paused" and rollout.pause_reason.startswith("no progress")
    found = families(client, alice)
    assert value(found["fleet_rollout_stalled"], deployment="chat-default") == 1

    services.act(bob, rollout, "abort")
    now = timezone.now()
    for _ in range(10):
        agents_answer()
        now += timedelta(seconds=6)
        driver.tick(now)
    assert Rollout.objects.get(pk=rollout.pk).state == "aborted"
    found = families(client, alice)
    assert not found["fleet_rollout_active"].samples
    assert value(found["fleet_rollouts_finished"], deployment="chat-default", state="aborted") == 1
    assert value(found["fleet_deployment_nodes_in_sync"], deployment="chat-default") == 3
