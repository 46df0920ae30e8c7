"""GET /ws: the WebSocket endpoint. Checks the upgrade and authenticates before
it, then moves frames between the socket and its connection's commands
(``server.realtime.commands.Commands``).

Every answer before the upgrade (a plain GET, a bad token, the server shutting
down) is an error in the contract's JSON shape. After it, frames are handed to
the commands as they arrive, without waiting for them to finish.

The upgrade is answered at the HTTP edge (``Upgrades``, called by
``handlers.edge.Edge``), not by a Tornado ``RequestHandler``; Tornado's RFC 6455
protocol (``WebSocketProtocol13``) still reads and checks every frame, with a
``WebSocket`` as its delegate, as Tornado's own client uses it.

Private parts of Tornado 6 this relies on (tests/test_ws_hardening.py covers
each): ``_WebSocketParams`` (the protocol is built once, as ours);
WebSocketProtocol13's ``_receive_frame_loop`` (run as the socket's task),
``_handle_message``, ``_frame_compressed``, ``_run_callback``,
``_message_bytes_in``, ``_waiting`` and ``_abort`` (1007, and the 4009 close's
wait), ``_received_pong`` (set by Tornado on a pong; the ``Pinger`` reads and
clears it); IOStream's ``_write_buffer``, ``_write_futures``,
``_total_write_index`` and ``_total_write_done_index`` (what is unsent, and
dropping it for 4009).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, cast

from tornado.concurrent import Future
from tornado.escape import parse_qs_bytes
from tornado.httputil import HTTPHeaders, RequestStartLine, format_timestamp
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError
from tornado.websocket import WebSocketProtocol13, _WebSocketParams

from handlers.base import bearer_token, client_ip, record_answer
from handlers.edge import Edge, content_length
from server.errors import ApiError, CloseCode
from server.logs import fields
from server.realtime.commands import Commands
from server.storage import as_api_error

if TYPE_CHECKING:
    from server.app import Services

log = logging.getLogger("server.socket")

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
            cast(WebSocket, protocol.handler).send_frame(PING_FRAME)


class _Protocol(WebSocketProtocol13):
    """Tornado's RFC 6455 protocol, except that a text frame that is not UTF-8
    closes the connection with 1007 (Tornado drops it without a close frame),
    and that the process's ``Pinger`` pings it (no task of its own)."""

    pinged = False  # the Pinger sent it a ping (a pong is then due by the next round)

    def start_pinging(self) -> None:
        if self.ping_interval > 0:
            handler = cast(WebSocket, self.handler)
            handler._pinged = self
            handler.pinger.add(self)

    def _handle_message(self, opcode: int, data: bytes) -> Future[None] | None:
        if opcode == 0x8 and not self.client_terminated and not _utf8(data[2:]):
            self.client_terminated = True  # a close reason that is not UTF-8 (Tornado raised): 1007, then closed
            self.close(CloseCode.INVALID_DATA, "invalid UTF-8")
            return None
        if opcode != 0x1 or self.client_terminated or self._frame_compressed:
            return super()._handle_message(opcode, data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            cast(WebSocket, self.handler).refuse_frame(CloseCode.INVALID_DATA, "invalid UTF-8")
            return None
        self._message_bytes_in += len(data)
        return self._run_callback(self.handler.on_message, text)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Upgrades:
    """GET /ws, answered at the HTTP edge (``Edge.upgrades``) rather than by a
    Tornado ``RequestHandler``: the checks and the token come first, every refusal
    is an error in the contract's JSON shape, and a good request gets its 101 and
    then its ``WebSocket``. A reconnect storm is thousands of these at once;
    Tornado's handler path made a handler, its headers, output transforms and a
    chain of coroutines per socket and kept them alive as long as the socket
    (its frame loop ran inside the handler's ``get()``), all walked again by the
    garbage collector. Here a socket keeps its protocol, its ``WebSocket`` and
    the stream."""

    route = "/ws"  # for logs and metrics

    def __init__(self, services: Services, pinger: Pinger) -> None:
        self.services = services
        self.pinger = pinger
        settings = services.settings
        self.params = _WebSocketParams(  # built once: every socket's protocol shares them
            ping_interval=settings.ws_ping_interval, ping_timeout=settings.ws_ping_interval,
            max_message_size=settings.ws_max_message_bytes, compression_options=None)

    def start(self, edge: Edge, start_line: RequestStartLine, headers: HTTPHeaders) -> Awaitable[None] | None:
        """The edge's upgrade for /ws: refused at once, or authenticated and upgraded."""
        started = time.perf_counter()
        try:
            check_upgrade(start_line.method, headers)
            token = bearer_token(headers.get("Authorization", "")) or query_token(start_line.path)
        except ApiError as error:
            self._refuse(edge, start_line, headers, error, started)
            return None
        return self._upgrade(edge, start_line, headers, token, started)

    async def _upgrade(self, edge: Edge, start_line: RequestStartLine, headers: HTTPHeaders, token: str,
                       started: float) -> None:
        try:
            principal = await self.services.auth.authenticate(token or None, vouched=True)
            if not self.services.realtime.accepting:
                raise ApiError("unavailable", "the server is shutting down")
        except Exception as exc:
            self._refuse(edge, start_line, headers, exc, started)
            return
        stream = edge.connection.detach()
        if stream.closed():  # the client left while its token was checked
            return
        socket = WebSocket(self.pinger, self.params, stream)
        try:
            commands = self.services.realtime.open(principal, socket)
        except Exception as exc:  # nothing sent yet: answered, not a 101 with nothing behind it
            self._refuse(edge, start_line, headers, exc, started, stream)
            return
        key = headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest())
        socket.send_frame(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Accept: " + accept + b"\r\nX-Request-Id: " + edge.request_id.encode()
                          + b"\r\nDate: " + _date().encode() + b"\r\n\r\n")
        socket.open(commands)
        self._record(edge, start_line, headers, 101, started, principal.user_id)

    def _refuse(self, edge: Edge, start_line: RequestStartLine, headers: HTTPHeaders, exc: BaseException,
                started: float, stream: IOStream | None = None) -> None:
        """Answers the upgrade request with an error instead, and closes the connection."""
        error = exc if isinstance(exc, ApiError) else as_api_error(exc)
        if error is None:
            log.error("upgrade failed", exc_info=exc, extra=fields(route=self.route))
            error = ApiError("internal", "the server failed to answer; the error is logged")
        elif not isinstance(exc, ApiError):
            log.warning("database unavailable", extra=fields(route=self.route, error=type(exc).__name__))
        edge.answer(headers, error, stream)
        self._record(edge, start_line, headers, error.status, started, None)

    def _record(self, edge: Edge, start_line: RequestStartLine, headers: HTTPHeaders, status: int,
                started: float, user: str | None) -> None:
        peer = getattr(edge.connection.context, "remote_ip", "") or ""
        record_answer(self.services, route=self.route, method=start_line.method, uri=start_line.path,
                      status=status, elapsed=time.perf_counter() - started, request_id=edge.request_id,
                      user=user, ip=client_ip(self.services.settings.behind_proxy, peer, headers))


