"""Client-facing errors: one type, one table of codes.

Every error a client sees is an ``ApiError`` carrying one of the codes of
``CODES``, the one table mapping each code to its HTTP status and, where the
error ends a WebSocket connection, its close code:

=========================  ====  =====  ==========================================
code                       HTTP  close  when
=========================  ====  =====  ==========================================
invalid_request            400   -      bad or missing argument, unknown op
invalid_json               400   -      a body or frame that is not JSON
unauthorized               401   4001   no, a bad or a signed-out token
token_expired              401   4001   the access token expired
token_reused               401   4001   a spent refresh token again: session revoked
wechat_code_invalid        401   -      wx.login's code refused by WeChat
forbidden                  403   4003   not allowed to read or write that
wechat_user_blocked        403   -      WeChat blocked the user
not_found                  404   -      no such thing (or not visible to you)
method_not_allowed         405   -
conflict                   409   -      Idempotency-Key reused with another body
payload_too_large          413   1009   a body, frame or data over its limit
unsupported_media_type     415   -
range_not_satisfiable      416   -
validation_failed          422   -      a body that breaks its schema or the value
                                        rules (``details`` name each JSON path)
content_rejected           422   -      the content check refused the text
rate_limited               429   4008   too many requests or commands
wechat_rate_limited        429   -
internal                   500   1011   the server failed; the error is logged
wechat_unavailable         502   -
unavailable                503   1001   the database or the server is going away
content_check_unavailable  503   -
=========================  ====  =====  ==========================================

Over WebSocket an error answers its command (``{"id", "error"}``) and the
connection goes on; the close code is what the server closes with when that
error ends the connection instead (an expired token, too many refused
commands). ``CloseCode`` lists every close code of the contract, those that no
error code maps to included (1000, 1007, 1008, 4000, 4009, 4010).
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple


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


class Code(NamedTuple):
    """What one error code means on each transport."""

    status: int  # the HTTP status
    close: CloseCode | None  # the WebSocket close code when the error ends a connection


CODES: dict[str, Code] = {
    "invalid_request": Code(400, None),
    "invalid_json": Code(400, None),
    "unauthorized": Code(401, CloseCode.TOKEN_INVALID),
    "token_expired": Code(401, CloseCode.TOKEN_INVALID),
    "token_reused": Code(401, CloseCode.TOKEN_INVALID),
    "wechat_code_invalid": Code(401, None),
    "forbidden": Code(403, CloseCode.FORBIDDEN),
    "wechat_user_blocked": Code(403, None),
    "not_found": Code(404, None),
    "method_not_allowed": Code(405, None),
    "conflict": Code(409, None),
    "payload_too_large": Code(413, CloseCode.TOO_BIG),
    "unsupported_media_type": Code(415, None),
    "range_not_satisfiable": Code(416, None),
    "validation_failed": Code(422, None),
    "content_rejected": Code(422, None),
    "rate_limited": Code(429, CloseCode.TOO_MANY_COMMANDS),
    "wechat_rate_limited": Code(429, None),
    "internal": Code(500, CloseCode.INTERNAL),
    "wechat_unavailable": Code(502, None),
    "unavailable": Code(503, CloseCode.GOING_AWAY),
    "content_check_unavailable": Code(503, None),
}

STATUS: dict[str, int] = {code: meaning.status for code, meaning in CODES.items()}  # code -> HTTP status


class ApiError(Exception):
    """An error for the client: a contract code, a human message, details; over
    WebSocket, the id of the command it answers when that could be read."""

    def __init__(self, code: str, message: str, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None, command_id: int | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code  # snake_case contract code
        self.message = message  # human text
        self.details = details or []  # e.g. [{path, message}] for validation_failed
        self.headers = headers or {}  # extra response headers (Retry-After)
        self.command_id = command_id  # the WebSocket command answered, when its id was readable

    @property
    def status(self) -> int:
        return CODES[self.code].status

    @property
    def close_code(self) -> CloseCode | None:
        return CODES[self.code].close

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def status_of(code: str) -> int:
    return CODES[code].status


def close_code_of(code: str) -> CloseCode | None:
    return CODES[code].close
