"""GET /ws: the WebSocket endpoint. Authenticates before the upgrade, then
moves frames between the socket and its ``server.session.Session``."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

import ujson
from tornado.iostream import SSLIOStream
from tornado.websocket import WebSocketHandler

from handlers.base import bearer_token
from server.auth import Principal
from server.errors import ApiError
from server.session import Session

if TYPE_CHECKING:
    from server.app import Services

log = logging.getLogger("server.socket")


class SocketHandler(WebSocketHandler):
    """One WebSocket connection; the transport of a Session."""

    def initialize(self, services: Services, route: str) -> None:
        self.services = services  # everything the connection calls into
        self.route = route  # for logs and metrics
        self.principal: Principal | None = None  # who connected
        self.session: Session | None = None  # the protocol state, once open
        self._stream: Any = None  # the connection's IOStream, once open
        self._socket: socket.socket | None = None  # its socket when plain TCP: frames are written to it directly

    def check_origin(self, origin: str) -> bool:
        return True  # tokens, not cookies, authenticate: another origin gains nothing

    async def prepare(self) -> None:
        token = bearer_token(self.request.headers.get("Authorization", "")) or self.get_query_argument("token", "")
        try:
            self.principal = await self.services.auth.authenticate(token or None, vouched=True)
            if not self.services.realtime.accepting:
                raise ApiError("unavailable", "the server is shutting down")
        except ApiError as exc:
            self.set_status(exc.status)
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(ujson.dumps(exc.body(), ensure_ascii=False))

    def open(self, *args: Any, **kwargs: Any) -> None:
        assert self.principal is not None
        stream = getattr(self.ws_connection, "stream", None)
        self._stream = stream  # the connection's IOStream, for send_frame and pending
        self._socket = None if stream is None or isinstance(stream, SSLIOStream) else stream.socket  # plain TCP
        self.session = self.services.realtime.open(self.principal, self)

    async def on_message(self, message: str | bytes) -> None:
        if self.session is not None:
            await self.session.handle(message)

    def on_close(self) -> None:
        if self.session is not None:
            self.session.detach()

    # -- Transport -----------------------------------------------------------------

    def send_frame(self, frame: bytes) -> bool:
        """A pre-built frame straight to the socket when nothing is queued before
        it (no Future, no task, no buffer copy); through the stream otherwise
        (and always under TLS). True when it is all on the socket already."""
        connection = self.ws_connection
        if connection is None or connection.is_closing():  # is_closing covers a closed stream
            return True
        if self._socket is not None and not self.pending():
            try:
                sent = self._socket.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                return True  # the connection is going; Tornado will see it
            if sent == len(frame):
                return True
            frame = frame[sent:]
        self._stream.write(frame)
        return False

    def get_compression_options(self) -> None:
        return None  # pre-built frames are uncompressed: never negotiate permessage-deflate

    def pending(self) -> int:
        stream = self._stream
        if stream is None:
            return 0
        return int(stream._total_write_index - stream._total_write_done_index)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        super().close(code, reason)
