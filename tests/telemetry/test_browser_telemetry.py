"""The node page in a real browser (Debian chromium) against real Daphne and a real simulated agent:
a live chart keeps moving; the overview heatmap shows every GPU; a fault lands in the alert feed
without a reload; a hidden tab stops its stream. Only events are awaited (with generous limits): how
fast the stream is paced is tested on fake time in test_browser_stream.py."""

from __future__ import annotations

import json

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


def advanced(page, chart: str, since: str, timeout: int = 30000) -> str:
    """Wait until the chart's newest point is newer than ``since``; its new newest point."""
    page.wait_for_function(
        f"() => Number(document.querySelector(\"{chart}\").getAttribute('data-last-ts')) > {since}", timeout=timeout)
    return page.get_attribute(chart, "data-last-ts")


def wait_for_frame(page, frames: list[dict], match, start: int, timeout: float = 30) -> int:
    """Wait (letting Playwright deliver its events) for a /ws/live/ frame from ``start`` on that matches;
    its index."""
    checked = start

    def found() -> int | None:
        nonlocal checked
        page.wait_for_timeout(100)
        for index in range(checked, len(frames)):
            if match(frames[index]):
                return index + 1  # wait_until wants a true value
        checked = len(frames)
        return None

    return wait_until(found, timeout, "a matching /ws/live/ frame") - 1


def test_live_chart_keeps_moving_and_stops_when_hidden(stack: Stack, tmp_path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    agent, node_id = enroll_and_run(stack, tmp_path, 0, "chart-node", "--fault", "overheat:gpu=1@6s")
    errors: list[str] = []
    base = stack.url()
    try:
        wait_until(lambda: "welcomed" in agent.log(), 60, "the agent to connect")
        with playwright.sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on("pageerror", lambda error: errors.append(str(error)))
                frames: list[dict] = []  # what /ws/live/ sent the page, in order
                page.on("websocket", lambda ws: ws.on(
                    "framereceived", lambda payload: frames.append(json.loads(payload))))
                page.goto(f"{base}/accounts/login/")
                page.fill("input[name=username]", "vera")
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_selector("#live-indicator[data-state=live]", timeout=30000)

                # Overview: one heatmap cell per GPU, coloured by utilization.
                page.wait_for_function(
                    "() => document.querySelectorAll('[data-heat-node] .heat-cell:not([data-stale])').length === 8",
                    timeout=30000)
                assert page.get_attribute("[data-heat-node] .heat-cell[data-gpu='0']", "title").startswith(
                    "chart-node · GPU 0")

                page.goto(f"{base}/nodes/{node_id}/")
                chart = "[data-live-chart='util']"
                page.wait_for_selector(f"{chart}[data-last-ts]", timeout=30000)
                assert page.query_selector(f"{chart} canvas") is not None  # uPlot drew it
                first = page.get_attribute(chart, "data-last-ts")
                advanced(page, chart, advanced(page, chart, first))  # a live stream, not one snapshot
                assert page.text_content("[data-gpu-current='0'] td:nth-child(3)").endswith("%")
                assert int(page.get_attribute(chart, "data-points")) >= 2
                assert page.locator("[data-gpu-current]").count() == 8

                # The fault (GPU 1 overheats 6 s after the agent started) reaches the feed without a reload.
                page.evaluate("window.__noReload = true")
                page.wait_for_selector("[data-alert-feed-live] [data-alert-kind='overheat']", timeout=30000)
                assert page.evaluate("window.__noReload") is True

                # A hidden tab stops its stream: once the server confirmed the unsubscribe, no telemetry for
                # the node reaches the page, while the server's own copy moves on by several frames.
                before = len(frames)
                page.evaluate("""() => {
                    Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});
                    document.dispatchEvent(new Event('visibilitychange'));
                }""")
                topic = f"telemetry:node:{node_id}"
                confirmed = wait_for_frame(page, frames, lambda f: f.get("kind") == "subscribed"
                                           and topic not in f["topics"], start=before)
                streamed = [f["nodes"][str(node_id)]["points"] for f in frames[:confirmed]
                            if f.get("kind") == "telemetry" and str(node_id) in f.get("nodes", {})]
                newest = max((points[-1][0] for points in streamed if points), default=0)
                page.wait_for_function(  # the page has drawn what came before the confirmation
                    f"() => Number(document.querySelector(\"{chart}\").getAttribute('data-last-ts')) >= {newest}",
                    timeout=30000)
                hidden_at = page.get_attribute(chart, "data-last-ts")
                live_url = f"{base}/nodes/{node_id}/telemetry/live/"
                wait_until(lambda: page.request.get(live_url).json()["latest"]["ts"] > float(hidden_at) + 3, 30,
                           "the server to receive three more seconds of frames")
                page.wait_for_timeout(500)  # only makes the check below stricter: late frames get their chance
                assert not [f for f in frames[confirmed + 1:] if f.get("kind") == "telemetry"]
                assert page.get_attribute(chart, "data-last-ts") == hidden_at
                page.evaluate("""() => {
                    Object.defineProperty(document, 'visibilityState', {value: 'visible', configurable: true});
                    document.dispatchEvent(new Event('visibilitychange'));
                }""")
                advanced(page, chart, hidden_at)
            finally:
                browser.close()
    finally:
        agent.kill()
    assert not errors, errors
