"""Test clients of the WebSocket protocol: a small one over Tornado's websocket_connect,
and a raw one over a bare socket."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect


class Client:
    """One socket: ``call`` sends a command and returns its reply; pushes that
    arrive meanwhile are kept in ``pushes``."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn  # the socket
        self.pushes: list[dict[str, Any]] = []  # pushes not yet taken
        self.next_id = 0  # command ids
        self.closed = False  # the server closed the socket

    @classmethod
    async def connect(cls, base_url: str, token: str, via: str = "header", **kwargs: Any) -> Client:
        url = base_url.replace("http", "ws", 1) + "/ws"
        if via == "query":
            request = HTTPRequest(f"{url}?token={token}", **kwargs)
        else:
            request = HTTPRequest(url, headers={"Authorization": f"Bearer {token}"}, **kwargs)
        return cls(await websocket_connect(request))

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    async def read(self, timeout: float = 5.0) -> dict[str, Any] | None:
        message = await asyncio.wait_for(self.conn.read_message(), timeout)
        if message is None:
            self.closed = True
            return None
        return json.loads(message)

    async def send_raw(self, frame: str) -> None:
        await self.conn.write_message(frame)

    async def call(self, op: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
        self.next_id += 1
        command_id = self.next_id
        await self.conn.write_message(json.dumps({"id": command_id, "op": op, **args}))
        return await self.reply(command_id, timeout)

    async def reply(self, command_id: int | None, timeout: float = 5.0) -> dict[str, Any]:
        while True:
            message = await self.read(timeout)
            if message is None:
                raise ConnectionError(f"closed with {self.close_code} while waiting for a reply")
            if "push" in message:
                self.pushes.append(message)
            elif message.get("id") == command_id:
                return message

    async def push(self, timeout: float = 5.0, kind: str = "message") -> dict[str, Any]:
        """The next push of a kind (earlier ones of other kinds are kept)."""
        for index, push in enumerate(self.pushes):
            if push["push"] == kind:
                return self.pushes.pop(index)
        while True:
            message = await self.read(timeout)
            if message is None:
                raise ConnectionError(f"closed with {self.close_code} while waiting for a push")
            if message.get("push") == kind:
                return message
            if "push" in message:
                self.pushes.append(message)

    async def messages(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        return [(await self.push(timeout))["message"] for _ in range(count)]

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.closed:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError("the socket stayed open")
            try:
                await self.read(remaining)
            except TimeoutError:
                raise TimeoutError("the socket stayed open") from None
        return self.close_code

    def close(self) -> None:
        self.conn.close()


class RawSocket:
    """A WebSocket client written against RFC 6455 on a bare socket, to send what a
    library would refuse to (invalid UTF-8) and to stop reading at will."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock  # the connection, non-blocking
        self.buffer = b""  # bytes received and not yet parsed

    @classmethod
    async def connect(cls, port: int, token: str, receive_buffer: int | None = None) -> RawSocket:
        """Opens the socket (with a small receive buffer when given) and upgrades it."""
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(sock, (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
        client = cls(sock)
        while b"\r\n\r\n" not in client.buffer:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            client.buffer += chunk
        head, _, client.buffer = client.buffer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.decode(errors="replace"))
        return client

    async def send(self, payload: bytes, opcode: int = 0x1) -> None:
        """Sends one masked frame as a client must."""
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = bytes([0x80 | opcode, 0x80 | size])
        elif size < 65536:
            header = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, header + mask + masked)

    async def frame(self, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """The next frame from the server, (opcode, payload); None at the end of the stream."""
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            chunk = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), timeout)
            if not chunk:
                return None
            self.buffer += chunk

    def _parse(self) -> tuple[int, bytes] | None:
        data = self.buffer
        if len(data) < 2:
            return None
        size, offset = data[1] & 0x7F, 2
        if size == 126:
            if len(data) < 4:
                return None
            size, offset = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            if len(data) < 10:
                return None
            size, offset = int.from_bytes(data[2:10], "big"), 10
        if len(data) < offset + size:
            return None
        self.buffer = data[offset + size:]
        return data[0] & 0x0F, data[offset:offset + size]

    async def close_code(self, timeout: float = 5.0) -> int | None:
        """Reads until the server's close frame and returns its code; None if the
        stream ends without one."""
        while True:
            frame = await self.frame(timeout)
            if frame is None:
                return None
            if frame[0] == 0x8:
                return int.from_bytes(frame[1][:2], "big") if len(frame[1]) >= 2 else None

    def close(self) -> None:
        self.sock.close()
