"""`/ws/live/`: pushes fleet and node changes to logged-in browsers, per permitted topic."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from fleet import events
from fleet.inventory.queries import fleet_summary
from fleet.telemetry.browser import TelemetryStream

MAX_TOPICS = 32
CLOSE_ACCESS_CHANGED = 4403


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """Browser protocol: send ``{"type": "subscribe", "topics": ["fleet", "node:7"]}``; receive
    ``{"kind": "node", "node": {...}, "summary": {...}}`` and similar payloads for those topics."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        # AllowedHostsOriginValidator has already refused foreign origins; here: logged in, with a role.
        if user is None or not user.is_authenticated or not user.has_role("viewer"):
            await self.close()
            return
        self.user = user
        self.groups_joined: set[str] = set()
        self.telemetry = TelemetryStream(self.send)  # topics telemetry:fleet, telemetry:node:<id>
        await self.accept()
        await self.channel_layer.group_add(events.user_group(user.pk), self.channel_name)
        self.control_group = events.user_group(user.pk)

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "telemetry"):
            self.telemetry.stop()
        for group in getattr(self, "groups_joined", ()):
            await self.channel_layer.group_discard(group, self.channel_name)
        if hasattr(self, "control_group"):
            await self.channel_layer.group_discard(self.control_group, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        if not isinstance(content, dict) or content.get("type") not in {"subscribe", "unsubscribe"}:
            await self.send_json({"kind": "error", "detail": "type: must be 'subscribe' or 'unsubscribe'"})
            return
        topics = content.get("topics")
        if not isinstance(topics, list) or not topics or len(topics) > MAX_TOPICS:
            await self.send_json({"kind": "error", "detail": f"topics: must be a list of 1 to {MAX_TOPICS} topics"})
            return
        for index, topic in enumerate(topics):
            if TelemetryStream.is_topic(topic):
                error = self.telemetry.change(self.user, content["type"], topic)
                if error:
                    await self.send_json({"kind": "error", "detail": f"topics.{index}: {error}"})
                continue
            group = events.live_group_for_topic(self.user, topic)
            if group is None:
                detail = f"topics.{index}: unknown or not permitted: {topic!r}"
                await self.send_json({"kind": "error", "detail": detail})
                continue
            if content["type"] == "subscribe":
                if group not in self.groups_joined and len(self.groups_joined) >= MAX_TOPICS:
                    await self.send_json({"kind": "error", "detail": f"topics: at most {MAX_TOPICS} subscriptions"})
                    continue
                await self.channel_layer.group_add(group, self.channel_name)
                self.groups_joined.add(group)
                if group == events.FLEET_GROUP:
                    # Covers changes made between rendering the page and subscribing.
                    await self.send_json({"kind": "summary", "summary": await database_sync_to_async(fleet_summary)()})
            else:
                await self.channel_layer.group_discard(group, self.channel_name)
                self.groups_joined.discard(group)
        await self.send_json({"kind": "subscribed", "topics": sorted(self.groups_joined | self.telemetry.topics)})

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        if text_data is None or len(text_data) > 16384:
            await self.send_json({"kind": "error", "detail": "frame: send JSON text under 16 KiB"})
            return
        try:
            await super().receive(text_data=text_data, bytes_data=bytes_data, **kwargs)
        except ValueError:
            await self.send_json({"kind": "error", "detail": "frame: not valid JSON"})

    async def user_changed(self, event: dict) -> None:
        await self.close(code=CLOSE_ACCESS_CHANGED)

    async def live_message(self, event: dict) -> None:
        await self.send_json(event["payload"])
