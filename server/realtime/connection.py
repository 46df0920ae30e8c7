"""One WebSocket connection's state: what it is subscribed to and has been
sent, its outbox, its rate bucket, and its token's expiry.

A ``Connection`` does no protocol work (``commands.Commands`` does) and never
calls up into the service that owns it: it gets the narrow interfaces it needs,
the ``Transport`` (the Tornado handler, which only moves frames) and its
``Holder`` (the hub: where queued frames are flushed, where a close is logged,
who forgets it once it is gone).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from server.errors import CloseCode
from server.protocol import text_frame
from server.realtime.window import Window

SEND_BUFFER_BYTES = 1024 * 1024  # unsent bytes past which a connection is closed (4009)
OUTBOX_BYTES = 64 * 1024  # queued bytes past which a connection writes at once rather than with the hub's flush
RATE_PER_SECOND = 20.0  # frames a connection may send per second, sustained
RATE_BURST = 40.0  # and in a burst


class Transport(Protocol):
    """What a connection needs of its socket."""

    def send_frame(self, frame: bytes) -> bool:
        """Writes a whole pre-built WebSocket frame without waiting; True when
        nothing of it is left queued."""

    def pending(self) -> int:
        """Bytes queued and not yet written to the socket."""

    def drop_unsent(self) -> None:
        """Drops the queued frames not yet begun, so that a close frame goes next."""

    def close(self, code: int, reason: str) -> None: ...


class Holder(Protocol):
    """What a connection needs of the hub holding it."""

    def queued(self, connection: Connection) -> None:
        """``connection`` has frames to write at the end of this loop turn."""

    def catch_up(self, connection: Connection) -> None:
        """What the hub's flush windows hold for ``connection``, taken now (it is closing)."""

    def log_close(self, connection: Connection, code: int, reason: str) -> None: ...

    def detached(self, connection: Connection) -> None:
        """``connection`` is gone (closed from either side)."""


