"""Files in the GridFS bucket ``files``, streamed in and out through motor.

An ``Upload`` takes a ``multipart/form-data`` body chunk by chunk: the part named
``file`` goes straight into GridFS (memory stays flat whatever the size), its type
judged from its first bytes, its SHA-256 computed on the way; other parts are kept
as string metadata. Passing ``FILE_MAX_BYTES``, a refused type, a malformed body or
a dropped connection aborts it: GridFS's chunks are deleted and no file document
is ever written. The file document (with its metadata) is written once, at the end.

An ``Idempotency-Key`` is kept in the file document (``metadata.idempotency_key``),
so a failed upload leaves no key behind. A key the user already stored a file
under is found before the body is read: the body is then read, checked and hashed
but nothing is written, and the first answer is given again if the file is the
same (SHA-256 and size), ``conflict`` if not. Two uploads racing with one key both
write their chunks; the unique ``(metadata.owner, metadata.idempotency_key)`` index
refuses the second file document, and the loser deletes its chunks and answers
as a retry would.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

from bson import Binary, ObjectId
from gridfs.errors import NoFile
from motor.motor_asyncio import AsyncIOMotorGridFSBucket, AsyncIOMotorGridOut
from pymongo.errors import DuplicateKeyError

from server.errors import ApiError
from server.filetypes import HEAD_BYTES, TYPES, sniff
from server.multipart import MultipartError, MultipartParser, Part, boundary_of
from server.storage import Storage, iso, utcnow

FILE_FIELD = "file"  # the form field wx.uploadFile is told to use
MAX_FIELDS = 20  # other form fields kept as metadata
MAX_FIELD_BYTES = 1024  # each
FORM_OVERHEAD = 64 * 1024  # what a form may add to the file's size
CHUNK_SIZE = 255 * 1024  # GridFS's default chunk size


class GridWriter:
    """Writes one file into a GridFS bucket, in the bucket's own format, a chunk
    as soon as it fills: pymongo's GridIn holds up to 32 MiB of chunks in memory
    before inserting them, which a stream of uploads cannot afford. The file
    document is written last, so an unfinished file is only chunks, which
    ``abort`` deletes."""

    def __init__(self, storage: Storage, bucket: str, filename: str) -> None:
        self._files = storage[f"{bucket}.files"]  # file documents
        self._chunks = storage[f"{bucket}.chunks"]  # {files_id, n, data}
        self.id = ObjectId()  # the file's _id
        self.filename = filename  # as stored
        self.length = 0  # bytes written
        self._buffer = bytearray()  # less than one chunk, not yet written
        self._n = 0  # the next chunk's number
        self.upload_date: Any = None  # when the file document was written
        self._aborted = False  # abort() ran: a chunk insert still in flight then is deleted too

    async def write(self, data: bytes) -> None:
        self._buffer += data
        self.length += len(data)
        while len(self._buffer) >= CHUNK_SIZE:
            await self._flush(bytes(self._buffer[:CHUNK_SIZE]))
            del self._buffer[:CHUNK_SIZE]

    async def _flush(self, data: bytes) -> None:
        await self._chunks.insert_one({"files_id": self.id, "n": self._n, "data": Binary(data)})
        self._n += 1
        if self._aborted:  # aborted while this insert was on its way (a dropped connection)
            await self._chunks.delete_many({"files_id": self.id})

    async def close(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """Writes the last chunk, then the file document, and returns it."""
        if self._buffer:
            await self._flush(bytes(self._buffer))
            self._buffer.clear()
        self.upload_date = utcnow()
        doc = {"_id": self.id, "length": self.length, "chunkSize": CHUNK_SIZE, "uploadDate": self.upload_date,
               "filename": self.filename, "metadata": metadata}
        await self._files.insert_one(doc)
        return doc

    async def abort(self) -> None:
        self._aborted = True
        self._buffer.clear()
        await self._chunks.delete_many({"files_id": self.id})


def safe_filename(name: str | None, kind: str) -> str:
    """A file name without paths, control characters or quotes; never empty."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in unicodedata.normalize("NFC", base) if unicodedata.category(c)[0] != "C")
    base = re.sub(r'["<>:|?*;]', "_", base).strip(" .")[:200]
    return base or f"file.{TYPES[kind][1]}"


