"""One WebSocket connection: its commands, subscriptions, limits and token.

The transport (the Tornado handler) only moves frames; everything the protocol
means happens here. Each command gets exactly one reply.

A frame is judged when it arrives (``receive``): the rate limit counts every
frame, valid or not, and a command then runs as a task of its own, so a command
waiting on the database never stops the connection's next frames (pongs
included) from being read. At most ``MAX_IN_FLIGHT`` commands of a connection
run at once; those naming the same channel run one after another, in the order
they arrived; each answers ``unavailable`` if not done within
``COMMAND_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from server.errors import ApiError, CloseCode
from server.logs import fields
from server.protocol import Command, FrameError, encode_error, encode_result, encode_subscribe_result, parse, text_frame
from server.storage import as_api_error

if TYPE_CHECKING:
    from server.auth import Principal
    from server.realtime import Realtime

log = logging.getLogger("server.session")

SEND_BUFFER_BYTES = 1024 * 1024  # unsent bytes past which a connection is closed (4009)
RATE_PER_SECOND = 20.0  # commands a connection may send per second, sustained
RATE_BURST = 40.0  # and in a burst
RATE_STRIKES = 20  # refused commands before the connection is closed (4008)
MAX_IN_FLIGHT = 32  # commands of one connection running at once; one more is answered rate_limited
COMMAND_SECONDS = 10.0  # a command not done by then (the database is stalled) answers unavailable

Result = dict[str, Any] | bytes | None  # what a command's op returns; None: it sent its reply itself


def _finish(turn: asyncio.Future[None], *_: Any) -> None:
    if not turn.done():
        turn.set_result(None)


class Transport(Protocol):
    """What a session needs of its connection."""

    def send_frame(self, frame: bytes) -> bool:
        """Writes a whole pre-built WebSocket frame without waiting; True when
        nothing of it is left queued."""

    def pending(self) -> int:
        """Bytes queued and not yet written to the socket."""

    def drop_unsent(self) -> None:
        """Drops the queued frames not yet begun, so that a close frame goes next."""

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
        self.outbox: list[bytes] | None = None  # frames queued this loop turn, written together by the hub
        self.running: set[asyncio.Task[None]] = set()  # commands being run
        self.turns: dict[str, asyncio.Future[None]] = {}  # channel -> its latest command's end, which the next awaits
        self.expire_at(principal.expires_at)

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

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.flush()  # what was queued (an error reply, say) goes before the close frame
        self.closed = True
        self.realtime.hub.log_close(self, code, reason)
        self.transport.close(code, reason)
        self.detach()

    def detach(self) -> None:
        """Forgets the connection (it closed, from either side). Its running
        commands finish (a publish is stored); their replies go nowhere."""
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
        if isinstance(payload, str):  # a lone surrogate (echoed from a client) is written escaped, as JSON allows
            payload = payload.encode("utf-8", "backslashreplace")
        self._queue(text_frame(payload))
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
            self.transport.drop_unsent()  # the close frame in place of the backlog: the client learns why
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

    def receive(self, frame: str | bytes) -> None:
        """Takes one frame as it arrives, without waiting: counts it against the
        rate limit (valid or not), answers a malformed or refused one at once,
        and starts a command as a task."""
        if self.closed:
            return
        try:
            command = parse(frame, self.realtime.settings.recovery_max)
        except FrameError as exc:
            if self._admit(exc.command_id):
                self.send(encode_error(exc.command_id, exc.code, exc.message))
            return
        except Exception:  # a frame the parser could not judge (a bug of ours): the connection goes on
            log.exception("frame not parsed", extra=fields(user=self.user))
            if self._admit(None):
                self.send(encode_error(None, "internal", "the frame could not be read; the error is logged"))
            return
        if not self._admit(command.id):
            return
        if len(self.running) >= MAX_IN_FLIGHT:
            self.send(encode_error(command.id, "rate_limited",
                                   f"at most {MAX_IN_FLIGHT} commands run at once on a connection; wait for replies"))
            return
        task = asyncio.ensure_future(self._run(command))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    def _admit(self, command_id: int | None) -> bool:
        """Whether the rate limit lets a frame through; a refused one is answered
        ``rate_limited``, and too many refused close the connection (4008)."""
        if self._allow():
            return True
        self.send(encode_error(command_id, "rate_limited", f"at most {RATE_PER_SECOND:.0f} commands a second"))
        if self.strikes >= RATE_STRIKES:
            self.close(CloseCode.TOO_MANY_COMMANDS, "too many commands")
        return False

    async def _run(self, command: Command) -> None:
        """Runs one command and sends its one reply."""
        started = time.perf_counter()
        try:
            result = await self._perform(command)
            if result is not None:
                self.send(encode_result(command.id, result))
        except (FrameError, ApiError) as exc:
            self.send(encode_error(command.id, exc.code, exc.message))
        except Exception as exc:
            error = as_api_error(exc)
            if error is None:
                log.exception("command failed", extra=fields(user=self.user, op=command.op))
                error = ApiError("internal", "the command failed; the error is logged")
            else:  # an outage fails every command: server.logs.RateLimit keeps this to a few lines
                log.warning("database unavailable", extra=fields(user=self.user, op=command.op,
                                                                 error=type(exc).__name__))
            self.send(encode_error(command.id, error.code, error.message))
        finally:
            self.realtime.metrics.ws_command_latency.labels(command.op).observe(time.perf_counter() - started)

    async def _perform(self, command: Command) -> Result:
        """The command's op, in its channel's turn, within ``COMMAND_SECONDS``."""
        timer = asyncio.timeout(COMMAND_SECONDS)
        channel = command.args.get("channel")
        try:
            async with timer:
                if channel is None:
                    return await getattr(self, f"op_{command.op}")(command)  # type: ignore[no-any-return]
                async with self._turn(channel):
                    return await getattr(self, f"op_{command.op}")(command)  # type: ignore[no-any-return]
        except TimeoutError:
            if not timer.expired():
                raise
            raise ApiError("unavailable", f"no answer within {COMMAND_SECONDS:.0f} s (the database is slow or "
                                          "down); try again (a publish: with the same cid)") from None

    @contextlib.asynccontextmanager
    async def _turn(self, channel: str) -> AsyncIterator[None]:
        """Commands of this connection naming one channel run one after another,
        in the order they arrived (a subscribe before an unsubscribe, publishes
        stored in the order sent)."""
        previous = self.turns.get(channel)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        mine.add_done_callback(partial(self._turn_over, channel))
        self.turns[channel] = mine
        try:
            if previous is not None:
                await asyncio.shield(previous)  # our timeout must not cancel the command before us
            yield
        finally:
            if previous is not None and not previous.done():  # cancelled while waiting: the next waits for it too
                previous.add_done_callback(partial(_finish, mine))
            else:
                _finish(mine)

    def _turn_over(self, channel: str, turn: asyncio.Future[None]) -> None:
        if self.turns.get(channel) is turn:
            del self.turns[channel]

    async def op_ping(self, command: Command) -> dict[str, Any]:
        return {"ts": int(time.time() * 1000)}

    async def _readable(self, channel: str) -> None:
        if not await self.realtime.rooms.can_read(self.user, channel):
            raise ApiError("forbidden", f"you may not subscribe to {channel}")

    async def op_subscribe(self, command: Command) -> None:
        channel = command.args["channel"]
        await self._readable(channel)
        if self.closed:
            return None  # closed meanwhile: subscribing now would leave it in the hub for good
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
                # A since beyond the newest seq (a client's mistake, a restored database) counts as the newest:
                # remembering it would drop every live push up to it.
                current = messages[-1]["seq"] if messages else await self._newest_seq(channel)
        except BaseException:
            self.buffering.pop(channel, None)
            if fresh:
                hub.unsubscribe(self, channel)
            raise
        held = self.buffering.pop(channel, [])
        self.channels[channel] = max(self.channels.get(channel, 0), current)
        # The reply (with the replay) goes first, then what arrived during it.
        if replay is not None:
            self.send(encode_result(command.id, encode_subscribe_result(channel, current, replay[1])))
        else:
            self.send(encode_result(command.id, {"channel": channel, "seq": current, "recovered": recovered,
                                                 "messages": messages}))
        for seq, frame in held:
            self.deliver(channel, frame, seq)
        return None

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
