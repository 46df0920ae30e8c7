"""The real-time service: what WebSocket sessions and the server API share —
publishing (content check, storage, fan-out), the hub, rooms, messages."""

from __future__ import annotations

import asyncio
from typing import Any

from bson import ObjectId

from server.auth import Auth, Principal
from server.broker import Broker
from server.content import ContentCheck
from server.errors import ApiError, CloseCode
from server.hub import Hub
from server.messages import Messages, Published
from server.metrics import Metrics
from server.protocol import encode_message_push
from server.rooms import Rooms
from server.session import Session, Transport
from server.users import Users
from settings import Settings


class Realtime:
    """Publishing and the connections of this process."""

    def __init__(self, settings: Settings, broker: Broker, messages: Messages, rooms: Rooms, auth: Auth,
                 users: Users, content: ContentCheck | None, metrics: Metrics) -> None:
        self.settings = settings  # RECOVERY_MAX, WS_MAX_PER_USER...
        self.hub = Hub(broker, metrics, settings.ws_max_per_user, settings.recovery_max)  # connections and fan-out
        self.messages = messages  # stored messages
        self.rooms = rooms  # rooms and permissions
        self.auth = auth  # token checks for refresh
        self.users = users  # openids for the content check
        self.content = content  # msgSecCheck, when CONTENT_CHECK=on
        self.metrics = metrics  # figures
        self.in_flight = 0  # publishes being stored
        self._idle = asyncio.Event()  # set while no publish is in flight
        self._idle.set()
        self.accepting = True  # False once shutdown began

    def open(self, principal: Principal, transport: Transport) -> Session:
        if not self.accepting:
            raise ApiError("unavailable", "the server is shutting down")
        session = Session(self, principal, transport)
        self.hub.register(session)
        return session

    async def publish(self, channel: str, sender: str, data: dict[str, Any], cid: str | None) -> Published:
        """Checks (rooms, with CONTENT_CHECK=on), stores, then fans out; a retried
        cid returns the first answer and delivers nothing."""
        if not self.accepting:
            raise ApiError("unavailable", "the server is shutting down")
        self.in_flight += 1
        self._idle.clear()
        try:
            if self.content is not None and channel.startswith("room:") and sender != "server":
                user = await self.users.get(ObjectId(sender))
                await self.content.check(data, str(user["openid"]) if user else "")
            return await self.messages.publish(
                channel, sender, data, cid,
                deliver=lambda message: self.hub.publish(channel, encode_message_push(message), message["seq"]))
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stops taking publishes, waits for those being stored, then closes
        every socket with 1001 (reconnect with backoff)."""
        self.accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass
        self.hub.close_all(CloseCode.GOING_AWAY, "server shutting down")

    def stats(self, uptime: float) -> dict[str, Any]:
        hub = self.hub
        return {"connections": hub.connection_count(), "users": len(hub.by_user),
                "subscriptions": hub.subscription_count(), "channels": len(hub.subscribers),
                "messages_published": hub.published, "messages_delivered": hub.delivered,
                "uptime": round(uptime, 3)}
