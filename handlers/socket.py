"""GET /ws: the WebSocket endpoint. Checks the upgrade and authenticates before
it, then moves frames between the socket and its connection's commands
(``server.realtime.commands.Commands``).

Every answer before the upgrade (a plain GET, a bad token, the server shutting
down) is an error in the contract's JSON shape. After it, frames are handed to
the commands as they arrive, without waiting for them to finish.

Private parts of Tornado 6 this relies on (tests/test_ws_hardening.py covers
each): ``_WebSocketParams`` (the protocol is built once, as ours);
WebSocketProtocol13's ``_handle_message``, ``_frame_compressed``,
``_run_callback``, ``_message_bytes_in``, ``_waiting`` and ``_abort`` (1007, and
the 4009 close's wait), ``_received_pong`` (set by Tornado on a pong; the
``Pinger`` reads and clears it); IOStream's ``_write_buffer``, ``_write_futures``,
``_total_write_index`` and ``_total_write_done_index`` (what is unsent, and
dropping it for 4009).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import ujson
from tornado.concurrent import Future
from tornado.iostream import SSLIOStream, StreamClosedError
from tornado.web import HTTPError
from tornado.websocket import WebSocketHandler, WebSocketProtocol, WebSocketProtocol13, _WebSocketParams

from handlers.base import RequestIdentity, bearer_token
from server.auth import Principal
from server.errors import ApiError, CloseCode
from server.logs import fields
from server.realtime.commands import Commands
from server.storage import as_api_error

if TYPE_CHECKING:
    from handlers.app import ServerApplication
    from server.app import Services

log = logging.getLogger("server.socket")

_TORNADO_CODES = {403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
SLOW_CLOSE_SECONDS = 30.0  # how long a connection closed with 4009 waits for its client to read the close frame


PING_FRAME = b"\x89\x00"  # a whole, empty, unmasked ping frame (RFC 6455)
PING_SLICE = 500  # sockets pinged per loop turn in a round (10,000 are one round of 20 turns)


class Pinger:
    """Pings every open WebSocket of this process from one task, every ``interval``
    seconds; a socket that has not answered the previous round's ping with a pong
    is closed (1000, "ping timed out"), as Tornado's per-socket pinging does when
    its timeout equals the interval (ours). Tornado starts a task per socket for
    it, alive as long as the socket: a task, two coroutines, a future, a timer
    and their contexts, each created on every reconnect and walked by the
    garbage collector while the socket lives. A round pings ``PING_SLICE``
    sockets per loop turn, so 10,000 sockets are not one long turn."""

    def __init__(self, interval: float) -> None:
        self.interval = interval  # seconds between rounds (WS_PING_INTERVAL)
        self.sockets: dict[_Protocol, None] = {}  # open sockets, in the order they opened
        self._task: asyncio.Task[None] | None = None  # the rounds, while there are sockets

    def add(self, protocol: _Protocol) -> None:
        self.sockets[protocol] = None
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._rounds())

    def discard(self, protocol: _Protocol) -> None:
        self.sockets.pop(protocol, None)
        if not self.sockets and self._task is not None:  # the last socket closed: no round left to run
            self._task.cancel()
            self._task = None

    async def _rounds(self) -> None:
        while self.sockets:
            await asyncio.sleep(self.interval)
            for done, protocol in enumerate(list(self.sockets), 1):
                try:
                    self._ping(protocol)
                except Exception:  # one socket's failure must not stop the pinging of the others
                    log.exception("a ping failed; the socket is dropped from pinging")
                    self.discard(protocol)
                if done % PING_SLICE == 0 and self.sockets:
                    await asyncio.sleep(0)

    def _ping(self, protocol: _Protocol) -> None:
        if protocol.is_closing():
            self.discard(protocol)
        elif protocol.pinged and not protocol._received_pong:
            self.discard(protocol)
            protocol.close(reason="ping timed out")
        else:
            protocol.pinged = True
            protocol._received_pong = False
            cast(SocketHandler, protocol.handler).send_frame(PING_FRAME)


class _Protocol(WebSocketProtocol13):
    """Tornado's RFC 6455 protocol, except that a text frame that is not UTF-8
    closes the connection with 1007 (Tornado drops it without a close frame),
    and that the process's ``Pinger`` pings it (no task of its own)."""

    pinged = False  # the Pinger sent it a ping (a pong is then due by the next round)

    def start_pinging(self) -> None:
        if self.ping_interval > 0:
            handler = cast(SocketHandler, self.handler)
            handler._pinged = self
            handler.pinger().add(self)

    def _handle_message(self, opcode: int, data: bytes) -> Future[None] | None:
        if opcode != 0x1 or self.client_terminated or self._frame_compressed:
            return super()._handle_message(opcode, data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            cast(SocketHandler, self.handler).refuse_frame(CloseCode.INVALID_DATA, "invalid UTF-8")
            return None
        self._message_bytes_in += len(data)
        return self._run_callback(self.handler.on_message, text)


class SocketHandler(WebSocketHandler, RequestIdentity):
    """One WebSocket connection; the transport of a ``Connection``."""

    def initialize(self, services: Services, route: str) -> None:
        self.services = services  # everything the connection calls into
        self.route = route  # for logs and metrics
        self.principal: Principal | None = None  # who connected
        self.commands: Commands | None = None  # the connection's state and commands, once open
        self._stream: Any = None  # the connection's IOStream, once open
        self._socket: socket.socket | None = None  # its socket when plain TCP: frames are written to it directly
        self._ends: deque[int] = deque()  # where the stream's unwritten writes end: each a frame boundary
        self._pinged: _Protocol | None = None  # its protocol while the Pinger pings it
        self.started = time.perf_counter()  # for the access log's duration and the latency metric

    def check_origin(self, origin: str) -> bool:
        return True  # tokens, not cookies, authenticate: another origin gains nothing

    async def prepare(self) -> None:
        try:
            self._check_upgrade()
            token = bearer_token(self.request.headers.get("Authorization", "")) or self.get_query_argument("token", "")
            self.principal = await self.services.auth.authenticate(token or None, vouched=True)
            if not self.services.realtime.accepting:
                raise ApiError("unavailable", "the server is shutting down")
        except Exception as exc:
            self._refuse(exc)

    def _check_upgrade(self) -> None:
        """The checks Tornado makes before upgrading, answered in the contract's shape."""
        headers = self.request.headers
        if self.request.method != "GET":
            raise ApiError("method_not_allowed", "/ws answers GET (a WebSocket upgrade) only", headers={"Allow": "GET"})
        if headers.get("Upgrade", "").lower() != "websocket":
            raise ApiError("invalid_request", "/ws is a WebSocket endpoint: the request needs Upgrade: websocket")
        if "upgrade" not in (part.strip().lower() for part in headers.get("Connection", "").split(",")):
            raise ApiError("invalid_request", "a WebSocket upgrade needs Connection: Upgrade")
        if headers.get("Sec-WebSocket-Version") != "13":
            raise ApiError("invalid_request", "only WebSocket version 13 (RFC 6455) is spoken",
                           headers={"Sec-WebSocket-Version": "13"})
        if not headers.get("Sec-WebSocket-Key") or not headers.get("Host"):
            raise ApiError("invalid_request", "a WebSocket upgrade needs Host and Sec-WebSocket-Key")

    def _refuse(self, exc: BaseException) -> None:
        """Answers the upgrade request with an error instead."""
        if isinstance(exc, HTTPError) and exc.status_code < 500:  # Tornado's own refusal: a query not UTF-8, say
            exc = ApiError(_TORNADO_CODES.get(exc.status_code, "invalid_request"), exc.log_message or "bad request")
        error = exc if isinstance(exc, ApiError) else as_api_error(exc)
        if error is None:
            log.error("upgrade failed", exc_info=exc, extra=fields(route=self.route))
            error = ApiError("internal", "the server failed to answer; the error is logged")
        elif not isinstance(exc, ApiError):
            log.warning("database unavailable", extra=fields(route=self.route, error=type(exc).__name__))
        self._write_api_error(error)

    def _write_api_error(self, error: ApiError) -> None:
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.finish(ujson.dumps(error.body(), ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """What Tornado answers itself, in the contract's shape."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            error = exc
        else:
            code = _TORNADO_CODES.get(status_code, "internal" if status_code >= 500 else "invalid_request")
            error = ApiError(code, exc.log_message if isinstance(exc, HTTPError) and exc.log_message else code)
        self._write_api_error(error)

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        if self.request.headers.get("Sec-WebSocket-Version") != "13":
            return None  # _check_upgrade refused it already
        return _Protocol(self, False, _WebSocketParams(
            ping_interval=self.ping_interval, ping_timeout=self.ping_timeout,
            max_message_size=self.max_message_size, compression_options=None))

    def open(self, *args: Any, **kwargs: Any) -> None:
        assert self.principal is not None
        stream = getattr(self.ws_connection, "stream", None)
        self._stream = stream  # the connection's IOStream, for send_frame and pending
        self._socket = None if stream is None or isinstance(stream, SSLIOStream) else stream.socket  # plain TCP
        self.commands = self.services.realtime.open(self.principal, self)

    def on_message(self, message: str | bytes) -> None:
        if self.commands is not None:
            self.commands.receive(message)  # returns at once: the next frame is read meanwhile

    def on_close(self) -> None:
        pinged, self._pinged = self._pinged, None  # Tornado has let go of ws_connection by now
        if pinged is not None:
            self.pinger().discard(pinged)
        if self.commands is not None:
            self.commands.connection.detach()

    def pinger(self) -> Pinger:
        """The application's one Pinger."""
        return cast("ServerApplication", self.application).pinger

    def refuse_frame(self, code: int, reason: str) -> None:
        """Closes the connection for a frame the protocol refuses."""
        if self.commands is not None:
            self.commands.connection.close(code, reason)
        else:
            self.close(code, reason)

    # -- Transport -----------------------------------------------------------------

    def send_frame(self, frame: bytes) -> bool:
        """A pre-built frame straight to the socket when nothing is queued before
        it (no Future, no task, no buffer copy); through the stream otherwise
        (and always under TLS). True when it is all on the socket already."""
        connection = self.ws_connection
        if connection is None or connection.is_closing():  # is_closing covers a closed stream
            return True
        stream = self._stream
        if self._socket is not None and stream._total_write_index != stream._total_write_done_index:
            # The socket is full (the stream waits to write): the frame joins the stream's buffer, written with
            # the rest when the socket drains; no write attempt bound to fail, and no Future per frame (a slow
            # reader under fan-out made one each, thousands of them alive for the collector to walk).
            stream._write_buffer.append(frame)
            stream._total_write_index += len(frame)
            self._frame_ends(stream)
            return False
        if self._socket is not None:
            try:
                sent = self._socket.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                return True  # the connection is going; Tornado will see it
            if sent == len(frame):
                return True
            frame = frame[sent:]
        stream.write(frame)
        self._frame_ends(stream)
        return False

    def _frame_ends(self, stream: Any) -> None:
        ends, done = self._ends, stream._total_write_done_index
        while ends and ends[0] < done:
            ends.popleft()
        ends.append(stream._total_write_index)  # whole frames, or the rest of one: a frame ends here

    def get_compression_options(self) -> None:
        return None  # pre-built frames are uncompressed: never negotiate permessage-deflate

    def pending(self) -> int:
        stream = self._stream
        if stream is None:
            return 0
        return int(stream._total_write_index - stream._total_write_done_index)

    def drop_unsent(self) -> None:
        """Drops the frames queued and not yet written, but the one being
        written, so that a close frame goes next (a client that stopped reading
        then learns why it was closed). Over TLS the stream's buffer is left
        alone: the TLS layer may be midway through writing it."""
        stream = self._stream
        if self._socket is None or stream is None or stream.closed():
            return
        done = stream._total_write_done_index
        ends = self._ends
        while ends and ends[0] < done:
            ends.popleft()
        keep_to = ends[0] if ends else stream._total_write_index  # the end of the frame being written
        ends.clear()
        buffer = stream._write_buffer
        keep = keep_to - done
        if len(buffer) <= keep:
            return
        kept = bytearray()
        while len(kept) < keep:  # the buffer is a chain of pieces: copy from each in turn
            with buffer.peek(keep - len(kept)) as view:
                kept += view
                taken = len(view)
            buffer.advance(taken)
        stream._write_buffer = fresh = type(buffer)()
        fresh.append(bytes(kept))
        stream._total_write_index = keep_to
        futures = stream._write_futures
        while futures and futures[-1][0] > keep_to:  # writes dropped: never written
            futures.pop()[1].set_exception(StreamClosedError())

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        connection = self.ws_connection
        super().close(code, reason)
        if (code == CloseCode.TOO_SLOW and self._socket is not None and isinstance(connection, WebSocketProtocol13)
                and connection._waiting):
            # Its backlog was dropped: the socket holds at most a frame and the close frame, so the client,
            # which stopped reading, gets longer than Tornado's 5 s to read why it was closed.
            loop = connection.stream.io_loop
            loop.remove_timeout(connection._waiting)
            connection._waiting = loop.add_timeout(loop.time() + SLOW_CLOSE_SECONDS, connection._abort)
