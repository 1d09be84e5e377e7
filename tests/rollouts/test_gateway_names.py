"""Deployment names as `model` in the gateway (and so in the playground, which resolves through the same
hook): the deployment's repo at the version it serves; any ready version while a rollout runs."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient

from fleet.accounts.apikeys import create_api_key
from fleet.hub.models import HubModel, ModelVersion
from fleet.playground import ratelimit, targets
from fleet.rollouts import services
from fleet.rollouts.models import Deployment, Rollout
from tests.playground.fakeagent import REPO, SHA, CommunicatorAgent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_buckets():
    ratelimit._buckets.clear()


@pytest.fixture
async def agent(make_node, alice):
    node, secret = await database_sync_to_async(make_node)("gpu-01")

    def deploy() -> None:
        model = HubModel.objects.create(repo_id=REPO)
        ModelVersion.objects.create(model=model, revision="v1", sha=SHA)
        ModelVersion.objects.create(model=model, revision="v2", sha="b" * 40)
        services.create_deployment(alice, "chat-default", REPO, "v1", nodes=["gpu-01"])

    await database_sync_to_async(deploy)()
    fake = await CommunicatorAgent(secret).start()
    yield fake
    await fake.stop()


async def ask(key: str, model: str):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hello there"}]})
    return await AsyncClient().post("/v1/chat/completions", body, content_type="application/json",
                                    headers={"Authorization": f"Bearer {key}"})


async def test_a_deployment_name_answers_from_the_version_it_serves(agent, bob):
    _, key = await database_sync_to_async(create_api_key)(bob, bob, ["chat"])
    response = await ask(key, "chat-default")
    assert response.status_code == 200, response.content
    assert json.loads(response.content)["choices"][0]["message"]["content"] == "hello there"
    assert agent.chats and agent.chats[0]["repo"] == REPO

    listed = await AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert {m["id"] for m in json.loads(listed.content)["data"]} == {REPO, "chat-default"}

    def move_to_v2(rolling: bool) -> None:
        deployment = Deployment.objects.get(name="chat-default")
        deployment.desired_version = ModelVersion.objects.get(revision="v2")
        deployment.save()
        if rolling:
            Rollout.objects.create(deployment=deployment, to_version=deployment.desired_version, state="progressing")

    await database_sync_to_async(move_to_v2)(False)  # it now serves v2, which no node has ready
    response = await ask(key, "chat-default")
    assert response.status_code == 503, response.content
    assert "bbbbbbbbbbbb" in json.loads(response.content)["error"]["message"]
    listed = await AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert {m["id"] for m in json.loads(listed.content)["data"]} == {REPO}

    await database_sync_to_async(move_to_v2)(True)  # mid-rollout: either version answers
    assert (await ask(key, "chat-default")).status_code == 200


async def test_allow_lists_and_unknown_names(agent, bob):
    _, only_deployment = await database_sync_to_async(create_api_key)(bob, bob, ["chat"],
                                                                        allowed_models=["chat-default"])
    assert (await ask(only_deployment, "chat-default")).status_code == 200
    _, other = await database_sync_to_async(create_api_key)(bob, bob, ["chat"], allowed_models=["acme/other"])
    assert (await ask(other, "chat-default")).status_code == 403
    response = await ask(only_deployment, "no-such-deployment")
    assert response.status_code in (403, 404)
    _, any_model = await database_sync_to_async(create_api_key)(bob, bob, ["chat"])
    response = await ask(any_model, "no-such-deployment")
    assert response.status_code == 404 and json.loads(response.content)["error"]["code"] == "model_not_found"
    assert await database_sync_to_async(targets.resolve_model)("chat-default") == (REPO, SHA)
    assert await database_sync_to_async(targets.resolve_model)("acme/x") == ("acme/x", None)
