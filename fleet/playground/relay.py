"""The requesting half of the chat relay, shared by the browser chat socket and the /v1 gateway.

``open_chat`` picks the first candidate node that takes the request and returns a ``Relay``: an async
iterator over the agent's events for that one request (``chat.delta`` / ``chat.done`` /
``chat.error`` dicts) on a channel made for it alone, with ``cancel()`` that reaches the runtime.
Message shapes: see `fleet.agents.chat`.

An answer never hangs: the agent connection ends every request with ``chat.error`` when it closes,
and sends ``chat.alive`` each heartbeat saying how long ago the agent last spoke; once the agent has
been silent for FLEET_OFFLINE_AFTER seconds (a machine that died without closing its socket, or the
server process holding the agent died), the relay ends the answer with an error itself. A runtime
that stays silent although its node is alive is given up after STALL_LIMIT seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from fleet import events
from fleet.playground import targets
from fleet.playground.targets import Target

log = logging.getLogger(__name__)

STALL_LIMIT = 300.0  # seconds without a token while the node says it is alive
CANCEL_GRACE = 5.0  # seconds to wait for the agent to confirm a cancel before ending the answer anyway
MAX_ATTEMPTS = 3  # nodes tried before giving up on starting


class RelayError(Exception):
    def __init__(self, message: str, code: str = "node_unavailable") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def accept_timeout() -> float:
    return min(5.0, settings.FLEET_OFFLINE_AFTER)


class Relay:
    """One chat request on one node."""

    def __init__(self, target: Target, chat: dict[str, Any], layer=None) -> None:
        self.target = target
        self.chat = chat
        self.layer = layer or get_channel_layer()
        self.request_id = uuid.uuid4().hex  # the agent's id for it; never a client-chosen one
        self.channel: str | None = None
        self.agent: str | None = None  # the agent connection that took it
        self.finished = False
        self.cancelled_at: float | None = None
        self.counted = False

    async def open(self) -> None:
        """Send the request; return once the node's connection took it. Raises RelayError."""
        self.channel = await self.layer.new_channel()
        targets.inflight[self.target.node_id] += 1
        self.counted = True
        await self.layer.group_send(events.node_group(self.target.node_id), {
            "type": "agent.chat", "request_id": self.request_id, "reply_to": self.channel, "chat": self.chat,
        })
        try:
            message = await self._next(accept_timeout())
        except TimeoutError:
            raise RelayError(f"node {self.target.node_name} did not take the request within "
                             f"{accept_timeout():g} s (it may have just gone offline); try again") from None
        if message["type"] == "chat.error":
            raise RelayError(message.get("error") or f"node {self.target.node_name} refused the request")
        if message["type"] != "chat.accepted":
            raise RelayError(f"node {self.target.node_name} answered out of turn; try again")
        self.agent = message.get("agent")

    async def _next(self, timeout: float) -> dict[str, Any]:
        while True:
            message = await asyncio.wait_for(self.layer.receive(self.channel), timeout)
            if message.get("request_id") != self.request_id:
                continue
            if self.agent is not None and message.get("agent") != self.agent:
                continue  # a second connection of the node during a replacement: only one answers
            return message

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self.events()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Deltas, then exactly one ``chat.done`` or ``chat.error``."""
        silence = settings.FLEET_OFFLINE_AFTER
        last_token = heard = time.monotonic()  # heard: when the agent itself last sent anything
        while not self.finished:
            now = time.monotonic()
            limit = min(heard + silence - now, STALL_LIMIT - (now - last_token))
            if self.cancelled_at is not None:
                limit = min(limit, CANCEL_GRACE - (now - self.cancelled_at))
            try:
                message = await self._next(max(limit, 0.01))
            except TimeoutError:
                self.finished = True
                yield self._timeout_event(time.monotonic() - last_token)
                return
            kind = message["type"]
            if kind == "chat.alive":
                quiet = message.get("quiet")
                quiet = float(quiet) if isinstance(quiet, int | float) and quiet >= 0 else 0.0
                heard = max(heard, time.monotonic() - quiet)
                continue
            heard = time.monotonic()
            if kind == "chat.accepted":
                continue
            if kind == "chat.delta":
                last_token = heard
                yield {"type": "chat.delta", "text": message.get("text", "")}
            elif kind == "chat.done":
                self.finished = True
                yield {"type": "chat.done", "finish_reason": message.get("finish_reason") or "stop",
                       "usage": message.get("usage") or {}}
            elif kind == "chat.error":
                self.finished = True
                yield {"type": "chat.error", "error": message.get("error") or "the node reported an error"}

    def _timeout_event(self, since_token: float) -> dict[str, Any]:
        if self.cancelled_at is not None:
            return {"type": "chat.done", "finish_reason": "cancelled", "usage": {}}
        if since_token >= STALL_LIMIT:
            return {"type": "chat.error", "error": f"the runtime on node {self.target.node_name} produced nothing "
                                                  f"for {STALL_LIMIT:g} s; stopped it, try again"}
        return {"type": "chat.error", "error": f"node {self.target.node_name} stopped answering (nothing for "
                                              f"{settings.FLEET_OFFLINE_AFTER:g} s); it may have gone offline, "
                                              "try again"}

    async def cancel(self) -> None:
        """Stop generation on the node; the events end with ``chat.done`` (cancelled) soon after."""
        if self.finished or self.cancelled_at is not None:
            return
        self.cancelled_at = time.monotonic()
        message = {"type": "agent.chat_cancel", "request_id": self.request_id}
        try:
            if self.agent:
                await self.layer.send(self.agent, message)
            else:
                await self.layer.group_send(events.node_group(self.target.node_id), message)
        except Exception:  # the connection is gone: the agent stops on its own when the socket closes
            log.warning("cancel of chat %s could not be sent", self.request_id, exc_info=True)

    async def aclose(self) -> None:
        """Release the request: cancel it on the node if it is still running."""
        if not self.finished:
            await self.cancel()
            self.finished = True
        if self.counted:
            self.counted = False
            targets.inflight[self.target.node_id] -= 1
            if targets.inflight[self.target.node_id] <= 0:
                del targets.inflight[self.target.node_id]


async def open_chat(candidates: list[Target], chat: dict[str, Any], layer=None) -> Relay:
    """Start ``chat`` on the first of ``candidates`` (least busy first) that takes it."""
    error = RelayError("no node is ready for this model", "no_ready_node")
    for target in candidates[:MAX_ATTEMPTS]:
        relay = Relay(target, {**chat, "repo": target.repo}, layer)
        try:
            await relay.open()
            return relay
        except RelayError as refused:
            error = refused
            await relay.aclose()  # a cancel, in case the node took it after all (a late accept)
        except BaseException:
            await asyncio.shield(relay.aclose())
            raise
    raise error
