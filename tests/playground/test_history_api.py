"""The playground's conversation-history API: ownership, validation, state conflicts, query counts,
and who may use it (operators and admins; viewers only when an admin allowed it)."""

from __future__ import annotations

import json
from unittest import mock

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from fleet.accounts.models import AuditEvent
from fleet.playground.access import may_chat
from fleet.playground.models import Conversation, Message, PlaygroundAccess

SHA = "a" * 40
LIST = reverse("playground:conversations")


def _url(name: str, pk: int) -> str:
    return reverse(f"playground:{name}", args=[pk])


def _post(client: Client, url: str, body, method: str = "post"):
    return getattr(client, method)(url, data=json.dumps(body), content_type="application/json")


def _create(client: Client, **fields) -> dict:
    body = {"target": {"model": "org/tiny"}, "params": {"temperature": 0.5}, **fields}
    response = _post(client, LIST, body)
    assert response.status_code == 201, response.content
    return response.json()


def _answer(reply_to: int, **fields) -> dict:
    return {"role": "assistant", "reply_to": reply_to, "lane": "a", "content": "Hi there",
            "node": {"id": None, "name": "gpu-01"}, "model": "org/tiny", "sha": SHA, "revision": "v1",
            "finish_reason": "stop", "ttft_ms": 120.5, "tokens_per_s": 12.25,
            "usage": {"prompt_tokens": 9, "completion_tokens": 3}, **fields}


@pytest.fixture
def bob_client(client: Client, bob) -> Client:
    client.force_login(bob)
    return client


@pytest.mark.django_db
def test_a_conversation_round_trip(bob_client: Client, make_node) -> None:
    node, _ = make_node("gpu-01")
    conv = _create(bob_client, system_prompt="Be brief.")
    assert conv["title"] == "" and conv["mode"] == "chat" and conv["message_count"] == 0

    user = _post(bob_client, _url("messages", conv["id"]), {"role": "user", "content": "Hello\nsecond line"})
    assert user.status_code == 201
    assert user.json()["title"] == "Hello"  # first line of the first prompt
    user_id = user.json()["message"]["id"]

    answer = _post(bob_client, _url("messages", conv["id"]), _answer(user_id, node={"id": node.pk, "name": "gpu-01"}))
    assert answer.status_code == 201, answer.content
    detail = bob_client.get(_url("conversation", conv["id"])).json()
    assert detail["system_prompt"] == "Be brief." and detail["params"] == {"temperature": 0.5}
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
    saved = detail["messages"][1]
    assert saved["node"] == {"id": node.pk, "name": "gpu-01"}
    assert (saved["sha"], saved["revision"], saved["finish_reason"]) == (SHA, "v1", "stop")
    assert (saved["ttft_ms"], saved["tokens_per_s"], saved["usage"]["completion_tokens"]) == (120.5, 12.25, 3)

    renamed = _post(bob_client, _url("conversation", conv["id"]), {"title": "  Greeting  "}, "patch")
    assert renamed.status_code == 200 and renamed.json()["title"] == "Greeting"
    listed = bob_client.get(LIST).json()["conversations"]
    assert [(c["id"], c["title"], c["message_count"]) for c in listed] == [(conv["id"], "Greeting", 2)]

    assert bob_client.delete(_url("conversation", conv["id"])).status_code == 204
    assert not Conversation.objects.exists() and not Message.objects.exists()


@pytest.mark.django_db
def test_each_user_sees_only_their_own(client: Client, bob, alice) -> None:
    client.force_login(alice)
    theirs = _create(client, title="alice's")
    client.force_login(bob)
    mine = _create(client, title="bob's")
    assert [c["id"] for c in client.get(LIST).json()["conversations"]] == [mine["id"]]
    for method, url, body in [
        ("get", _url("conversation", theirs["id"]), None),
        ("patch", _url("conversation", theirs["id"]), {"title": "taken"}),
        ("delete", _url("conversation", theirs["id"]), None),
        ("post", _url("messages", theirs["id"]), {"role": "user", "content": "hi"}),
        ("post", _url("truncate", theirs["id"]), {"after": 1}),
    ]:
        response = _post(client, url, body, method) if body else getattr(client, method)(url)
        assert response.status_code == 404, (method, url)
        assert response.json()["errors"]["id"].startswith("you have no conversation")
    theirs_row = Conversation.objects.get(pk=theirs["id"])
    assert theirs_row.title == "alice's" and not theirs_row.messages.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(("body", "field"), [
    ({"target": {}}, "target"),
    ({"target": {"sha": SHA}}, "target"),
    ({"target": {"model": "org/x", "sha": "nothex"}}, "target.sha"),
    ({"target": {"model": "org/x"}, "params": {"temperature": 3}}, "params.temperature"),
    ({"target": {"model": "org/x"}, "params": {"top_p": 0}}, "params.top_p"),
    ({"target": {"model": "org/x"}, "params": {"max_tokens": "lots"}}, "params.max_tokens"),
    ({"target": {"model": "org/x"}, "params": {"nucleus": 1}}, "params.nucleus"),
    ({"target": {"model": "org/x"}, "mode": "compare"}, "target_b"),
    ({"target": {"model": "org/x"}, "target_b": {"model": "org/y"}}, "target_b"),
    ({"target": {"model": "org/x"}, "title": "t" * 201}, "title"),
    ({"target": {"model": "org/x\x00"}}, "target.model"),
])
def test_bad_conversations_are_refused_naming_the_field(bob_client: Client, body: dict, field: str) -> None:
    response = _post(bob_client, LIST, body)
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"], response.json()
    assert not Conversation.objects.exists()


