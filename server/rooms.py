"""Rooms, and who may read and write which channel.

``room:<id>``: public rooms are open to anyone signed in, private ones to their
members. ``feed:<name>``: anyone reads, only the server API publishes.
``user:<id>``: only that user reads, only the server API publishes.

Permission checks remember a room's readers for ACCESS_SECONDS: a member added
or removed through any process counts at once (``on_change`` tells the other
processes, which ``forget`` the room); a change made directly in MongoDB counts
within ACCESS_SECONDS.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from pymongo.errors import DuplicateKeyError

from server.channels import Channel
from server.errors import ApiError
from server.storage import Storage, iso, utcnow

MAX_ROOM_MEMBERS = 10_000
ACCESS_SECONDS = 5.0  # how long a room's readers are remembered for permission checks
ACCESS_ROOMS = 10_000  # rooms remembered at most


def public(room: dict[str, Any]) -> dict[str, Any]:
    return {"id": room["_id"], "name": room["name"], "owner": room.get("owner"), "public": room["public"],
            "members": room.get("members", []), "created_at": iso(room["created_at"])}


class Rooms:
    """The ``rooms`` collection and channel permissions."""

    def __init__(self, storage: Storage) -> None:
        self._rooms = storage["rooms"]  # {_id: string, name, owner, public, members, created_at}
        # room id -> (monotonic expiry, public, members): the permission checks of every publish and subscribe
        # read this instead of MongoDB; member changes made here forget the room at once.
        self._access: dict[str, tuple[float, bool, frozenset[str]]] = {}
        self.on_change: Callable[[str], None] | None = None  # told a room id whose members changed here

    async def create(self, owner: str, name: str, is_public: bool) -> dict[str, Any]:
        room = {"_id": secrets.token_hex(8), "name": name, "owner": owner, "public": is_public,
                "members": [owner], "created_at": utcnow()}
        await self._rooms.insert_one(room)
        return room

    async def get(self, room_id: str) -> dict[str, Any] | None:
        room = await self._rooms.find_one({"_id": room_id})
        return dict(room) if room else None

    async def listing(self, user: str, mine: bool, limit: int = 100) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"members": user} if mine else {"public": True}
        rooms: list[dict[str, Any]] = await self._rooms.find(query, sort=[("created_at", -1)], limit=limit).to_list(
            limit)
        return rooms

    async def direct(self, user: str, other: str) -> dict[str, Any]:
        """The one private room of a pair: the same room whoever asks, however often."""
        first, second = sorted((user, other))
        room_id = f"dm_{first}_{second}"
        room = await self.get(room_id)
        if room is not None:
            return room
        room = {"_id": room_id, "name": f"direct {first} {second}", "owner": None, "public": False,
                "members": [first, second], "created_at": utcnow()}
        try:
            await self._rooms.insert_one(room)
        except DuplicateKeyError:  # both asked at once
            found = await self.get(room_id)
            assert found is not None
            return found
        return room

    async def _owned(self, room_id: str, user: str) -> dict[str, Any]:
        room = await self.get(room_id)
        if room is None or (not room["public"] and user not in room.get("members", [])):
            raise ApiError("not_found", "no such room")
        if room.get("owner") != user:
            raise ApiError("forbidden", "only the room's owner may change its members")
        if room["public"]:
            raise ApiError("invalid_request", "public rooms have no member list to change")
        return room

    async def add_member(self, room_id: str, owner: str, member: str) -> dict[str, Any]:
        room = await self._owned(room_id, owner)
        if len(room.get("members", [])) >= MAX_ROOM_MEMBERS:
            raise ApiError("conflict", f"a room holds at most {MAX_ROOM_MEMBERS} members")
        await self._rooms.update_one({"_id": room_id}, {"$addToSet": {"members": member}})
        self._changed(room_id)
        return await self.get(room_id) or room

    async def remove_member(self, room_id: str, user: str, member: str) -> dict[str, Any]:
        """The owner removes anyone but themself; a member may leave."""
        room = await self.get(room_id)
        if room is None or user not in room.get("members", []):
            raise ApiError("not_found", "no such room")
        if member != user:
            room = await self._owned(room_id, user)
        elif room.get("owner") == user:
            raise ApiError("invalid_request", "the owner cannot leave their room")
        await self._rooms.update_one({"_id": room_id}, {"$pull": {"members": member}})
        self._changed(room_id)
        return await self.get(room_id) or room

    def _changed(self, room_id: str) -> None:
        self.forget(room_id)
        if self.on_change is not None:
            self.on_change(room_id)

    def forget(self, room_id: str) -> None:
        """The room's members changed: the next check reads them again."""
        self._access.pop(room_id, None)

    # -- permissions --------------------------------------------------------------

    async def can_read(self, user: str, text: str) -> bool:
        channel = Channel.parse(text)
        kind, name = channel.kind, channel.name
        if kind == "feed":
            return True
        if kind == "user":
            return name == user
        now = time.monotonic()
        known = self._access.get(name)
        if known is None or known[0] < now:
            room = await self.get(name)
            if room is None:
                return False
            if len(self._access) >= ACCESS_ROOMS:
                self._access = {k: v for k, v in self._access.items() if v[0] >= now}
                if len(self._access) >= ACCESS_ROOMS:
                    self._access.clear()
            known = self._access[name] = (now + ACCESS_SECONDS, bool(room["public"]),
                                          frozenset(room.get("members", [])))
        return known[1] or user in known[2]

    async def can_publish(self, user: str, text: str) -> bool:
        """What a client may publish to (the server API publishes anywhere)."""
        channel = Channel.parse(text)
        return channel.kind == "room" and await self.can_read(user, channel)
