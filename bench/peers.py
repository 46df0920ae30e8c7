"""The peers the fan-out benchmark runs beside this server: what a user would
pick instead, each in its own process, each broadcasting one feed.

- ``tornado``: a plain Tornado broadcast: a ``write_message`` loop over the
  subscribers, each message encoded per subscriber (Tornado's own JSON).
- ``socketio``: python-socketio's ``AsyncServer`` on Tornado, ``emit`` to a room.
- ``websockets``: the ``websockets`` library's server and its ``broadcast()``
  (the message encoded once).

Every peer subscribes each socket to the feed when it opens, pings every 25 s
(as the server under test is set up), negotiates no compression, and takes
messages to broadcast as ``POST /publish`` with the message as a JSON body (the
same message object, so the same frame size, as this server's pushes). Loopback
only; each stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from typing import Any

import ujson

PEERS = ("tornado", "socketio", "websockets")
PING_SECONDS = 25


def _publish_app(broadcast: Any) -> Any:
    """A Tornado application with ``POST /publish`` calling ``broadcast(message)``."""
    from tornado.web import Application, RequestHandler

    class Publish(RequestHandler):
        async def post(self) -> None:
            count = await broadcast(ujson.loads(self.request.body))
            self.finish({"subscribers": count})

    return Application([(r"/publish", Publish)])


async def _tornado(ports: Any) -> None:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets
    from tornado.web import Application
    from tornado.websocket import WebSocketClosedError, WebSocketHandler

    subscribers: set[WebSocketHandler] = set()

    class Subscriber(WebSocketHandler):
        def check_origin(self, origin: str) -> bool:
            return True

        def open(self, *args: Any) -> None:
            subscribers.add(self)

        def on_close(self) -> None:
            subscribers.discard(self)

    async def broadcast(message: dict[str, Any]) -> int:
        for subscriber in list(subscribers):
            try:
                subscriber.write_message({"push": "message", "message": message})  # encoded per subscriber
            except WebSocketClosedError:
                pass
        return len(subscribers)

    app = Application([(r"/ws", Subscriber)], websocket_ping_interval=PING_SECONDS)
    app.add_handlers(r".*", _publish_app(broadcast).wildcard_router.rules)
    sockets = bind_sockets(0, "127.0.0.1", backlog=4096)
    HTTPServer(app).add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    ports.put((f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws", "plain"))


async def _socketio(ports: Any) -> None:
    import socketio
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets
    from tornado.web import Application

    sio = socketio.AsyncServer(async_mode="tornado", ping_interval=PING_SECONDS, cors_allowed_origins="*")

    @sio.event  # type: ignore[misc]
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        await sio.enter_room(sid, "feed")

    async def broadcast(message: dict[str, Any]) -> int:
        await sio.emit("message", message, room="feed")
        return 0

    app = Application([(r"/socket.io/", socketio.get_tornado_handler(sio))])
    app.add_handlers(r".*", _publish_app(broadcast).wildcard_router.rules)
    sockets = bind_sockets(0, "127.0.0.1", backlog=4096)
    HTTPServer(app).add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    ports.put((f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
               "socketio"))


async def _websockets(ports: Any) -> None:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    subscribers: set[ServerConnection] = set()

    async def subscriber(connection: ServerConnection) -> None:
        subscribers.add(connection)
        try:
            await connection.wait_closed()
        finally:
            subscribers.discard(connection)

    async def publish(message: dict[str, Any]) -> int:
        broadcast(subscribers, ujson.dumps({"push": "message", "message": message}))  # encoded once
        return len(subscribers)

    server = await serve(subscriber, "127.0.0.1", 0, ping_interval=PING_SECONDS, compression=None, backlog=4096,
                         max_queue=None)
    ws_port = next(iter(server.sockets)).getsockname()[1]
    sockets = bind_sockets(0, "127.0.0.1")
    HTTPServer(_publish_app(publish)).add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    ports.put((f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{ws_port}/", "plain"))


def _serve(kind: str, ports: Any) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await {"tornado": _tornado, "socketio": _socketio, "websockets": _websockets}[kind](ports)
        await stop.wait()

    asyncio.run(main())


def start(kind: str) -> tuple[multiprocessing.Process, str, str, str]:
    """A peer's process, its HTTP base (``/publish``), its WebSocket URL and the
    load generator's dialect for it."""
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    process = ctx.Process(target=_serve, args=(kind, ports), daemon=True)
    process.start()
    base, ws_url, dialect = ports.get(timeout=60)
    return process, base, ws_url, dialect