def check_upgrade(method: str, headers: HTTPHeaders) -> None:
    """What a WebSocket upgrade needs (RFC 6455 4.2.1), refused in the contract's shape."""
    if method != "GET":
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
    if "Transfer-Encoding" in headers or content_length(headers):  # it would be read as the first frames
        raise ApiError("invalid_request", "a WebSocket upgrade carries no body")


def query_token(target: str) -> str:
    """The last ``token`` query argument of a request target, as Tornado's
    ``get_query_argument`` reads it (names percent-decoded, blanks kept)."""
    values = parse_qs_bytes(target.partition("?")[2], keep_blank_values=True).get("token")
    if not values:
        return ""
    try:
        return values[-1].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ApiError("invalid_request", "the token query argument is not UTF-8") from None


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's key suffix
_dates: list[Any] = [0, ""]  # [the second, its HTTP date]: one formatting per second of handshakes


def _date() -> str:
    now = int(time.time())
    if _dates[0] != now:
        _dates[:] = [now, format_timestamp(now)]
    return str(_dates[1])


class WebSocket:
    """One upgraded WebSocket: the delegate of Tornado's RFC 6455 protocol (frames
    in, to its connection's commands, without waiting for them to finish) and its
    connection's transport (pre-built frames out)."""

    close_code: int | None = None  # the client's close code, once closed
    close_reason: str | None = None

    def __init__(self, pinger: Pinger, params: _WebSocketParams, stream: IOStream) -> None:
        self.pinger = pinger  # the process's one Pinger
        self.ws_connection: _Protocol | None = _Protocol(self, False, params)  # None once closed
        self.ws_connection.stream = stream
        self.commands: Commands | None = None  # the connection's state and commands, once open
        self._stream: Any = stream  # the connection's IOStream, for send_frame and pending
        self._socket: socket.socket | None = None if isinstance(stream, SSLIOStream) else stream.socket  # plain TCP
        self._ends: deque[int] = deque()  # where the stream's unwritten writes end: each a frame boundary
        self._pinged: _Protocol | None = None  # its protocol while the Pinger pings it
        self._reading: asyncio.Task[None] | None = None  # the protocol's frame loop
        self._on_close_called = False  # on_ws_connection_close ran (the protocol may call it again)

    def open(self, commands: Commands) -> None:
        """Starts pinging and reading frames, for ``commands``."""
        self.commands = commands
        protocol = self.ws_connection
        assert protocol is not None
        protocol.start_pinging()
        self._reading = asyncio.ensure_future(protocol._receive_frame_loop())
        self._reading.add_done_callback(self._read_done)

    def _read_done(self, task: asyncio.Task[None]) -> None:
        self._reading = None
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self.log_exception(type(exc), exc, exc.__traceback__)

    # -- Tornado's _WebSocketDelegate --------------------------------------------------

    def on_message(self, message: str | bytes) -> None:
        if self.commands is not None:
            self.commands.receive(message)  # returns at once: the next frame is read meanwhile

    def on_ping(self, data: bytes) -> None:
        pass  # Tornado answers with a pong

    def on_pong(self, data: bytes) -> None:
        pass  # Tornado marks _received_pong, which the Pinger reads

    def on_ws_connection_close(self, close_code: int | None = None, close_reason: str | None = None) -> None:
        self.close_code, self.close_reason = close_code, close_reason
        protocol, self.ws_connection = self.ws_connection, None
        if protocol is not None:
            protocol.on_connection_close()
        if self._on_close_called:
            return
        self._on_close_called = True
        pinged, self._pinged = self._pinged, None
        if pinged is not None:
            self.pinger.discard(pinged)
        commands, self.commands = self.commands, None  # commands still running hold their connection
        if commands is not None:
            commands.connection.detach()

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        log.error("a WebSocket callback failed", exc_info=(typ, value, tb) if value is not None else None,
                  extra=fields(route=Upgrades.route))

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
        """Sends a close frame (``code``, ``reason``); the client's answer, or a
        timeout, ends the connection."""
        connection, self.ws_connection = self.ws_connection, None
        if connection is None:
            return
        connection.close(code, reason)
        if code == CloseCode.TOO_SLOW and self._socket is not None and connection._waiting:
            # Its backlog was dropped: the socket holds at most a frame and the close frame, so the client,
            # which stopped reading, gets longer than Tornado's 5 s to read why it was closed.
            loop = connection.stream.io_loop
            loop.remove_timeout(connection._waiting)
            connection._waiting = loop.add_timeout(loop.time() + SLOW_CLOSE_SECONDS, connection._abort)
