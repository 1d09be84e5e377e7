"""The rollout page in a real browser: rollouts.js repaints the target grid and the event log from the
JSON API while the engine moves the rollout, without a reload, and the page loads no inline script."""

from __future__ import annotations

import os

import pytest
from django.test import Client

from fleet.hub.models import HubModel, InstallState, ModelVersion, NodeInstall
from fleet.inventory.models import NodeStatus
from fleet.rollouts import driver, services
from tests.browser import launch, needs_chromium
from tests.rollouts.test_services import agents_answer

pytestmark = [pytest.mark.browser, needs_chromium, pytest.mark.django_db(transaction=True)]


def test_the_grid_follows_the_rollout_live(live_server, make_node, alice, bob, monkeypatch, tmp_path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    monkeypatch.setattr(driver, "_restarted", True)
    # Playwright's sync API runs an event loop in this thread; the ORM calls below are plain sync test code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    model = HubModel.objects.create(repo_id="acme/tiny")
    v1 = ModelVersion.objects.create(model=model, revision="v1", sha="a" * 40)
    ModelVersion.objects.create(model=model, revision="v2", sha="b" * 40)
    for index in range(1, 7):
        node, _ = make_node(f"gpu-{index:02d}", labels={"role": "chat", "zone": f"z{index % 2}"},
                            status=NodeStatus.ONLINE)
        NodeInstall.objects.create(node=node, repo="acme/tiny", sha=v1.sha, version=v1, state=InstallState.ACTIVE)
    deployment = services.create_deployment(alice, "chat-default", "acme/tiny", "v1", selector={"role": "chat"})
    rollout = services.create_rollout(bob, deployment, "v2", {"healthcheck": None, "min_ready_seconds": 0,
                                                              "max_unavailable": 2, "batch": 2})
    client = Client()
    client.force_login(bob)
    session = client.cookies["sessionid"].value
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
            page = context.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{live_server.url}/rollouts/{rollout.pk}/")
            assert page.locator(".target").count() == 6
            page.evaluate("window.__same_page = true")
            agents_answer()  # every node staged
            driver.tick()
            agents_answer()  # the canary activated
            driver.tick()
            page.wait_for_selector('[data-target].target-green', timeout=60000)
            assert page.evaluate("window.__same_page === true")  # repainted, not reloaded
            log = page.locator("[data-events]").inner_text()
            assert "verifying → committed" in log and "— → activating" not in log
            shot = os.environ.get("ROLLOUT_SCREENSHOT") or str(tmp_path / "rollout.png")
            page.screenshot(path=shot, full_page=True)

            page.goto(f"{live_server.url}/deployments/chat-default/rollouts/new/")
            page.select_option("select[name=version]", label="v1 · aaaaaaaaaaaa (serving now)")
            page.click("button[value=preview]")
            page.wait_for_selector("[data-waves]")
            assert page.locator("[data-plan-node]").count() == 6
            page.screenshot(path=shot.replace(".png", "-new.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