@pytest.mark.django_db
def test_bad_bodies_and_messages_are_refused(bob_client: Client) -> None:
    assert bob_client.post(LIST, data="{nope", content_type="application/json").json() == {
        "errors": {"body": "send a JSON object (Content-Type: application/json)"}}
    assert _post(bob_client, LIST, [1, 2]).json()["errors"] == {"body": "send a JSON object"}
    conv = _create(bob_client)
    url = _url("messages", conv["id"])
    cases = [
        ({"role": "system", "content": "x"}, "role"),
        ({"role": "user", "content": ""}, "content"),
        ({"role": "user", "content": "x", "replaces": 0}, "replaces"),
        ({**_answer(1), "reply_to": None}, "reply_to"),
        (_answer(1, finish_reason="exploded"), "finish_reason"),
        (_answer(1, ttft_ms=-1), "ttft_ms"),
        (_answer(1, sha="short"), "sha"),
    ]
    for body, field in cases:
        response = _post(bob_client, url, body)
        assert response.status_code == 400, (body, response.content)
        assert field in response.json()["errors"], (field, response.json())
    assert not Message.objects.exists()


@pytest.mark.django_db
def test_answers_must_follow_the_latest_user_turn(bob_client: Client) -> None:
    conv = _create(bob_client)
    url = _url("messages", conv["id"])
    first = _post(bob_client, url, {"role": "user", "content": "one"}).json()["message"]["id"]
    _post(bob_client, url, _answer(first))
    second = _post(bob_client, url, {"role": "user", "content": "two"}).json()["message"]["id"]

    stale = _post(bob_client, url, _answer(first))
    assert stale.status_code == 409 and "moved on" in stale.json()["errors"]["reply_to"]
    assert _post(bob_client, url, _answer(second)).status_code == 201
    twice = _post(bob_client, url, _answer(second))
    assert twice.status_code == 409 and "already has an answer" in twice.json()["errors"]["lane"]
    lane_b = _post(bob_client, url, _answer(second, lane="b"))
    assert lane_b.status_code == 409 and "compare" in lane_b.json()["errors"]["lane"]
    assert Message.objects.count() == 4


@pytest.mark.django_db
def test_regenerate_and_edit_drop_what_came_after(bob_client: Client) -> None:
    conv = _create(bob_client)
    url = _url("messages", conv["id"])
    first = _post(bob_client, url, {"role": "user", "content": "one"}).json()["message"]["id"]
    _post(bob_client, url, _answer(first, content="answer one"))
    second = _post(bob_client, url, {"role": "user", "content": "two"}).json()["message"]["id"]
    _post(bob_client, url, _answer(second, content="answer two"))

    truncated = _post(bob_client, _url("truncate", conv["id"]), {"after": second})
    assert truncated.json() == {"deleted": 1}
    assert _post(bob_client, url, _answer(second, content="again")).status_code == 201

    edited = _post(bob_client, url, {"role": "user", "content": "ONE", "replaces": first})
    assert edited.status_code == 201
    contents = [m["content"] for m in bob_client.get(_url("conversation", conv["id"])).json()["messages"]]
    assert contents == ["ONE"]
    assert Conversation.objects.get(pk=conv["id"]).title == "one"  # the title stays what it was

    answer_id = Message.objects.get(role="user").pk
    _post(bob_client, url, _answer(answer_id))
    not_user = Message.objects.get(role="assistant").pk
    refused = _post(bob_client, url, {"role": "user", "content": "x", "replaces": not_user})
    assert refused.status_code == 409 and "replaces" in refused.json()["errors"]
    missing = _post(bob_client, _url("truncate", conv["id"]), {"after": 999999})
    assert missing.status_code == 409 and "after" in missing.json()["errors"]
    assert Message.objects.count() == 2


