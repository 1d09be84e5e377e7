"""The pages in a real browser against a real Daphne: live.js turns a node Online and Offline on an
open page without a reload. Needs Debian chromium (skipped without it)."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from tests.browser import launch, needs_chromium
from tests.integration.harness import Stack

PASSWORD = "browser-test-password-1"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    needs_chromium,
]


@pytest.fixture
def stack(tmp_path):
    stack = Stack(tmp_path, offline_after=2).start()
    stack.manage("createoperator", "olivia", "--role", "operator", "--password", PASSWORD)
    yield stack
    stack.stop()


def _enroll(base: str, token: str) -> dict:
    body = json.dumps({"token": token, "hostname": "web-e2e.lab", "name": "web-e2e"}).encode()
    request = urllib.request.Request(f"{base}/api/agents/enroll", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


async def _hello(base: str, secret: str):
    import websockets

    ws = await websockets.connect(base.replace("http://", "ws://") + "/ws/agent/",
                                  additional_headers={"Authorization": f"Bearer {secret}"}, open_timeout=10)
    await ws.send(json.dumps({
        "type": "hello", "v": 1, "agent_version": "9.9.9",
        "host": {"hostname": "web-e2e.lab", "os": "Debian 12", "arch": "x86_64"},
        "gpus": [{"index": 0, "uuid": "GPU-web-e2e-0", "name": "NVIDIA A100", "memory_total_bytes": 80 * 1024**3}],
    }))
    welcome = json.loads(await ws.recv())
    assert welcome["type"] == "welcome", welcome
    return ws


def test_live_status_without_reload(stack: Stack, agent_loop) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    base = stack.url()
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            # The pages run under script-src 'self': a refused inline script or handler shows up here.
            page.on("console", lambda message: errors.append(message.text)
                    if "Content Security Policy" in message.text else None)
            page.goto(f"{base}/")
            page.fill("input[name=username]", "olivia")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#live-indicator[data-state=live]", timeout=60000)

            # An operator creates a token in the UI; the plaintext is on the page once.
            page.goto(f"{base}/enrollment/")
            page.fill("input[name=uses]", "1")
            page.click("text=Create token")
            token = page.input_value("#new-token")
            assert page.input_value("#enroll-command") == f"fleet-agent enroll --server {base} --token {token}"
            enrolled = _enroll(base, token)
            node_id = enrolled["node_id"]

            page.goto(f"{base}/nodes/")
            page.wait_for_selector("#live-indicator[data-state=live]", timeout=60000)
            page.evaluate("window.__noReload = true")
            badge = f"tr[data-node-id='{node_id}'] [data-node-status]"
            assert page.text_content(badge) == "Never seen"

            ws = asyncio.run_coroutine_threadsafe(_hello(base, enrolled["secret"]), agent_loop).result(15)
            page.wait_for_function(f"() => document.querySelector(\"{badge}\").textContent === 'Online'", timeout=60000)
            assert "badge-green" in page.get_attribute(badge, "class")
            assert page.text_content(f"tr[data-node-id='{node_id}'] [data-node-agent-version]") == "9.9.9"

            asyncio.run_coroutine_threadsafe(ws.close(), agent_loop).result(10)
            page.wait_for_function(f"() => document.querySelector(\"{badge}\").textContent === 'Offline'",
                                   timeout=60000)
            assert "badge-red" in page.get_attribute(badge, "class")
            assert page.evaluate("window.__noReload") is True  # updated in place, never reloaded
            assert page.evaluate("fleetFormat.bytes(80 * 1024 ** 3)") == "80.0 GiB"
        finally:
            browser.close()
    assert not errors, errors

