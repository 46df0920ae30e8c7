"""Records and files over HTTPS."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

from tornado.http1connection import HTTP1Connection
from tornado.web import stream_request_body

from handlers.base import AuthenticatedHandler, BaseHandler
from server.errors import ApiError
from server.files import FORM_OVERHEAD, Upload
from server.params import integer_from_text
from server.records import PAGE_LIMIT, envelope, idempotency_key

_RANGE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})")  # whole (fullmatch); ASCII digits, at most 19
MAX_LENGTH = 2**63 - 1  # the largest Content-Length read as a number
READ_CHUNK = 255 * 1024  # one GridFS chunk
RECORDS_MAX_BYTES = 4 * 1024 * 1024  # a records request (a batch of 500 included)
_ABORTING: set[asyncio.Future[None]] = set()  # aborts of dropped uploads, kept until done


class RecordsHandler(AuthenticatedHandler):
    """POST /api/v1/records/{kind}: one object or {"items": [...]}; GET: the caller's, newest first."""

    async def post(self, kind: str) -> None:
        assert self.principal is not None
        records = self.services.records
        items, batch = records.check(kind, self.json_payload(RECORDS_MAX_BYTES, envelope))
        key = self.request.headers.get("Idempotency-Key")
        self.write_json(await records.store(self.principal.user_id, kind, items, batch, key), 201)

    async def get(self, kind: str) -> None:
        assert self.principal is not None
        limit = integer_from_text(self.get_query_argument("limit", None), "limit", 1, PAGE_LIMIT) or 50
        before = self.get_query_argument("before", None) or None
        self.write_json(await self.services.records.page(self.principal.user_id, kind, before, limit))


@stream_request_body
class FilesHandler(AuthenticatedHandler):
    """POST /api/v1/files: multipart/form-data as wx.uploadFile sends it, streamed into GridFS;
    an ``Idempotency-Key`` makes a retry answer as the first upload did (server/files.py)."""

    upload: Upload | None = None

    async def prepare(self) -> None:
        """Refusals are decided here or as the body streams in; storing stops at
        once, but the rest of the body (up to twice the limit) is read and
        dropped, so that the client reads the 413 or 415 instead of a reset."""
        self.upload = None
        self.failure: ApiError | None = None  # why the upload was refused, once it was
        self.dropped = 0  # body bytes read and dropped after the refusal
        await super().prepare()
        if self.request.method != "POST":
            return
        files = self.services.files
        self.drop_limit = 2 * files.max_bytes + FORM_OVERHEAD  # past this, the connection is cut
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(self.drop_limit + FORM_OVERHEAD)
        length = integer_from_text(self.request.headers.get("Content-Length"), "Content-Length", 0, MAX_LENGTH)
        if length is not None and length > files.max_bytes + FORM_OVERHEAD:
            self.failure = ApiError("payload_too_large", f"files are limited to {files.max_bytes} bytes")
            if length > self.drop_limit:
                raise self.failure
            return
        try:
            key = idempotency_key(self.request.headers.get("Idempotency-Key"))
        except ApiError as exc:
            self.failure = exc
            return
        assert self.principal is not None
        self.upload = await files.upload(self.principal.user_id, self.request.headers.get("Content-Type", ""), key)

    async def data_received(self, chunk: bytes) -> None:
        if self.failure is not None:
            self.dropped += len(chunk)
            if self.dropped > self.drop_limit:
                raise self.failure
            return
        if self.upload is None or self.upload.finished:
            return
        try:
            await self.upload.feed(chunk)
        except ApiError as exc:
            await self.upload.abort()
            self.failure = exc
        except BaseException:
            await self.upload.abort()
            raise

    async def post(self) -> None:
        if self.failure is not None:
            raise self.failure
        assert self.upload is not None
        try:
            answer = await self.upload.finish()
        except BaseException:
            await self.upload.abort()
            raise
        self.write_json(answer, 201)

    def on_connection_close(self) -> None:
        """The client went away mid-upload: delete what was written. Once the whole
        body arrived, the file is stored all the same (its answer is lost, and a
        retry with the same Idempotency-Key gets it)."""
        if self.upload is not None and not self.upload.finished and not self.upload.storing:
            task = asyncio.ensure_future(self.upload.abort())
            _ABORTING.add(task)
            task.add_done_callback(_ABORTING.discard)


class FileHandler(BaseHandler):
    """GET /api/v1/files/{id} (the owner's, or a public file); DELETE (owner only)."""

    async def _viewer(self) -> str | None:
        if self.bearer_token() is None:
            return None
        return (await self.authenticate()).user_id

    async def get(self, file_id: str) -> None:
        files = self.services.files
        doc = await files.find(file_id, await self._viewer())
        metadata = doc.get("metadata") or {}
        size = int(doc["length"])
        etag = f'"{metadata.get("sha256", "")}"'
        self.set_header("ETag", etag)
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("Cache-Control", "private, max-age=3600" if not metadata.get("public") else "public, "
                        "max-age=86400")
        if etag in [t.strip() for t in self.request.headers.get("If-None-Match", "").split(",")]:
            self.set_status(304)
            self.finish()
            return
        start, end = self._range(size)
        self.set_header("Content-Type", metadata.get("content_type") or "application/octet-stream")
        self.set_header("Content-Disposition", f"inline; filename*=UTF-8''{quote(doc['filename'], safe='')}")
        self.set_header("Content-Length", str(end - start))
        if (start, end) != (0, size):
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        stream = await files.open(doc)
        stream.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk: bytes = await stream.read(min(READ_CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            self.write(chunk)
            await self.flush()
        self.finish()

    def _range(self, size: int) -> tuple[int, int]:
        """The [start, end) of a single Range header, or the whole file; 416 if unsatisfiable."""
        header = self.request.headers.get("Range")
        if not header:
            return 0, size
        match = _RANGE.fullmatch(header.strip())
        if match is None or (not match.group(1) and not match.group(2)):
            self._unsatisfiable(size)
        first, last = match.group(1), match.group(2)  # type: ignore[union-attr]
        if not first:  # the last N bytes
            count = int(last)
            if count == 0:
                self._unsatisfiable(size)
            return max(0, size - count), size
        start = int(first)
        end = min(int(last) + 1, size) if last else size
        if start >= size or end <= start:
            self._unsatisfiable(size)
        return start, end

    def _unsatisfiable(self, size: int) -> Any:
        raise ApiError("range_not_satisfiable", "the requested range is not within the file",
                       headers={"Content-Range": f"bytes */{size}"})

    async def delete(self, file_id: str) -> None:
        principal = await self.authenticate()
        await self.services.files.delete(file_id, principal.user_id)
        self.set_status(204)
        self.finish()

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
