"""A small test client of the WebSocket protocol over Tornado's websocket_connect."""

from __future__ import annotations

import asyncio
import json
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
