"""The one base handler: dependencies through ``initialize``, JSON in and out,
request ids, and every error body shaped in ``write_error``."""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any

import ujson
from jsonschema import Draft202012Validator
from tornado.httputil import HTTPHeaders
from tornado.web import HTTPError, RequestHandler

from handlers.edge import request_id
from server.auth import Principal
from server.errors import ApiError
from server.logs import fields, redact_text
from server.storage import as_api_error
from server.validation import parse_json, validate
from server.values import Envelope

if TYPE_CHECKING:
    from server.app import Services

log = logging.getLogger("server.http")
access = logging.getLogger("server.access")

JSON_MAX_BYTES = 1024 * 1024  # the largest JSON body accepted
_TORNADO_CODES = {400: "invalid_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                  413: "payload_too_large", 415: "unsupported_media_type", 416: "range_not_satisfiable"}


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def client_ip(behind_proxy: bool, peer: str, headers: HTTPHeaders) -> str:
    """The client's address: X-Forwarded-For's last hop when ``behind_proxy`` and
    the connection comes from the proxy on this machine, else the peer."""
    if behind_proxy and peer in ("127.0.0.1", "::1"):
        hops = [h.strip() for h in headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        if hops:
            return hops[-1]
    return peer


def record_answer(services: Services, *, route: str, method: str, uri: str, status: int, elapsed: float,
                  request_id: str | None, user: str | None, ip: str) -> None:
    """The access log and the request metrics of one answer: one structured line,
    no tokens (the query string is redacted)."""
    services.metrics.answered(route, method, status, elapsed)
    access.log(logging.ERROR if status >= 500 else logging.INFO, "request", extra=fields(
        request_id=request_id, method=method, path=redact_text(uri), route=route, status=status,
        duration_ms=round(elapsed * 1000, 2), user=user, ip=ip))


class BaseHandler(RequestHandler):
    """Every HTTP handler of the server. Every answer carries X-Request-Id and no
    Server header."""

    services: Services  # everything a handler may call into
    route: str  # the URL pattern, for logs and metrics
    principal: Principal | None  # who the request speaks for, once authenticated

    @functools.cached_property
    def request_id(self) -> str:
        """The X-Request-Id echoed and logged: the client's when well formed, else a new one."""
        return request_id(self.request.headers)

    def initialize(self, services: Services, route: str) -> None:
        self.services = services
        self.route = route
        self.principal = None
        self.started = time.perf_counter()  # for the latency metric

    def set_default_headers(self) -> None:
        self.set_header("X-Request-Id", self.request_id)  # here, as an error clears the headers
        self.clear_header("Server")  # no version for scanners
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self) -> None:
        self.set_header("X-Request-Id", self.request_id)
        self.services.track_request(+1)
        self.tracked = True  # counted in flight: on_finish uncounts it

    def on_finish(self) -> None:
        # Tornado may finish a request before prepare ran (an unsupported method):
        # only what was counted is uncounted, or shutdown's drain would stop early.
        if getattr(self, "tracked", False):
            self.services.track_request(-1)

    # -- requests --------------------------------------------------------------------

    def json_payload(self, max_bytes: int = JSON_MAX_BYTES, envelope: Envelope = 1) -> Any:
        """The request's body as JSON: application/json, at most ``max_bytes``,
        within the value rules (``envelope``: the levels around the data)."""
        content_type = self.request.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if content_type not in ("application/json", "text/json", ""):
            raise ApiError("unsupported_media_type", "the request body must be application/json")
        if len(self.request.body) > max_bytes:
            raise ApiError("payload_too_large", f"JSON bodies are limited to {max_bytes} bytes")
        return parse_json(self.request.body, envelope)

    def json_body(self, validator: Draft202012Validator) -> dict[str, Any]:
        """The request's JSON object, checked against ``validator``."""
        body = validate(validator, self.json_payload())
        assert isinstance(body, dict)
        return body

    def bearer_token(self) -> str | None:
        return bearer_token(self.request.headers.get("Authorization", ""))

    async def authenticate(self) -> Principal:
        token = self.bearer_token()
        if token is None:
            raise ApiError("unauthorized", "Authorization: Bearer <access_token> is required")
        self.principal = await self.services.auth.authenticate(token)
        return self.principal

    # -- responses ---------------------------------------------------------------------

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(ujson.dumps(payload, ensure_ascii=False, escape_forward_slashes=False))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        error = self._api_error(exc_info[1] if exc_info else None, status_code)
        super().send_error(error.status, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error body, in the contract's envelope; never a stack trace."""
        exc_info = kwargs.get("exc_info")
        error = self._api_error(exc_info[1] if exc_info else None, status_code)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("X-Request-Id", self.request_id)
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.finish(ujson.dumps(error.body(), ensure_ascii=False, escape_forward_slashes=False))

    @staticmethod
    def _api_error(exc: BaseException | None, status_code: int) -> ApiError:
        if isinstance(exc, ApiError):
            return exc
        if exc is not None:
            mapped = as_api_error(exc)
            if mapped is not None:
                return mapped
        if isinstance(exc, HTTPError) or exc is None:
            code = _TORNADO_CODES.get(status_code, "internal" if status_code >= 500 else "invalid_request")
            message = (exc.log_message if isinstance(exc, HTTPError) and exc.log_message else None) or code.replace(
                "_", " ")
            return ApiError(code, message)
        return ApiError("internal", "the server failed to answer; the error is logged")

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        if isinstance(value, (ApiError, HTTPError)):
            return  # answered with its code; the access log has it
        if value is not None and as_api_error(value) is not None:
            log.warning("database unavailable", extra=fields(request_id=self.request_id, route=self.route,
                                                             error=type(value).__name__))
            return
        log.error("unhandled error", exc_info=value,
                  extra=fields(request_id=self.request_id, route=self.route, method=self.request.method))


class AuthenticatedHandler(BaseHandler):
    """A handler whose every method needs a valid access token."""

    principal: Principal | None

    async def prepare(self) -> None:
        await super().prepare()
        await self.authenticate()


class NotFoundHandler(BaseHandler):
    """Any path no route matches: ``not_found`` in the contract's envelope."""

    async def prepare(self) -> None:
        await super().prepare()
        raise ApiError("not_found", f"no such endpoint: {self.request.path}")
