"""Sign-in, refresh, logout and the caller: thin wrappers over ``server.auth``."""

from __future__ import annotations

from bson import ObjectId

from handlers.base import AuthenticatedHandler, BaseHandler
from server.errors import ApiError
from server.users import public
from server.validation import body_schema

_CODE = body_schema({"code": {"type": "string", "minLength": 1, "maxLength": 128}}, ["code"])
_NAME = body_schema({"name": {"type": "string", "minLength": 1, "maxLength": 64,
                              "pattern": "^[A-Za-z0-9_.-]+$"}}, ["name"])
_REFRESH = body_schema({"refresh_token": {"type": "string", "minLength": 1, "maxLength": 256}}, ["refresh_token"])


class WeChatLoginHandler(BaseHandler):
    """POST /api/v1/auth/wechat {"code"}: sign in with a wx.login code."""

    async def post(self) -> None:
        body = self.json_body(_CODE)
        session = await self.services.wechat.code2session(body["code"])
        user = await self.services.users.sign_in(session.openid, session.unionid)
        self.write_json(await self.services.auth.start_session(user))


class DevLoginHandler(BaseHandler):
    """POST /api/v1/auth/dev {"name"}: development mode only."""

    async def post(self) -> None:
        if not self.services.settings.dev_login:
            raise ApiError("not_found", f"no such endpoint: {self.request.path}")
        body = self.json_body(_NAME)
        user = await self.services.users.sign_in(f"dev:{body['name']}")
        self.write_json(await self.services.auth.start_session(user))


class RefreshHandler(BaseHandler):
    """POST /api/v1/auth/refresh {"refresh_token"}: the next pair of tokens."""

    async def post(self) -> None:
        body = self.json_body(_REFRESH)
        self.write_json(await self.services.auth.refresh(body["refresh_token"]))


class LogoutHandler(BaseHandler):
    """POST /api/v1/auth/logout {"refresh_token"}: ends the session."""

    async def post(self) -> None:
        body = self.json_body(_REFRESH)
        sid = await self.services.auth.logout(body["refresh_token"])
        await self.services.session_ended(sid)
        self.write_json({})


class MeHandler(AuthenticatedHandler):
    """GET /api/v1/me: the caller."""

    async def get(self) -> None:
        assert self.principal is not None
        user = await self.services.users.get(ObjectId(self.principal.user_id))
        if user is None:
            raise ApiError("unauthorized", "the user of this token no longer exists")
        self.write_json(public(user))
