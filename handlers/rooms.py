"""Rooms and channel history over HTTP."""

from __future__ import annotations

from handlers.base import AuthenticatedHandler
from server.channels import Channel
from server.errors import ApiError
from server.params import SEQ_MAX, integer_from_text
from server.protocol import HISTORY_LIMIT
from server.rooms import public
from server.storage import object_id
from server.validation import body_schema

_ROOM = body_schema({"name": {"type": "string", "minLength": 1, "maxLength": 100},
                     "public": {"type": "boolean"}}, ["name"])
_USER = body_schema({"user_id": {"type": "string", "pattern": "^[0-9a-f]{24}$"}}, ["user_id"])  # $: the very end


class RoomsHandler(AuthenticatedHandler):
    """POST /api/v1/rooms {"name", "public"}; GET /api/v1/rooms?mine=1."""

    async def post(self) -> None:
        assert self.principal is not None
        body = self.json_body(_ROOM)
        room = await self.services.rooms.create(self.principal.user_id, body["name"], body.get("public", True))
        self.write_json(public(room), 201)

    async def get(self) -> None:
        assert self.principal is not None
        mine = self.get_query_argument("mine", "0") in ("1", "true")
        rooms = await self.services.rooms.listing(self.principal.user_id, mine)
        self.write_json({"items": [public(r) for r in rooms]})


class DirectRoomHandler(AuthenticatedHandler):
    """POST /api/v1/rooms/direct {"user_id"}: the one 1:1 room of the pair."""

    async def post(self) -> None:
        assert self.principal is not None
        other = self.json_body(_USER)["user_id"]
        if other == self.principal.user_id:
            raise ApiError("invalid_request", "a direct room needs another user")
        if await self.services.users.get(object_id(other, "user_id")) is None:
            raise ApiError("not_found", "no such user")
        self.write_json(public(await self.services.rooms.direct(self.principal.user_id, other)))


class MembersHandler(AuthenticatedHandler):
    """POST /api/v1/rooms/{id}/members {"user_id"}; DELETE .../members/{user_id}."""

    async def post(self, room_id: str, _: str | None = None) -> None:
        assert self.principal is not None
        member = self.json_body(_USER)["user_id"]
        if await self.services.users.get(object_id(member, "user_id")) is None:
            raise ApiError("not_found", "no such user")
        room = await self.services.rooms.add_member(room_id, self.principal.user_id, member)
        self.write_json(public(room))

    async def delete(self, room_id: str, member: str | None = None) -> None:
        assert self.principal is not None
        if member is None:
            raise ApiError("method_not_allowed", "DELETE /api/v1/rooms/{id}/members/{user_id}")
        object_id(member, "user_id")
        room = await self.services.rooms.remove_member(room_id, self.principal.user_id, member)
        self.write_json(public(room))


class HistoryHandler(AuthenticatedHandler):
    """GET /api/v1/channels/{channel}/messages?before=&after=&limit=."""

    def _int(self, name: str, low: int, high: int) -> int | None:
        return integer_from_text(self.get_query_argument(name, None), name, low, high)

    async def get(self, name: str) -> None:
        assert self.principal is not None
        channel = Channel.parse(name)
        before, after = self._int("before", 1, SEQ_MAX), self._int("after", 0, SEQ_MAX)
        limit = self._int("limit", 1, HISTORY_LIMIT) or 50
        if before is not None and after is not None:
            raise ApiError("invalid_request", "give before or after, not both")
        if not await self.services.rooms.can_read(self.principal.user_id, channel):
            raise ApiError("forbidden", f"you may not read {channel}")
        items, more = await self.services.realtime.messages.history(channel, before, after, limit)
        self.write_json({"items": items, "has_more": more})
