"""Stored messages: every channel's messages numbered 1, 2, 3... with no gap.

The atomic step is MongoDB's unique ``(channel, seq)`` index: a publish inserts
its message at the next seq; if another process took that seq, the insert fails,
nothing is consumed, and it tries the next one. A retried publish with the same
``cid`` hits the unique ``(channel, from, cid)`` index and gets the first answer.
(An ``$inc`` counter would burn a seq whenever a duplicate loses that race,
leaving a gap.) ``channels.seq`` follows with ``$max``, for admins and for a
fast start. In one process, publishes to one channel take turns, those that
arrive meanwhile stored together by one ``insert_many`` (group commit), so the
insert almost always succeeds first time and messages are handed to the broker
in seq order.

A seq taken by another process refuses the batch insert from that message on:
the channel's last seq is read again and the rest inserted after it as a batch
(two processes publishing into one channel under load would otherwise store
message by message, a round trip each). A publish never fails because of its
neighbours in a batch: whatever else refuses the batch insert (a cid that won a
race elsewhere, a document the driver cannot encode), what the insert did not
store is stored one at a time, where only the refused message fails. The
channel's writer is a task of its own, so a publisher that stops waiting (its
command timed out, its socket closed) stops no one else's.
"""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from bson.errors import InvalidDocument
from pymongo import DESCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError

from server.errors import ApiError
from server.storage import Storage, iso, utcnow

MAX_ATTEMPTS = 50  # inserts tried against other processes' concurrent publishes
MAX_BATCH = 500  # publishes stored with one insert_many
DUPLICATE_KEY = 11000  # MongoDB's error code for a unique index refusing a document
# What the driver raises, before sending anything, for a document BSON cannot hold
# (an integer beyond int64, a NUL in a key, a lone surrogate in a string).
UNENCODABLE = (InvalidDocument, OverflowError, UnicodeEncodeError)


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """A message as clients see it."""
    message = {"channel": doc["channel"], "seq": doc["seq"], "id": str(doc["_id"]), "from": doc["from"],
               "data": doc["data"], "ts": iso(doc["ts"])}
    if doc.get("cid") is not None:
        message["cid"] = doc["cid"]
    return message


def _document(channel: str, seq: int, sender: str, data: dict[str, Any], cid: str | None,
              ts: datetime.datetime) -> dict[str, Any]:
    """A message as stored (``cid`` only when given: the cid index is partial on it)."""
    doc: dict[str, Any] = {"_id": ObjectId(), "channel": channel, "seq": seq, "from": sender, "data": data, "ts": ts}
    if cid is not None:
        doc["cid"] = cid
    return doc


