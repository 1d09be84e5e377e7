"""The agent connection's half of the chat relay (DESIGN §7).

A requester (the browser chat socket or the gateway, in any server process; `fleet.playground.relay`)
sends ``agent.chat`` to the node's group with a reply channel of its own. The AgentConsumer holding
the node's socket forwards the ``chat`` frame to the agent and remembers request id → reply channel,
for this connection only: a frame from the agent is relayed only when its request id was given to
this very connection, so no agent can write into another request, and every answer goes back to the
one channel that asked. The per-delta path is a dict lookup and one channel-layer send (no ORM).

Channel-layer messages (all carry the server-made ``request_id``):

- requester → ``node.<id>`` group: ``{"type": "agent.chat", "request_id", "reply_to", "chat": {"repo",
  "messages", "params"}}``; ``{"type": "agent.chat_cancel", "request_id"}`` (to the group, or straight
  to the agent connection's channel once known)
- agent connection → ``reply_to``: ``{"type": "chat.accepted" | "chat.alive" | "chat.delta" |
  "chat.done" | "chat.error", "request_id", "agent": <this connection's channel>, ...}`` with ``text``
  (delta), ``finish_reason`` + ``usage`` (done), ``error`` (error), ``quiet`` (alive: seconds since the
  agent's last frame of any kind).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from channels.exceptions import ChannelFull
from django.conf import settings
from pydantic import ValidationError

from fleet.agent import protocol

log = logging.getLogger(__name__)

MAX_PENDING = 256  # chats in flight on one agent connection
FULL_RETRIES = 50  # a reply channel that stays full this many 10 ms waits: its reader is gone or stuck
CHAT_FRAMES = frozenset({"chat.delta", "chat.done", "chat.error"})


@dataclass
class _Pending:
    reply_to: str
    cancelled_at: float | None = None
    unread: bool = False  # its requester stopped reading: drop further deltas without waiting on it
    started: float = field(default_factory=time.monotonic)


class AgentChats:
    """Requests in flight on one agent connection."""

    def __init__(self, layer, channel_name: str, node_name: str,
                 send_text: Callable[[str], Awaitable[None]]) -> None:
        self.layer = layer
        self.channel_name = channel_name
        self.node_name = node_name
        self.send_text = send_text
        self.pending: dict[str, _Pending] = {}

    async def _reply(self, reply_to: str, request_id: str, kind: str, **fields) -> bool:
        message = {"type": kind, "request_id": request_id, "agent": self.channel_name, **fields}
        for _ in range(FULL_RETRIES):
            try:
                await self.layer.send(reply_to, message)
                return True
            except ChannelFull:
                await asyncio.sleep(0.01)  # let the reader drain
        return False

    async def request(self, event: dict, ready: bool) -> None:
        """``agent.chat`` from a requester: forward it to the agent, or answer why not at once."""
        request_id, reply_to = event.get("request_id"), event.get("reply_to")
        if not isinstance(request_id, str) or not isinstance(reply_to, str):
            return
        if not ready:
            await self._reply(reply_to, request_id, "chat.error",
                              error=f"node {self.node_name} is still connecting; try again in a moment")
            return
        if len(self.pending) >= MAX_PENDING:
            await self._reply(reply_to, request_id, "chat.error",
                              error=f"node {self.node_name} has {MAX_PENDING} chats in flight; try again later")
            return
        try:
            frame = protocol.Chat(type="chat", request_id=request_id, **event.get("chat", {}))
        except (ValidationError, TypeError) as error:
            await self._reply(reply_to, request_id, "chat.error", error=f"invalid chat request: {error}")
            return
        self.pending[request_id] = _Pending(reply_to)
        await self.send_text(protocol.dump(frame))
        await self._reply(reply_to, request_id, "chat.accepted")

    async def cancel(self, event: dict) -> None:
        pending = self.pending.get(event.get("request_id"))
        if pending is None or pending.cancelled_at is not None:
            return
        pending.cancelled_at = time.monotonic()  # kept until the agent's chat.done / chat.error
        await self.send_text(protocol.dump(protocol.ChatCancel(type="chat.cancel", request_id=event["request_id"])))

    async def frame(self, frame: protocol.ChatDelta | protocol.ChatDone | protocol.ChatError) -> None:
        """A chat frame from the agent: relayed only when this connection was given its request id."""
        pending = self.pending.get(frame.request_id)
        if pending is None:
            log.debug("agent %s sent %s for unknown request %r; ignored", self.node_name, frame.type, frame.request_id)
            return
        if frame.type == "chat.delta":
            fields = {"text": frame.text}
        elif frame.type == "chat.done":
            fields = {"finish_reason": frame.finish_reason, "usage": dict(frame.usage)}
        else:
            fields = {"error": frame.error}
        if frame.type != "chat.delta":
            del self.pending[frame.request_id]
        elif pending.unread:
            return
        delivered = await self._reply(pending.reply_to, frame.request_id, frame.type, **fields)
        if not delivered and frame.type == "chat.delta":
            log.warning("chat %s on %s: requester stopped reading; cancelling", frame.request_id, self.node_name)
            pending.unread = True
            await self.cancel({"request_id": frame.request_id})

    async def keepalive(self, last_frame: float) -> None:
        """Each heartbeat: tell requesters how long ago the agent last spoke (``quiet`` seconds), so their
        silence limit runs from the agent's last frame, not from this message; and forget cancelled
        requests the agent never finished."""
        now = time.monotonic()
        quiet = round(max(0.0, now - last_frame), 3)
        for request_id, pending in list(self.pending.items()):
            if pending.cancelled_at is not None and now - pending.cancelled_at > settings.FLEET_OFFLINE_AFTER:
                del self.pending[request_id]
                continue
            await self._reply(pending.reply_to, request_id, "chat.alive", quiet=quiet)

    async def close(self, reason: str) -> None:
        """The agent connection ended: every request in flight ends with an error now."""
        pending, self.pending = self.pending, {}
        for request_id, entry in pending.items():
            await self._reply(entry.reply_to, request_id, "chat.error", error=reason)
