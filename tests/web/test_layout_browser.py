"""The pages at 800 px and up in a real browser: the nav collapses behind "Menu" instead of cutting links
off, wide tables scroll inside their panel, the Django admin is styled (its stylesheet answers 200), and
the top bar's alert count follows a node going offline without a reload, and absolute times read in the
browser's time zone (24-hour) with UTC on hover. Screenshots: tests/browser.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from tests.browser import launch, needs_chromium, screenshot_path
from tests.integration.harness import Stack
from tests.web.test_browser import _enroll, _hello

PASSWORD = "layout-test-password-1"
NAV_LINKS = ["Overview", "Nodes", "Sites", "Models", "Deployments", "Alerts", "Playground", "Enrollment", "API keys",
             "Users", "Audit", "Django admin"]

pytestmark = [pytest.mark.browser, pytest.mark.integration, needs_chromium]


@pytest.fixture
def stack(tmp_path):
    stack = Stack(tmp_path, offline_after=2).start()
    stack.manage("createoperator", "ada", "--role", "admin", "--password", PASSWORD)
    yield stack
    stack.stop()


def _visible_links(page) -> list[str]:
    """The nav links a person can see and click: inside the window, not hidden or scrolled away."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('#mainnav a')).filter(a => {
        const r = a.getBoundingClientRect(), nav = document.getElementById('mainnav').getBoundingClientRect();
        return r.width > 0 && r.height > 0 && r.left >= Math.max(0, nav.left) - 1
            && r.right <= Math.min(window.innerWidth, nav.right) + 1;
    }).map(a => a.textContent.trim())""")


def test_layout_admin_styles_and_live_alert_count(stack: Stack, agent_loop) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    base = stack.url()
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = launch(p)
        try:
            # Tokyo (UTC+9, no daylight saving): absolute times must read in the browser's zone, UTC on hover.
            page = browser.new_page(viewport={"width": 1300, "height": 900}, timezone_id="Asia/Tokyo")
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: errors.append(message.text)
                    if "Content Security Policy" in message.text else None)
            page.goto(f"{base}/")
            page.fill("input[name=username]", "ada")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#live-indicator[data-state=live]", timeout=60000)

            # 1300 px: every link reachable (inline, or behind Menu) — "Django admin" was cut off here.
            if page.is_visible(".nav-toggle"):
                page.click(".nav-toggle")
            assert _visible_links(page) == NAV_LINKS
            page.screenshot(path=screenshot_path("layout-1300.png"))

            # 800 px: the nav collapses; Menu opens every link; nothing widens the page.
            page.set_viewport_size({"width": 800, "height": 900})
            page.goto(f"{base}/audit/")
            page.wait_for_selector(".nav-toggle:not([hidden])")
            assert page.get_attribute(".nav-toggle", "aria-expanded") == "false"
            assert _visible_links(page) == []
            page.click(".nav-toggle")
            assert page.get_attribute(".nav-toggle", "aria-expanded") == "true"
            assert _visible_links(page) == NAV_LINKS
            page.screenshot(path=screenshot_path("layout-800-menu.png"))
            page.keyboard.press("Escape")
            assert _visible_links(page) == []
            assert page.evaluate("document.documentElement.scrollWidth") <= 800
            # A table wider than the window scrolls inside its panel instead of being cut.
            wrap = page.evaluate("""() => { const w = document.querySelector('.table-wrap');
                return [w.scrollWidth, w.clientWidth, getComputedStyle(w).overflowX]; }""")
            assert wrap[2] == "auto", wrap
            page.screenshot(path=screenshot_path("layout-800-audit.png"))

            # The top bar's alert count: a node going offline raises it on the open page, no reload.
            page.goto(f"{base}/alerts/")
            page.wait_for_selector("#live-indicator[data-state=live]", timeout=60000)
            page.evaluate("window.__noReload = true")
            assert page.text_content("[data-alert-count]").strip() == "0"
            token = stack.manage("createenrollmenttoken", "--uses", "1").splitlines()[-1].strip()
            enrolled = _enroll(base, token)
            ws = asyncio.run_coroutine_threadsafe(_hello(base, enrolled["secret"]), agent_loop).result(15)
            asyncio.run_coroutine_threadsafe(ws.close(), agent_loop).result(10)
            page.wait_for_function(
                "() => document.querySelector('[data-alert-count]').textContent.trim() === '1'", timeout=60000)
            assert page.evaluate("window.__noReload") is True
            page.reload()
            with page.expect_navigation():
                page.click("[data-alert-table] button:text-is('Acknowledge')")
            assert page.text_content("[data-alert-count]").strip() == "0"
            assert "Acknowledged by ada" in " ".join(page.text_content("[data-alert-state]").split())
            text, title, iso = page.evaluate("""() => { const t = document.querySelector('[data-alert-table] time');
                return [t.textContent, t.title, t.getAttribute('datetime')]; }""")
            utc = datetime.fromisoformat(iso).astimezone(UTC)
            assert text == (utc + timedelta(hours=9)).strftime("%Y-%m-%d %H:%M:%S"), (text, iso)
            assert title == utc.strftime("%Y-%m-%d %H:%M:%S UTC"), title
            page.screenshot(path=screenshot_path("alerts-800.png"), full_page=True)

            # The Django admin is styled: its stylesheet answers 200 and applies.
            styles: dict[str, int] = {}
            page.on("response", lambda r: styles.__setitem__(r.url, r.status) if r.url.endswith(".css") else None)
            page.set_viewport_size({"width": 1300, "height": 900})
            page.goto(f"{base}/admin/")
            assert styles.get(f"{base}/static/admin/css/base.css") == 200, styles
            assert page.evaluate("getComputedStyle(document.getElementById('header')).display") == "flex"
            page.screenshot(path=screenshot_path("admin.png"))
        finally:
            browser.close()
    assert not errors, errors
