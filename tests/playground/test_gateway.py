"""`/v1/models` and `/v1/chat/completions` in-process (AsyncClient) over the real AgentConsumer and a
fake agent; the openai-package tests against a real Daphne are in test_gateway_openai.py."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient
from django.utils import timezone

from fleet.accounts.apikeys import create_api_key
from fleet.accounts.models import ApiKey
from fleet.playground import ratelimit
from fleet.telemetry import gateway_stats
from tests.playground.fakeagent import REPO, CommunicatorAgent, hold

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_counters():
    ratelimit._buckets.clear()
    gateway_stats._local.clear()


@pytest.fixture
async def agent(make_node):
    node, secret = await database_sync_to_async(make_node)("gpu-01")
    fake = await CommunicatorAgent(secret).start()
    yield fake
    await fake.stop()


@pytest.fixture
async def key(bob):
    return (await database_sync_to_async(create_api_key)(bob, bob, ["chat"]))[1]


def body(**fields) -> str:
    return json.dumps({"model": REPO, "messages": [{"role": "user", "content": "tell me a story"}], **fields})


async def post(key: str | None, data: str, **extra):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return await AsyncClient().post("/v1/chat/completions", data, content_type="application/json",
                                    headers=headers, **extra)


def error_of(response) -> dict:
    payload = json.loads(response.content)
    assert set(payload["error"]) == {"message", "type", "param", "code"}, payload
    return payload["error"]


async def test_non_streaming_answer(agent, key):
    response = await post(key, body(temperature=0.5, max_tokens=20, stop="\n\n"))
    assert response.status_code == 200, response.content
    payload = json.loads(response.content)
    assert payload["object"] == "chat.completion" and payload["model"] == REPO
    assert payload["choices"][0]["message"] == {"role": "assistant", "content": "tell me a story"}
    assert payload["choices"][0]["finish_reason"] == "stop"
    assert payload["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    assert agent.chats[0]["params"] == {"temperature": 0.5, "max_tokens": 20, "stop": ["\n\n"]}


async def test_streaming_answer(agent, key):
    response = await post(key, body(stream=True, stream_options={"include_usage": True}))
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    raw = b"".join([part async for part in response.streaming_content]).decode()
    events = [line[len("data: "):] for line in raw.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "tell me a story"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 4


async def test_models_lists_ready_models_within_the_allow_list(agent, bob):
    _, plain = await database_sync_to_async(create_api_key)(bob, bob, ["chat"])
    response = await AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {plain}"})
    assert [m["id"] for m in json.loads(response.content)["data"]] == [REPO]
    await database_sync_to_async(ApiKey.objects.update)(allowed_models=["other/model"])
    response = await AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {plain}"})
    assert json.loads(response.content)["data"] == []
    refused = await post(plain, body())
    assert refused.status_code == 403 and error_of(refused)["code"] == "model_not_allowed"


@pytest.mark.parametrize("header", [None, "fak_not-a-key"])
async def test_missing_or_bad_key_is_401(agent, header):
    response = await post(header, body())
    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"
    assert agent.chats == []


async def test_expired_or_wrong_scope_key_is_401(agent, bob):
    _, metrics_only = await database_sync_to_async(create_api_key)(bob, bob, ["metrics"])
    assert (await post(metrics_only, body())).status_code == 401
    _, expired = await database_sync_to_async(create_api_key)(bob, bob, ["chat"])
    await database_sync_to_async(ApiKey.objects.filter(scopes=["chat"]).update)(
        expires_at=timezone.now() - timedelta(seconds=1))
    assert (await post(expired, body())).status_code == 401


async def test_unknown_model_is_404_and_no_ready_node_is_503(agent, key):
    response = await post(key, body(model="nobody/nothing"))
    assert response.status_code == 404 and error_of(response)["code"] == "model_not_found"
    await agent.send({"type": "runtime", "v": 1, "serving": [
        {"runtime": "builtin", "repo": REPO, "sha": "a" * 40, "state": "starting"}]})
    for _ in range(200):
        response = await post(key, body())
        if response.status_code == 503:
            break
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert error_of(response)["code"] == "no_ready_node"


@pytest.mark.parametrize("fields, param", [
    ({"temperature": 5}, "temperature"),
    ({"top_p": "high"}, "top_p"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"n": 2}, "n"),
    ({"stream": "yes"}, "stream"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"model": 7}, "model"),
])
async def test_bad_parameters_are_400_naming_the_field(agent, key, fields, param):
    response = await post(key, body(**fields))
    assert response.status_code == 400, response.content
    error = error_of(response)
    assert error["param"] == param and error["message"].startswith(f"{param}:")
    assert error["type"] == "invalid_request_error"


async def test_rate_limited_key_gets_429_with_retry_after(agent, key, settings):
    settings.FLEET_GATEWAY_REQUESTS_PER_MINUTE = 6  # a burst of 1
    assert (await post(key, body())).status_code == 200
    response = await post(key, body())
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1
    assert error_of(response)["type"] == "rate_limit_error"


async def test_node_dropping_mid_answer_is_502_and_metrics_count_it(agent, key, alice):
    agent.reply = hold

    async def drop_after_first_chat():
        await agent.wait_for_chats(1)
        await agent.stop()

    import asyncio
    dropper = asyncio.create_task(drop_after_first_chat())
    response = await post(key, body())
    await dropper
    assert response.status_code == 502 and "disconnected" in error_of(response)["message"]
    _, metrics_key = await database_sync_to_async(create_api_key)(alice, alice, ["metrics"])
    scrape = await AsyncClient().get("/metrics", headers={"Authorization": f"Bearer {metrics_key}"})
    text = scrape.content.decode()
    assert f'fleet_gateway_requests_total{{code="502",model="{REPO}"}} 1.0' in text
    assert f'fleet_gateway_errors_total{{model="{REPO}",type="node_failed"}} 1.0' in text
    assert f'fleet_gateway_request_duration_seconds_count{{model="{REPO}"}} 1.0' in text


async def test_a_stream_never_read_is_released_and_cancelled(agent, key):
    """A client gone between the response and its first chunk: the generator never runs its finally."""
    import asyncio
    import gc

    from fleet.playground import targets

    agent.reply = hold
    response = await post(key, body(stream=True))
    assert response.status_code == 200
    await agent.wait_for_chats(1)
    del response
    cancelled = agent.cancelled(agent.chats[0]["request_id"])
    # collected on another thread, as a garbage collection tripped inside a sync_to_async worker would:
    # the release still runs on the view's loop
    for _ in range(100):
        await asyncio.to_thread(gc.collect)
        if cancelled.is_set():
            break
        await asyncio.sleep(0.05)
    await asyncio.wait_for(cancelled.wait(), 10)
    assert not targets.inflight
