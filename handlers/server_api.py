"""The server API (cloud functions, back office): X-API-Key, compared in constant time."""

from __future__ import annotations

import hmac
from typing import Any

from handlers.base import BaseHandler
from server.channels import PATTERN, Channel
from server.errors import ApiError
from server.protocol import check_cid, check_data
from server.validation import body_schema

_CHANNEL = {"type": "string", "pattern": f"^{PATTERN}$"}  # $: the very end (server.validation)
_PUBLISH = body_schema({"channel": _CHANNEL, "data": {"type": "object"},
                        "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 64}}, ["channel", "data"])
_BROADCAST = body_schema({"channels": {"type": "array", "items": _CHANNEL, "minItems": 1, "maxItems": 1000,
                                       "uniqueItems": True}, "data": {"type": "object"}}, ["channels", "data"])
_DISCONNECT = body_schema({"user_id": {"type": "string", "pattern": "^[0-9a-f]{24}$"}}, ["user_id"])


class ServerApiHandler(BaseHandler):
    """A handler that only answers a valid X-API-Key."""

    async def prepare(self) -> None:
        await super().prepare()
        offered = self.request.headers.get("X-API-Key", "").encode()
        valid = False
        for key in self.services.settings.api_keys:  # every key compared, in constant time
            valid |= hmac.compare_digest(offered, key.encode())
        if not offered or not valid:
            raise ApiError("unauthorized", "a valid X-API-Key header is required")

    async def _publish(self, channel: Channel, data: dict[str, Any], key: str | None) -> dict[str, Any]:
        published = await self.services.realtime.publish(channel, "server", data, key)
        return {"seq": published.message["seq"], "id": published.message["id"]}


class PublishHandler(ServerApiHandler):
    """POST /api/v1/server/publish {"channel", "data", "idempotency_key"} -> {seq, id}."""

    async def post(self) -> None:
        body = self.json_body(_PUBLISH)
        check_data(body["data"])
        key = check_cid(body.get("idempotency_key"), "idempotency_key")
        self.write_json(await self._publish(Channel.parse(body["channel"]), body["data"], key))


class BroadcastHandler(ServerApiHandler):
    """POST /api/v1/server/broadcast {"channels", "data"} -> one result per channel."""

    async def post(self) -> None:
        body = self.json_body(_BROADCAST)
        check_data(body["data"])
        results = []
        for channel in body["channels"]:
            try:
                results.append({"channel": channel, **await self._publish(Channel.parse(channel), body["data"], None)})
            except ApiError as exc:
                results.append({"channel": channel, "error": {"code": exc.code, "message": exc.message}})
        self.write_json({"results": results})


class DisconnectHandler(ServerApiHandler):
    """POST /api/v1/server/disconnect {"user_id"}: that user's sockets close with 4000, in every process."""

    async def post(self) -> None:
        user = self.json_body(_DISCONNECT)["user_id"]
        self.write_json({"closed": await self.services.realtime.disconnect(user)})


class PresenceHandler(ServerApiHandler):
    """GET /api/v1/server/presence?channel= -> {users, count}, over every process."""

    async def get(self) -> None:
        channel = Channel.parse(self.get_query_argument("channel", "", strip=False))
        users = await self.services.realtime.present(channel)
        self.write_json({"users": users, "count": len(users)})


class StatsHandler(ServerApiHandler):
    """GET /api/v1/server/stats: the deployment's sums, and each process's figures."""

    async def get(self) -> None:
        self.write_json(await self.services.realtime.deployment_stats())
