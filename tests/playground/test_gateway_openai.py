"""The `openai` Python package against a real Daphne, with a fake agent on a real websocket."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import openai
import pytest

from tests.browser import CHROMIUM, FLAGS, needs_chromium
from tests.integration.harness import Stack
from tests.playground.fakeagent import REPO, SocketAgent, hold, runtime, scripted

pytestmark = pytest.mark.integration


SETUP = """
import json
from datetime import timedelta
from django.contrib.auth import get_user_model
from fleet.accounts.apikeys import create_api_key
from fleet.inventory.services import create_enrollment_token
bob = get_user_model().objects.create_user("bob", password="browser-test-password-1", role="operator")
print(json.dumps({"key": create_api_key("test", bob, ["chat"])[1],
                  "token": create_enrollment_token("test", ttl=timedelta(minutes=10))[1]}))
"""


def enroll(stack: Stack, name: str, token: str) -> dict:
    data = json.dumps({"token": token, "hostname": f"{name}.lan", "name": name}).encode()
    request = urllib.request.Request(f"{stack.url()}/api/agents/enroll", method="POST", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("gateway"), offline_after=3).start()
    made = json.loads(stack.manage("shell", "-c", SETUP).splitlines()[-1])  # one process: each manage.py costs seconds
    stack.key = made["key"]
    enrolled = enroll(stack, "gpu-01", made["token"])
    stack.secret, stack.node_id = enrolled["secret"], enrolled["node_id"]
    yield stack
    stack.stop()


def client(stack: Stack, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.url()}/v1", api_key=key or stack.key, max_retries=0, timeout=20)


async def answers(stack: Stack, serving: list[dict], reply=scripted, body=None):
    agent = await SocketAgent(stack.url(), stack.secret, serving=serving, reply=reply).start()
    try:
        return await body(agent)
    finally:
        await agent.stop()


async def test_streaming_and_non_streaming_answers(stack):
    async def scenario(agent):
        api = client(stack)
        models = await api.models.list()
        assert [m.id for m in models.data] == [REPO]
        result = await api.chat.completions.create(model=REPO, messages=[{"role": "user", "content": "a b c"}])
        assert result.choices[0].message.content == "a b c" and result.usage.completion_tokens == 3
        stream = await api.chat.completions.create(model=REPO, stream=True,
                                                   messages=[{"role": "user", "content": "one two three"}])
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "one two three"

    await answers(stack, [runtime()], body=scenario)


async def test_errors_are_openai_errors(stack):
    question = [{"role": "user", "content": "x"}]

    async def scenario(agent):
        with pytest.raises(openai.AuthenticationError):
            await client(stack, "fak_wrong").chat.completions.create(model=REPO, messages=question)
        with pytest.raises(openai.NotFoundError):
            await client(stack).chat.completions.create(model="no/such", messages=question)
        with pytest.raises(openai.BadRequestError) as bad:
            await client(stack).chat.completions.create(model=REPO, temperature=7, messages=question)
        assert bad.value.body["param"] == "temperature"

    await answers(stack, [runtime()], body=scenario)

    async def failed(agent):
        with pytest.raises(openai.InternalServerError) as unavailable:
            await client(stack).chat.completions.create(model=REPO, messages=question)
        assert unavailable.value.status_code == 503
        assert unavailable.value.response.headers["Retry-After"] == "5"
        assert agent.chats == []

    await answers(stack, [runtime(state="failed", reason="out of memory")], body=failed)


async def test_a_streaming_client_that_goes_away_cancels_on_the_node(stack):
    async def scenario(agent):
        stream = await client(stack).chat.completions.create(
            model=REPO, stream=True, messages=[{"role": "user", "content": "long story"}])
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break  # the first real token: then hang up
        await stream.close()
        await asyncio.wait_for(agent.cancelled(agent.chats[0]["request_id"]).wait(), 10)

    await answers(stack, [runtime()], reply=hold, body=scenario)



@needs_chromium
@pytest.mark.browser
async def test_node_page_redraws_runtimes_live(stack):
    """runtimes.js: a runtime report redraws the node page's runtimes in place (no reload), built from
    text only (an agent's log line is never HTML)."""
    from playwright.async_api import async_playwright

    agent = await SocketAgent(stack.url(), stack.secret, serving=[runtime(tokens_served=5)]).start()
    errors: list[str] = []
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = await browser.new_page()
                page.on("pageerror", lambda error: errors.append(str(error)))
                await page.goto(f"{stack.url()}/accounts/login/?next=/nodes/{stack.node_id}/")
                await page.fill("input[name=username]", "bob")
                await page.fill("input[name=password]", "browser-test-password-1")
                await page.click("button[type=submit]")
                await page.wait_for_selector("#live-indicator[data-state=live]", timeout=60000)
                await page.evaluate("window.__noReload = true")
                row = f"tr[data-runtime='{REPO}']"
                assert await page.text_content(f"{row} .badge") == "Ready"

                await agent.send({"type": "runtime", "v": 1, "serving": [runtime(
                    state="failed", reason="CUDA out of memory", tokens_served=77,
                    log_tail=["loading weights", "<b>boom</b>"])]})
                await page.wait_for_selector("text=Failed: CUDA out of memory", timeout=60000)
                assert await page.text_content(f"{row} .badge") == "Failed"
                assert "badge-red" in await page.get_attribute(f"{row} .badge", "class")
                assert await page.text_content(f"{row} td:nth-child(6)") == "77"
                await page.click("details.runtime-log summary")
                assert await page.text_content("details.runtime-log pre") == "loading weights\n<b>boom</b>"
                assert await page.evaluate("window.__noReload") is True
            finally:
                await browser.close()
    finally:
        await agent.stop()
    assert not errors, errors
