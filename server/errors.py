"""Client-facing errors: one list of codes, with their HTTP status.

Every error a client sees is an ``ApiError`` carrying one of the codes below;
``status_of`` is the one mapping to HTTP statuses, and ``CloseCode`` lists the
WebSocket close codes of the contract.
"""

from __future__ import annotations

import enum
from typing import Any

STATUS: dict[str, int] = {
    "invalid_request": 400,
    "invalid_json": 400,
    "unauthorized": 401,
    "token_expired": 401,
    "token_reused": 401,
    "wechat_code_invalid": 401,
    "forbidden": 403,
    "wechat_user_blocked": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "payload_too_large": 413,
    "range_not_satisfiable": 416,
    "unsupported_media_type": 415,
    "validation_failed": 422,
    "content_rejected": 422,
    "rate_limited": 429,
    "wechat_rate_limited": 429,
    "internal": 500,
    "wechat_unavailable": 502,
    "unavailable": 503,
    "content_check_unavailable": 503,
}


class CloseCode(enum.IntEnum):
    """WebSocket close codes of the contract."""

    NORMAL = 1000
    GOING_AWAY = 1001
    INVALID_DATA = 1007  # a text frame that is not UTF-8 (RFC 6455)
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    DISCONNECTED = 4000
    TOKEN_INVALID = 4001
    FORBIDDEN = 4003
    TOO_MANY_COMMANDS = 4008
    TOO_SLOW = 4009
    REPLACED = 4010


class ApiError(Exception):
    """An error for the client: a contract code, a human message, details."""

    def __init__(self, code: str, message: str, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        if code not in STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code  # snake_case contract code
        self.message = message  # human text
        self.details = details or []  # e.g. [{path, message}] for validation_failed
        self.headers = headers or {}  # extra response headers (Retry-After)

    @property
    def status(self) -> int:
        return status_of(self.code)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def status_of(code: str) -> int:
    return STATUS[code]
