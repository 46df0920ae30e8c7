"""The HTTP application: the route table and ``make_app(settings, ...)``, above
``server/`` (which wires the services and imports no handler)."""

from __future__ import annotations

import logging
import time

from tornado.httpclient import AsyncHTTPClient
from tornado.web import Application, RequestHandler

from handlers.auth import DevLoginHandler, LogoutHandler, MeHandler, RefreshHandler, WeChatLoginHandler
from handlers.base import NotFoundHandler
from handlers.ops import DemoHandler, HealthHandler, MetricsHandler, ReadyHandler
from handlers.rooms import DirectRoomHandler, HistoryHandler, MembersHandler, RoomsHandler
from handlers.server_api import BroadcastHandler, DisconnectHandler, PresenceHandler, PublishHandler, StatsHandler
from handlers.socket import SocketHandler
from handlers.uploads import FileHandler, FilesHandler, RecordsHandler
from server.app import Services
from server.broker import Broker
from server.logs import fields, redact_text
from server.storage import Storage
from server.wechat import WeChatClient
from settings import Settings

log = logging.getLogger("server.access")

ROUTES: list[tuple[str, type[RequestHandler]]] = [
    (r"/", DemoHandler),
    (r"/healthz", HealthHandler),
    (r"/readyz", ReadyHandler),
    (r"/metrics", MetricsHandler),
    (r"/api/v1/auth/wechat", WeChatLoginHandler),
    (r"/api/v1/auth/dev", DevLoginHandler),
    (r"/api/v1/auth/refresh", RefreshHandler),
    (r"/api/v1/auth/logout", LogoutHandler),
    (r"/api/v1/me", MeHandler),
    (r"/api/v1/rooms", RoomsHandler),
    (r"/api/v1/rooms/direct", DirectRoomHandler),
    (r"/api/v1/rooms/([A-Za-z0-9_-]{1,64})/members(?:/([0-9a-f]{24}))?", MembersHandler),
    (r"/api/v1/channels/([^/]+)/messages", HistoryHandler),
    (r"/api/v1/server/publish", PublishHandler),
    (r"/api/v1/server/broadcast", BroadcastHandler),
    (r"/api/v1/server/disconnect", DisconnectHandler),
    (r"/api/v1/server/presence", PresenceHandler),
    (r"/api/v1/server/stats", StatsHandler),
    (r"/ws", SocketHandler),
    (r"/api/v1/records/([^/]+)", RecordsHandler),
    (r"/api/v1/files", FilesHandler),
    (r"/api/v1/files/([^/]+)", FileHandler),
]  # every route: (URL pattern, handler); each handler gets the services and its pattern


def access_log(services: Services, handler: RequestHandler) -> None:
    """The access log and the request metrics: one structured line per request,
    no tokens (the query string is redacted)."""
    status = handler.get_status()
    route = getattr(handler, "route", "unmatched")
    elapsed = time.perf_counter() - getattr(handler, "started", time.perf_counter())
    services.metrics.requests.labels(route, handler.request.method, str(status)).inc()
    services.metrics.latency.labels(route).observe(elapsed)
    principal = getattr(handler, "principal", None)
    level = logging.ERROR if status >= 500 else logging.INFO
    log.log(level, "request", extra=fields(
        request_id=getattr(handler, "request_id", None), method=handler.request.method,
        path=redact_text(handler.request.uri or ""), route=route, status=status,
        duration_ms=round(elapsed * 1000, 2), user=principal.user_id if principal else None,
        ip=handler.client_ip() if hasattr(handler, "client_ip") else handler.request.remote_ip))


def make_app(settings: Settings, mongo_uri: str | None = None, *, storage: Storage | None = None,
             wechat: WeChatClient | None = None, http: AsyncHTTPClient | None = None,
             broker: Broker | None = None) -> tuple[Application, Services]:
    """The application and its services. ``mongo_uri`` overrides
    ``settings.mongo_uri`` (run.py passes the embedded store's)."""
    services = Services.build(settings, mongo_uri, storage=storage, wechat=wechat, http=http, broker=broker)
    app = Application(
        [(pattern, handler, {"services": services, "route": pattern}) for pattern, handler in ROUTES],
        compress_response=True,
        log_function=lambda handler: access_log(services, handler),
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services, "route": "unmatched"},
        xheaders=False,
        websocket_ping_interval=settings.ws_ping_interval,
        websocket_ping_timeout=settings.ws_ping_interval,  # Tornado allows no more than the interval
        websocket_max_message_size=settings.ws_max_message_bytes,
    )
    return app, services
