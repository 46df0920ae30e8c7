"""The load generator's TCP connections: a non-blocking socket driven straight
by the event loop's reader and writer callbacks.

It offers the part of asyncio's transport interface the sessions use
(``write``, ``close``, ``abort``, ``is_closing``) and calls an
``asyncio.Protocol``'s ``connection_made``, ``data_received`` and
``connection_lost``, but opening one costs no coroutine, task or future:
``loop.create_connection`` awaited under a semaphore and a ``wait_for`` cost the
generator about a fifth of its CPU per session in a reconnect storm, CPU these
processes take from the server under test on a 2-core machine.

On loopback a non-blocking ``connect`` answers EINPROGRESS but is established
by the time the call returns, so the first write is usually taken at once; if
not (the server's listen queue is full), it waits for the socket to become
writable, and a refused connection ends in ``connection_lost``.
"""

from __future__ import annotations

import asyncio
import errno
import socket

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2+ (Python names it from 3.12)
READ_SIZE = 262_144  # bytes asked of each recv (a replay of 100 messages is about 20 KiB)


class Link:
    """One connection from ``source`` to ``address`` for ``protocol``."""

    def __init__(self, protocol: asyncio.Protocol, source: str, address: tuple[str, int]) -> None:
        self.loop = asyncio.get_running_loop()  # the loop watching the socket
        self.protocol = protocol  # told of the connection, its data and its end
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # non-blocking, no Nagle (as asyncio's)
        self.fd = self.sock.fileno()  # its descriptor, kept for the loop once the socket is closed
        self.pending = bytearray()  # bytes written that the kernel has not taken yet
        self.closing = False  # close() was called: the socket closes once ``pending`` is sent
        self.closed = False  # the socket is closed and connection_lost is scheduled
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            # The port is chosen at connect, for the 4-tuple: a bind to (source, 0) alone searches for a port
            # free of every bound socket. Measured alone with 8,000 ports held it cost 190-380 us of CPU a
            # connection (25-30 us with this option); in the storm benches the difference was within noise.
            self.sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            self.sock.bind((source, 0))
            code = self.sock.connect_ex(address)
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, errno.errorcode.get(code, "connect failed"))
        except OSError as exc:
            self._end(exc)
            return
        self.loop.add_reader(self.fd, self._readable)
        protocol.connection_made(self)  # type: ignore[arg-type]  # duck-typed as a transport

    def _readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        if data:
            self.protocol.data_received(data)
        else:
            self._end(None)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.pending:
            self.pending += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._end(exc)
            return
        if sent < len(data):
            self.pending += data[sent:]
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        del self.pending[:sent]
        if not self.pending:
            self.loop.remove_writer(self.fd)
            if self.closing:
                self._end(None)

    def is_closing(self) -> bool:
        return self.closing or self.closed

    def close(self) -> None:
        """Closes once what was written is sent."""
        self.closing = True
        if not self.pending:
            self._end(None)

    def abort(self) -> None:
        """Closes now, dropping anything unsent."""
        self._end(None)

    def _end(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.fd)
            if self.pending:
                self.loop.remove_writer(self.fd)
        self.pending.clear()
        self.sock.close()
        self.loop.call_soon(self.protocol.connection_lost, exc)
