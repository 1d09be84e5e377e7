"""The telemetry pages in a real browser (Debian chromium) against real Daphne and simulated agents:
a killed agent's heatmap cells, GPU table rows, current values and charts turn to "no data since
HH:MM:SS" on open pages, and stay so on a fresh load; each tab opens one /ws/live/ socket; every axis
carries its unit; and every count on the overview follows the database through enroll, kill, revoke and
new-GPU events without a reload. Screenshots go to $FLEET_SCREENSHOTS or var/screenshots/."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.browser import launch, needs_chromium
from tests.integration.harness import ROOT, Agent, Stack, wait_until

PASSWORD = "browser-live-password-1"
NO_DATA = re.compile(r"^no data since \d\d:\d\d:\d\d")

pytestmark = [pytest.mark.browser, pytest.mark.integration, needs_chromium]


@pytest.fixture
def stack(tmp_path):
    stack = Stack(tmp_path, offline_after=3).start()
    stack.manage("createoperator", "vera", "--role", "viewer", "--password", PASSWORD)
    stack.manage("createoperator", "otto", "--role", "operator", "--password", PASSWORD)
    yield stack
    stack.stop()


def screenshot(page, name: str) -> None:
    folder = Path(os.environ.get("FLEET_SCREENSHOTS") or ROOT / "var" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def enroll(stack: Stack, tmp_path, name: str) -> tuple[Agent, int]:
    token = stack.manage("createenrollmenttoken", "--expires", "10m")
    agent = Agent(tmp_path / name, stack.env)
    enrolled = agent.cli("enroll", "--server", stack.url(), "--token", token, "--name", name)
    assert enrolled.returncode == 0, enrolled.stderr
    return agent, stack.query("SELECT id FROM inventory_node WHERE name = ?", (name,))[0][0]


def open_page(browser, base: str, user: str, sockets: list[str], errors: list[str]):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#live-indicator[data-state=live]", timeout=30000)
    return page


def goto(page, url: str, sockets: list[str]) -> None:
    """Open a page and check that it opened exactly one /ws/live/ socket for everything it streams."""
    sockets.clear()
    page.goto(url)
    page.wait_for_selector("#live-indicator[data-state=live]", timeout=30000)
    page.wait_for_timeout(1500)  # a second socket, if any script opened one, has had its chance
    assert [s for s in sockets if s.endswith("/ws/live/")] == [sockets[0]], sockets


def test_killed_agent_turns_to_no_data_on_open_pages(stack: Stack, tmp_path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    agent, node_id = enroll(stack, tmp_path, "dying-node")
    agent.run("--simulate", "h100x8")
    base = stack.url()
    errors: list[str] = []
    try:
        wait_until(lambda: "welcomed" in agent.log(), 60, "the agent to connect")
        with playwright.sync_playwright() as p:
            browser = launch(p)
            try:
                sockets: list[str] = []
                node_sockets: list[str] = []
                overview = open_page(browser, base, "vera", sockets, errors)
                goto(overview, f"{base}/", sockets)
                overview.wait_for_function(
                    "() => document.querySelectorAll('[data-heat-node] .heat-cell:not([data-stale])').length === 8",
                    timeout=30000)
                assert overview.locator("[data-gpu-row]:not([data-nodata])").count() == 8
                assert overview.text_content(f"[data-gpu-row='{node_id}:0'] td:nth-child(4)").endswith("%")
                # The GPU table sorts by a clicked column: utilization, highest first, then lowest first.
                utils = "els => els.map(e => parseFloat(e.textContent))"
                overview.click("[data-gpu-table] th[data-sort='util'] button")
                shown = overview.eval_on_selector_all("[data-gpu-row] td:nth-child(4)", utils)
                assert shown == sorted(shown, reverse=True), shown
                assert overview.get_attribute("th[data-sort='util']", "aria-sort") == "descending"
                overview.click("[data-gpu-table] th[data-sort='util'] button")
                shown = overview.eval_on_selector_all("[data-gpu-row] td:nth-child(4)", utils)
                assert shown == sorted(shown), shown

                node = overview.context.new_page()
                node.on("pageerror", lambda error: errors.append(str(error)))
                node.on("websocket", lambda ws: node_sockets.append(ws.url))
                goto(node, f"{base}/nodes/{node_id}/", node_sockets)
                node.wait_for_selector("[data-live-chart='util'][data-last-ts]", timeout=30000)
                node.wait_for_function("() => document.querySelectorAll('[data-gpu-current] td.num').length === 40",
                                       timeout=30000)
                # One panel per metric, all GPUs in each; every axis names its unit.
                panels = node.eval_on_selector_all("[data-metric-panel]", "els => els.map(e => e.dataset.metricPanel)")
                assert panels == ["util", "mem", "temp", "power", "clock"]
                labels = node.evaluate("() => fleetTelemetry.charts().map(u => u.axes.map(a => a.label))")
                assert len(labels) >= 5
                for axes in labels:
                    assert axes[0].startswith("time (") and axes[1] in {"%", "GiB", "°C", "W", "MHz"}, axes
                assert node.evaluate("() => fleetTelemetry.charts()[0].series.length") == 9  # time + 8 GPUs
                legend = node.eval_on_selector_all("[data-metric-panel] .u-legend .u-value",
                                                   "els => els.map(e => e.textContent)")
                assert legend and "--" not in legend, legend
                screenshot(overview, "overview-live")
                screenshot(node, "node-live")

                overview.evaluate("window.__noReload = true")
                node.evaluate("window.__noReload = true")
                agent.kill()
                overview.wait_for_function(
                    "() => document.querySelectorAll('[data-heat-node] .heat-cell[data-stale]').length === 8",
                    timeout=30000)
                note = overview.text_content(f"[data-heat-node='{node_id}'] [data-heat-nodata]")
                assert NO_DATA.match(note), note
                assert overview.locator("[data-gpu-row][data-nodata]").count() == 8
                assert NO_DATA.match(overview.text_content(f"[data-gpu-row='{node_id}:0'] td:nth-child(4)"))
                node.wait_for_selector("[data-telemetry-node][data-nodata] [data-nodata-banner]:not([hidden])",
                                       timeout=30000)
                assert NO_DATA.match(node.text_content("[data-nodata-banner]"))
                current = node.eval_on_selector_all("[data-gpu-current]", "rows => rows.map(r => r.innerText)")
                assert len(current) == 8 and all("no data since" in row and "%" not in row for row in current), current
                assert node.locator("[data-process-table] tbody tr").count() == 0
                legend = node.eval_on_selector_all("[data-metric-panel='util'] .u-legend .u-value",
                                                   "els => els.map(e => e.textContent)")
                assert NO_DATA.match(legend[0]) and legend[1:] == [""] * 8, legend  # no old value reads as current
                assert "no data since" in node.text_content("[data-process-empty]")
                assert overview.evaluate("window.__noReload") is True and node.evaluate("window.__noReload") is True
                # The line ends where the data does: the x axis runs on to now, past the newest point.
                gap = node.evaluate("() => { const u = fleetTelemetry.charts()[0];"
                                    " return u.scales.x.max - u.data[0][u.data[0].length - 1]; }")
                assert gap > 2, gap
                screenshot(overview, "overview-no-data")
                screenshot(node, "node-no-data")

                # A fresh load agrees: no values for that node, only "no data since".
                goto(overview, f"{base}/", sockets)
                overview.wait_for_selector(f"[data-heat-node='{node_id}'][data-nodata]", timeout=30000)
                assert overview.locator("[data-heat-node] .heat-cell:not([data-stale])").count() == 0
                goto(node, f"{base}/nodes/{node_id}/", node_sockets)
                node.wait_for_selector("[data-telemetry-node][data-nodata] [data-nodata-banner]:not([hidden])",
                                       timeout=30000)
                assert node.locator("[data-gpu-current] td.num").count() == 0

                # The agent comes back: live again, and the chart line breaks over the gap.
                agent.run("--simulate", "h100x8")
                node.wait_for_function("() => document.querySelectorAll('[data-gpu-current] td.num').length === 40",
                                       timeout=60000)
                node.wait_for_function("() => fleetTelemetry.charts()[0].data[1].indexOf(null) > 0", timeout=30000)
                assert node.is_hidden("[data-nodata-banner]")
                # 800 px wide: the panels fit (the charts shrink to one column), nothing is cut.
                node.set_viewport_size({"width": 800, "height": 1000})
                node.wait_for_timeout(500)
                assert node.evaluate("() => [...document.querySelectorAll('[data-metric-panel]')].every(p =>"
                                     " p.getBoundingClientRect().right <= document.documentElement.clientWidth)")
                screenshot(node, "node-800px")
            finally:
                browser.close()
    finally:
        agent.kill()
    assert not errors, errors


SUMMARY_JS = "els => Object.fromEntries(els.map(e => [e.dataset.summary, e.textContent.trim()]))"


def database_counts(stack: Stack) -> dict[str, int]:
    """The overview's numbers, counted straight from the stack's database."""
    status = dict(stack.query("SELECT status, COUNT(*) FROM inventory_node GROUP BY status"))
    kinds = dict(stack.query("SELECT kind, COUNT(*) FROM inventory_node GROUP BY kind"))
    present, memory = stack.query(
        "SELECT COUNT(*), COALESCE(SUM(memory_total_bytes), 0) FROM inventory_gpu WHERE state = 'present'")[0]
    on_online = stack.query("SELECT COUNT(*) FROM inventory_gpu g JOIN inventory_node n ON n.id = g.node_id"
                            " WHERE g.state = 'present' AND n.status = 'online'")[0][0]
    return {
        "nodes.total": sum(status.values()), "nodes.online": status.get("online", 0),
        "nodes.offline": status.get("offline", 0), "nodes.never_seen": status.get("never_seen", 0),
        "nodes.revoked": status.get("revoked", 0), "nodes.gpu_servers": kinds.get("gpu_server", 0),
        "nodes.edge_devices": kinds.get("edge_device", 0), "nodes.cpu_nodes": kinds.get("cpu_node", 0),
        "gpus.total": present, "gpus.online": on_online,
        "gpus_lost": stack.query("SELECT COUNT(*) FROM inventory_gpu WHERE state = 'lost'")[0][0],
        "gpus.memory_bytes": int(memory),
        # the top bar's count: open alerts nobody acknowledged or silenced (nothing is silenced here)
        "alerts.firing": stack.query("SELECT COUNT(*) FROM telemetry_alert WHERE resolved_at IS NULL AND "
                                     "acknowledged_at IS NULL AND silenced_until IS NULL")[0][0],
    }


def test_overview_counts_follow_the_database_without_reload(stack: Stack, tmp_path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    base = stack.url()
    errors: list[str] = []
    agents: list[Agent] = []
    checks: list[str] = []

    def counts_agree(page, what: str, online: int | None = None) -> None:
        """Every [data-summary] number on the open page equals the database's, and the GPU table and
        heatmap hold one row/cell per present GPU."""
        state: dict = {}

        def agree() -> bool:
            expected = database_counts(stack)
            if online is not None and expected["nodes.online"] != online:
                return False  # the event itself has not reached the database yet
            shown = page.eval_on_selector_all("[data-summary]", SUMMARY_JS)
            want = {k: str(v) for k, v in expected.items()}
            want["gpus.memory_bytes"] = page.evaluate("n => fleetFormat.bytes(n)", expected["gpus.memory_bytes"])
            rows = page.locator("[data-gpu-row]").count()
            cells = page.locator("[data-heat-node] .heat-cell").count()
            state.update(expected=want, shown=shown, rows=rows, cells=cells)
            return shown == want and rows == cells == expected["gpus.total"]

        try:
            wait_until(agree, 45, f"the overview's counts after {what}")
        except AssertionError as error:
            raise AssertionError(f"{error}: {state}") from None
        checks.append(what)

    try:
        with playwright.sync_playwright() as p:
            browser = launch(p)
            try:
                sockets: list[str] = []
                page = open_page(browser, base, "vera", sockets, errors)
                goto(page, f"{base}/", sockets)
                page.evaluate("window.__noReload = true")
                counts_agree(page, "an empty fleet")

                a, a_id = enroll(stack, tmp_path, "count-a")
                agents.append(a)
                counts_agree(page, "enrolling a node (never seen)")
                a.run("--simulate", "h100x8")
                counts_agree(page, "its agent connecting with 8 GPUs", online=1)

                b, b_id = enroll(stack, tmp_path, "count-edge")
                agents.append(b.run("--simulate", "jetson-orin"))
                counts_agree(page, "an edge device joining", online=2)

                c, _ = enroll(stack, tmp_path, "count-cpu")
                agents.append(c.run("--simulate", "cpu-only"))
                counts_agree(page, "a CPU node joining", online=3)
                c.kill()

                a.kill()
                counts_agree(page, "killing two agents (offline)", online=1)

                operator = open_page(browser, base, "otto", [], errors)
                operator.goto(f"{base}/nodes/{b_id}/")
                token = operator.input_value("input[name=csrfmiddlewaretoken]")
                credential = stack.query("SELECT id FROM inventory_nodecredential WHERE node_id = ? "
                                         "AND revoked_at IS NULL", (b_id,))[0][0]
                status = operator.evaluate(
                    """([url, token]) => fetch(url, {method: "POST", credentials: "same-origin",
                        body: new URLSearchParams({csrfmiddlewaretoken: token})}).then(r => r.status)""",
                    [f"/enrollment/credentials/{credential}/revoke/", token])
                assert status == 200, status
                assert stack.node_status("count-edge") == "revoked"
                counts_agree(page, "revoking a node", online=0)

                a.run("--simulate", "a100x4")  # other GPUs: the 8 H100s are lost, 4 A100s new
                counts_agree(page, "new GPUs on a returning node", online=1)

                # GPUs change while the node stays online (no status change to carry the news): a second
                # agent on the same credential takes over with the H100s, then the first one stops.
                log = a.home / "run.log"
                start = len(log.read_text())
                successor = Agent(a.home, stack.env)
                agents.append(successor.run("--simulate", "h100x8"))
                wait_until(lambda: "welcomed" in log.read_text()[start:], 60, "the successor agent to connect")
                a.kill()
                assert stack.node_status("count-a") == "online"
                counts_agree(page, "GPUs replaced on a node that stays online", online=1)
                # The recently-changed table, empty when the page opened, lists both nodes with their GPU counts.
                per_node = dict(stack.query("SELECT n.name, COUNT(g.id) FROM inventory_node n LEFT JOIN inventory_gpu g"
                                            " ON g.node_id = n.id AND g.state = 'present' GROUP BY n.name"))
                rows_js = ("rows => Object.fromEntries(rows.map(r => [r.cells[0].textContent.trim(),"
                           " r.cells[3].textContent.trim()]))")
                want = {name: str(n) for name, n in per_node.items()}
                seen: list[dict] = []
                try:
                    wait_until(lambda: seen.append(page.eval_on_selector_all("table[data-recent-nodes] tbody tr",
                                                                             rows_js)) or seen[-1] == want,
                               30, "the recently changed nodes")
                except AssertionError as error:
                    raise AssertionError(f"{error}: {seen[-1]} != {want}") from None
                assert page.is_hidden("[data-recent-empty]")
                screenshot(page, "overview-counts")
                assert page.evaluate("window.__noReload") is True  # all of it live, no reload
            finally:
                browser.close()
    finally:
        for agent in agents:
            agent.kill()
    assert len(checks) == 9
    assert not errors, errors


def test_history_with_minutes_of_data_draws_a_line_over_them(stack: Stack, tmp_path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    _, node_id = enroll(stack, tmp_path, "young-node")
    now = int(time.time()) // 60 * 60
    with contextlib.closing(sqlite3.connect(stack.tmp / "var" / "fleet.sqlite3", timeout=10)) as db:
        for index in range(2):
            for age in (3, 2, 1):  # three minutes of rollups, the newest a minute old
                minute = datetime.fromtimestamp(now - 60 * age, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
                db.execute("INSERT INTO telemetry_gpurollup (node_id, gpu_index, gpu_uuid, minute, samples, util_avg,"
                           " util_max, temp_avg, power_avg) VALUES (?, ?, ?, ?, 60, ?, ?, 50, 300)",
                           (node_id, index, f"GPU-{index}", minute, 10.0 * age + index, 10.0 * age + index))
        db.commit()
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = launch(p)
        try:
            page = open_page(browser, stack.url(), "vera", [], errors)
            page.goto(f"{stack.url()}/nodes/{node_id}/")
            page.wait_for_selector("[data-history-chart][data-points='3'] canvas", timeout=30000)
            chart = page.evaluate("""() => { const u = fleetTelemetry.charts().at(-1);
                return {min: u.scales.x.min, max: u.scales.x.max, xs: u.data[0], gpu0: u.data[1],
                        axes: u.axes.map(a => a.label), series: u.series.length}; }""")
            assert chart["gpu0"] == [30.0, 20.0, 10.0] and chart["series"] == 3
            # The x axis spans what exists (from a minute before the first rollup to now), not the whole
            # hour with three dots at its right edge.
            assert chart["min"] == pytest.approx(chart["xs"][0] - 60, abs=1)
            assert chart["max"] - chart["min"] < 6 * 60
            assert chart["axes"][0].startswith("time (") and chart["axes"][1] == "%"
            screenshot(page, "node-history")
        finally:
            browser.close()
    assert not errors, errors
