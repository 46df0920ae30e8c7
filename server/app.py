"""The one place that wires the server's core: ``Services.build(settings, ...)``
makes storage, auth, the broker, the real-time service and the rest. The HTTP
side (routes, ``make_app``) sits above, in ``handlers/app.py``."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable

from tornado.httpclient import AsyncHTTPClient

from server.auth import Auth
from server.content import ContentCheck
from server.files import Files
from server.messages import Messages
from server.metrics import Metrics
from server.realtime import Realtime
from server.realtime.brokers.base import Broker
from server.records import Records, load_schemas
from server.rooms import Rooms
from server.storage import Storage
from server.timeouts import within
from server.users import Users
from server.wechat import WeChatClient
from settings import Settings


class Services:
    """Everything handlers call into, built once per application."""

    def __init__(self, settings: Settings, storage: Storage, wechat: WeChatClient,
                 broker: Broker | None = None) -> None:
        self.settings = settings  # the configuration
        self.storage = storage  # motor and the database
        self.users = Users(storage)  # the users collection
        self.auth = Auth(storage, self.users, settings.jwt_secret, settings.access_token_ttl,
                         settings.refresh_token_ttl, settings.refresh_reuse_grace)  # tokens and sessions
        self.wechat = wechat  # WeChat's server API
        self.metrics = Metrics()  # this app's Prometheus registry
        self.started_at = time.time()  # for uptime
        self.in_flight = 0  # HTTP requests being answered
        self.stopping = False  # set once shutdown began: /readyz answers 503 from then on
        self._idle = asyncio.Event()  # set while no request is in flight
        self._idle.set()
        self.on_session_end: list[Callable[[str], Awaitable[None]]] = []  # called with a sid on logout
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []  # called when the server stops
        self.rooms = Rooms(storage)  # rooms and channel permissions
        self.realtime = Realtime(settings, Messages(storage), self.rooms, self.auth, self.users,
                                 ContentCheck(wechat) if settings.content_check else None, self.metrics,
                                 broker)  # publishing, the connections, the other processes (REDIS_URL)
        self.records = Records(storage, load_schemas(settings.schemas_dir))  # JSON records of each kind
        self.files = Files(storage, settings.file_max_bytes, settings.file_types)  # the GridFS bucket
        self.on_session_end.append(self._close_session_sockets)
        self.on_shutdown.append(self.realtime.shutdown)

    @classmethod
    def build(cls, settings: Settings, mongo_uri: str | None = None, *, storage: Storage | None = None,
              wechat: WeChatClient | None = None, http: AsyncHTTPClient | None = None,
              broker: Broker | None = None) -> Services:
        """Every service from the settings. ``mongo_uri`` overrides
        ``settings.mongo_uri`` (run.py passes the embedded store's); the keyword
        arguments replace one part (tests pass a storage or a WeChat client)."""
        uri = mongo_uri or settings.mongo_uri
        if storage is None:
            if uri is None:
                raise ValueError("make_app needs a MongoDB URI (settings.mongo_uri or mongo_uri)")
            storage = Storage(uri, settings.mongo_db)
        wechat = wechat or WeChatClient(settings.wechat_api_base, settings.wechat_appid, settings.wechat_secret,
                                        http)
        return cls(settings, storage, wechat, broker)

    async def start(self) -> None:
        """Waits for the database, creates the contract's indexes, joins the
        other processes (the broker: with Redis down it starts and catches up later)."""
        await self.storage.wait_until_ready()
        await self.storage.ensure_indexes()
        await self.realtime.start()

    async def _close_session_sockets(self, sid: str) -> None:
        self.realtime.sign_out(sid)  # in every process

    async def shutdown(self) -> None:
        """Runs the shutdown hooks (the real-time hub closes its sockets here)."""
        self.stopping = True
        for hook in self.on_shutdown:
            await hook()

    async def close(self) -> None:
        await self.realtime.close()
        self.storage.close()

    def track_request(self, delta: int) -> None:
        self.in_flight += delta
        if self.in_flight == 0:
            self._idle.set()
        else:
            self._idle.clear()

    async def drain(self, timeout: float) -> bool:
        """Waits (at most ``timeout`` seconds) for in-flight requests to finish."""
        try:
            await within(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def session_ended(self, sid: str) -> None:
        for callback in self.on_session_end:
            await callback(sid)

    def refresh_gauges(self) -> None:
        """Brings gauges up to date before /metrics renders them."""
        hub = self.realtime.hub
        self.metrics.ws_connections.set(hub.connection_count())
        self.metrics.ws_subscriptions.set(hub.subscription_count())
        self.metrics.broker_up.set(1 if self.realtime.broker_up else 0)
        self.metrics.messages_filled.set(self.realtime.node.orderer.fills)


GC_THRESHOLDS = (50_000, 20, 10)  # CPython's are (700, 10, 10) (3.11): see tune_gc


def tune_gc() -> None:
    """Garbage collection for a server holding thousands of long-lived sessions.

    With CPython's thresholds a young collection runs every 700 allocations and
    every long-lived object (each session, its handler, stream and buffers) is
    scanned again by each full collection: in a reconnect storm of 6,000 sessions
    (bench/storm_bench.py) 5.0 s of the server's CPU went to 2,369 collections.
    Called once the server has started: what start-up allocated is frozen out of
    every collection, and young collections run every 50,000 allocations (25
    collections, 1.3 s, in the same storm). Cyclic garbage is still collected.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
