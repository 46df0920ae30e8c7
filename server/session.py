"""One WebSocket connection: its commands, subscriptions, limits and token.

The transport (the Tornado handler) only moves frames; everything the protocol
means happens here. Each command gets exactly one reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from server.errors import ApiError, CloseCode
from server.logs import fields
from server.protocol import Command, FrameError, encode_error, encode_result, encode_subscribe_result, parse, text_frame

if TYPE_CHECKING:
    from server.auth import Principal
    from server.realtime import Realtime

log = logging.getLogger("server.session")

SEND_BUFFER_BYTES = 1024 * 1024  # unsent bytes past which a connection is closed (4009)
RATE_PER_SECOND = 20.0  # commands a connection may send per second, sustained
RATE_BURST = 40.0  # and in a burst
RATE_STRIKES = 20  # refused commands before the connection is closed (4008)


class Transport(Protocol):
    """What a session needs of its connection."""

    def send_frame(self, frame: bytes) -> bool:
        """Writes a whole pre-built WebSocket frame without waiting; True when
        nothing of it is left queued."""

    def pending(self) -> int:
        """Bytes queued and not yet written to the socket."""

    def close(self, code: int, reason: str) -> None: ...


class Session:
    """A connection's state."""

    def __init__(self, realtime: Realtime, principal: Principal, transport: Transport) -> None:
        self.realtime = realtime  # the hub, messages, rooms, auth
        self.user = principal.user_id  # who is connected
        self.sid = principal.sid  # the session (refresh-token family) of its token
        self.transport = transport  # the socket
        self.channels: dict[str, int] = {}  # subscribed channel -> last seq delivered
        self.buffering: dict[str, list[tuple[int, bytes]]] = {}  # channel -> live frames held during a replay
        self.tokens = RATE_BURST  # the rate limiter's bucket
        self.refilled = time.monotonic()  # when the bucket was last filled
        self.strikes = 0  # commands refused for rate
        self.closed = False  # closed by the server or the client
        self._expiry: asyncio.TimerHandle | None = None  # closes with 4001 when the token expires
        self.after_reply: list[tuple[str, int, bytes]] = []  # frames held during a replay, sent after its reply
        self.outbox: list[bytes] | None = None  # frames queued this loop turn, written together by the hub
        self.expire_at(principal.expires_at)

    def __hash__(self) -> int:
        return id(self)

    # -- lifetime -------------------------------------------------------------------

    def expire_at(self, expires_at: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, expires_at - time.time())
        self._expiry = asyncio.get_running_loop().call_later(
            delay, self.close, CloseCode.TOKEN_INVALID, "the access token expired")

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.flush()  # what was queued (an error reply, say) goes before the close frame
        self.closed = True
        self.realtime.hub.log_close(self, code, reason)
        self.transport.close(code, reason)
        self.detach()

    def detach(self) -> None:
        """Forgets the connection (it closed, from either side)."""
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.realtime.hub.unregister(self)
        self.realtime.auth.vouch(self.user, self.sid)  # its reconnect, seconds from now, needs no lookup

    # -- delivery -------------------------------------------------------------------------

    def deliver(self, channel: str, frame: bytes, seq: int) -> bool:
        """Queues a pre-built frame of ``channel`` unless already delivered (by
        seq); held while the channel's replay is being read."""
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

    def send(self, payload: bytes | str) -> bool:
        """Queues a reply, in order with the pushes before it."""
        if self.closed:
            return False
        self._queue(text_frame(payload.encode() if isinstance(payload, str) else payload))
        return True

    def _queue(self, frame: bytes) -> None:
        if self.outbox is None:
            self.outbox = [frame]
            self.realtime.hub.queued(self)  # the hub flushes every queued session at the end of the loop turn
        else:
            self.outbox.append(frame)

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
            self.close(CloseCode.TOO_SLOW, "the connection does not read fast enough")
            return False
        return True

    # -- commands --------------------------------------------------------------------------

    def _allow(self) -> bool:
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

    async def handle(self, frame: str | bytes) -> None:
        """Answers one frame."""
        if self.closed:
            return
        started = time.perf_counter()
        try:
            command = parse(frame, self.realtime.settings.recovery_max)
        except FrameError as exc:
            self.send(encode_error(exc.command_id, exc.code, exc.message))
            return
        if not self._allow():
            self.send(encode_error(command.id, "rate_limited", f"at most {RATE_PER_SECOND:.0f} commands a second"))
            if self.strikes >= RATE_STRIKES:
                self.close(CloseCode.TOO_MANY_COMMANDS, "too many commands")
            return
        try:
            result = await getattr(self, f"op_{command.op}")(command)
            self.send(encode_result(command.id, result))
            held, self.after_reply = self.after_reply, []
            for channel, seq, frame in held:
                self.deliver(channel, frame, seq)
        except FrameError as exc:
            self.send(encode_error(command.id, exc.code, exc.message))
        except ApiError as exc:
            self.send(encode_error(command.id, exc.code, exc.message))
        except Exception:
            log.exception("command failed", extra=fields(user=self.user, op=command.op))
            self.send(encode_error(command.id, "internal", "the command failed; the error is logged"))
        finally:
            self.realtime.metrics.ws_command_latency.labels(command.op).observe(time.perf_counter() - started)

    async def op_ping(self, command: Command) -> dict[str, Any]:
        return {"ts": int(time.time() * 1000)}

    async def _readable(self, channel: str) -> None:
        if not await self.realtime.rooms.can_read(self.user, channel):
            raise ApiError("forbidden", f"you may not subscribe to {channel}")

    async def op_subscribe(self, command: Command) -> dict[str, Any] | bytes:
        channel = command.args["channel"]
        await self._readable(channel)
        hub = self.realtime.hub
        since, last = command.args["since"], command.args["last"]
        fresh = channel not in self.channels
        # Subscribe first and hold live frames, then read what was missed: a
        # message published meanwhile is either in the replay or held, and held
        # frames the replay already holds are dropped by seq.
        self.buffering[channel] = []
        if fresh:
            self.channels[channel] = 0
            hub.subscribe(self, channel)
        try:
            recovered = True
            messages: list[dict[str, Any]] = []
            replay = None if since is None else hub.recent.after(channel, since, self.realtime.settings.recovery_max)
            if replay is not None:  # from memory, as the JSON it was pushed as
                current = replay[0]
            else:
                if since is not None:
                    messages, recovered = await self.realtime.messages.after(
                        channel, since, self.realtime.settings.recovery_max)
                elif last is not None:
                    messages = await self.realtime.messages.newest(channel, last)
                current = messages[-1]["seq"] if messages else max(await self._newest_seq(channel), since or 0)
        except BaseException:
            self.buffering.pop(channel, None)
            if fresh:
                hub.unsubscribe(self, channel)
            raise
        held = self.buffering.pop(channel, [])
        self.channels[channel] = max(self.channels.get(channel, 0), current)
        # The reply (with the replay) goes first, then what arrived during it.
        self.after_reply = [(channel, seq, frame) for seq, frame in held]
        if replay is not None:
            return encode_subscribe_result(channel, current, replay[1])
        return {"channel": channel, "seq": current, "recovered": recovered, "messages": messages}

    async def _newest_seq(self, channel: str) -> int:
        """The channel's newest seq: kept in memory once known, else read from MongoDB."""
        recent = self.realtime.hub.recent
        newest = recent.newest(channel)
        if newest is None:
            newest = await self.realtime.messages.last_seq(channel)
            recent.note(channel, newest)
        return newest

    async def op_unsubscribe(self, command: Command) -> dict[str, Any]:
        self.realtime.hub.unsubscribe(self, command.args["channel"])
        return {}

    async def op_publish(self, command: Command) -> dict[str, Any]:
        channel = command.args["channel"]
        if not await self.realtime.rooms.can_publish(self.user, channel):
            raise ApiError("forbidden", f"you may not publish to {channel}")
        published = await self.realtime.publish(channel, self.user, command.args["data"], command.args["cid"])
        message = published.message
        return {"seq": message["seq"], "id": message["id"], "ts": message["ts"]}

    async def op_history(self, command: Command) -> dict[str, Any]:
        channel = command.args["channel"]
        await self._readable(channel)
        messages, more = await self.realtime.messages.history(
            channel, command.args["before"], command.args["after"], command.args["limit"])
        return {"messages": messages, "has_more": more}

    async def op_presence(self, command: Command) -> dict[str, Any]:
        channel = command.args["channel"]
        if not channel.startswith("room:"):
            raise ApiError("invalid_request", "presence is kept for room channels")
        await self._readable(channel)
        users = self.realtime.hub.present(channel)
        return {"users": users, "count": len(users)}

    async def op_refresh(self, command: Command) -> dict[str, Any]:
        principal = await self.realtime.auth.authenticate(command.args["token"])
        if principal.user_id != self.user:
            raise ApiError("forbidden", "the token belongs to another user")
        self.sid = principal.sid
        self.expire_at(principal.expires_at)
        return {"expires_in": max(0, int(principal.expires_at - time.time()))}
