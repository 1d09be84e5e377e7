"""`/ws/live/`: logged-in users with a role only, same-origin only, per-topic permission checks."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from fleet.asgi import application
from fleet.inventory.models import NodeStatus
from fleet.inventory.services import set_status

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://127.0.0.1")
HOST = (b"host", b"127.0.0.1")  # what a browser sends with the socket it opens on http://127.0.0.1


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def live(user=None, origin=ORIGIN, host=HOST) -> WebsocketCommunicator:
    headers = [header for header in (origin, host) if header]
    if user is not None:
        headers.append((b"cookie", await database_sync_to_async(session_cookie)(user)))
    return WebsocketCommunicator(application, "/ws/live/", headers=headers)


async def test_anonymous_is_refused():
    connected, _ = await (await live()).connect()
    assert connected is False


async def test_foreign_origin_is_refused(charlie):
    comm = await live(charlie, origin=(b"origin", b"https://evil.example"))
    connected, _ = await comm.connect()
    assert connected is False


@pytest.mark.parametrize("origin", [
    b"http://127.0.0.1:8080",  # another port of the same host: another site
    b"https://127.0.0.1",  # another scheme
    b"http://127.0.0.1.evil.example",
    b"null",
])
async def test_an_origin_must_match_scheme_host_and_port(charlie, origin):
    comm = await live(charlie, origin=(b"origin", origin))
    connected, _ = await comm.connect()
    assert connected is False


async def test_an_origin_on_the_sockets_own_port_and_a_configured_one_are_accepted(charlie, settings):
    own = await live(charlie, origin=(b"origin", b"http://localhost:8000"), host=(b"host", b"localhost:8000"))
    assert (await own.connect())[0]
    await own.disconnect()
    settings.CSRF_TRUSTED_ORIGINS = ["https://fleet.example.com"]
    proxied = await live(charlie, origin=(b"origin", b"https://fleet.example.com"), host=(b"host", b"localhost"))
    assert (await proxied.connect())[0]
    await proxied.disconnect()
    no_host = await live(charlie, host=None)
    assert (await no_host.connect())[0] is False


async def test_user_without_a_role_is_refused(outsider):
    connected, _ = await (await live(outsider)).connect()
    assert connected is False


async def test_viewer_sees_a_node_go_online_and_offline(charlie, make_node):
    node, _ = await database_sync_to_async(make_node)("gpu-42")
    comm = await live(charlie)
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "subscribe", "topics": ["fleet", f"node:{node.pk}"]})
    summary = await comm.receive_json_from(timeout=5)
    assert summary["kind"] == "summary" and summary["summary"]["nodes"]["total"] == 1
    assert (await comm.receive_json_from(timeout=5))["kind"] == "subscribed"

    await database_sync_to_async(set_status)(node.pk, NodeStatus.ONLINE)
    messages = [await comm.receive_json_from(timeout=5) for _ in range(2)]  # fleet + node group
    for message in messages:
        assert message["kind"] == "node"
        assert (message["node"]["name"], message["node"]["status"]) == ("gpu-42", "online")
    # The summary follows, coalesced by the process's background loop (at most one a second).
    summary = await comm.receive_json_from(timeout=5)
    assert summary["kind"] == "summary" and summary["summary"]["nodes"]["online"] == 1
    await database_sync_to_async(set_status)(node.pk, NodeStatus.OFFLINE)
    assert (await comm.receive_json_from(timeout=5))["node"]["status_colour"] == "red"
    await comm.disconnect()


async def test_a_burst_of_changes_is_summarised_once(charlie, make_node):
    nodes = [(await database_sync_to_async(make_node)(f"burst-{i}"))[0] for i in range(20)]
    comm = await live(charlie)
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "subscribe", "topics": ["fleet"]})
    assert (await comm.receive_json_from(timeout=5))["kind"] == "summary"
    assert (await comm.receive_json_from(timeout=5))["kind"] == "subscribed"
    for node in nodes:
        await database_sync_to_async(set_status)(node.pk, NodeStatus.ONLINE)
    received = [await comm.receive_json_from(timeout=5) for _ in range(21)]
    assert [m["kind"] for m in received].count("node") == 20
    summaries = [m for m in received if m["kind"] == "summary"]
    assert len(summaries) == 1 and summaries[0]["summary"]["nodes"]["online"] == 20
    assert await comm.receive_nothing(timeout=1.5)
    await comm.disconnect()


async def test_bad_subscriptions_get_errors_naming_the_topic(charlie):
    comm = await live(charlie)
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "subscribe", "topics": ["node:abc"]})
    error = await comm.receive_json_from(timeout=5)
    assert error == {"kind": "error", "detail": "topics.0: unknown or not permitted: 'node:abc'"}
    assert await comm.receive_json_from(timeout=5) == {"kind": "subscribed", "topics": []}
    await comm.send_json_to({"type": "dance"})
    assert (await comm.receive_json_from(timeout=5))["detail"].startswith("type:")
    await comm.send_to(text_data="{oops")
    assert (await comm.receive_json_from(timeout=5))["detail"] == "frame: not valid JSON"
    await comm.disconnect()


async def test_changing_a_users_access_closes_their_open_socket(alice, charlie):
    comm = await live(charlie)
    assert (await comm.connect())[0]
    client = Client()
    await database_sync_to_async(client.force_login)(alice)
    response = await database_sync_to_async(client.post)(
        f"/users/{charlie.pk}/", {"role": "viewer", "is_active": ""}
    )
    assert response.status_code == 302
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}
    connected, _ = await (await live(charlie)).connect()
    assert connected is False  # deactivated: the reconnect is refused
