"""Stored messages: every channel's messages numbered 1, 2, 3... with no gap.

The atomic step is MongoDB's unique ``(channel, seq)`` index: a publish inserts
its message at the next seq; if another process took that seq, the insert fails,
nothing is consumed, and it tries the next one. A retried publish with the same
``cid`` hits the unique ``(channel, from, cid)`` index and gets the first answer.
(An ``$inc`` counter would burn a seq whenever a duplicate loses that race,
leaving a gap.) ``channels.seq`` follows with ``$max``, for admins and for a
fast start. In one process, publishes to one channel take turns (a lock per
channel), so the insert almost always succeeds first time and messages are
handed to the broker in seq order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING
from pymongo.errors import DuplicateKeyError

from server.storage import Storage, iso, utcnow

MAX_ATTEMPTS = 50  # inserts tried against other processes' concurrent publishes


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """A message as clients see it."""
    message = {"channel": doc["channel"], "seq": doc["seq"], "id": str(doc["_id"]), "from": doc["from"],
               "data": doc["data"], "ts": iso(doc["ts"])}
    if doc.get("cid") is not None:
        message["cid"] = doc["cid"]
    return message


@dataclass
class Published:
    """The outcome of a publish: the message, and whether it is new."""

    message: dict[str, Any]  # as clients see it
    new: bool  # False when a retried cid found the first one


class Messages:
    """The ``messages`` and ``channels`` collections."""

    def __init__(self, storage: Storage) -> None:
        self._messages = storage["messages"]  # {_id, channel, seq, from, data, cid, ts}
        self._channels = storage["channels"]  # {_id: channel, seq, updated_at}
        self._locks: dict[str, asyncio.Lock] = {}  # per channel, while publishes wait
        self._last: dict[str, int] = {}  # last seq stored per channel, a hint

    async def last_seq(self, channel: str) -> int:
        doc = await self._messages.find_one({"channel": channel}, {"seq": 1}, sort=[("seq", DESCENDING)])
        return int(doc["seq"]) if doc else 0

    async def publish(self, channel: str, sender: str, data: dict[str, Any], cid: str | None,
                      deliver: Any = None) -> Published:
        """Stores a message at the channel's next seq (or finds the first one of a
        retried cid); ``deliver(message)`` runs while this channel's later
        publishes wait, so that they are delivered in seq order."""
        lock = self._locks.get(channel)
        if lock is None:
            lock = self._locks[channel] = asyncio.Lock()
        try:
            async with lock:
                published = await self._store(channel, sender, data, cid)
                if published.new and deliver is not None:
                    deliver(published.message)
        finally:
            if not lock.locked() and not getattr(lock, "_waiters", None):
                self._locks.pop(channel, None)
        if published.new:
            await self._channels.update_one(
                {"_id": channel}, {"$max": {"seq": published.message["seq"]}, "$set": {"updated_at": utcnow()}},
                upsert=True)
        return published

    async def _store(self, channel: str, sender: str, data: dict[str, Any], cid: str | None) -> Published:
        if cid is not None:
            first = await self._messages.find_one({"channel": channel, "from": sender, "cid": cid})
            if first is not None:
                return Published(public(first), False)
        seq = self._last.get(channel)
        if seq is None:
            seq = await self.last_seq(channel)
        for _ in range(MAX_ATTEMPTS):
            doc: dict[str, Any] = {"_id": ObjectId(), "channel": channel, "seq": seq + 1, "from": sender,
                                   "data": data, "ts": utcnow()}
            if cid is not None:
                doc["cid"] = cid
            try:
                await self._messages.insert_one(doc)
            except DuplicateKeyError as exc:
                pattern = (exc.details or {}).get("keyPattern", {})
                if "cid" in pattern:  # the same cid won a race from another process
                    first = await self._messages.find_one({"channel": channel, "from": sender, "cid": cid})
                    if first is not None:
                        return Published(public(first), False)
                seq = await self.last_seq(channel)  # another process took this seq
                continue
            self._last[channel] = seq + 1
            return Published(public(doc), True)
        raise RuntimeError(f"could not find a free seq in {channel} after {MAX_ATTEMPTS} attempts")

    async def after(self, channel: str, since: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Messages after ``since``: all of them if at most ``limit``, else the
        newest ``limit`` and False (older ones were missed)."""
        cursor = self._messages.find({"channel": channel, "seq": {"$gt": since}}, sort=[("seq", DESCENDING)],
                                     limit=limit + 1)
        docs = await cursor.to_list(limit + 1)
        complete = len(docs) <= limit
        return [public(d) for d in reversed(docs[:limit])], complete

    async def newest(self, channel: str, count: int) -> list[dict[str, Any]]:
        docs = await self._messages.find({"channel": channel}, sort=[("seq", DESCENDING)], limit=count).to_list(count)
        return [public(d) for d in reversed(docs)]

    async def history(self, channel: str, before: int | None, after: int | None,
                      limit: int) -> tuple[list[dict[str, Any]], bool]:
        """A page of messages in seq order: the newest before ``before`` (or the
        newest of all), or the oldest after ``after``; and whether more lie beyond."""
        if after is not None:
            query: dict[str, Any] = {"channel": channel, "seq": {"$gt": after}}
            docs = await self._messages.find(query, sort=[("seq", 1)], limit=limit + 1).to_list(limit + 1)
            return [public(d) for d in docs[:limit]], len(docs) > limit
        query = {"channel": channel}
        if before is not None:
            query["seq"] = {"$lt": before}
        docs = await self._messages.find(query, sort=[("seq", DESCENDING)], limit=limit + 1).to_list(limit + 1)
        return [public(d) for d in reversed(docs[:limit])], len(docs) > limit