def public(doc: dict[str, Any]) -> dict[str, Any]:
    metadata = doc.get("metadata") or {}
    return {"id": str(doc["_id"]), "url": f"/api/v1/files/{doc['_id']}", "filename": doc["filename"],
            "size": doc["length"], "content_type": metadata.get("content_type"), "sha256": metadata.get("sha256"),
            "created_at": iso(doc["uploadDate"])}


class Files:
    """The GridFS bucket ``files``."""

    def __init__(self, storage: Storage, max_bytes: int, kinds: tuple[str, ...]) -> None:
        self.storage = storage  # the database
        self.bucket = AsyncIOMotorGridFSBucket(storage.db, bucket_name="files")  # files.files, files.chunks
        self._files = storage["files.files"]  # the file documents
        self.max_bytes = max_bytes  # FILE_MAX_BYTES
        self.kinds = kinds  # FILE_TYPES

    async def upload(self, owner: str, content_type: str, key: str | None) -> Upload:
        """An upload about to stream in; with ``key``, the file ``owner`` already
        stored under it, if any, is looked up first (nothing is written then)."""
        upload = Upload(self, owner, content_type, key)
        if key is not None:
            upload.first = await self.by_key(owner, key)
        return upload

    async def by_key(self, owner: str, key: str) -> dict[str, Any] | None:
        """The file document ``owner`` stored under ``key``, if any."""
        doc = await self._files.find_one({"metadata.owner": owner, "metadata.idempotency_key": key})
        return None if doc is None else dict(doc)

    async def find(self, file_id: str, user: str | None) -> dict[str, Any]:
        """The file document, if ``user`` may read it; otherwise not_found (never
        forbidden: another user's private file is not even admitted to exist)."""
        if not (len(file_id) == 24 and ObjectId.is_valid(file_id)):
            raise ApiError("not_found", "no such file")
        doc = await self._files.find_one({"_id": ObjectId(file_id)})
        metadata = (doc or {}).get("metadata") or {}
        if doc is None or not (metadata.get("public") or (user is not None and metadata.get("owner") == user)):
            raise ApiError("not_found", "no such file")
        return dict(doc)

    async def open(self, doc: dict[str, Any]) -> AsyncIOMotorGridOut:
        try:
            return await self.bucket.open_download_stream(doc["_id"])
        except NoFile:
            raise ApiError("not_found", "no such file") from None

    async def delete(self, file_id: str, user: str) -> None:
        doc = await self.find(file_id, user)
        if (doc.get("metadata") or {}).get("owner") != user:
            raise ApiError("not_found", "no such file")
        await self.bucket.delete(doc["_id"])


