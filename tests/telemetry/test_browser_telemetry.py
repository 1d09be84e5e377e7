"""The node page in a real browser (Debian chromium) against real Daphne and a real simulated agent:
a live chart's value changes within 3 s; the overview heatmap shows every GPU; a fault lands in the
alert feed without a reload; a hidden tab stops its stream."""

from __future__ import annotations

import time

import pytest

from tests.browser import launch, needs_chromium
from tests.integration.harness import Stack, wait_until
from tests.telemetry.test_telemetry_end_to_end import enroll_and_run

PASSWORD = "browser-test-password-1"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    needs_chromium,
]


@pytest.fixture
def stack(tmp_path):
    stack = Stack(tmp_path, offline_after=30).start()
    stack.manage("createoperator", "vera", "--role", "viewer", "--password", PASSWORD)
    yield stack
    stack.stop()


def test_live_chart_value_changes_within_three_seconds(stack: Stack, tmp_path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    agent, node_id = enroll_and_run(stack, tmp_path, 0, "chart-node", "--fault", "overheat:gpu=1@6s")
    errors: list[str] = []
    base = stack.url()
    try:
        wait_until(lambda: "welcomed" in agent.log(), 20, "the agent to connect")
        with playwright.sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(f"{base}/accounts/login/")
                page.fill("input[name=username]", "vera")
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_selector("#live-indicator[data-state=live]", timeout=15000)

                # Overview: one heatmap cell per GPU, coloured by utilization.
                page.wait_for_function(
                    "() => document.querySelectorAll('[data-heat-node] .heat-cell:not([data-stale])').length === 8",
                    timeout=15000)
                assert page.get_attribute("[data-heat-node] .heat-cell[data-gpu='0']", "title").startswith(
                    "chart-node · GPU 0")

                page.goto(f"{base}/nodes/{node_id}/")
                chart = "[data-live-chart='0']"
                page.wait_for_selector(f"{chart}[data-last-ts]", timeout=15000)
                assert page.query_selector(f"{chart} canvas") is not None  # uPlot drew it
                first = page.get_attribute(chart, "data-last-ts")
                started = time.monotonic()
                page.wait_for_function(
                    f"() => document.querySelector(\"{chart}\").getAttribute('data-last-ts') !== '{first}'",
                    timeout=3000)
                assert time.monotonic() - started < 3
                assert page.text_content("[data-gpu-card='0'] [data-metric='util']").endswith("%")
                assert int(page.get_attribute(chart, "data-points")) >= 2
                assert page.locator("[data-gpu-card]").count() == 8

                # The fault (GPU 1 overheats 6 s after the agent started) reaches the feed without a reload.
                page.evaluate("window.__noReload = true")
                page.wait_for_selector("[data-alert-feed-live] [data-alert-kind='overheat']", timeout=20000)
                assert page.evaluate("window.__noReload") is True

                # A hidden tab stops its stream: no new points while hidden.
                page.evaluate("""() => {
                    Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});
                    document.dispatchEvent(new Event('visibilitychange'));
                }""")
                time.sleep(1.5)  # what was in flight lands
                hidden_at = page.get_attribute(chart, "data-last-ts")
                time.sleep(2.5)
                assert page.get_attribute(chart, "data-last-ts") == hidden_at
                page.evaluate("""() => {
                    Object.defineProperty(document, 'visibilityState', {value: 'visible', configurable: true});
                    document.dispatchEvent(new Event('visibilitychange'));
                }""")
                page.wait_for_function(
                    f"() => document.querySelector(\"{chart}\").getAttribute('data-last-ts') !== '{hidden_at}'",
                    timeout=5000)
            finally:
                browser.close()
    finally:
        agent.kill()
    assert not errors, errors
