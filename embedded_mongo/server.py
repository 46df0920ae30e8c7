"""The network side: accepts connections, frames messages, runs commands.

Messages are read and written on an asyncio event loop; commands run one at a
time on the same loop, so no two ever touch SQLite at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import struct
from typing import IO

from .commands import Commands
from .errors import CloseConnection, MongoError, ProtocolError
from .storage import Store
from .engine import compile_filter
from .wire import HEADER, OP_MSG, Request, encode_reply, parse_header, parse_message

log = logging.getLogger("embedded_mongo")


class LockedError(Exception):
    """Another process holds the dbpath."""


class DataDirLock:
    """An exclusive lock on ``DIR/mongod.lock`` held for the process's life."""

    def __init__(self, dbpath: str) -> None:
        self.path = os.path.join(dbpath, "mongod.lock")
        self._file: IO[str] | None = None  # the open lock file while held

    def acquire(self) -> None:
        handle = open(self.path, "a+")
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
                 test_commands: bool = False) -> None:
        os.makedirs(dbpath, exist_ok=True)
        self.dbpath = dbpath  # where the SQLite file and the lock live
        self.host = host  # address to listen on
        self.port = port  # port to listen on; the bound port after start()
        self.ttl_interval = ttl_interval  # seconds between TTL and cursor sweeps
        self._lock = DataDirLock(dbpath)  # refuses a second server on the dbpath
        self._lock.acquire()
        self.store = Store(dbpath, compile_filter)  # documents and indexes
        self.commands = Commands(self.store, port, test_commands)  # command dispatch
        self._server: asyncio.base_events.Server | None = None  # the listening socket
        self._writers: set[asyncio.StreamWriter] = set()  # open client connections
        self._sweeper: asyncio.Task[None] | None = None  # the TTL and cursor sweep
        self._next_connection = 0  # connection ids, as hello reports them
        self._next_response = 0  # requestID of replies

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=2**16)
        self.port = self._server.sockets[0].getsockname()[1]
        self.commands.port = self.port
        self._sweeper = asyncio.create_task(self._sweep())
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for writer in list(self._writers):
            writer.close()
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._next_connection += 1
        connection_id = self._next_connection
        self.commands.connections += 1
        self.commands.connections_total += 1
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")
        try:
            while True:
                header = await reader.readexactly(HEADER.size)
                length, request_id, _, op_code = parse_header(header)
                body = await reader.readexactly(length - HEADER.size)
                try:
                    request = parse_message(header + body)
                except ProtocolError as exc:
                    # A well-framed message whose content is bad gets mongod's
                    # error and the connection goes on; bad framing closes it.
                    log.warning("event=bad_message connection=%d peer=%s error=%r", connection_id, peer, str(exc))
                    flags = struct.unpack_from("<I", body, 0)[0] if op_code == OP_MSG and len(body) >= 4 else 0
                    if op_code != OP_MSG or flags & 2:
                        return
                    failed = Request(request_id=request_id, op_code=OP_MSG)
                    reply = MongoError(22, str(exc)).to_reply()
                    writer.write(encode_reply(failed, reply, self._response_id()))
                    await writer.drain()
                    continue
                reply = self.commands.run(request, connection_id)
                if request.more_to_come:
                    continue
                writer.write(encode_reply(request, reply, self._response_id()))
                await writer.drain()
        except CloseConnection:
            log.info("event=failpoint_close connection=%d", connection_id)
        except ProtocolError as exc:
            log.warning("event=bad_frame connection=%d peer=%s error=%r", connection_id, peer, str(exc))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.commands.connections -= 1
            self._writers.discard(writer)
            writer.close()

    def _response_id(self) -> int:
        self._next_response = (self._next_response + 1) & 0x7FFFFFFF
        return self._next_response
