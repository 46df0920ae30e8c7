"""Operations: liveness, readiness, metrics, and the development demo page."""

from __future__ import annotations

import functools
import os

import ujson
import yaml

from handlers.base import BaseHandler
from server.errors import ApiError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_PAGE = os.path.join(ROOT, "static", "demo.html")
SDK_MODULE = os.path.join(ROOT, "sdk", "dist", "index.mjs")
OPENAPI = os.path.join(ROOT, "docs", "openapi.yaml")


@functools.cache
def openapi_json() -> bytes:
    """docs/openapi.yaml as JSON, read and encoded once per process."""
    with open(OPENAPI, encoding="utf-8") as source:
        return ujson.dumps(yaml.safe_load(source), ensure_ascii=False, escape_forward_slashes=False).encode()


class HealthHandler(BaseHandler):
    """GET /healthz: the process is alive."""

    async def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    """GET /readyz: 200 while this process takes work: not shutting down, and a
    ping sent through the request path's own connection pool came back within
    2 s (docs/api.md says what that does and does not show), and the broker
    reaches the other processes (with REDIS_URL: never green while deliveries
    to them are paused)."""

    async def get(self) -> None:
        if self.services.stopping:
            raise ApiError("unavailable", "the server is shutting down")
        if not await self.services.storage.ping():
            raise ApiError("unavailable", "the database is not answering")
        if not self.services.realtime.broker_up:
            raise ApiError("unavailable", "the broker (Redis) is not answering: deliveries to other processes pause")
        self.write_json({"status": "ready"})


class OpenApiHandler(BaseHandler):
    """GET /api/v1/openapi.json: the HTTP API's OpenAPI 3.1 description (docs/openapi.yaml)."""

    async def get(self) -> None:
        self.set_header("Cache-Control", "public, max-age=300")
        self.finish(openapi_json())


class MetricsHandler(BaseHandler):
    """GET /metrics: Prometheus text format."""

    async def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.services.refresh_gauges()
        self.finish(self.services.metrics.render())


class DevFileHandler(BaseHandler):
    """A file served in development mode only (``not_found`` otherwise)."""

    path: str  # the file
    content_type: str  # its media type

    async def get(self) -> None:
        if not self.services.settings.dev_login:
            raise ApiError("not_found", f"no such endpoint: {self.request.path}")
        self.set_header("Content-Type", self.content_type)
        with open(self.path, "rb") as served:
            self.finish(served.read())


class DemoHandler(DevFileHandler):
    """GET /: a page to try the server from a browser (development mode only)."""

    path = DEMO_PAGE
    content_type = "text/html; charset=utf-8"


class SdkModuleHandler(DevFileHandler):
    """GET /sdk/index.mjs: the SDK's ES module, which the demo page imports (development mode only)."""

    path = SDK_MODULE
    content_type = "text/javascript; charset=utf-8"
