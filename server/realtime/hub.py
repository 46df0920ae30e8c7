"""The hub: this process's connections, their subscriptions, and fan-out to them.

A message published here goes to the node (``Node.published``), which delivers
it to this process and sends it to the others; a message of a served channel
from anywhere reaches ``deliver`` once, in seq order. ``deliver`` adds the
message's pre-built WebSocket frame to its channel's flush window (``Window``)
without touching any socket; at the end of the loop turn (``flush``) each
subscriber takes the window's frames it has not had, by seq: nearly always all
of them, as one bytes object joined once for the channel and written as it is
to every such socket. A batch of publishes stored together (group commit) so
costs one system call per subscriber and one Python step per subscriber, not
one per message. Replies and pushes outside the seq order (join, leave) are
queued on their connection (``Connection.send``), which writes them with the
window's frames after them, in one write. A busy process batches more: after a
flush that took longer than ``FLUSH_FREE`` (a few hundred sockets' writes),
the next one waits about as long (``FLUSH_SHARE``, at most
``FLUSH_WAIT_MAX``), so what is delivered meanwhile shares one system call per
socket; an idle process writes at the end of the turn as before. A window
past ``WINDOW_BYTES`` is closed (later messages start another) and starts the
flush at once; a flush writes ``FLUSH_SLICE`` at a time, the loop running
between slices. A connection whose unsent
bytes pass ``SEND_BUFFER_BYTES`` is closed with 4009, so a client that does
not read costs a bounded amount of memory.

Presence goes through the node's ``Presence``: a user's first local socket in a
room asks whether they are new anywhere (``join``), their last local one
whether they are gone everywhere (``leave``); those calls run one at a time, in
order. ``WS_MAX_PER_USER`` is decided here with one process, over every
process with Redis (the oldest socket anywhere closes with 4010).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from server.channels import Channel
from server.errors import CloseCode
from server.logs import fields
from server.metrics import Metrics
from server.protocol import encode_presence_push, text_frame
from server.realtime.node import Node
from server.realtime.recent import Recent
from server.realtime.window import Window

if TYPE_CHECKING:
    from server.realtime.connection import Connection

log = logging.getLogger("server.hub")

FLUSH_FREE = 0.002  # seconds a flush may take before the next one waits (a few hundred sockets' writes)
FLUSH_SHARE = 0.5  # after a longer flush, the next waits until flushing took at most this share of the time
FLUSH_WAIT_MAX = 0.2  # seconds, at most, that a flush waits that way
FLUSH_SLICE = 0.005  # seconds of writing after which a flush lets the loop run before going on
FLUSH_STEP = 64  # sockets written between looks at the clock
WINDOW_BYTES = 64 * 1024  # a channel's flush window past this size is closed: later messages start another
WINDOWS_MAX = 64  # full windows waiting past which everything is written at once (a process far behind)


class Hub:
    """Connections and subscriptions of this process."""

    def __init__(self, node: Node, metrics: Metrics, max_per_user: int, recovery_max: int = 300) -> None:
        self.node = node  # broker, ordering, presence and control: the rest of the deployment
        self.metrics = metrics  # connection and delivery figures
        self.max_per_user = max_per_user  # WS_MAX_PER_USER
        self.subscribers: dict[str, dict[Connection, None]] = {}  # channel -> its local connections, in order
        self.by_user: dict[str, list[Connection]] = {}  # user id -> their connections, oldest first
        self.by_id: dict[str, Connection] = {}  # connection id -> connection (control messages name them)
        self.rooms_here: dict[str, dict[str, int]] = {}  # room channel -> user -> local subscribed connections
        self.connections = 0  # open connections, kept as they come and go
        self.delivered = 0  # frames written to connections
        self.published = 0  # messages published through this process
        self.flushes = 0  # flushes begun (stats: how much each flush's writes carry)
        self.windows_flushed = 0  # channel windows those flushes wrote
        self.frames_flushed = 0  # message frames in those windows
        self.recent = Recent(recovery_max)  # each served channel's newest messages, for replays
        self._queued: list[Connection] = []  # connections with frames to write at the end of this loop turn
        self._windows: dict[str, Window] = {}  # channel -> its messages to write at the end of this loop turn
        self._full: list[tuple[str, Window]] = []  # (channel, window) past WINDOW_BYTES, in order, for that flush
        self._scheduled = False  # a flush is due (or running)
        self._steps: Iterator[None] | None = None  # the running flush's writes still to do (it runs in slices)
        self._writing: list[tuple[str, Window]] = []  # the (channel, window)s the running flush writes, in order
        self._writes_took = 0.0  # seconds the running flush's slices took so far
        self._next: asyncio.Handle | None = None  # the call of the next flush or of the running one's next slice
        self._flush_at = 0.0  # loop time before which the next flush waits (the last one was long)
        self._ids = itertools.count(1)  # connection ids
        self._presence = asyncio.Lock()  # presence calls, one at a time, in order
        self._tasks: set[asyncio.Future[Any]] = set()  # presence and cap calls running
        self.on_detached: Callable[[Connection], None] | None = None  # told when a connection is gone (auth vouch)
        node.bind(self)

    def next_id(self) -> str:
        return str(next(self._ids))

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def settle(self, timeout: float) -> None:
        """Waits (at most ``timeout`` seconds) for the presence and cap calls under
        way: at shutdown, the leaves of the sockets just closed reach the other
        processes before the broker and presence close."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # presence answers locally when Redis fails
            log.warning("a presence call failed", extra=fields(error=repr(task.exception())))

    # -- connections ----------------------------------------------------------------

    @property
    def all(self) -> Iterable[Connection]:
        return [c for connections in self.by_user.values() for c in connections]

    def connection_count(self) -> int:
        return self.connections

    def subscription_count(self) -> int:
        return sum(len(s) for s in self.subscribers.values())

    def register(self, connection: Connection) -> None:
        """Adds a connection; a user's sockets beyond the limit close, oldest first (4010)."""
        connections = self.by_user.setdefault(connection.user, [])
        connections.append(connection)
        self.by_id[connection.id] = connection
        self.connections += 1
        if self.node.delivers_all:  # one process: decided here and now
            while len(connections) > self.max_per_user:
                oldest = connections.pop(0)
                self.connections -= 1
                oldest.close(CloseCode.REPLACED, "replaced by a newer connection")
        else:
            self._spawn(self._cap(connection))

    async def _cap(self, connection: Connection) -> None:
        """The per-user cap over every process: the oldest beyond it close, wherever they are."""
        closing = await self.node.presence.connected(connection.user, connection.id, self.max_per_user)
        for node, conn in closing:
            if node == self.node.node:
                self.close_connection(conn, CloseCode.REPLACED, "replaced by a newer connection")
            else:
                self.node.tell("close_conn", node=node, conn=conn)

    def unregister(self, connection: Connection) -> None:
        for channel in list(connection.channels):
            self.unsubscribe(connection, Channel.parse(channel))  # the keys are Channels already: no re-parse
        connections = self.by_user.get(connection.user, [])
        if connection in connections:
            connections.remove(connection)
            self.connections -= 1
            if not self.node.delivers_all:
                self._spawn(self.node.presence.disconnected(connection.user, connection.id))
        if not connections:
            self.by_user.pop(connection.user, None)
        self.by_id.pop(connection.id, None)

    def detached(self, connection: Connection) -> None:
        """A connection closed (from either side): forgotten here."""
        self.unregister(connection)
        if self.on_detached is not None:
            self.on_detached(connection)

    def close_connection(self, conn: str, code: int, reason: str) -> bool:
        connection = self.by_id.get(conn)
        if connection is not None:
            connection.close(code, reason)
        return connection is not None

    def close_user(self, user: str, code: int, reason: str) -> int:
        connections = list(self.by_user.get(user, []))
        for connection in connections:
            connection.close(code, reason)
        return len(connections)

    def close_sid(self, sid: str, code: int, reason: str) -> int:
        closing = [c for c in self.all if c.sid == sid]
        for connection in closing:
            connection.close(code, reason)
        return len(closing)

    def close_all(self, code: int, reason: str) -> None:
        for connection in list(self.all):
            connection.close(code, reason)

    # -- subscriptions ------------------------------------------------------------------

    async def subscribe(self, connection: Connection, channel: Channel) -> None:
        """Adds ``connection`` to ``channel``'s subscribers once the channel is served.
        In a room, a user new to it anywhere is announced (``join``) to the others
        first."""
        room = channel.kind == "room"
        try:
            if room:
                users = self.rooms_here.setdefault(channel, {})
                users[connection.user] = users.get(connection.user, 0) + 1
                if users[connection.user] == 1:
                    async with self._presence:
                        if await self.node.presence.add(channel, connection.user):
                            self.node.push(channel, encode_presence_push("join", channel, connection.user))
            await self.node.acquire(channel)
        except BaseException:
            if room:
                self._left_room(channel, connection.user)
            raise
        self.subscribers.setdefault(channel, {})[connection] = None
        if connection.closed:  # closed while waiting: it was unregistered without this channel
            self.unsubscribe(connection, channel)

    def unsubscribe(self, connection: Connection, channel: Channel) -> None:
        connection.channels.pop(channel, None)
        subscribers = self.subscribers.get(channel)
        if subscribers is None or connection not in subscribers:
            return
        del subscribers[connection]
        if not subscribers:
            del self.subscribers[channel]
        self.node.release(channel)
        if channel.kind == "room":
            self._left_room(channel, connection.user)

    def _left_room(self, channel: str, user: str) -> None:
        users = self.rooms_here.get(channel)
        if users is not None and user in users:
            users[user] -= 1
            if users[user] == 0:
                del users[user]
                if not users:
                    del self.rooms_here[channel]
                self._spawn(self._leave(channel, user))

    async def _leave(self, channel: str, user: str) -> None:
        async with self._presence:
            if self.rooms_here.get(channel, {}).get(user):
                return  # back meanwhile
            if await self.node.presence.remove(channel, user):
                self.node.push(channel, encode_presence_push("leave", channel, user))

    async def present(self, channel: str) -> list[str]:
        """A room's users over every process."""
        return await self.node.presence.users(channel)

    def subscribed_users(self, channel: str) -> list[str]:
        """Users with a local connection subscribed to ``channel``."""
        return sorted({c.user for c in self.subscribers.get(channel, {})})

    # -- fan-out ----------------------------------------------------------------------------

    def publish(self, channel: str, payload: bytes, seq: int) -> None:
        """Sends a stored message's push (encoded once) to its channel, everywhere."""
        self.published += 1
        self.metrics.messages_published.inc()
        self.node.published(channel, seq, payload)

    def deliver(self, channel: str, seq: int, payload: bytes) -> None:
        """The node's hand-off (in seq order for messages; seq 0 for presence):
        the push goes to every local subscriber with the next flush."""
        if seq:
            self.recent.add(channel, seq, payload)
        subscribers = self.subscribers.get(channel)
        if not subscribers:
            return
        frame = text_frame(payload)  # the whole WebSocket frame, once for every subscriber
        if not seq:  # outside the seq order (join, leave): queued on each subscriber now
            delivered = 0
            for connection in list(subscribers):
                if connection.deliver(channel, frame, 0):
                    delivered += 1
            self._count(delivered)
            return
        window = self._windows.get(channel)
        if window is None:
            window = self._windows[channel] = Window()
            self._schedule()
        window.add(seq, frame)
        if window.size > WINDOW_BYTES:  # full: the next messages start another, so no one write nears
            del self._windows[channel]  # SEND_BUFFER_BYTES for a client that reads
            self._full.append((channel, window))
            if isinstance(self._next, asyncio.TimerHandle):  # a full window gains nothing by waiting for
                self._next.cancel()  # the paced flush
                self._next = asyncio.get_running_loop().call_soon(self.flush)
            if len(self._full) > WINDOWS_MAX:  # far behind: everything is written now, the loop held meanwhile
                self.flush(whole=True)

    def _count(self, delivered: int) -> None:
        self.delivered += delivered
        self.metrics.messages_delivered.inc(delivered)

    def catch_up(self, connection: Connection) -> None:
        """What the flush windows hold for ``connection``, queued now: it is
        closing, and they go before its close frame."""
        for channel, window in [*self._writing, *self._full, *self._windows.items()]:  # oldest first
            if channel in connection.channels:
                connection.take(channel, window, queue=True)

    def forget(self, channel: str) -> None:
        """The node stopped serving ``channel``: its recent messages would go stale."""
        self.recent.forget(channel)

    def queued(self, connection: Connection) -> None:
        """``connection`` has frames to write: they go out with the next flush, in the order queued."""
        self._schedule()
        self._queued.append(connection)

    def _schedule(self) -> None:
        """The next flush, once the current callbacks are done; after a long
        flush, once as long again has passed (``FLUSH_SHARE``)."""
        if self._scheduled:
            return
        self._scheduled = True
        loop = asyncio.get_running_loop()
        if self._flush_at > loop.time():
            self._next = loop.call_at(self._flush_at, self.flush)
        else:
            self._next = loop.call_soon(self.flush)

    def flush(self, whole: bool = False) -> None:
        """Writes what the windows and outboxes hold, ``FLUSH_SLICE`` seconds at a
        time: between slices the loop runs (publishes, the broker, replies come
        in, for the next flush), so thousands of sockets' writes on a busy
        process never hold it for long. ``whole``: the running flush and a new one, to the end, now."""
        began = time.perf_counter()
        if self._next is not None:  # whoever called, one chain of calls drives the flush
            self._next.cancel()
            self._next = None
        try:
            if whole and self._steps is not None:
                for _ in self._steps:
                    pass
                self._steps = None
            if self._steps is None:  # a new flush: what was delivered until now
                windows = [*self._full, *self._windows.items()]
                self._full, self._windows = [], {}
                self.flushes += 1
                self.windows_flushed += len(windows)
                self.frames_flushed += sum(len(window.seqs) for _, window in windows)
                self._writing = windows
                self._writes_took = 0.0
                self._steps = self._steps_of(windows)
            until = began + FLUSH_SLICE
            for _ in self._steps:
                if not whole and time.perf_counter() > until:  # the rest in a later loop turn
                    self._writes_took += time.perf_counter() - began
                    self._next = asyncio.get_running_loop().call_soon(self.flush)
                    return
        except Exception:  # a defect: what this flush had not written is dropped, later flushes still run
            log.exception("a flush failed")
        self._steps = None
        self._writing = []
        took = self._writes_took + time.perf_counter() - began  # the writing itself, not what ran between slices
        if took > FLUSH_FREE:  # a busy process: writes wait, and more frames share each system call
            self._flush_at = asyncio.get_running_loop().time() + min(took * (1 - FLUSH_SHARE) / FLUSH_SHARE,
                                                                     FLUSH_WAIT_MAX)
        self._scheduled = False
        if self._windows or self._full or self._queued:  # delivered or queued meanwhile: the next flush
            self._schedule()

    def _steps_of(self, windows: list[tuple[str, Window]]) -> Iterator[None]:
        """The flush's writes, pausing (a ``yield``) every ``FLUSH_STEP`` sockets:
        the windows, then the outboxes (replies, and the windows' frames for
        sockets with a reply or several channels)."""
        for channel, window in windows:  # a connection with a reply queued adds these after it
            subscribers = self.subscribers.get(channel)
            if not subscribers:
                continue
            delivered = 0
            for n, connection in enumerate(list(subscribers), 1):  # a write may close one (4009): a copy
                try:
                    delivered += connection.take(channel, window)
                except Exception:  # one broken connection must not stall the others' writes
                    self._broken(connection)
                if n % FLUSH_STEP == 0:
                    self._count(delivered)
                    delivered = 0
                    yield
            self._count(delivered)
        queued, self._queued = self._queued, []  # what was queued until now, this flush's windows' parts too
        for n, connection in enumerate(queued, 1):
            try:
                connection.flush()
            except Exception:
                self._broken(connection)
            if n % FLUSH_STEP == 0:
                yield

    def _broken(self, connection: Connection) -> None:
        log.exception("write failed", extra=fields(user=connection.user))
        connection.outbox = None
        connection.close(CloseCode.INTERNAL, "the server could not write to this connection", write_first=False)

    def log_close(self, connection: Connection, code: int, reason: str) -> None:
        self.metrics.ws_closed.labels(str(code)).inc()
        log.info("socket closed by server", extra=fields(user=connection.user, close_code=int(code), reason=reason))