class Connection:
    """A socket's state."""

    def __init__(self, conn_id: str, user: str, sid: str, expires_at: float, transport: Transport,
                 holder: Holder) -> None:
        self.id = conn_id  # unique in this process (control messages name it)
        self.user = user  # who is connected
        self.sid = sid  # the session (refresh-token family) of its token
        self.transport = transport  # the socket
        self.holder = holder  # the hub
        self.channels: dict[str, int] = {}  # subscribed channel (a Channel) -> last seq delivered
        self.buffering: dict[str, list[tuple[int, bytes]]] = {}  # channel -> live frames held during a replay
        self.tokens = RATE_BURST  # the rate limiter's bucket
        self.refilled = time.monotonic()  # when the bucket was last filled
        self.strikes = 0  # frames refused for rate since the bucket was last full
        self.closed = False  # closed by the server or the client
        self.closing = False  # close() under way (it writes what waited first)
        self.opened = time.monotonic()  # when it opened (the oldest closes first past WS_MAX_PER_USER)
        self._expiry: asyncio.TimerHandle | None = None  # closes with 4001 when the token expires
        self.outbox: list[bytes] | None = None  # frames queued this loop turn, written together by the hub
        self.outbox_bytes = 0  # their size
        self.expire_at(expires_at)

    def __hash__(self) -> int:
        return id(self)

    # -- lifetime -------------------------------------------------------------------

    def expire_at(self, expires_at: float) -> None:
        if self.closed:
            return  # a refresh that finished after the close
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, expires_at - time.time())
        self._expiry = asyncio.get_running_loop().call_later(
            delay, self.close, CloseCode.TOKEN_INVALID, "the access token expired")

    def close(self, code: int, reason: str, write_first: bool = True) -> None:
        """Closes with ``code``; what waits to be written goes first unless not ``write_first`` (writing failed)."""
        if self.closed or self.closing:
            return  # closing already (a write while closing found the socket too slow, say)
        self.closing = True
        if write_first:
            self.holder.catch_up(self)  # what was delivered and waits for the hub's flush, and
            self.flush()  # what was queued (an error reply, say), go before the close frame
        self.closed = True
        self.holder.log_close(self, code, reason)
        self.transport.close(code, reason)
        self.detach()

    def detach(self) -> None:
        """Forgets the connection (it closed, from either side). Its running
        commands finish (a publish is stored); their replies go nowhere."""
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.holder.detached(self)

    # -- the rate limit -----------------------------------------------------------------

    def allow(self) -> bool:
        """Takes a token from the bucket for one frame; False (a strike) when empty."""
        now = time.monotonic()
        self.tokens = min(RATE_BURST, self.tokens + (now - self.refilled) * RATE_PER_SECOND)
        self.refilled = now
        if self.tokens >= 1:
            self.tokens -= 1
            if self.tokens >= RATE_BURST - 1:
                self.strikes = 0
            return True
        self.strikes += 1
        return False

    # -- delivery -------------------------------------------------------------------------

    def deliver(self, channel: str, frame: bytes, seq: int) -> bool:
        """Queues a pre-built frame of ``channel`` unless already delivered (by
        seq); held while the channel's replay is being read. Messages reach
        subscribers through the hub's flush windows (``take``); this queues the
        frames held during a replay and pushes outside the seq order (seq 0)."""
        if self.closed:
            return False
        held = self.buffering.get(channel)
        if held is not None:
            held.append((seq, frame))
            return False
        if seq:
            if seq <= self.channels.get(channel, 0):
                return False
            self.channels[channel] = seq
        self._queue(frame)
        return True

    def take(self, channel: str, window: Window, queue: bool = False) -> int:
        """Takes the frames of ``channel``'s flush window this connection has not
        had (by seq); held while the channel's replay is being read. A connection
        with nothing else to write (one channel, no reply queued) writes them at
        once, as the bytes shared with the channel's other subscribers; otherwise
        (or with ``queue``) they join its outbox after what it holds. Returns how
        many frames it took to write."""
        if self.closed:
            return 0
        held = self.buffering.get(channel)
        if held is not None:
            held.extend(window.entries())  # delivered after the replay, by seq (what it holds is dropped)
            return 0
        last = self.channels.get(channel)
        if last is None:
            return 0  # no longer subscribed
        part = window.after(last)
        if part is None:
            return 0
        count, frames = part
        self.channels[channel] = window.last
        if queue or self.outbox is not None or len(self.channels) > 1:
            self._queue(frames)
        elif not self.transport.send_frame(frames):
            self._within_bound()
        return count

    def send(self, payload: bytes | str) -> bool:
        """Queues a reply, in order with what was queued before it; the
        messages waiting in the hub's flush windows follow it in the same write."""
        if self.closed:
            return False
        if isinstance(payload, str):  # a lone surrogate (echoed from a client) is written escaped, as JSON allows
            payload = payload.encode("utf-8", "backslashreplace")
        self._queue(text_frame(payload))
        return True

    def _queue(self, frame: bytes) -> None:
        if self.outbox is None:
            self.outbox = [frame]
            self.outbox_bytes = len(frame)
            self.holder.queued(self)  # the hub flushes every queued connection at the end of the loop turn
        else:
            self.outbox.append(frame)
            self.outbox_bytes += len(frame)
            if self.outbox_bytes > OUTBOX_BYTES:  # large messages while the hub's flush waits: written now,
                self.flush()  # so no one write nears SEND_BUFFER_BYTES for a client that reads

    def flush(self) -> None:
        """Writes what this loop turn queued, as one write: several messages for
        this connection (a batch of publishes, several channels) cost one system
        call, not one each."""
        frames, self.outbox = self.outbox, None
        if not frames or self.closed:
            return
        if not self.transport.send_frame(frames[0] if len(frames) == 1 else b"".join(frames)):
            self._within_bound()

    def _within_bound(self) -> bool:
        if self.transport.pending() > SEND_BUFFER_BYTES:
            self.transport.drop_unsent()  # the close frame in place of the backlog: the client learns why
            self.close(CloseCode.TOO_SLOW, "the connection does not read fast enough", write_first=False)
            return False
        return True
