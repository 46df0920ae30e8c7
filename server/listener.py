"""Listening sockets, and accepting connections without ever spinning.

Tornado's accept loop retries ``accept`` for as long as the listening socket is
readable; once the process has used up its descriptors, ``accept`` fails with
EMFILE while the connection stays queued, so the loop spins on one core and logs
a traceback each time. Here:

- ``raise_descriptor_limit`` lifts the soft RLIMIT_NOFILE to the hard one;
- ``Ceilings`` splits the descriptors: below ``max_connections`` they hold
  connections; the reserve above holds the database pool, files, Redis, and the
  connections refused once the ceiling is reached;
- ``Gate`` judges each accepted connection by its descriptor number (the kernel
  hands out the lowest free one, so descriptor ``n`` means ``0..n-1`` are all in
  use): below the ceiling it is served; in the first part of the reserve a
  small HTTP server answers ``/healthz`` and ``503 unavailable`` to anything else
  and closes; beyond that it is closed at once;
- ``Acceptor`` accepts on one listening socket, and on EMFILE/ENFILE stops
  watching it for a short, growing pause instead of retrying.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ujson
from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from server.errors import ApiError
from server.logs import fields
from server.metrics import Metrics

log = logging.getLogger("server.listener")

MIN_RESERVE = 64  # descriptors kept above the connection ceiling, at the least
MAX_RESERVE = 1024  # the default reserve is a tenth of the limit, at most this
OVERFLOW_MAX = 256  # refused connections answered at once, at most
OVERFLOW_TIMEOUT = 1.0  # seconds a refused connection may take to send its request
ACCEPTS_PER_WAKEUP = 128  # connections accepted before other callbacks run
PAUSE_FIRST = 0.01  # seconds of the first pause after EMFILE
PAUSE_MAX = 1.0  # the pause doubles up to this
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def raise_descriptor_limit() -> tuple[int, int, int]:
    """Lifts the soft RLIMIT_NOFILE to the hard one; (soft before, soft now, hard),
    where "unlimited" reads as the kernel's ceiling, fs.nr_open."""
    soft, hard_as_set = resource.getrlimit(resource.RLIMIT_NOFILE)
    before, hard = (_nr_open() if value == resource.RLIM_INFINITY else value for value in (soft, hard_as_set))
    if before >= hard:
        return before, before, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard_as_set))
    except (ValueError, OSError):
        return before, before, hard
    return before, hard, hard


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 1024 * 1024