@pytest.mark.django_db
def test_compare_conversations_keep_two_lanes(bob_client: Client) -> None:
    conv = _create(bob_client, mode="compare", target={"model": "org/tiny", "sha": SHA},
                   target_b={"model": "org/tiny", "sha": "b" * 40})
    assert conv["target_b"] == {"model": "org/tiny", "sha": "b" * 40}
    url = _url("messages", conv["id"])
    user = _post(bob_client, url, {"role": "user", "content": "compare me"}).json()["message"]["id"]
    assert _post(bob_client, url, _answer(user, lane="a", content="stable")).status_code == 201
    stopped = _answer(user, lane="b", content="canary", finish_reason="cancelled")
    assert _post(bob_client, url, stopped).status_code == 201
    lanes = [(m.get("lane"), m["content"]) for m in bob_client.get(_url("conversation", conv["id"])).json()["messages"]]
    assert lanes == [(None, "compare me"), ("a", "stable"), ("b", "canary")]


@pytest.mark.django_db
def test_the_list_costs_the_same_queries_for_1_or_30_conversations(bob_client: Client, bob) -> None:
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert bob_client.get(LIST).status_code == 200
        return len(queries)

    conv = Conversation.objects.create(owner=bob, target={"model": "org/x"})
    Message.objects.create(conversation=conv, role="user", content="x")
    one = count()
    for index in range(29):
        other = Conversation.objects.create(owner=bob, target={"model": "org/x"}, title=f"c{index}")
        Message.objects.bulk_create([Message(conversation=other, role="user", content="x")] * 3)
    assert count() == one
    assert len(bob_client.get(LIST).json()["conversations"]) == 30


@pytest.mark.django_db
def test_who_may_chat(client: Client, alice, bob, charlie, outsider) -> None:
    assert may_chat(alice) and may_chat(bob)
    assert not may_chat(charlie) and not may_chat(outsider)

    page = reverse("playground:page")
    response = client.get(page)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert client.get(LIST).status_code == 401

    for user in (charlie, outsider):
        client.force_login(user)
        refused = client.get(page)
        assert refused.status_code == 403
        assert b"The playground is for operators and admins" in refused.content
        assert client.get(LIST).status_code == 403
        assert _post(client, LIST, {"target": {"model": "org/x"}}).status_code == 403
    assert b">Playground</a>" not in client.get(reverse("overview")).content

    client.force_login(bob)
    assert client.get(page).status_code == 200
    assert client.post(reverse("playground:access"), {"viewers_may_chat": "on"}).status_code == 403

    client.force_login(alice)
    assert b'name="viewers_may_chat"' in client.get(page).content  # the admin's switch
    response = client.post(reverse("playground:access"), {"viewers_may_chat": "on"})
    assert response.status_code == 302
    assert PlaygroundAccess.objects.get().viewers_may_chat
    assert AuditEvent.objects.filter(action="playground.access", details={"viewers_may_chat": True}).exists()

    assert may_chat(charlie) and not may_chat(outsider)
    client.force_login(charlie)
    assert client.get(page).status_code == 200
    assert b">Playground</a>" in client.get(reverse("overview")).content
    assert b'name="viewers_may_chat"' not in client.get(page).content
    assert client.get(LIST).status_code == 200

    client.force_login(alice)
    with mock.patch("fleet.events.publish") as publish:
        client.post(reverse("playground:access"), {})
    assert not may_chat(charlie)
    # charlie's open chat socket was allowed under the old setting: it is told to close
    publish.assert_called_once_with(f"user.{charlie.pk}", {"type": "user.changed"})


@pytest.mark.django_db
def test_writes_need_the_csrf_token(bob) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)
    response = _post(client, LIST, {"target": {"model": "org/x"}})
    assert response.status_code == 403
    assert not Conversation.objects.exists()


@pytest.mark.django_db
def test_compare_links_preselect_both_targets(bob_client: Client) -> None:
    page = reverse("playground:page")
    response = bob_client.get(page, {"compare": "1", "a": f"org/tiny@{SHA}", "b": "node:7"})
    assert response.status_code == 200
    assert response.context["compare_mode"] is True
    assert response.context["compare_targets"] == {"a": {"model": "org/tiny", "sha": SHA}, "b": {"node": 7}}
    assert b'id="pg-compare-targets"' in response.content

    bad = bob_client.get(page, {"compare": "1", "a": "org/tiny@123"})
    assert bad.status_code == 200
    assert b"Compare link parameter a: sha:" in bad.content
    assert bad.context["compare_targets"] == {}
