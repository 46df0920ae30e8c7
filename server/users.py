"""Users: found or created by their WeChat openid."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from server.storage import Storage, iso, utcnow


def public(user: dict[str, Any]) -> dict[str, Any]:
    """What a client sees of a user."""
    return {"id": str(user["_id"]), "created_at": iso(user["created_at"])}


class Users:
    """The ``users`` collection."""

    def __init__(self, storage: Storage) -> None:
        self._users = storage["users"]  # {_id, openid, unionid, created_at, last_login_at}

    async def sign_in(self, openid: str, unionid: str | None = None) -> dict[str, Any]:
        """The user with this openid, created on first sign-in; records the login."""
        now = utcnow()
        update: dict[str, Any] = {"$setOnInsert": {"created_at": now}, "$set": {"last_login_at": now}}
        if unionid:
            update["$set"]["unionid"] = unionid
        for _ in range(2):  # two first sign-ins at once: one upsert wins, the other retries as an update
            try:
                user = await self._users.find_one_and_update(
                    {"openid": openid}, update, upsert=True, return_document=ReturnDocument.AFTER)
                return dict(user)
            except DuplicateKeyError:
                continue
        raise RuntimeError("could not sign in after a concurrent first sign-in")

    async def get(self, user_id: ObjectId) -> dict[str, Any] | None:
        user = await self._users.find_one({"_id": user_id})
        return dict(user) if user else None