@dataclass(frozen=True)
class Ceilings:
    """How the process's descriptors are shared out."""

    limit: int  # RLIMIT_NOFILE (soft)
    max_connections: int  # descriptors numbered below this hold connections
    overflow: int  # below this (and above the ceiling), a refused connection is answered

    @classmethod
    def plan(cls, limit: int, max_connections: int | None) -> Ceilings:
        """The default ceiling keeps a tenth of ``limit`` (64 to 1,024) in reserve;
        an explicit one must leave at least MIN_RESERVE (ValueError otherwise)."""
        if max_connections is None:
            max_connections = limit - min(MAX_RESERVE, max(MIN_RESERVE, limit // 10))
        if max_connections > limit - MIN_RESERVE or max_connections < 1:
            raise ValueError(f"the descriptor limit is {limit} and {MIN_RESERVE} of them stay in reserve")
        return cls(limit, max_connections, max_connections + min(OVERFLOW_MAX, (limit - max_connections) // 2))


def listening_sockets(host: str | None, port: int, backlog: int, reuse_port: bool = False) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets with this ``backlog`` (the kernel caps
    it at net.core.somaxconn); ``reuse_port`` lets several processes share the port."""
    return bind_sockets(port, host, backlog=backlog, reuse_port=reuse_port)


class Acceptor:
    """Accepts connections on one listening socket, pausing on EMFILE/ENFILE."""

    def __init__(self, sock: socket.socket, on_connection: Callable[[socket.socket, Any], None],
                 metrics: Metrics | None = None) -> None:
        self.sock = sock  # the listening socket
        self.metrics = metrics  # counts the pauses (accept_pauses_total), when given
        self.on_connection = on_connection  # called with each accepted (connection, address)
        self.loop = IOLoop.current()  # the loop watching the socket
        self.pause = 0.0  # seconds of the last pause; 0 once an accept succeeds
        self.pauses = 0  # pauses taken since start, for the logs
        self.timer: object | None = None  # the pending resume, while paused
        self.closed = False  # set by close(): never watch the socket again
        self.loop.add_handler(sock, self._ready, IOLoop.READ)

    def _ready(self, fd: Any, events: int) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if self.closed or self.timer is not None:
                return
            try:
                connection, address = self.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._back_off(exc)
                return
            self.pause = 0.0
            try:
                self.on_connection(connection, address)
            except Exception:
                log.exception("accepted connection failed", extra=fields(fd=connection.fileno()))
                connection.close()

    def _back_off(self, exc: OSError) -> None:
        """Stops watching the socket for a pause that doubles while accept keeps failing."""
        self.pause = min(PAUSE_MAX, max(PAUSE_FIRST, self.pause * 2))
        self.pauses += 1
        if self.metrics is not None:
            self.metrics.accept_pauses.inc()
        level = logging.WARNING if exc.errno in _EXHAUSTED else logging.ERROR
        log.log(level, "accept failed; pausing accepts", extra=fields(
            error=errno.errorcode.get(exc.errno or 0, str(exc.errno)), reason=exc.strerror,
            pause_ms=round(self.pause * 1000), pauses=self.pauses))
        self.loop.remove_handler(self.sock)
        self.timer = self.loop.call_later(self.pause, self._resume)

    def _resume(self) -> None:
        self.timer = None
        if not self.closed:
            self.loop.add_handler(self.sock, self._ready, IOLoop.READ)

    def close(self) -> None:
        """Stops accepting (the caller closes the socket)."""
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.loop.remove_timeout(self.timer)
            self.timer = None
        else:
            self.loop.remove_handler(self.sock)


class Gate:
    """Serves, answers shortly, or closes each accepted connection, by its descriptor number."""

    def __init__(self, server: HTTPServer, ceilings: Ceilings, ssl_options: ssl.SSLContext | None,
                 metrics: Metrics | None = None) -> None:
        self.server = server  # the application's server
        self.metrics = metrics  # counts refusals and accept pauses on /metrics, when given
        self.ceilings = ceilings  # where serving stops and refusing starts
        self.refusals = HTTPServer(_Refusal(), ssl_options=ssl_options, no_keep_alive=True,
                                   idle_connection_timeout=OVERFLOW_TIMEOUT, body_timeout=OVERFLOW_TIMEOUT,
                                   max_header_size=16 * 1024)  # answers /healthz and 503 past the ceiling
        self.refused = 0  # connections refused since start
        self.acceptors: list[Acceptor] = []  # one per listening socket

    def listen(self, sockets: list[socket.socket]) -> None:
        """``server.add_sockets(sockets)``, with ``Acceptor`` in place of Tornado's
        accept loop (``server.stop()`` still stops and closes them). It fills in
        what TCPServer.add_sockets does (``_sockets``, ``_handlers``), and connections
        go on through TCPServer's ``_handle_connection`` (TLS wrapping, the stream):
        Tornado 6's private parts, exercised by tests/test_descriptors.py."""
        for sock in sockets:
            acceptor = Acceptor(sock, self, self.metrics)
            self.acceptors.append(acceptor)
            self.server._sockets[sock.fileno()] = sock
            self.server._handlers[sock.fileno()] = acceptor.close

    def __call__(self, connection: socket.socket, address: Any) -> None:
        fd = connection.fileno()
        if fd < self.ceilings.max_connections:
            self.server._handle_connection(connection, address)
            return
        self.refused += 1
        if self.metrics is not None:
            self.metrics.connections_refused.inc()
        log.warning("connection refused: MAX_CONNECTIONS reached", extra=fields(
            max_connections=self.ceilings.max_connections, refused=self.refused))
        if fd < self.ceilings.overflow:
            self.refusals._handle_connection(connection, address)
        else:
            connection.close()


class _Refusal(httputil.HTTPServerConnectionDelegate):
    """The server of refused connections: /healthz answers 200, anything else 503 unavailable."""

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _RefusalMessage(request_conn)


class _RefusalMessage(httputil.HTTPMessageDelegate):
    """Answers as soon as the request's headers are in, then closes."""

    def __init__(self, connection: httputil.HTTPConnection) -> None:
        self.connection = connection  # the request's connection

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> None:
        assert isinstance(start_line, httputil.RequestStartLine)
        if start_line.method in ("GET", "HEAD") and start_line.path.split("?", 1)[0] == "/healthz":
            status, reason, body = 200, "OK", {"status": "ok"}
        else:
            status, reason = 503, "Service Unavailable"
            body = ApiError("unavailable", "the server is at its connection limit; retry shortly").body()
        payload = ujson.dumps(body).encode()
        self.connection.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", status, reason),
            httputil.HTTPHeaders({"Content-Type": "application/json; charset=UTF-8", "Cache-Control": "no-store",
                                  "Content-Length": str(len(payload)), "Connection": "close",
                                  "Retry-After": "1"}),
            None if start_line.method == "HEAD" else payload)
        self.connection.finish()
