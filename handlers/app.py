"""The HTTP application: the route table and ``make_app(settings, ...)``, above
``server/`` (which wires the services and imports no handler)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.httpclient import AsyncHTTPClient
from tornado.web import Application, RequestHandler

from handlers.auth import DevLoginHandler, LogoutHandler, MeHandler, RefreshHandler, WeChatLoginHandler
from handlers.base import JSON_MAX_BYTES, NotFoundHandler, client_ip, record_answer
from handlers.edge import Edge
from handlers.ops import DemoHandler, HealthHandler, MetricsHandler, OpenApiHandler, ReadyHandler, SdkModuleHandler
from handlers.rooms import DirectRoomHandler, HistoryHandler, MembersHandler, RoomsHandler
from handlers.server_api import BroadcastHandler, DisconnectHandler, PresenceHandler, PublishHandler, StatsHandler
from handlers.socket import Pinger, Upgrades
from handlers.uploads import RECORDS_MAX_BYTES, FileHandler, FilesHandler, RecordsHandler
from server.app import Services
from server.errors import ApiError
from server.files import FORM_OVERHEAD
from server.logs import fields, redact_text
from server.realtime.brokers.base import Broker
from server.storage import Storage
from server.wechat import WeChatClient
from settings import Settings

log = logging.getLogger("server.access")

JSON = "json"  # a route's body is JSON: at most JSON_MAX_BYTES
RECORDS = "records"  # a records request: at most RECORDS_MAX_BYTES
FILE = "file"  # a multipart upload: at most FILE_MAX_BYTES plus the form around the file


@dataclass(frozen=True)
class Route:
    """One URL pattern, its handler, and which body limit applies to it."""

    pattern: str  # Tornado's URL pattern (matched whole)
    handler: type[RequestHandler]  # the handler class
    body: str = JSON  # JSON, RECORDS or FILE


ROUTES: list[Route] = [  # and GET /ws, the WebSocket upgrade, answered at the edge (handlers.socket.Upgrades)
    Route(r"/", DemoHandler),
    Route(r"/sdk/index\.mjs", SdkModuleHandler),
    Route(r"/healthz", HealthHandler),
    Route(r"/readyz", ReadyHandler),
    Route(r"/metrics", MetricsHandler),
    Route(r"/api/v1/openapi.json", OpenApiHandler),
    Route(r"/api/v1/auth/wechat", WeChatLoginHandler),
    Route(r"/api/v1/auth/dev", DevLoginHandler),
    Route(r"/api/v1/auth/refresh", RefreshHandler),
    Route(r"/api/v1/auth/logout", LogoutHandler),
    Route(r"/api/v1/me", MeHandler),
    Route(r"/api/v1/rooms", RoomsHandler),
    Route(r"/api/v1/rooms/direct", DirectRoomHandler),
    Route(r"/api/v1/rooms/([A-Za-z0-9_-]{1,64})/members(?:/([0-9a-f]{24}))?", MembersHandler),
    Route(r"/api/v1/channels/([^/]+)/messages", HistoryHandler),
    Route(r"/api/v1/server/publish", PublishHandler),
    Route(r"/api/v1/server/broadcast", BroadcastHandler),
    Route(r"/api/v1/server/disconnect", DisconnectHandler),
    Route(r"/api/v1/server/presence", PresenceHandler),
    Route(r"/api/v1/server/stats", StatsHandler),
    Route(r"/api/v1/records/([^/]+)", RecordsHandler, RECORDS),
    Route(r"/api/v1/files", FilesHandler, FILE),
    Route(r"/api/v1/files/([^/]+)", FileHandler),
]  # every route; each handler gets the services and its pattern through initialize


def body_limits(settings: Settings) -> dict[str, int]:
    """The largest body of each kind of route, in bytes."""
    return {JSON: JSON_MAX_BYTES, RECORDS: RECORDS_MAX_BYTES, FILE: settings.file_max_bytes + FORM_OVERHEAD}


def max_body_size(settings: Settings) -> int:
    """The largest body any route takes: HTTPServer's ``max_body_size`` (each request
    gets its route's own limit from the edge)."""
    return max(body_limits(settings).values())


class ServerApplication(Application):
    """Tornado's application, each request wrapped in an ``Edge``: bodies over
    their route's limit and requests Tornado cannot parse are answered in the
    envelope."""

    def __init__(self, routes: list[Route], services: Services, **settings: Any) -> None:
        super().__init__([(r.pattern, r.handler, {"services": services, "route": r.pattern}) for r in routes],
                         **settings)
        self.services = services  # for the refusals' log lines and metrics
        self.pinger = Pinger(services.settings.ws_ping_interval)  # pings every WebSocket of this application
        self.upgrades = {Upgrades.route: Upgrades(services, self.pinger).start}  # answered at the edge
        limits = body_limits(services.settings)
        self.limits = [(re.compile(r.pattern), limits[r.body], _streams(r.handler))
                       for r in routes]  # (path pattern, largest body, whether the handler reads a stream)

    def body_limit(self, path: str) -> tuple[int, bool]:
        """A path's largest body, and whether its handler judges a streamed body itself."""
        if path in self.upgrades:  # /ws: every handshake of a storm, decided without a pattern
            return JSON_MAX_BYTES, False
        for pattern, limit, streams in self.limits:
            if pattern.fullmatch(path):
                return limit, streams
        return JSON_MAX_BYTES, False

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection
                      ) -> httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        if not isinstance(request_conn, HTTP1Connection):
            return delegate
        return Edge(delegate, request_conn, self.body_limit, self.refused, self.upgrades)

    def refused(self, method: str, path: str, error: ApiError) -> None:
        """The access log and metrics of a request the edge answered."""
        self.services.metrics.answered("edge", method or "-", error.status)
        log.info("request refused", extra=fields(method=method, path=redact_text(path)[:200], route="edge",
                                                 status=error.status, code=error.code, message=error.message))


def _streams(handler: type[RequestHandler]) -> bool:
    """Whether Tornado streams the body to the handler (``@stream_request_body``)."""
    return bool(getattr(handler, "_stream_request_body", False))


def access_log(services: Services, handler: RequestHandler) -> None:
    """The access line and request metrics of a request a handler answered."""
    principal = getattr(handler, "principal", None)
    request = handler.request
    record_answer(services, route=getattr(handler, "route", "unmatched"), method=handler.request.method or "",
                  uri=handler.request.uri or "", status=handler.get_status(),
                  elapsed=time.perf_counter() - getattr(handler, "started", time.perf_counter()),
                  request_id=getattr(handler, "request_id", None), user=principal.user_id if principal else None,
                  ip=client_ip(services.settings.behind_proxy, request.remote_ip or "", request.headers))


def make_app(settings: Settings, mongo_uri: str | None = None, *, storage: Storage | None = None,
             wechat: WeChatClient | None = None, http: AsyncHTTPClient | None = None,
             broker: Broker | None = None) -> tuple[ServerApplication, Services]:
    """The application and its services. ``mongo_uri`` overrides
    ``settings.mongo_uri`` (run.py passes the embedded store's)."""
    services = Services.build(settings, mongo_uri, storage=storage, wechat=wechat, http=http, broker=broker)
    app = ServerApplication(
        ROUTES, services,
        compress_response=True,
        log_function=lambda handler: access_log(services, handler),
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services, "route": "unmatched"},
        xheaders=False,
    )
    return app, services
