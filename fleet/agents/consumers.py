"""The server side of the agent websocket (`/ws/agent/`)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import weakref

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from fleet import events
from fleet.agent import protocol
from fleet.agents import arrivals, presence
from fleet.agents.chat import CHAT_FRAMES, AgentChats
from fleet.hub import commands as hub_commands
from fleet.inventory import sites
from fleet.inventory.models import NodeStatus
from fleet.lib.errors import FieldError
from fleet.lib.ratelimit import TokenBucket
from fleet.telemetry.flusher import get_shedder
from fleet.telemetry.ingest import AgentTelemetry

log = logging.getLogger(__name__)

CLOSE_CREDENTIAL_REFUSED = 4401
CLOSE_REPLACED = 4409
CLOSE_SILENT = 4408
CLOSE_TOO_MANY_ERRORS = 4429
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013

ERROR_BUDGET = 20  # invalid frames tolerated per minute before the agent counts as flooding
HELLO_BURST = 3
HELLO_EVERY = 10.0  # seconds per further hello
RUNTIME_BURST = 10
CACHE_REPORT_EVERY = 2.0  # seconds per site-cache report at most (a DB write each); the agent sends one per 5 s
CACHE_REPORT_BURST = 3
CHAT_FRAMES_PER_SECOND = 200  # per chat in flight, beyond the telemetry frame budget
CHAT_FRAMES_BURST = 500  # per chat in flight: a runtime that answers faster than the agent coalesces

_open = 0  # agent connections open in this process
_local: dict[int, str] = {}  # node id → channel name of its newest connection in this process
_command_polls: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}
_welcomed: set[int] = set()  # nodes just welcomed: their unfinished commands are re-sent by the next poll tick
COMMAND_CHECK_EVERY = 0.5  # seconds: how long a re-sent command may wait after the welcome


async def _poll_commands() -> None:
    """Commands without a query per connection. Every COMMAND_CHECK_EVERY, one query finds which of the nodes
    welcomed since have unfinished commands (a reconnect storm: one query, not one per agent), and only those
    connections re-send theirs. Every heartbeat, the fallback behind the `agent.command` nudge, which cannot
    cross processes on the in-memory layer (a command queued by `manage.py deploymodel`, say): one query
    finds the locally connected nodes with commands never sent, and only those connections are told."""
    unfinished = database_sync_to_async(hub_commands.nodes_with_unfinished)
    pending = database_sync_to_async(hub_commands.nodes_with_pending)
    layer = get_channel_layer()
    last_poll = time.monotonic()
    while True:
        await asyncio.sleep(COMMAND_CHECK_EVERY)
        try:
            if _welcomed:
                welcomed = list(_welcomed)
                _welcomed.clear()
                await _nudge(layer, await unfinished(welcomed), {"type": "agent.command"})
            if time.monotonic() - last_poll >= settings.FLEET_HEARTBEAT_INTERVAL:
                last_poll = time.monotonic()
                await _nudge(layer, await pending(list(_local)), {"type": "agent.command", "pending_only": True})
        except Exception:
            log.exception("command poll failed; retrying")


async def _nudge(layer, node_ids: set[int], message: dict) -> None:
    for node_id in node_ids:
        channel = _local.get(node_id)
        if channel:
            await layer.send(channel, message)


def _ensure_command_poll() -> None:
    loop = asyncio.get_running_loop()
    task = _command_polls.get(loop)
    if task is None or task.done():
        _command_polls[loop] = loop.create_task(_poll_commands())


_layer_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def layer_slots() -> asyncio.Semaphore:
    """How many agent connections of this process may be joining or leaving their group at once. In a
    reconnect storm every connection does it at the same moment; on Redis each call in flight holds a pooled
    connection, and past FLEET_REDIS_MAX_CONNECTIONS the pool raises instead of waiting, for browser sockets
    too. A quarter of the pool is the agents' share; the rest of a storm waits its turn here."""
    loop = asyncio.get_running_loop()
    slots = _layer_slots.get(loop)
    if slots is None:
        hosts = settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("hosts") or [{}]
        pool = hosts[0].get("max_connections", 1000) if isinstance(hosts[0], dict) else 1000
        slots = _layer_slots[loop] = asyncio.Semaphore(max(8, pool // 4))
    return slots


def open_connections() -> int:
    """Agent connections this process holds now."""
    return _open


class AgentConsumer(AsyncWebsocketConsumer):
    node_id: int | None = None
    counted = False  # this instance holds one of the process's FLEET_MAX_AGENT_CONNECTIONS slots

    async def __call__(self, scope, receive, send) -> None:
        """Channels' loop without its per-message cost (DESIGN §6, the agent socket is the hot path):
        `await_many_dispatch` makes a task and an `asyncio.wait` for every frame. Here the socket is read
        in a plain loop, and the channel layer by a task of its own that starts after the handshake; a
        lock keeps the two taking turns, so handlers never interleave, as under Channels' loop.

        The slot and the group membership are released however the instance ends: a raised exception
        kills it without `disconnect()` ever running (Daphne closes the socket with 1011), and a leaked
        slot would, at the cap, lock every agent out."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.base_send = send
        self.turn = asyncio.Lock()
        reader: asyncio.Task | None = None
        # Daphne's receive is the get of this connection's queue: what waits in it says the process is
        # falling behind (the shedder tells every agent a longer interval once many connections are)
        queue = getattr(receive, "__self__", None)
        waiting = queue.qsize if isinstance(queue, asyncio.Queue) else None
        shedder, me = get_shedder(), id(self)
        try:
            while True:
                message = await receive()
                if waiting is not None:
                    shedder.backlog(me, waiting())
                async with self.turn:
                    await self.dispatch(message)
                if reader is None and self.counted:
                    reader = asyncio.create_task(self._read_layer())
        except StopConsumer:
            pass
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            await self._release()

    async def _read_layer(self) -> None:
        """Messages from the channel layer (replace, command, site, chat, revoked) for as long as the socket
        is open. A broken layer closes the socket (1011), as the consumer's death under Channels did."""
        try:
            while True:
                message = await self.channel_layer.receive(self.channel_name)
                async with self.turn:
                    await self.dispatch(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("agent %s: the channel layer failed; closing the connection", self.node_name)
            with contextlib.suppress(Exception):
                await self.close(code=1011)

    async def connect(self) -> None:
        global _open
        credential = self.scope.get("fleet_credential")
        if credential is None:
            await self.close()  # before accept: Daphne answers the handshake with 403
            return
        if _open >= settings.FLEET_MAX_AGENT_CONNECTIONS:
            # Not the 403 of a refused credential: the agent must retry later, not give up.
            log.warning("agent connection over capacity: %d open in this process; closing with 1013", _open)
            await self.accept()
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        _open += 1
        self.counted = True
        self.node_id = credential.node_id
        self.credential_id = credential.pk
        self.node_name = credential.node.name
        self.labels = credential.node.labels  # for the site offer, without a query
        # the digest of the last hello stored in full, as loaded with the credential: the first hello may
        # skip its transaction when it matches (fleet/agents/arrivals.py)
        self.stored_digest = credential.node.hello_digest if credential.node.status != NodeStatus.REVOKED else ""
        self.group = events.node_group(self.node_id)
        self.hello_done = False
        self.serving_shape: list[dict] | None = None
        self.last_frame = time.monotonic()
        self.errors: list[float] = []
        self.tasks: list[asyncio.Task] = []
        self.telemetry = AgentTelemetry(self.node_id)
        self.hellos = TokenBucket(rate=1 / HELLO_EVERY, burst=HELLO_BURST)
        self.runtime_reports = TokenBucket(rate=1.0, burst=RUNTIME_BURST)
        self.cache_reports = TokenBucket(rate=1 / CACHE_REPORT_EVERY, burst=CACHE_REPORT_BURST)
        self.chat_budget = TokenBucket(rate=CHAT_FRAMES_PER_SECOND, burst=CHAT_FRAMES_BURST)
        self.chats = AgentChats(self.channel_layer, self.channel_name, self.node_name, self._send_text)
        await self.accept()
        # Tell an older connection of this node (in any server process) to go, then join the group.
        async with layer_slots():
            await self.channel_layer.group_send(self.group, {"type": "agent.replace", "channel": self.channel_name})
            await self.channel_layer.group_add(self.group, self.channel_name)
        _local[self.node_id] = self.channel_name
        _ensure_command_poll()

    async def disconnect(self, code: int) -> None:
        if self.node_id is not None:
            log.info("agent %s disconnected (code %s)", self.node_name, code)
        await self._release()

    async def _release(self) -> None:
        """Give back what connect() took; safe to call twice (disconnect, then the instance's end)."""
        global _open
        if not self.counted:
            return
        self.counted = False
        _open -= 1
        node_id, self.node_id = self.node_id, None
        if _local.get(node_id) == self.channel_name:
            del _local[node_id]
        telemetry = getattr(self, "telemetry", None)
        if telemetry is not None:
            telemetry.close()
        for task in getattr(self, "tasks", []):
            task.cancel()
        chats = getattr(self, "chats", None)
        if chats is not None:
            with contextlib.suppress(Exception):
                await chats.close(f"node {self.node_name} disconnected before the answer was complete; try again")
        if getattr(self, "group", None):
            with contextlib.suppress(Exception):  # a broken channel layer must not keep the slot
                async with layer_slots():
                    await self.channel_layer.group_discard(self.group, self.channel_name)

    async def dispatch(self, message: dict) -> None:
        # Channels runs aclose_old_connections() (a thread hop) before every message; for agent frames,
        # the hot path (DESIGN §6), skip it: this consumer reaches the ORM only through
        # database_sync_to_async, which closes stale connections around each call itself.
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
            return
        await super().dispatch(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            await self._receive(text_data if text_data is not None else bytes_data or b"")
        except Exception:
            # Validation bounds every value, so this is a bug: it costs this agent one frame (an
            # error frame, counted against its budget), never the connection or another node's data.
            log.exception("agent %s: a frame could not be processed", self.node_name)
            await self._refuse(protocol.FrameError("internal_error", "frame: the server could not process it"))

    async def _receive(self, data: str | bytes) -> None:
        if not self.counted:
            return  # refused at connect (over capacity) and closing: nothing to read
        if not self.telemetry.admit() and not self._chat_allowance():  # over budget: dropped unparsed
            if self.telemetry.flooding:
                log.warning("agent %s exceeds its frame budget; closing", self.node_name)
                await self.close(code=CLOSE_TOO_MANY_ERRORS)
            return
        try:
            frame = protocol.parse_agent_frame(data, max_bytes=settings.FLEET_MAX_FRAME_BYTES)
        except protocol.FrameError as error:
            await self._refuse(error)
            return
        self.last_frame = time.monotonic()
        if not self.hello_done:
            if frame.type != "hello":
                await self._refuse(protocol.FrameError("hello_required", "type: the first frame must be 'hello'"))
                return
            await self._on_hello(frame)
            return
        if frame.type == "hello":
            await self._on_hello(frame)
        elif frame.type == "event":
            await database_sync_to_async(hub_commands.record_event)(self.node_id, frame)
            await self._touch()
        elif frame.type in ("metrics", "metrics.batch"):
            await self._on_metrics(frame, len(data))
        elif frame.type in CHAT_FRAMES:
            await self.chats.frame(frame)  # memory and one channel send: no ORM per delta
        elif frame.type == "runtime":
            if not self.runtime_reports.allow():  # a transaction each, like hello
                await self._refuse(protocol.FrameError(
                    "rate_limited", f"type: at most {RUNTIME_BURST} runtime frames at once, then one a second"))
                return
            shape = presence.serving_shape(frame.serving)
            changed = self.serving_shape is not None and shape != self.serving_shape
            arrivals.runtimes_stored(self.node_id)
            await database_sync_to_async(presence.record_runtimes)(self.node_id, frame.serving, changed)
            if changed:
                self.serving_shape = None  # the stored digest is gone: nothing more to compare with
            await self._touch()
        elif frame.type == "cache":
            if self.cache_reports.allow():  # over the budget: dropped quietly, the next one carries the totals
                await database_sync_to_async(sites.record_report)(self.node_id, frame)
            await self._touch()
        else:
            await self._touch()

    def _chat_allowance(self) -> bool:
        """Answers the server asked for are not telemetry: while chats stream, frames over the telemetry
        budget are still taken, up to CHAT_FRAMES_PER_SECOND (and a burst) for each chat in flight."""
        active = len(self.chats.pending)
        if not active:
            return False
        self.chat_budget.rate, self.chat_budget.burst = CHAT_FRAMES_PER_SECOND * active, CHAT_FRAMES_BURST * active
        return self.chat_budget.allow()

    async def _on_hello(self, hello: protocol.Hello) -> None:
        # A hello costs a transaction (facts, GPUs, inventory): a small budget of its own.
        if not self.hellos.allow():
            await self._refuse(protocol.FrameError(
                "rate_limited", f"type: at most {HELLO_BURST} hello frames, then one per {HELLO_EVERY:g}s; "
                                "send hello once per connection"))
            return
        first = not self.hello_done
        digest = presence.hello_digest(hello)
        if first and digest == self.stored_digest:
            arrivals.arrive(self.node_id, hello.serving)  # online with the flusher's next tick, in bulk
        else:
            arrivals.runtimes_stored(self.node_id)
            try:
                node = await database_sync_to_async(presence.record_hello)(self.node_id, hello)
            except FieldError as error:
                await self._refuse(protocol.FrameError("invalid_hello", f"{error.field}: {error.message}"))
                return
            self.labels = node.labels
        self.stored_digest = ""  # a later hello on this connection is stored in full: the copy may be stale
        self.serving_shape = presence.serving_shape(hello.serving)  # what the stored digest says is served
        self.hello_done = True
        offer = await arrivals.site_offer(self.node_id, self.labels)
        await self._send(
            protocol.Welcome(
                type="welcome",
                node_id=self.node_id,
                node_name=self.node_name,
                heartbeat_interval=settings.FLEET_HEARTBEAT_INTERVAL,
                metrics_interval=self.telemetry.welcome_interval(),
                offline_after=settings.FLEET_OFFLINE_AFTER,
                mirror_url=hub_commands.mirror_url(self.scope),
                max_metrics_frame_bytes=settings.FLEET_MAX_METRICS_FRAME_BYTES,
                site_cache=offer,
                protocols=([protocol.PROTOCOL_VERSION, protocol.COMPACT_METRICS_VERSION]
                           if settings.FLEET_COMPACT_METRICS else None),
            )
        )
        # unfinished model commands (the agent reports what it already reached): re-sent by the next poll tick
        _welcomed.add(self.node_id)
        if first:
            self.tasks.append(asyncio.create_task(self._heartbeat()))
            log.info("agent %s connected (%d GPUs)", self.node_name, len(hello.gpus))

    async def _on_metrics(self, frame: protocol.Metrics | protocol.MetricsBatch, size: int) -> None:
        # Memory only: no ORM, no thread hop, no channel-layer send (fleet/telemetry, DESIGN §6).
        reply = self.telemetry.on_metrics(frame, size)
        if isinstance(reply, protocol.FrameError):
            await self._refuse(reply)
            return
        if isinstance(frame, protocol.MetricsBatch):
            if frame.dropped:
                log.warning("agent %s dropped %d buffered samples (oldest first) while disconnected",
                            self.node_name, frame.dropped)
            await self._send(protocol.Ack(type="ack", seq=frame.seq))  # the agent forgets these points now
        if reply is not None:
            await self._send(reply)
        # last_seen: written for all agents at once by the telemetry flusher (live_telemetry.seen), not per agent.

    async def _touch(self) -> None:
        # No query per agent: last_seen joins the flusher's one UPDATE for every node heard from (issue 11).
        self.telemetry.seen()

    async def _heartbeat(self) -> None:
        """Ping the agent every heartbeat interval; close a connection that has gone silent."""
        for nonce in itertools.count(1):
            await asyncio.sleep(settings.FLEET_HEARTBEAT_INTERVAL)
            if time.monotonic() - self.last_frame > settings.FLEET_OFFLINE_AFTER:
                log.info("agent %s silent for %.0fs; closing", self.node_name, settings.FLEET_OFFLINE_AFTER)
                await self.close(code=CLOSE_SILENT)
                return
            await self._send(protocol.Ping(type="ping", nonce=str(nonce)))
            await self.chats.keepalive(self.last_frame)

    async def _refuse(self, error: protocol.FrameError) -> None:
        await self.send(text_data=protocol.Error(type="error", code=error.code, detail=error.detail).model_dump_json())
        if error.code == "frame_too_large":
            await self.close(code=CLOSE_TOO_BIG)
            return
        now = time.monotonic()
        self.errors = [t for t in self.errors if now - t < 60] + [now]
        if len(self.errors) > ERROR_BUDGET:
            log.warning("agent %s sent %d invalid frames in a minute; closing", self.node_name, len(self.errors))
            await self.close(code=CLOSE_TOO_MANY_ERRORS)

    async def _send(self, frame: protocol.BaseModel) -> None:
        await self.send(text_data=frame.model_dump_json())

    async def _send_text(self, text: str) -> None:
        await self.send(text_data=text)

    # ---- messages from the channel layer ----

    async def agent_replace(self, event: dict) -> None:
        if event.get("channel") != self.channel_name:
            log.info("agent %s reconnected elsewhere; closing the older connection", self.node_name)
            await self.close(code=CLOSE_REPLACED)

    async def agent_command(self, event: dict) -> None:
        """A model command was queued for this node (fleet.hub.commands.create)."""
        if self.hello_done:
            await self._send_commands(event.get("command_id"), pending_only=bool(event.get("pending_only")))

    async def _send_commands(self, command_id: str | None = None, pending_only: bool = False) -> None:
        frames = await database_sync_to_async(hub_commands.frames_to_send)(self.node_id, command_id, pending_only)
        for frame in frames:
            await self.send(text_data=protocol.dump(frame))

    async def agent_site(self, event: dict) -> None:
        """This node's site cache changed (registered, replaced or gone): tell the agent."""
        sites.forget_caches(event.get("at"))
        if self.hello_done:
            offer = await arrivals.site_offer(self.node_id, self.labels)
            await self.send(text_data=protocol.dump(protocol.Site(type="site", site_cache=offer)))

    async def agent_chat(self, event: dict) -> None:
        await self.chats.request(event, ready=self.hello_done)

    async def agent_chat_cancel(self, event: dict) -> None:
        await self.chats.cancel(event)

    async def agent_revoked(self, event: dict) -> None:
        # Only the connection made with that secret: after a rotation the new one stays.
        if event.get("credential_id") == self.credential_id:
            await self.close(code=CLOSE_CREDENTIAL_REFUSED)