@dataclass
class _Request:
    """A publish waiting for its channel's writer."""

    sender: str
    data: dict[str, Any]
    cid: str | None
    deliver: Any  # called with the message once stored, in seq order
    future: asyncio.Future[Published]


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
        self._waiting: dict[str, list[_Request]] = {}  # channel -> publishes waiting for its writer
        self._last: dict[str, int] = {}  # last seq stored per channel, a hint
        self._writers: set[asyncio.Task[None]] = set()  # the channels' writer tasks, held until done

    async def last_seq(self, channel: str) -> int:
        doc = await self._messages.find_one({"channel": channel}, {"seq": 1}, sort=[("seq", DESCENDING)])
        return int(doc["seq"]) if doc else 0

    async def publish(self, channel: str, sender: str, data: dict[str, Any], cid: str | None,
                      deliver: Any = None) -> Published:
        """Stores a message at the channel's next seq (or finds the first one of a
        retried cid); ``deliver(message)`` runs in seq order, before the next
        messages of the channel are stored.

        Publishes to one channel take turns: the first starts the channel's
        writer (a task), and those arriving while it stores wait and are then
        stored together, with one ``insert_many`` (group commit): under load a
        channel stores, and its subscribers receive, many messages per round
        trip. A caller that stops waiting (cancelled) may still see its message
        stored; a retry with the same ``cid`` then finds it."""
        request = _Request(sender, data, cid, deliver, asyncio.get_running_loop().create_future())
        waiting = self._waiting.get(channel)
        if waiting is None:  # no writer is storing this channel: start one
            waiting = self._waiting[channel] = []
            writer = asyncio.ensure_future(self._write(channel, waiting))
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        waiting.append(request)  # the writer's next batch
        return await request.future

    async def _write(self, channel: str, waiting: list[_Request]) -> None:
        """The channel's writer: stores what waits, a batch at a time, until
        nothing does."""
        try:
            while waiting:
                batch = waiting[:MAX_BATCH]
                del waiting[:MAX_BATCH]
                try:
                    await self._store_batch(channel, batch)
                except Exception as exc:  # the database failed (unavailable): the whole batch is unknown
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(exc)
                except BaseException:
                    for pending in batch:
                        pending.future.cancel()
                    raise
        finally:
            del self._waiting[channel]
            for pending in waiting:  # only if the writer was cancelled (the loop is stopping)
                if not pending.future.done():
                    pending.future.set_exception(RuntimeError("the channel's writer stopped"))

    async def _store_batch(self, channel: str, batch: list[_Request]) -> None:
        """Stores ``batch`` in order; answers each request once the channel's seq
        is recorded."""
        answers: list[tuple[_Request, Published]] = []
        # No lookup first: a retried cid is refused by the unique (channel, from, cid) index, and that
        # request, with those after it, takes the one-at-a-time path, which finds the first answer.
        keys: set[tuple[str, str]] = set()
        first_of_cid: list[_Request] = []  # a cid twice in one batch: the second is answered below
        for request in batch:
            if request.cid is not None:
                if (request.sender, request.cid) in keys:
                    continue
                keys.add((request.sender, request.cid))
            first_of_cid.append(request)
        stored = await self._insert_batch(channel, first_of_cid)
        failed: list[tuple[_Request, Exception]] = []
        for request in batch:
            published = stored.get(id(request))
            if published is None:  # a repeated cid in the batch, or one the batch insert refused: as one publish
                try:
                    published = await self._store(channel, request.sender, request.data, request.cid)
                except Exception as error:  # this publish alone fails; the others stand
                    failed.append((request, error))
                    continue
                if published.new and request.deliver is not None:
                    request.deliver(published.message)
            answers.append((request, published))
        newest = max((p.message["seq"] for _, p in answers if p.new), default=0)
        if newest:
            await self._channels.update_one(
                {"_id": channel}, {"$max": {"seq": newest}, "$set": {"updated_at": utcnow()}}, upsert=True)
        for request, published in answers:
            if not request.future.done():
                request.future.set_result(published)
        for request, refusal in failed:
            if not request.future.done():
                request.future.set_exception(refusal)

    async def _insert_batch(self, channel: str, batch: list[_Request]) -> dict[int, Published]:
        """Inserts ``batch`` at the next seqs with ordered insert_many calls and
        delivers what was stored, in order; returns the stored ones by request
        id. When another process took one of those seqs, the channel's last seq
        is read again and the rest of the batch inserted after it, still as a
        batch: two processes publishing into one channel take turns batch by
        batch, not message by message. Whatever follows any other refusal (a cid
        that won a race elsewhere, a document the driver cannot encode) is left
        to the one-at-a-time path."""
        stored: dict[int, Published] = {}
        rest = batch
        for _ in range(MAX_ATTEMPTS):
            if not rest:
                break
            try:
                docs, inserted, seq_taken = await self._insert_round(channel, rest)
            except Exception:
                if not stored:
                    raise  # nothing stored: the whole batch fails
                break  # what earlier rounds stored stands; the rest is stored one at a time, each failing alone
            for request, doc in zip(rest[:inserted], docs[:inserted], strict=True):
                published = Published(public(doc), True)
                stored[id(request)] = published
                if request.deliver is not None:
                    request.deliver(published.message)
            rest = rest[inserted:]
            if not seq_taken:
                break
        return stored

    async def _insert_round(self, channel: str, rest: list[_Request]) -> tuple[list[dict[str, Any]], int, bool]:
        """One ordered insert_many of ``rest`` after the channel's last seq: (the
        documents, how many of them were stored, whether the first refused one met
        a seq another process took)."""
        seq = await self._last_stored(channel)
        now = utcnow()
        docs = [_document(channel, seq + offset, r.sender, r.data, r.cid, now) for offset, r in enumerate(rest, 1)]
        try:
            await self._messages.insert_many(docs, ordered=True)
        except BulkWriteError as exc:  # ordered: everything before the first refused document is stored
            errors = exc.details.get("writeErrors", [])
            if not errors:
                raise
            self._last.pop(channel, None)  # maybe another process wrote here: read the seq again
            first = errors[0]
            return docs, int(first["index"]), (first.get("code") == DUPLICATE_KEY
                                               and "seq" in (first.get("keyPattern") or {}))
        except Exception:  # refused whole (a document the driver cannot encode), or its outcome is unknown
            self._last.pop(channel, None)
            return docs, await self._stored_prefix(docs), False  # a database still failing raises here
        self._last[channel] = seq + len(docs)
        return docs, len(docs), False

    async def _stored_prefix(self, docs: list[dict[str, Any]]) -> int:
        """How many of ``docs`` (inserted in order) are stored, found by their ``_id``."""
        ids = [doc["_id"] for doc in docs]
        found = {doc["_id"] async for doc in self._messages.find({"_id": {"$in": ids}}, {"_id": 1})}
        inserted = 0
        while inserted < len(docs) and docs[inserted]["_id"] in found:
            inserted += 1
        return inserted

    async def _store(self, channel: str, sender: str, data: dict[str, Any], cid: str | None) -> Published:
        try:
            return await self._store_one(channel, sender, data, cid)
        except UNENCODABLE as exc:
            raise ApiError("invalid_request", f"data cannot be stored: {str(exc)[:200]}") from None

    async def _store_one(self, channel: str, sender: str, data: dict[str, Any], cid: str | None) -> Published:
        if cid is not None and (first := await self._first(channel, sender, cid)) is not None:
            return Published(public(first), False)
        seq = await self._last_stored(channel)
        for _ in range(MAX_ATTEMPTS):
            doc = _document(channel, seq + 1, sender, data, cid, utcnow())
            try:
                await self._messages.insert_one(doc)
            except DuplicateKeyError as exc:
                pattern = (exc.details or {}).get("keyPattern", {})
                if "cid" in pattern:  # the same cid won a race from another process
                    first = await self._first(channel, sender, cid)
                    if first is not None:
                        return Published(public(first), False)
                seq = await self.last_seq(channel)  # another process took this seq
                continue
            self._last[channel] = seq + 1
            return Published(public(doc), True)
        raise RuntimeError(f"could not find a free seq in {channel} after {MAX_ATTEMPTS} attempts")

    async def _last_stored(self, channel: str) -> int:
        """The channel's last seq: this process's hint, else MongoDB's."""
        seq = self._last.get(channel)
        return await self.last_seq(channel) if seq is None else seq

    async def _first(self, channel: str, sender: str, cid: str | None) -> dict[str, Any] | None:
        """The stored message of a sender's cid, if any."""
        found: dict[str, Any] | None = await self._messages.find_one({"channel": channel, "from": sender, "cid": cid})
        return found

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
