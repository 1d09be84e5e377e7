"""Open pages that stay true without a reload, in a real browser against a real Daphne: relative times tick
on the node list and a newly enrolled node appears in it; the version page's Nodes box follows a deploy and
an activation reported by an agent; a destructive action asks in the styled dialog, never confirm().
Screenshots go to $FLEET_SCREENSHOTS or var/screenshots/. Needs Debian chromium (skipped without it)."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from pathlib import Path

import pytest

from tests.browser import launch, needs_chromium
from tests.hub.conftest import sample_files, write_folder
from tests.integration.harness import ROOT, Stack

PASSWORD = "browser-lists-password-1"
WAIT = 30000

pytestmark = [pytest.mark.browser, pytest.mark.integration, needs_chromium]


def shot(page, name: str) -> None:
    folder = Path(os.environ.get("FLEET_SCREENSHOTS") or ROOT / "var" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


@pytest.fixture
def stack(tmp_path):
    stack = Stack(tmp_path, offline_after=30).start()
    stack.manage("createoperator", "olivia", "--role", "operator", "--password", PASSWORD)
    yield stack
    stack.stop()


def _enroll(base: str, token: str, name: str) -> dict:
    body = json.dumps({"token": token, "hostname": f"{name}.lab", "name": name}).encode()
    request = urllib.request.Request(f"{base}/api/agents/enroll", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


async def _hello(base: str, secret: str, name: str):
    import websockets

    ws = await websockets.connect(base.replace("http://", "ws://") + "/ws/agent/",
                                  additional_headers={"Authorization": f"Bearer {secret}"}, open_timeout=10)
    await ws.send(json.dumps({
        "type": "hello", "v": 1, "agent_version": "9.9.9",
        "host": {"hostname": f"{name}.lab", "os": "Debian 12", "arch": "x86_64"},
        "gpus": [{"index": 0, "uuid": f"GPU-{name}-0", "name": "NVIDIA A100", "memory_total_bytes": 80 * 1024**3}],
    }))
    assert json.loads(await ws.recv())["type"] == "welcome"
    return ws


async def _next_command(ws, kind: str) -> dict:
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if frame.get("type") == kind:
            return frame


async def _send(ws, frame: dict) -> None:
    await ws.send(json.dumps({"v": 1, **frame}))


def _login(page, base: str) -> None:
    page.goto(f"{base}/")
    page.fill("input[name=username]", "olivia")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#live-indicator[data-state=live]", timeout=60000)


def _watch(page, errors: list[str]) -> None:
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text)
            if "Content Security Policy" in message.text else None)
    page.on("dialog", lambda dialog: (errors.append(f"browser dialog: {dialog.message}"), dialog.dismiss()))


def test_node_list_ticks_and_shows_a_new_node_without_reload(stack: Stack, agent_loop) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    base = stack.url()
    token = stack.manage("createenrollmenttoken", "--uses", "2")
    first = _enroll(base, token, "gpu-tick")
    ws = asyncio.run_coroutine_threadsafe(_hello(base, first["secret"], "gpu-tick"), agent_loop).result(15)
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            _watch(page, errors)
            _login(page, base)
            page.goto(f"{base}/nodes/")
            page.wait_for_selector("#live-indicator[data-state=live]", timeout=60000)
            page.evaluate("window.__noReload = true")
            seen = f"tr[data-node-id='{first['node_id']}'] [data-node-last-seen] time"
            # "just now" turns into "5 s ago", "6 s ago"… on the open page, from the absolute timestamp.
            page.wait_for_function(f"() => /^\\d+ s ago$/.test(document.querySelector(\"{seen}\").textContent)",
                                   timeout=WAIT)
            before = page.text_content(seen)
            page.wait_for_function(f"(b) => {{ const t = document.querySelector(\"{seen}\").textContent;"
                                   f" return /^\\d+ s ago$/.test(t) && t !== b; }}", arg=before, timeout=WAIT)
            assert page.get_attribute(seen, "title").endswith(" UTC")
            assert page.text_content(f"tr[data-node-id='{first['node_id']}'] [data-node-gpu-model]") == "NVIDIA A100"
            shot(page, "node-list-ticking")

            second = _enroll(base, token, "gpu-new")  # enrolled while the page is open
            row = f"tr[data-node-id='{second['node_id']}']"
            page.wait_for_selector(row, timeout=WAIT)
            assert page.text_content(f"{row} [data-node-status]") == "Never seen"
            page.wait_for_function("() => document.querySelector('[data-node-total]').textContent === '2'",
                                   timeout=WAIT)
            assert page.locator("tbody[data-node-rows] tr[data-node-id]").count() == 2
            assert page.evaluate("window.__noReload") is True  # drawn in place, never reloaded
            shot(page, "node-list-new-node")

            # Filters apply on change; headers sort.
            page.select_option("select[name=status]", "online")
            page.wait_for_url("**/nodes/?*status=online*", timeout=WAIT)
            assert page.locator("tbody[data-node-rows] tr[data-node-id]").count() == 1
            page.click("th a.sort:text('Name')")
            page.wait_for_url("**sort=-name*", timeout=WAIT)
            assert "status=online" in page.url
        finally:
            browser.close()
    asyncio.run_coroutine_threadsafe(ws.close(), agent_loop).result(10)
    assert not errors, errors


def test_version_nodes_box_follows_a_deploy_and_delete_asks_in_a_dialog(stack: Stack, agent_loop, tmp_path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    base = stack.url()
    folder = write_folder(tmp_path / "model", sample_files(weights_mib=1))
    stack.manage("importmodel", str(folder), "--repo", "acme/tiny", "--revision", "v1")
    version_id = stack.query("SELECT id FROM hub_modelversion")[0][0]
    token = stack.manage("createenrollmenttoken", "--uses", "2")
    node = _enroll(base, token, "gpu-deploy")
    _enroll(base, token, "gpu-idle")  # never connects: still a choice (it gets the command when it does)
    ws = asyncio.run_coroutine_threadsafe(_hello(base, node["secret"], "gpu-deploy"), agent_loop).result(15)
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            _watch(page, errors)
            _login(page, base)
            page.goto(f"{base}/models/versions/{version_id}/")
            box = "[data-version-nodes]"
            assert "No node holds this version yet" in page.text_content(box)
            option = page.locator(f"select[name=node] option[value='{node['node_id']}']")
            assert option.text_content() == "gpu-deploy · Online"
            page.select_option("select[name=node]", str(node["node_id"]))
            page.click("button:text('Deploy')")
            page.wait_for_selector(".message-success", timeout=WAIT)
            page.evaluate("window.__noReload = true")

            deploy = asyncio.run_coroutine_threadsafe(_next_command(ws, "deploy"), agent_loop).result(25)
            command_id, total = deploy["command_id"], sum(f["size"] for f in deploy["manifest"])
            item = f"{box} li[data-node-id='{node['node_id']}']"
            asyncio.run_coroutine_threadsafe(_send(ws, {"type": "event", "command_id": command_id,
                                                        "state": "downloading", "bytes_done": total // 2,
                                                        "bytes_total": total}), agent_loop).result(10)
            page.wait_for_selector(f"{item} [data-command-state=downloading]", timeout=WAIT)
            shot(page, "version-nodes-downloading")
            asyncio.run_coroutine_threadsafe(_send(ws, {"type": "event", "command_id": command_id,
                                                        "state": "staged", "bytes_done": total,
                                                        "bytes_total": total}), agent_loop).result(10)
            page.wait_for_selector(f"{item} [data-install-state=staged]", timeout=WAIT)
            assert page.locator(f"{item} [data-command-state]").count() == 0
            assert page.evaluate("window.__noReload") is True  # the box followed without a reload
            shot(page, "version-nodes-staged")

            # The box offers Activate for a node holding the version staged.
            page.click(f"{item} button:text('Activate')")
            page.wait_for_selector(".message-success", timeout=WAIT)
            activate = asyncio.run_coroutine_threadsafe(_next_command(ws, "activate"), agent_loop).result(25)
            page.evaluate("window.__noReload = true")
            asyncio.run_coroutine_threadsafe(_send(ws, {"type": "event", "command_id": activate["command_id"],
                                                        "state": "active"}), agent_loop).result(10)
            page.wait_for_selector(f"{item} [data-install-state=active]", timeout=WAIT)
            assert page.evaluate("window.__noReload") is True
            shot(page, "version-nodes-active")

            # Delete asks in the styled dialog, naming what happens; Cancel keeps everything.
            page.click("button:text('Delete')")
            dialog = "dialog.confirm-dialog[open]"
            page.wait_for_selector(dialog, timeout=WAIT)
            text = page.text_content(f"{dialog} .confirm-text")
            assert "Delete acme/tiny@" in text and "removed from the store" in text
            assert page.text_content(f"{dialog} [data-confirm-ok]") == "Delete"
            shot(page, "confirm-dialog")
            page.click(f"{dialog} button:text('Cancel')")
            page.wait_for_selector(dialog, state="detached", timeout=WAIT)
            assert page.evaluate("window.__noReload") is True  # nothing was submitted
            # Confirming submits the form: the server refuses while the version is active on a node.
            page.click("button:text('Delete')")
            page.click(f"{dialog} [data-confirm-ok]")
            page.wait_for_selector(".message-error", timeout=WAIT)
            assert "is active on gpu-deploy" in page.text_content(".message-error")

            # On the node's page, Deploy here turns disabled, with the reason, once its agent goes away.
            page.goto(f"{base}/nodes/{node['node_id']}/")
            page.wait_for_selector("#live-indicator[data-state=live]", timeout=60000)
            deploy_here = "button:text('Deploy here')"
            assert page.is_enabled(deploy_here)
            asyncio.run_coroutine_threadsafe(ws.close(), agent_loop).result(10)
            # (offline once silent for the stack's 30 s, then the sweep: a generous wait, not a deadline)
            page.wait_for_selector(f"{deploy_here}[disabled]", timeout=3 * WAIT)
            assert "gpu-deploy is offline" in page.get_attribute(deploy_here, "title")
            assert "must reconnect first" in page.text_content("[data-unreachable]")
            shot(page, "node-deploy-disabled-offline")
        finally:
            browser.close()
    asyncio.run_coroutine_threadsafe(ws.close(), agent_loop).result(10)
    assert not errors, errors
