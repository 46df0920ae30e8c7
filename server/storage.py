"""The MongoDB side of the server, through motor: the client, the collections of
the contract and their indexes. Nothing here knows which MongoDB it talks to."""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

from bson import ObjectId
from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import ConnectionFailure, PyMongoError

from server.errors import ApiError
from server.timeouts import within

log = logging.getLogger("server.storage")

# The contract's indexes ("What admins find in MongoDB"), plus refresh_tokens.family,
# which logout and reuse detection revoke by.
INDEXES: dict[str, list[IndexModel]] = {
    "users": [IndexModel([("openid", ASCENDING)], unique=True, name="openid_1")],
    "refresh_tokens": [
        IndexModel([("token_hash", ASCENDING)], unique=True, name="token_hash_1"),
        IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="expires_at_1"),
        IndexModel([("family", ASCENDING)], name="family_1"),
    ],
    "rooms": [IndexModel([("members", ASCENDING)], name="members_1")],
    "messages": [
        IndexModel([("channel", ASCENDING), ("seq", ASCENDING)], unique=True, name="channel_1_seq_1"),
        IndexModel([("channel", ASCENDING), ("from", ASCENDING), ("cid", ASCENDING)], unique=True,
                   partialFilterExpression={"cid": {"$exists": True}}, name="channel_1_from_1_cid_1"),
    ],
    "records": [
        IndexModel([("owner", ASCENDING), ("kind", ASCENDING), ("_id", DESCENDING)], name="owner_1_kind_1__id_-1"),
        IndexModel([("owner", ASCENDING), ("kind", ASCENDING), ("idempotency_key", ASCENDING)], unique=True,
                   partialFilterExpression={"idempotency_key": {"$exists": True}},
                   name="owner_1_kind_1_idempotency_key_1"),
    ],
    # GridFS's own indexes, as the drivers create them, and the uploads' Idempotency-Key.
    "files.files": [
        IndexModel([("filename", ASCENDING), ("uploadDate", ASCENDING)], name="filename_1_uploadDate_1"),
        IndexModel([("metadata.owner", ASCENDING), ("metadata.idempotency_key", ASCENDING)], unique=True,
                   partialFilterExpression={"metadata.idempotency_key": {"$exists": True}},
                   name="metadata.owner_1_metadata.idempotency_key_1"),
    ],
    "files.chunks": [IndexModel([("files_id", ASCENDING), ("n", ASCENDING)], unique=True, name="files_id_1_n_1")],
}


def utcnow() -> datetime.datetime:
    """Now, in UTC, to the millisecond (what BSON dates hold)."""
    now = datetime.datetime.now(datetime.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(moment: datetime.datetime) -> str:
    """ISO-8601 UTC with milliseconds, as the contract writes times."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def object_id(value: Any, what: str = "id") -> ObjectId:
    """An ObjectId from a client's 24-hex string; anything else is invalid_request."""
    if isinstance(value, str) and len(value) == 24 and ObjectId.is_valid(value):
        return ObjectId(value)
    raise ApiError("invalid_request", f"{what} must be a 24-character hex id")


def as_api_error(exc: BaseException) -> ApiError | None:
    """The client-facing error for a database failure, if it is one: an outage
    or a timeout (no server, a lost connection, an operation past its time) is
    ``unavailable``, anything else the database refused is ``internal``."""
    if isinstance(exc, ConnectionFailure) or (isinstance(exc, PyMongoError) and exc.timeout):
        return ApiError("unavailable", "the database is not answering; try again shortly")
    if isinstance(exc, PyMongoError):
        return ApiError("internal", "the database refused the operation")
    return None


class Storage:
    """The motor client and the server's database."""

    def __init__(self, uri: str, db_name: str, selection_timeout_ms: int = 5000) -> None:
        self.client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(
            uri, tz_aware=True, serverSelectionTimeoutMS=selection_timeout_ms, appname="miniprogram-realtime")
        self.db: AsyncIOMotorDatabase[dict[str, Any]] = self.client[db_name]  # the server's database

    def __getitem__(self, name: str) -> Any:
        return self.db[name]

    async def ensure_indexes(self) -> None:
        """Creates every index of the contract; running it again changes nothing."""
        for collection, models in INDEXES.items():
            await self.db[collection].create_indexes(models)

    async def ping(self, timeout: float = 2.0) -> bool:
        """Whether the database answers within ``timeout`` seconds."""
        try:
            await within(self.client.admin.command("ping"), timeout)
            return True
        except (TimeoutError, PyMongoError):
            return False

    async def wait_until_ready(self, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await self.ping():
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("the database did not answer in time")
            await asyncio.sleep(0.2)

    def close(self) -> None:
        self.client.close()
