"""The network side: accepts connections, frames messages, runs commands.

Messages are read and written on an asyncio event loop. Writes (and every
command that is not a plain read) run on the loop, one at a time, through the
store's one writing connection: they stay serialised and durable. Reads
(``commands.READS``) run on reader threads (``readers.ReaderPool``: a few, and
more while long reads hold them all), each with its own SQLite connection, so a
long scan by one client never holds up the others' commands, reads included;
each connection's commands still run one after another, in order.
Why threads and not cooperative yielding or a reader process: docs/embedded-mongo.md.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import struct
import sys
from typing import IO, Any

from .commands import Commands
from .engine import compile_filter
from .errors import CloseConnection, MongoError, ProtocolError
from .operations import loop_busy
from .readers import MOST_THREADS, ReaderPool
from .spill import DEFAULT_LIMIT
from .storage import Store
from .wire import HEADER, OP_MSG, Request, encode_reply, parse_header, parse_message

log = logging.getLogger("embedded_mongo")
READER_THREADS = 4  # reader threads kept; more start (up to MOST_THREADS) while long reads hold them all
SWITCH_INTERVAL = 0.0005  # seconds a thread holds the GIL while another waits (CPython's default: 0.005)


class LockedError(Exception):
    """Another process holds the dbpath."""


class DataDirLock:
    """An exclusive lock on ``DIR/mongod.lock`` held for the process's life."""

    def __init__(self, dbpath: str) -> None:
        self.path = os.path.join(dbpath, "mongod.lock")
        self._file: IO[str] | None = None  # the open lock file while held

    def acquire(self) -> None:
        handle = open(self.path, "a+")  # noqa: SIM115  (held open as long as the lock)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LockedError(
                f"dbpath {os.path.dirname(self.path)} is in use by pid {holder} (lock file {self.path}); "
                "stop that process or choose another --dbpath"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class Server:
    """One store served on one TCP address."""

    def __init__(self, dbpath: str, host: str = "127.0.0.1", port: int = 27017, ttl_interval: float = 60.0,
                 test_commands: bool = False, memory_limit: int = DEFAULT_LIMIT, readers: int = READER_THREADS,
                 switch_interval: float = SWITCH_INTERVAL, most_readers: int = MOST_THREADS) -> None:
        os.makedirs(dbpath, exist_ok=True)
        self.dbpath = dbpath  # where the SQLite file and the lock live
        self.host = host  # address to listen on
        self.port = port  # port to listen on; the bound port after start()
        self.ttl_interval = ttl_interval  # seconds between TTL and cursor sweeps
        self._lock = DataDirLock(dbpath)  # refuses a second server on the dbpath
        self._lock.acquire()
        self.store = Store(dbpath, compile_filter)  # documents and indexes
        self.commands = Commands(self.store, port, test_commands, memory_limit)  # command dispatch
        self.commands.idle_connections = self._clients
        self.readers = ReaderPool(readers, most_readers, on_exit=self.store.close_reader)  # where reads run
        # The reader threads hold the GIL while they decode and match documents; a
        # short switch interval hands it back to the event loop sooner.
        sys.setswitchinterval(switch_interval)
        self._server: asyncio.base_events.Server | None = None  # the listening socket
        self.connections: set[Connection] = set()  # open client connections
        self._sweeper: asyncio.Task[None] | None = None  # the TTL and cursor sweep
        self._next_connection = 0  # connection ids, as hello reports them
        self._next_response = 0  # requestID of replies

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.commands.port = self.port
        self._sweeper = asyncio.create_task(self._sweep())
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.close()
        for op in self.commands.operations.all():
            op.killed = True  # the readers stop at their next checkpoint
        self.readers.shutdown(wait=True, cancel_futures=True)
        if self._server is not None:
            await self._server.wait_closed()
        self.store.close()
        self._lock.release()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_interval)
            try:
                removed = self.commands.expire_ttl()
                reaped = self.commands.cursors.reap()
                if removed or reaped:
                    log.info("event=sweep ttl_deleted=%d cursors_closed=%d", removed, reaped)
            except MongoError as exc:
                log.warning("event=sweep_failed code=%d error=%r", exc.code, exc.message)

    def _connection(self) -> Connection:
        self._next_connection += 1
        return Connection(self, self._next_connection)

    def _clients(self) -> list[tuple[int, str]]:
        return [(c.id, c.client) for c in list(self.connections)]

    def response_id(self) -> int:
        self._next_response = (self._next_response + 1) & 0x7FFFFFFF
        return self._next_response


