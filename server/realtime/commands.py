"""A connection's commands: each frame judged, each command run, one reply each.

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
from typing import TYPE_CHECKING, Any

from server.errors import ApiError, CloseCode
from server.logs import fields
from server.protocol import Command, encode_error, encode_result, encode_subscribe_result, parse
from server.realtime.connection import RATE_PER_SECOND, Connection
from server.storage import as_api_error

if TYPE_CHECKING:
    from server.realtime.service import Realtime

log = logging.getLogger("server.commands")

RATE_STRIKES = 20  # refused frames before the connection is closed (4008)
MAX_IN_FLIGHT = 32  # commands of one connection running at once; one more is answered rate_limited
COMMAND_SECONDS = 10.0  # a command not done by then (the database is stalled) answers unavailable

Result = dict[str, Any] | bytes | None  # what a command's op returns; None: it sent its reply itself


def _finish(turn: asyncio.Future[None], *_: Any) -> None:
    if not turn.done():
        turn.set_result(None)


class Commands:
    """What a connection's frames ask of the real-time service."""

    def __init__(self, realtime: Realtime, connection: Connection) -> None:
        self.realtime = realtime  # the hub, messages, rooms, auth
        self.connection = connection  # the socket's state
        self.running: set[asyncio.Task[None]] = set()  # commands being run
        self.turns: dict[str, asyncio.Future[None]] = {}  # channel -> its latest command's end, which the next awaits

    def receive(self, frame: str | bytes) -> None:
        """Takes one frame as it arrives, without waiting: counts it against the
        rate limit (valid or not), answers a malformed or refused one at once,
        and starts a command as a task."""
        connection = self.connection
        if connection.closed:
            return
        try:
            command = parse(frame, self.realtime.settings.recovery_max)
        except ApiError as exc:
            if self._admit(exc.command_id):
                connection.send(encode_error(exc.command_id, exc.code, exc.message))
            return
        except Exception:  # a frame the parser could not judge (a bug of ours): the connection goes on
            log.exception("frame not parsed", extra=fields(user=connection.user))
            if self._admit(None):
                connection.send(encode_error(None, "internal", "the frame could not be read; the error is logged"))
            return
        if not self._admit(command.id):
            return
        if len(self.running) >= MAX_IN_FLIGHT:
            connection.send(encode_error(command.id, "rate_limited", f"at most {MAX_IN_FLIGHT} commands run at once "
                                                                     "on a connection; wait for replies"))
            return
        task = asyncio.ensure_future(self._run(command))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    def _admit(self, command_id: int | None) -> bool:
        """Whether the rate limit lets a frame through; a refused one is answered
        ``rate_limited``, and too many refused close the connection (4008)."""
        if self.connection.allow():
            return True
        self.connection.send(encode_error(command_id, "rate_limited",
                                          f"at most {RATE_PER_SECOND:.0f} commands a second"))
        if self.connection.strikes >= RATE_STRIKES:
            self.connection.close(CloseCode.TOO_MANY_COMMANDS, "too many commands")
        return False

    async def _run(self, command: Command) -> None:
        """Runs one command and sends its one reply."""
        started = time.perf_counter()
        connection = self.connection
        try:
            result = await self._perform(command)
            if result is not None:
                connection.send(encode_result(command.id, result))
        except ApiError as exc:
            connection.send(encode_error(command.id, exc.code, exc.message))
        except Exception as exc:
            error = as_api_error(exc)
            if error is None:
                log.exception("command failed", extra=fields(user=connection.user, op=command.op))
                error = ApiError("internal", "the command failed; the error is logged")
            else:  # an outage fails every command: server.logs.RateLimit keeps this to a few lines
                log.warning("database unavailable", extra=fields(user=connection.user, op=command.op,
                                                                 error=type(exc).__name__))
            connection.send(encode_error(command.id, error.code, error.message))
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

    # -- the ops ---------------------------------------------------------------------------

    async def op_ping(self, command: Command) -> dict[str, Any]:
        return {"ts": int(time.time() * 1000)}

    async def _readable(self, channel: str) -> None:
        if not await self.realtime.rooms.can_read(self.connection.user, channel):
            raise ApiError("forbidden", f"you may not subscribe to {channel}")

    async def op_subscribe(self, command: Command) -> None:
        channel = command.args["channel"]
        connection = self.connection
        await self._readable(channel)
        if connection.closed:
            return None  # closed meanwhile: subscribing now would leave it in the hub for good
        hub = self.realtime.hub
        recovery_max = self.realtime.settings.recovery_max
        since, last = command.args["since"], command.args["last"]
        fresh = channel not in connection.channels
        # Subscribe first and hold live frames, then read what was missed: a
        # message published meanwhile is either in the replay or held, and held
        # frames the replay already holds are dropped by seq. The hub returns once
        # the channel is served here (with Redis: once its topic is subscribed).
        connection.buffering[channel] = []
        try:
            if fresh:
                connection.channels[channel] = 0
                await hub.subscribe(connection, channel)
            recovered = True
            messages: list[dict[str, Any]] = []
            replay = None if since is None else hub.recent.after(channel, since, recovery_max)
            if replay is not None:  # from memory, as the JSON it was pushed as
                current = replay[0]
            else:
                if since is not None:
                    messages, recovered = await self.realtime.messages.after(channel, since, recovery_max)
                elif last is not None:
                    messages = await self.realtime.messages.newest(channel, last)
                # A since beyond the newest seq (a client's mistake, a restored database) counts as the newest:
                # remembering it would drop every live push up to it.
                current = messages[-1]["seq"] if messages else await self._newest_seq(channel)
        except BaseException:
            connection.buffering.pop(channel, None)
            if fresh:
                hub.unsubscribe(connection, channel)
            raise
        held = connection.buffering.pop(channel, [])
        connection.channels[channel] = max(connection.channels.get(channel, 0), current)
        # The reply (with the replay) goes first, then what arrived during it.
        if replay is not None:
            connection.send(encode_result(command.id, encode_subscribe_result(channel, current, replay[1])))
        else:
            connection.send(encode_result(command.id, {"channel": channel, "seq": current, "recovered": recovered,
                                                       "messages": messages}))
        for seq, frame in held:
            connection.deliver(channel, frame, seq)
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
        self.realtime.hub.unsubscribe(self.connection, command.args["channel"])
        return {}

    async def op_publish(self, command: Command) -> dict[str, Any]:
        channel = command.args["channel"]
        user = self.connection.user
        if not await self.realtime.rooms.can_publish(user, channel):
            raise ApiError("forbidden", f"you may not publish to {channel}")
        published = await self.realtime.publish(channel, user, command.args["data"], command.args["cid"])
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
        if channel.kind != "room":
            raise ApiError("invalid_request", "presence is kept for room channels")
        await self._readable(channel)
        users = await self.realtime.hub.present(channel)
        return {"users": users, "count": len(users)}

    async def op_refresh(self, command: Command) -> dict[str, Any]:
        principal = await self.realtime.auth.authenticate(command.args["token"])
        if principal.user_id != self.connection.user:
            raise ApiError("forbidden", "the token belongs to another user")
        self.connection.sid = principal.sid
        self.connection.expire_at(principal.expires_at)
        return {"expires_in": max(0, int(principal.expires_at - time.time()))}
