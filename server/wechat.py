"""WeChat's server API, with Tornado's async HTTP client.

``code2session`` trades a ``wx.login`` code at ``/sns/jscode2session`` for the
user's openid. WeChat's errcodes become the contract's errors; ``-1`` (system
busy), timeouts and network errors are retried a bounded number of times. The
``session_key`` WeChat returns is dropped on arrival: never stored, returned or
logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import ujson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from server.errors import ApiError
from server.logs import fields

log = logging.getLogger("server.wechat")

_CODE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# errcode -> (contract code, message)
_ERRORS: dict[int, tuple[str, str]] = {
    40029: ("wechat_code_invalid", "the wx.login code is invalid"),
    40163: ("wechat_code_invalid", "the wx.login code was already used"),
    45011: ("wechat_rate_limited", "WeChat limits sign-ins for this user; try again shortly"),
    40226: ("wechat_user_blocked", "WeChat has blocked this user as high-risk"),
}
_RETRYABLE = {-1}  # system busy


@dataclass(frozen=True)
class WeChatSession:
    """What a sign-in keeps of jscode2session's answer (not the session_key)."""

    openid: str  # the user's id in this Mini Program
    unionid: str | None  # the user's id across the developer's apps, when bound


class WeChatUnavailable(Exception):
    """WeChat could not be reached or answered something unusable."""


class WeChatClient:
    """Calls WeChat's server API."""

    def __init__(self, base: str, appid: str | None, secret: str | None, http: AsyncHTTPClient | None = None,
                 timeout: float = 5.0, retries: int = 2, backoff: float = 0.2) -> None:
        self.base = base.rstrip("/")  # https://api.weixin.qq.com, or a local fake in tests
        self.appid = appid  # the Mini Program's AppID
        self._secret = secret  # its AppSecret
        self._http = http or AsyncHTTPClient()  # Tornado's client
        self.timeout = timeout  # seconds per attempt
        self.retries = retries  # further attempts after -1, a timeout or a network error
        self.backoff = backoff  # seconds before the first retry, doubling

    @property
    def configured(self) -> bool:
        return bool(self.appid and self._secret)

    async def get_json(self, path: str, params: dict[str, str], what: str) -> dict[str, Any]:
        """GETs ``path`` and decodes its JSON, retrying busy answers and network errors."""
        url = f"{self.base}{path}?{urlencode(params)}"
        return await self._with_retries(HTTPRequest(url, method="GET", request_timeout=self.timeout,
                                                    connect_timeout=self.timeout), what)

    async def post_json(self, path: str, params: dict[str, str], body: dict[str, Any], what: str) -> dict[str, Any]:
        url = f"{self.base}{path}?{urlencode(params)}" if params else f"{self.base}{path}"
        request = HTTPRequest(url, method="POST", body=ujson.dumps(body, ensure_ascii=False),
                              headers={"Content-Type": "application/json"}, request_timeout=self.timeout,
                              connect_timeout=self.timeout)
        return await self._with_retries(request, what)

    async def _with_retries(self, request: HTTPRequest, what: str) -> dict[str, Any]:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                answer = await self._fetch(request)
                if answer.get("errcode") not in _RETRYABLE:
                    return answer
                reason = "system busy (-1)"
            except WeChatUnavailable as exc:
                reason = str(exc)
            log.warning("wechat call failed", extra=fields(call=what, attempt=attempt + 1, reason=reason))
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay *= 2
        raise WeChatUnavailable(f"{what}: WeChat did not answer after {self.retries + 1} attempts")

    async def _fetch(self, request: HTTPRequest) -> dict[str, Any]:
        try:
            response = await self._http.fetch(request, raise_error=True)
        except HTTPClientError as exc:
            raise WeChatUnavailable(f"HTTP {exc.code}") from None
        except (TimeoutError, OSError) as exc:
            raise WeChatUnavailable(type(exc).__name__) from None
        try:
            answer = ujson.loads(response.body or b"")
        except ValueError:
            raise WeChatUnavailable("malformed JSON") from None
        if not isinstance(answer, dict):
            raise WeChatUnavailable("an answer that is not a JSON object")
        return answer

    async def stable_token(self, force: bool = False) -> dict[str, Any]:
        """WeChat's answer to ``/cgi-bin/stable_token``: an access token of the
        Mini Program and its lifetime (raises WeChatUnavailable)."""
        body = {"grant_type": "client_credential", "appid": self.appid, "secret": self._secret,
                "force_refresh": force}
        return await self.post_json("/cgi-bin/stable_token", {}, body, "stable_token")

    async def code2session(self, code: Any) -> WeChatSession:
        """The user behind a ``wx.login`` code."""
        if not isinstance(code, str) or not _CODE.fullmatch(code):
            raise ApiError("invalid_request", "code must be the string wx.login returned")
        if not self.configured:
            raise ApiError("wechat_unavailable", "WeChat sign-in is not configured (WECHAT_APPID, WECHAT_SECRET)")
        params = {"appid": self.appid or "", "secret": self._secret or "", "js_code": code,
                  "grant_type": "authorization_code"}
        try:
            answer = await self.get_json("/sns/jscode2session", params, "jscode2session")
        except WeChatUnavailable as exc:
            raise ApiError("wechat_unavailable", "WeChat could not be reached; try again") from exc
        answer.pop("session_key", None)
        errcode = answer.get("errcode", 0)
        if errcode:
            code_name, message = _ERRORS.get(errcode, ("wechat_unavailable", "WeChat refused the sign-in"))
            log.info("wechat sign-in refused", extra=fields(errcode=errcode, errmsg=answer.get("errmsg")))
            raise ApiError(code_name, message, headers={"Retry-After": "60"} if errcode == 45011 else None)
        openid = answer.get("openid")
        if not isinstance(openid, str) or not openid:
            raise ApiError("wechat_unavailable", "WeChat answered without an openid")
        unionid = answer.get("unionid")
        return WeChatSession(openid, unionid if isinstance(unionid, str) and unionid else None)
