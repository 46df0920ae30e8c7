"""The real-time service: what WebSocket connections and the server API share —
publishing (content check, storage, fan-out), opening connections, and what
the processes of a deployment ask of each other (control messages)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from bson import ObjectId

from server.auth import Auth, Principal
from server.channels import Channel
from server.content import ContentCheck
from server.errors import ApiError, CloseCode
from server.messages import Messages, Published
from server.metrics import Metrics
from server.protocol import encode_message_push
from server.realtime.brokers import make_broker, make_presence
from server.realtime.brokers.base import Broker
from server.realtime.commands import Commands
from server.realtime.connection import Connection, Transport
from server.realtime.hub import Hub
from server.realtime.node import Node
from server.realtime.presence_redis import RedisPresence
from server.rooms import Rooms
from server.timeouts import within
from server.users import Users
from settings import Settings

SETTLE_SECONDS = 2.0  # at close, how long the presence calls of the sockets just closed may take
STATS_KEYS = ("connections", "users", "subscriptions", "channels", "messages_published", "messages_delivered")


class Realtime:
    """Publishing, the connections of this process, and its part in the deployment."""

    def __init__(self, settings: Settings, messages: Messages, rooms: Rooms, auth: Auth, users: Users,
                 content: ContentCheck | None, metrics: Metrics, broker: Broker | None = None) -> None:
        self.settings = settings  # RECOVERY_MAX, WS_MAX_PER_USER, REDIS_URL...
        broker = broker or make_broker(settings.redis_url, settings.redis_timeout, settings.redis_publish_delay)
        self.node = Node(broker, make_presence(settings.redis_url, broker.node, settings.redis_timeout,
                                               settings.presence_ttl),
                         self._stored_after, messages.last_seq,
                         settings.position_check)  # the other processes: broker, order, presence
        self.hub = Hub(self.node, metrics, settings.ws_max_per_user, settings.recovery_max)  # connections, fan-out
        self.messages = messages  # stored messages
        self.rooms = rooms  # rooms and permissions
        self.auth = auth  # token checks for refresh
        self.users = users  # openids for the content check
        self.content = content  # msgSecCheck, when CONTENT_CHECK=on
        self.metrics = metrics  # figures
        self.started_at = time.time()  # for uptime in stats
        self.in_flight = 0  # publishes being stored
        self._idle = asyncio.Event()  # set while no publish is in flight
        self._idle.set()
        self.accepting = True  # False once shutdown began
        self.hub.on_detached = lambda c: auth.vouch(c.user, c.sid, share=True)  # its reconnect needs no lookup
        rooms.on_change = lambda room: self.node.tell("room", room=room)
        auth.on_revoke = lambda sid: self.node.tell("revoked", sid=sid)
        if isinstance(self.node.presence, RedisPresence):  # a vouch made by one process serves every process
            auth.shared = self.node.presence
        for op, handler in (("close_sid", self._close_sid), ("revoked", self._revoked), ("room", self._room),
                            ("close_user", self._close_user), ("close_conn", self._close_conn),
                            ("stats", self._stats), ("subscribers", self._subscribers)):
            self.node.on(op, handler)

    @property
    def broker_up(self) -> bool:
        """False while messages may not reach the other processes (Redis down)."""
        return self.node.broker.up

    async def start(self) -> None:
        await self.node.start()

    async def close(self) -> None:
        await self.hub.settle(SETTLE_SECONDS)
        await self.node.close()

    def open(self, principal: Principal, transport: Transport) -> Commands:
        if not self.accepting:
            raise ApiError("unavailable", "the server is shutting down")
        connection = Connection(self.hub.next_id(), principal.user_id, principal.sid, principal.expires_at,
                                transport, self.hub)
        self.hub.register(connection)
        return Commands(self, connection)

    async def publish(self, channel: Channel, sender: str, data: dict[str, Any], cid: str | None) -> Published:
        """Checks (rooms, with CONTENT_CHECK=on), stores, then fans out; a retried
        cid returns the first answer and delivers nothing."""
        if not self.accepting:
            raise ApiError("unavailable", "the server is shutting down")
        self.in_flight += 1
        self._idle.clear()
        try:
            if self.content is not None and channel.kind == "room" and sender != "server":
                user = await self.users.get(ObjectId(sender))
                await self.content.check(data, str(user["openid"]) if user else "")
            return await self.messages.publish(
                channel, sender, data, cid,
                deliver=lambda message: self.hub.publish(channel, encode_message_push(message), message["seq"]))
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def _stored_after(self, channel: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Stored messages after a seq, oldest first, as pushes: what the order fills gaps with."""
        messages, _ = await self.messages.history(channel, None, after, limit)
        return [(m["seq"], encode_message_push(m)) for m in messages]

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stops taking publishes, waits for those being stored, then closes
        every socket with 1001 (reconnect with backoff)."""
        self.accepting = False
        try:
            await within(self._idle.wait(), timeout)
        except TimeoutError:
            pass
        self.hub.close_all(CloseCode.GOING_AWAY, "server shutting down")

    # -- over the deployment ------------------------------------------------------------------

    def sign_out(self, sid: str) -> int:
        """Closes the session's sockets here (4001) and tells every other process to."""
        self.node.tell("close_sid", sid=sid)
        return self.hub.close_sid(sid, CloseCode.TOKEN_INVALID, "signed out")

    async def disconnect(self, user: str) -> int:
        """Closes the user's sockets in every process (4000); how many closed."""
        closed = self.hub.close_user(user, CloseCode.DISCONNECTED, "disconnected by the server")
        return closed + sum(int(answer or 0) for _, answer in await self.node.ask("close_user", user=user))

    async def present(self, channel: Channel) -> list[str]:
        """A room's users, or a channel's subscribed users, over every process."""
        if channel.kind == "room":
            return await self.hub.present(channel)
        users = set(self.hub.subscribed_users(channel))
        for _, answer in await self.node.ask("subscribers", channel=channel):
            users.update(answer or [])
        return sorted(users)

    def stats(self) -> dict[str, Any]:
        """This process's figures."""
        hub = self.hub
        state = self.node.state()
        return {"connections": hub.connection_count(), "users": len(hub.by_user),
                "subscriptions": hub.subscription_count(), "channels": len(hub.subscribers),
                "messages_published": hub.published, "messages_delivered": hub.delivered,
                "uptime": round(time.time() - self.started_at, 3), "node": state["node"], "pid": os.getpid(),
                "broker": {"kind": state["kind"], "up": state["up"], "held": self.node.orderer.held,
                           "filled_from_mongodb": self.node.orderer.fills},
                "flushes": {"flushes": hub.flushes, "windows": hub.windows_flushed, "frames": hub.frames_flushed}}

    async def deployment_stats(self) -> dict[str, Any]:
        """Every process's figures and their sums (``users``: distinct users over the deployment)."""
        processes = [self.stats()] + [answer for _, answer in await self.node.ask("stats") if answer]
        total: dict[str, Any] = {key: sum(p[key] for p in processes) for key in STATS_KEYS}
        total["users"] = await self.node.users_anywhere(total["users"])
        total["uptime"] = processes[0]["uptime"]
        total["processes"] = processes
        return total

    # -- control messages from other processes -----------------------------------------------

    def _close_sid(self, message: dict[str, Any]) -> int:
        self.auth.forget_session(message["sid"])
        return self.hub.close_sid(message["sid"], CloseCode.TOKEN_INVALID, "signed out")

    def _revoked(self, message: dict[str, Any]) -> None:
        self.auth.forget_session(message["sid"])

    def _room(self, message: dict[str, Any]) -> None:
        self.rooms.forget(message["room"])

    def _close_user(self, message: dict[str, Any]) -> int:
        return self.hub.close_user(message["user"], CloseCode.DISCONNECTED, "disconnected by the server")

    def _close_conn(self, message: dict[str, Any]) -> None:
        if message["node"] == self.node.node:
            self.hub.close_connection(message["conn"], CloseCode.REPLACED, "replaced by a newer connection")

    def _stats(self, message: dict[str, Any]) -> dict[str, Any]:
        return self.stats()

    def _subscribers(self, message: dict[str, Any]) -> list[str]:
        return self.hub.subscribed_users(message["channel"])