class Connection(asyncio.Protocol):
    """One client connection: frames messages out of the bytes received and
    answers each in order. A write runs synchronously as its message
    completes; a read runs on a reader thread and an awaitable hello is held,
    and the messages behind either wait their turn."""

    def __init__(self, server: Server, connection_id: int) -> None:
        self.server = server  # the store being served
        self.id = connection_id  # as hello and the logs report it
        self.transport: asyncio.Transport | None = None  # the socket, once connected
        self.buffer = bytearray()  # bytes received and not yet framed
        self.held: asyncio.TimerHandle | None = None  # a hello held for its maxAwaitTimeMS
        self.queue: list[bytes] = []  # whole messages waiting behind a held hello or a read
        self.reading = False  # a read of this connection is running on a reader thread
        self.peer: Any = None  # the client's address, for the logs
        self.client = ""  # host:port of the client, as currentOp shows it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        if isinstance(self.peer, tuple) and len(self.peer) >= 2:
            self.client = f"{self.peer[0]}:{self.peer[1]}"
        commands = self.server.commands
        commands.connections += 1
        commands.connections_total += 1
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.commands.connections -= 1
        self.server.connections.discard(self)
        self.queue.clear()  # what it sent behind a read is never run, as mongod ends a session whose client left
        for op in self.server.commands.operations.all():
            if op.connection_id == self.id:  # a read on a reader thread: nobody will read its answer
                op.killed = True
        if self.held is not None:
            self.held.cancel()
            self.held = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        loop_busy()
        self.buffer += data
        try:
            while len(self.buffer) >= HEADER.size:
                length = parse_header(bytes(self.buffer[: HEADER.size]))[0]
                if len(self.buffer) < length:
                    return
                message = bytes(self.buffer[:length])
                del self.buffer[:length]
                if self.held is not None or self.reading or self.queue:
                    self.queue.append(message)
                else:
                    self._handle(message)
        except ProtocolError as exc:
            log.warning("event=bad_frame connection=%d peer=%s error=%r", self.id, self.peer, str(exc))
            self.close()
        except CloseConnection:
            log.info("event=failpoint_close connection=%d", self.id)
            self.close()

    def _handle(self, message: bytes) -> None:
        try:
            request = parse_message(message)
        except ProtocolError as exc:
            # A well-framed message whose content is bad gets mongod's error and
            # the connection goes on; a message we cannot answer closes it.
            _, request_id, _, op_code = parse_header(message[: HEADER.size])
            flags = struct.unpack_from("<I", message, HEADER.size)[0] if len(message) >= HEADER.size + 4 else 0
            if op_code != OP_MSG or flags & 2:
                raise
            log.warning("event=bad_message connection=%d peer=%s error=%r", self.id, self.peer, str(exc))
            failed = Request(request_id=request_id, op_code=OP_MSG)
            self._send(failed, MongoError(22, str(exc)).to_reply())
            return
        wait = self.server.commands.hello_wait(request)
        if wait:
            loop = asyncio.get_running_loop()
            self.held = loop.call_later(wait, self._release, request)
            return
        self._answer(request)

    def _answer(self, request: Request) -> None:
        commands = self.server.commands
        if commands.reads_only(request):
            self.reading = True
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self.server.readers, commands.run, request, self.id, self.client, True)
            future.add_done_callback(lambda done: self._read_done(request, done))
            return
        reply = commands.run(request, self.id, self.client)
        if not request.more_to_come:
            self._send(request, reply)

    def _read_done(self, request: Request, done: asyncio.Future[dict[str, Any]]) -> None:
        """A read finished on its thread: its reply, then what queued behind it."""
        self.reading = False
        if done.cancelled():
            self.close()
            return
        error = done.exception()
        if error is not None:
            if not isinstance(error, CloseConnection):
                log.error("event=read_failed connection=%d error=%r", self.id, error)
            self.close()
            return
        if not request.more_to_come:
            self._send(request, done.result())
        self._drain()

    def _drain(self) -> None:
        """Handles the messages that queued while this connection waited."""
        try:
            while self.queue and self.held is None and not self.reading:
                self._handle(self.queue.pop(0))
        except (ProtocolError, CloseConnection):
            self.close()

    def _send(self, request: Request, reply: dict[str, Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_reply(request, reply, self.server.response_id()))

    def _release(self, request: Request) -> None:
        """Answers a held hello, then what queued behind it."""
        self.held = None
        try:
            self._answer(request)
        except (ProtocolError, CloseConnection):
            self.close()
            return
        self._drain()
