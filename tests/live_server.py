"""The real server (make_app on the session's store, the fake WeChat API) in a
thread with its own event loop, for clients that block: raw sockets,
hypothesis, schemathesis."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

import settings
from handlers.app import make_app, max_body_size
from tests.fake_wechat import FakeWeChat


class LiveServer:
    """``with LiveServer(mongo_uri, env) as live: live.url``: serving until the block ends."""

    def __init__(self, mongo_uri: str, env: dict[str, str]) -> None:
        self.environ = {"MONGO_URI": mongo_uri, "MONGO_DB": f"live_{uuid.uuid4().hex[:10]}",
                        "API_KEYS": "server-key-1,server-key-2", **env}  # the server's settings
        self.port = 0  # the HTTP port, once started
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's loop, in its thread
        self._ready = threading.Event()  # set once the server listens (or failed to start)
        self._stop: asyncio.Event | None = None  # set to stop the server
        self._error: BaseException | None = None  # why the server failed to start
        self._thread = threading.Thread(target=self._run, name="live-server", daemon=True)  # the loop's thread
        self.services: Any = None  # the server's Services, once started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the live server did not start in 30 s")
        if self._error is not None:
            raise RuntimeError("the live server failed to start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        wechat = FakeWeChat().start()
        try:
            config = settings.load({**self.environ, "WECHAT_APPID": wechat.appid, "WECHAT_SECRET": wechat.secret,
                                    "WECHAT_API_BASE": wechat.url})
            app, self.services = make_app(config)
            await self.services.start()
            sockets = bind_sockets(0, "127.0.0.1")
            server = HTTPServer(app, max_body_size=max_body_size(config))
            server.add_sockets(sockets)
            self.port = sockets[0].getsockname()[1]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            wechat.stop()
            return
        self._ready.set()
        await self._stop.wait()
        server.stop()
        await self.services.shutdown()
        await server.close_all_connections()
        await self.services.close()
        wechat.stop()
