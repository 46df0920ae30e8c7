"""The hub: this process's connections, their subscriptions, presence, fan-out.

A frame for a channel is handed to the broker once; the broker hands it to the
hub of every process, which queues the same pre-built WebSocket frame for each
local subscriber without awaiting anyone (``Session.deliver``). At the end of the
loop turn each connection's queued frames go out with one write (``flush``): a
batch of publishes stored together (group commit) costs one system call per
subscriber, not one per message. A connection whose
unsent bytes pass ``SEND_BUFFER_BYTES`` is closed with 4009, so a client that
does not read costs a bounded amount of memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from server.broker import Broker
from server.errors import CloseCode
from server.logs import fields
from server.metrics import Metrics
from server.protocol import encode_presence_push, text_frame
from server.recent import Recent

if TYPE_CHECKING:
    from server.session import Session

log = logging.getLogger("server.hub")


class Hub:
    """Connections and subscriptions of this process."""

    def __init__(self, broker: Broker, metrics: Metrics, max_per_user: int, recovery_max: int = 300) -> None:
        self.broker = broker  # fan-out between processes
        self.metrics = metrics  # connection and delivery figures
        self.max_per_user = max_per_user  # WS_MAX_PER_USER
        self.subscribers: dict[str, dict[Session, None]] = {}  # channel -> its local sessions, in order
        self.by_user: dict[str, list[Session]] = {}  # user id -> their sessions, oldest first
        self.presence: dict[str, dict[str, int]] = {}  # room channel -> user -> subscribed sockets
        self.connections = 0  # open connections, kept as they come and go
        self.delivered = 0  # frames written to connections
        self.published = 0  # messages published through this process
        self.recent = Recent(recovery_max)  # each busy channel's newest messages, for replays
        self._queued: list[Session] = []  # sessions with frames to write at the end of this loop turn
        broker.bind(self.deliver)

    # -- connections ----------------------------------------------------------------

    @property
    def sessions(self) -> Iterable[Session]:
        return [s for sessions in self.by_user.values() for s in sessions]

    def connection_count(self) -> int:
        return self.connections

    def subscription_count(self) -> int:
        return sum(len(s) for s in self.subscribers.values())

    def register(self, session: Session) -> None:
        """Adds a connection; a user's sockets beyond the limit close, oldest first (4010)."""
        sessions = self.by_user.setdefault(session.user, [])
        sessions.append(session)
        self.connections += 1
        while len(sessions) > self.max_per_user:
            oldest = sessions.pop(0)
            self.connections -= 1
            oldest.close(CloseCode.REPLACED, "replaced by a newer connection")

    def unregister(self, session: Session) -> None:
        for channel in list(session.channels):
            self.unsubscribe(session, channel)
        sessions = self.by_user.get(session.user, [])
        if session in sessions:
            sessions.remove(session)
            self.connections -= 1
        if not sessions:
            self.by_user.pop(session.user, None)

    def close_user(self, user: str, code: int, reason: str) -> int:
        sessions = list(self.by_user.get(user, []))
        for session in sessions:
            session.close(code, reason)
        return len(sessions)

    def close_sid(self, sid: str, code: int, reason: str) -> int:
        closing = [s for s in self.sessions if s.sid == sid]
        for session in closing:
            session.close(code, reason)
        return len(closing)

    def close_all(self, code: int, reason: str) -> None:
        for session in list(self.sessions):
            session.close(code, reason)

    # -- subscriptions ------------------------------------------------------------------

    def subscribe(self, session: Session, channel: str) -> None:
        if channel.startswith("room:"):
            # The join goes to the others: it is published before this session subscribes.
            users = self.presence.setdefault(channel, {})
            users[session.user] = users.get(session.user, 0) + 1
            if users[session.user] == 1:
                self.broker.publish(channel, encode_presence_push("join", channel, session.user), 0)
        self.subscribers.setdefault(channel, {})[session] = None

    def unsubscribe(self, session: Session, channel: str) -> None:
        subscribers = self.subscribers.get(channel)
        if subscribers is None or session not in subscribers:
            return
        del subscribers[session]
        session.channels.pop(channel, None)
        if not subscribers:
            del self.subscribers[channel]
            if not self.broker.delivers_all:
                self.recent.forget(channel)  # its messages stop arriving here: the entries would go stale
        users = self.presence.get(channel)
        if users is not None and session.user in users:
            users[session.user] -= 1
            if users[session.user] == 0:
                del users[session.user]
                if not users:
                    del self.presence[channel]
                self.broker.publish(channel, encode_presence_push("leave", channel, session.user), 0)

    def present(self, channel: str) -> list[str]:
        return sorted(self.presence.get(channel, {}))

    # -- fan-out ----------------------------------------------------------------------------

    def publish(self, channel: str, frame: bytes, seq: int) -> None:
        """Sends a message's frame (encoded once) to its channel, everywhere."""
        self.published += 1
        self.metrics.messages_published.inc()
        self.broker.publish(channel, frame, seq)

    def deliver(self, channel: str, frame: bytes, seq: int) -> None:
        """The broker's hand-off: writes the message (its frame's payload) to every
        local subscriber."""
        if seq:
            self.recent.add(channel, seq, frame)
        subscribers = self.subscribers.get(channel)
        if not subscribers:
            return
        frame = text_frame(frame)  # the whole WebSocket frame, once for every subscriber
        delivered = 0
        for session in list(subscribers):
            if session.deliver(channel, frame, seq):
                delivered += 1
        self.delivered += delivered
        self.metrics.messages_delivered.inc(delivered)

    def queued(self, session: Session) -> None:
        """``session`` has frames to write: they go out together once the
        current callbacks are done (``flush``), in the order queued."""
        if not self._queued:
            asyncio.get_running_loop().call_soon(self.flush)
        self._queued.append(session)

    def flush(self) -> None:
        queued, self._queued = self._queued, []
        for session in queued:
            try:
                session.flush()
            except Exception:  # one broken connection must not stall the others' writes
                log.exception("write failed", extra=fields(user=session.user))
                session.outbox = None
                session.close(CloseCode.INTERNAL, "the server could not write to this connection")

    def log_close(self, session: Session, code: int, reason: str) -> None:
        self.metrics.ws_closed.labels(str(code)).inc()
        log.info("socket closed by server", extra=fields(user=session.user, close_code=int(code), reason=reason))