class Upload:
    """One multipart upload in progress."""

    def __init__(self, files: Files, owner: str, content_type: str, key: str | None = None) -> None:
        try:
            self._parser = MultipartParser(boundary_of(content_type))  # the body's events
        except MultipartError as exc:
            raise ApiError("unsupported_media_type", str(exc)) from None
        self._files = files  # the bucket and the limits
        self.owner = owner  # the uploading user
        self.key = key  # the Idempotency-Key, if one was given
        self.first: dict[str, Any] | None = None  # the file already stored under key: nothing is written
        self.fields: dict[str, str] = {}  # other form fields
        self._part: Part | None = None  # the part being read
        self._field = bytearray()  # a form field's value being read
        self._grid: GridWriter | None = None  # the GridFS file being written (never, for a repeated key)
        self._head = bytearray()  # the file's first bytes, until its type is known
        self.kind: str | None = None  # jpeg, png...
        self.filename: str | None = None  # as the client named it
        self.size = 0  # bytes of the file so far
        self._sha = hashlib.sha256()  # of the file so far
        self.file_done = False  # the file part ended
        self.storing = False  # the whole body arrived and finish() is storing it: a dropped connection no longer aborts
        self.finished = False  # stored, or aborted

    async def feed(self, chunk: bytes) -> None:
        """Takes the next bytes of the body."""
        try:
            events = self._parser.feed(chunk)
        except MultipartError as exc:
            raise ApiError("invalid_request", f"malformed multipart body: {exc}") from None
        for event, value in events:
            if event == "begin":
                assert isinstance(value, Part)
                self._begin(value)
            elif event == "data":
                assert isinstance(value, bytes)
                await self._data(value)
            elif event == "end":
                await self._end()

    def _begin(self, part: Part) -> None:
        self._part = part
        if part.name == FILE_FIELD and part.filename is not None:
            if self.filename is not None:
                raise ApiError("invalid_request", "send one file per upload")
            self.filename = part.filename
        elif len(self.fields) >= MAX_FIELDS:
            raise ApiError("invalid_request", f"at most {MAX_FIELDS} form fields besides the file")
        self._field.clear()

    async def _data(self, data: bytes) -> None:
        part = self._part
        if part is None:
            return
        if part.name != FILE_FIELD or part.filename is None:
            self._field += data
            if len(self._field) > MAX_FIELD_BYTES:
                raise ApiError("payload_too_large", f"form field {part.name!r} is over {MAX_FIELD_BYTES} bytes")
            return
        self.size += len(data)
        if self.size > self._files.max_bytes:
            raise ApiError("payload_too_large", f"files are limited to {self._files.max_bytes} bytes")
        self._sha.update(data)
        if self.kind is None:
            self._head += data
            if len(self._head) < HEAD_BYTES:
                return
            self._open()
            data, self._head = bytes(self._head), bytearray()
        if self._grid is not None:
            await self._grid.write(data)

    def _open(self) -> None:
        """Judges the file's type from its first bytes; starts its GridFS file,
        unless a file is stored under the key already."""
        kind = sniff(bytes(self._head[:HEAD_BYTES]))
        if kind is None or kind not in self._files.kinds:
            raise ApiError("unsupported_media_type",
                           f"the file's content is not one of: {', '.join(self._files.kinds)}")
        self.kind = kind
        if self.first is None:
            self._grid = GridWriter(self._files.storage, "files", safe_filename(self.filename, kind))

    async def _end(self) -> None:
        part = self._part
        self._part = None
        if part is None:
            return
        if part.name == FILE_FIELD and part.filename is not None:
            if self.kind is None:  # a file shorter than the sniffing window
                self._open()
                if self._grid is not None:
                    await self._grid.write(bytes(self._head))
            self.file_done = True
            return
        try:
            self.fields[part.name[:64]] = self._field.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError("invalid_request", f"form field {part.name!r} is not UTF-8 text") from None

    async def finish(self) -> dict[str, Any]:
        """Writes the file document (with its metadata) and answers the upload;
        under a key already used, answers as the first upload did."""
        self.storing = True
        if not self._parser.done:
            raise ApiError("invalid_request", "the multipart body ended early")
        if not self.file_done or self.kind is None:
            raise ApiError("invalid_request", f"no file: send it in the form field named {FILE_FIELD!r}")
        sha = self._sha.hexdigest()
        if self.first is not None:
            self.finished = True
            return self._again(self.first, sha)
        assert self._grid is not None
        metadata: dict[str, Any] = {
            "owner": self.owner, "fields": self.fields, "sha256": sha,
            "public": self.fields.get("public", "").lower() in ("true", "1"),
            "content_type": TYPES[self.kind][0], "original_filename": self.filename}
        if self.key is not None:
            metadata["idempotency_key"] = self.key
        try:
            doc = await self._grid.close(metadata)
        except DuplicateKeyError:
            if self.key is None:
                raise
            first = await self._files.by_key(self.owner, self.key)
            if first is None:  # the winner was deleted meanwhile: this one stands
                doc = await self._grid.close(metadata)
            else:  # another upload with this key stored its file first
                await self.abort()
                return self._again(first, sha)
        self.finished = True
        return public(doc)

    def _again(self, first: dict[str, Any], sha: str) -> dict[str, Any]:
        """The first answer to the key, for the same file; conflict for another."""
        if (first.get("metadata") or {}).get("sha256") != sha or first.get("length") != self.size:
            raise ApiError("conflict", "this Idempotency-Key was used with a different file")
        return public(first)

    async def abort(self) -> None:
        """Deletes whatever was written; no file document is left behind."""
        if self.finished:
            return
        self.finished = True
        if self._grid is not None:
            await self._grid.abort()
