"""WeChat's content check (msgSecCheck, version 2) of room messages' text.

The access token comes from ``/cgi-bin/stable_token``, is cached, and is fetched
again shortly before it expires (or when WeChat says it is invalid) — never once
per message. ``risky`` is refused with ``content_rejected``; when WeChat cannot
be reached the message is refused with ``content_check_unavailable``, never
published unchecked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from server.errors import ApiError
from server.logs import fields
from server.wechat import WeChatClient, WeChatUnavailable

log = logging.getLogger("server.content")

REFRESH_MARGIN = 300.0  # seconds before expiry at which the token is fetched again
MAX_TEXT = 2500  # characters msgSecCheck accepts at once
_TOKEN_INVALID = {40001, 42001, 40014}  # access_token invalid or expired


def texts(value: Any) -> list[str]:
    """Every string in a message's data, depth first."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, dict):
        return [t for v in value.values() for t in texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in texts(v)]
    return []


class ContentCheck:
    """msgSecCheck with a cached stable access token."""

    def __init__(self, wechat: WeChatClient, scene: int = 2) -> None:
        self.wechat = wechat  # WeChat's API client
        self.scene = scene  # msgSecCheck scene (2: comments)
        self._token: str | None = None  # the cached access token
        self._expires = 0.0  # monotonic time it should be refreshed by
        self._lock = asyncio.Lock()  # one fetch at a time
        self.token_fetches = 0  # how often the token was fetched (for tests and logs)

    async def _access_token(self, force: bool = False) -> str:
        async with self._lock:
            if self._token and not force and time.monotonic() < self._expires:
                return self._token
            if not self.wechat.configured:
                raise ApiError("content_check_unavailable", "the content check is not configured")
            try:
                answer = await self.wechat.stable_token(force)
            except WeChatUnavailable as exc:
                raise ApiError("content_check_unavailable", "WeChat's content check cannot be reached") from exc
            token, expires_in = answer.get("access_token"), answer.get("expires_in")
            if not isinstance(token, str) or not isinstance(expires_in, int):
                log.warning("stable_token refused", extra=fields(errcode=answer.get("errcode")))
                raise ApiError("content_check_unavailable", "WeChat refused an access token")
            self.token_fetches += 1
            self._token = token
            self._expires = time.monotonic() + max(expires_in - REFRESH_MARGIN, expires_in / 2)
            return token

    async def check(self, data: dict[str, Any], openid: str) -> None:
        """Raises unless every text of ``data`` passes."""
        text = "\n".join(texts(data))
        for start in range(0, len(text), MAX_TEXT):
            await self._check_text(text[start:start + MAX_TEXT], openid)

    async def _check_text(self, text: str, openid: str) -> None:
        for attempt in range(2):
            token = await self._access_token(force=attempt > 0)
            body = {"content": text, "version": 2, "scene": self.scene, "openid": openid}
            try:
                answer = await self.wechat.post_json("/wxa/msg_sec_check", {"access_token": token}, body,
                                                     "msg_sec_check")
            except WeChatUnavailable as exc:
                raise ApiError("content_check_unavailable", "WeChat's content check cannot be reached") from exc
            errcode = answer.get("errcode", 0)
            if errcode in _TOKEN_INVALID:
                continue
            if errcode:
                log.warning("msg_sec_check failed", extra=fields(errcode=errcode))
                raise ApiError("content_check_unavailable", "WeChat's content check failed")
            suggest = (answer.get("result") or {}).get("suggest")
            if suggest == "risky":
                raise ApiError("content_rejected", "the message was rejected by WeChat's content check")
            if suggest not in ("pass", "review"):
                raise ApiError("content_check_unavailable", "WeChat's content check gave no verdict")
            return
        raise ApiError("content_check_unavailable", "WeChat kept refusing the access token")
