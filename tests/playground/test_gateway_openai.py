"""The `openai` Python package against a real Daphne, with a fake agent on a real websocket."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import openai
import pytest

from tests.integration.harness import Stack
from tests.playground.fakeagent import REPO, SocketAgent, hold, runtime, scripted

pytestmark = pytest.mark.integration


SETUP = """
import json
from datetime import timedelta
from django.contrib.auth import get_user_model
from fleet.accounts.apikeys import create_api_key
from fleet.inventory.services import create_enrollment_token
bob = get_user_model().objects.create_user("bob", role="operator")
print(json.dumps({"key": create_api_key("test", bob, ["chat"])[1],
                  "token": create_enrollment_token("test", ttl=timedelta(minutes=10))[1]}))
"""


def enroll(stack: Stack, name: str, token: str) -> str:
    data = json.dumps({"token": token, "hostname": f"{name}.lan", "name": name}).encode()
    request = urllib.request.Request(f"{stack.url()}/api/agents/enroll", method="POST", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["secret"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("gateway"), offline_after=3).start()
    made = json.loads(stack.manage("shell", "-c", SETUP).splitlines()[-1])  # one process: each manage.py costs seconds
    stack.key = made["key"]
    stack.secret = enroll(stack, "gpu-01", made["token"])
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

