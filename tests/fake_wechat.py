"""A fake of WeChat's server API on loopback, answering as WeChat documents.

``/sns/jscode2session`` answers by the ``js_code`` it is given:

| js_code | answer |
|---|---|
| ``ok-<openid>`` | ``{openid, session_key, unionid}`` |
| ``invalid`` / ``used`` | errcode 40029 / 40163 |
| ``limited`` / ``blocked`` | errcode 45011 / 40226 |
| ``busy-once-<openid>`` | errcode -1 the first time, then success |
| ``busy-always`` | errcode -1 every time |
| ``slow-<openid>`` | success after ``slow_seconds`` |
| ``garbage`` | a body that is not JSON |

Every call is recorded in ``calls`` (path and query arguments).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import ujson
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

SESSION_KEY = "FAKE-SESSION-KEY-must-never-leak"


class _Handler(RequestHandler):
    def initialize(self, fake: FakeWeChat) -> None:
        self.fake = fake

    def _record(self) -> dict[str, str]:
        args = {k: self.get_argument(k) for k in self.request.arguments}
        self.fake.calls.append((self.request.path, args))
        return args

    def _answer(self, payload: Any) -> None:
        # WeChat answers jscode2session with text/plain; clients must not rely on the type.
        self.set_header("Content-Type", "text/plain")
        self.finish(payload if isinstance(payload, str) else ujson.dumps(payload))


class Code2Session(_Handler):
    async def get(self) -> None:
        args = self._record()
        code = args.get("js_code", "")
        if args.get("appid") != self.fake.appid or args.get("secret") != self.fake.secret:
            return self._answer({"errcode": 40013, "errmsg": "invalid appid"})
        errors = {"invalid": 40029, "used": 40163, "limited": 45011, "blocked": 40226, "busy-always": -1}
        if code in errors:
            return self._answer({"errcode": errors[code], "errmsg": "fake error"})
        if code == "garbage":
            return self._answer("<html>not json{")
        self.fake.seen[code] += 1
        if code.startswith("busy-once-") and self.fake.seen[code] == 1:
            return self._answer({"errcode": -1, "errmsg": "system error"})
        if code.startswith("slow-"):
            await asyncio.sleep(self.fake.slow_seconds)
        openid = code.split("-", 2)[-1] if code.startswith(("busy-once-", "slow-")) else code.removeprefix("ok-")
        self._answer({"openid": f"openid-{openid}", "session_key": SESSION_KEY, "unionid": f"union-{openid}"})


class StableToken(_Handler):
    """POST /cgi-bin/stable_token: a fresh token each time it is fetched."""

    async def post(self) -> None:
        self._record()
        body = ujson.loads(self.request.body)
        if body.get("appid") != self.fake.appid or body.get("secret") != self.fake.secret:
            return self._answer({"errcode": 40013, "errmsg": "invalid appid"})
        self.fake.token_count += 1
        self.fake.current_token = f"token-{self.fake.token_count}"
        self._answer({"access_token": self.fake.current_token, "expires_in": 7200})


class MsgSecCheck(_Handler):
    """POST /wxa/msg_sec_check: "risky" and "review" in the text decide; "wechat-down" answers 500;
    "wechat-slow" answers 0.3 s late."""

    async def post(self) -> None:
        args = self._record()
        body = ujson.loads(self.request.body)
        self.fake.checked.append(body)
        if args.get("access_token") != self.fake.current_token or self.fake.reject_tokens:
            self.fake.reject_tokens = max(0, self.fake.reject_tokens - 1)
            return self._answer({"errcode": 40001, "errmsg": "invalid credential"})
        content = body.get("content", "")
        if body.get("version") != 2 or not body.get("openid"):
            return self._answer({"errcode": 47001, "errmsg": "data format error"})
        if "wechat-slow" in content:
            await asyncio.sleep(0.3)
        if "wechat-down" in content:
            self.set_status(500)
            return self.finish("upstream error")
        suggest = "risky" if "risky" in content else "review" if "review" in content else "pass"
        self._answer({"errcode": 0, "errmsg": "ok", "result": {"suggest": suggest, "label": 100}})


class FakeWeChat:
    """The fake server, on a free loopback port of the running IOLoop."""

    def __init__(self, appid: str = "wx-test-appid", secret: str = "wx-test-secret") -> None:
        self.appid = appid  # what the server must send as appid
        self.secret = secret  # and as secret
        self.calls: list[tuple[str, dict[str, str]]] = []  # every request received
        self.seen: collections.Counter[str] = collections.Counter()  # calls per js_code
        self.slow_seconds = 2.0  # how long slow- codes take
        self.token_count = 0  # stable tokens handed out
        self.current_token = ""  # the one msg_sec_check accepts
        self.reject_tokens = 0  # how many checks to answer "invalid credential" before accepting
        self.checked: list[dict[str, Any]] = []  # msg_sec_check bodies received
        self.handlers: list[tuple[str, type[RequestHandler]]] = [
            ("/sns/jscode2session", Code2Session), ("/cgi-bin/stable_token", StableToken),
            ("/wxa/msg_sec_check", MsgSecCheck)]
        self.server: HTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeWeChat:
        app = Application([(path, handler, {"fake": self}) for path, handler in self.handlers])
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.server = HTTPServer(app)
        self.server.add_sockets(sockets)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
