from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from fleet.asgi import application

ORIGIN = (b"origin", b"http://127.0.0.1")
HOST = (b"host", b"127.0.0.1")  # a browser's socket to the page's own host: the origin check matches them


def _cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


@pytest.fixture
def browser():
    """``await browser(user)`` → a connected-or-refused /ws/chat/ communicator (call .connect())."""
    made: list[WebsocketCommunicator] = []

    async def make(user=None) -> WebsocketCommunicator:
        headers = [ORIGIN, HOST]
        if user is not None:
            headers.append((b"cookie", await database_sync_to_async(_cookie)(user)))
        comm = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
        made.append(comm)
        return comm

    return make
