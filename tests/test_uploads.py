"""Records (JSON Schema, batches, idempotency, paging) and files (multipart
streamed into GridFS, type by content, limits, Range/ETag) against the real app
and the embedded store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys

import pytest
from bson import ObjectId

from tests.mongo_process import ROOT

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR"
BOUNDARY = "----WxUploadBoundary7MA4YWxkTrZu0gW"


def wx_upload_body(content: bytes, filename: str = "tmp_7f3a.png", fields: dict[str, str] | None = None,
                   part_type: str = "image/png", field: str = "file") -> tuple[bytes, dict[str, str]]:
    """A multipart body as wx.uploadFile sends it: formData fields first, then the file."""
    parts = []
    for name, value in (fields or {}).items():
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                 f"Content-Type: {part_type}\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture
def upload(http_client, base_url: str):
    async def send(token: str, content: bytes, **kwargs):  # type: ignore[no-untyped-def]
        body, headers = wx_upload_body(content, **kwargs)
        response = await http_client.fetch(base_url + "/api/v1/files", method="POST", body=body,
                                           headers={**headers, "Authorization": f"Bearer {token}"},
                                           raise_error=False, request_timeout=60)
        return response.code, json.loads(response.body) if response.body else None

    return send


@pytest.fixture
def gridfs(client, environ):
    db = client[environ["MONGO_DB"]]
    return db["files.files"], db["files.chunks"]


@pytest.mark.gen_test(timeout=60)
async def test_five_mib_image_round_trips(login, upload, http_client, base_url, gridfs) -> None:
    """A 5 MiB image uploads and downloads byte for byte, with the same sha256, its fields kept as metadata."""
    alice = await login("alice")
    content = PNG + os.urandom(5 * 1024 * 1024 - len(PNG))
    status, answer = await upload(alice["access_token"], content, fields={"caption": "猫", "album": "a1"})
    assert status == 201, answer
    assert answer["size"] == len(content) and answer["sha256"] == hashlib.sha256(content).hexdigest()
    assert answer["content_type"] == "image/png" and answer["filename"] == "tmp_7f3a.png"
    assert answer["url"] == f"/api/v1/files/{answer['id']}"
    response = await http_client.fetch(base_url + answer["url"],
                                       headers={"Authorization": f"Bearer {alice['access_token']}"})
    assert response.body == content
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["ETag"] == f'"{answer["sha256"]}"'
    files, chunks = gridfs
    doc = files.find_one({"_id": ObjectId(answer["id"])})
    assert doc["metadata"]["owner"] == alice["user"]["id"] and doc["metadata"]["public"] is False
    assert doc["metadata"]["fields"] == {"caption": "猫", "album": "a1"}
    assert doc["metadata"]["sha256"] == answer["sha256"]
    assert chunks.count_documents({"files_id": doc["_id"]}) == -(-len(content) // doc["chunkSize"])


@pytest.mark.gen_test(timeout=60)
async def test_over_the_limit_is_413_and_leaves_nothing(login, upload, gridfs) -> None:
    """An 11 MiB upload is refused with 413 and GridFS holds no trace of it."""
    alice = await login("alice")
    status, answer = await upload(alice["access_token"], PNG + b"\x00" * (11 * 1024 * 1024))
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    files, chunks = gridfs
    assert files.count_documents({}) == 0 and chunks.count_documents({}) == 0


async def _chunked_upload(port: int, token: str, size: int) -> tuple[bytes, int, int]:
    """Sends an upload of ``size`` bytes with Transfer-Encoding: chunked; returns the status line, the bytes
    sent and the body's length."""
    body, headers = wx_upload_body(PNG + b"\x01" * size)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"POST /api/v1/files HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  f"Content-Type: {headers['Content-Type']}\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
    sent = 0
    try:
        for start in range(0, len(body), 256 * 1024):
            piece = body[start:start + 256 * 1024]
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
            sent += len(piece)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
    except (ConnectionError, OSError):
        status_line = b""
    writer.close()
    return status_line, sent, len(body)


@pytest.mark.gen_test(timeout=60)
async def test_streamed_upload_without_length_is_refused_at_the_limit(login, http_port, gridfs) -> None:
    """A chunked upload (no Content-Length) stops being stored at FILE_MAX_BYTES and is answered 413;
    one far past the limit is cut off before it is all sent. Nothing remains in GridFS."""
    alice = await login("alice")
    status_line, _, _ = await _chunked_upload(http_port, alice["access_token"], 12 * 1024 * 1024)
    assert b" 413 " in status_line
    _, sent, length = await _chunked_upload(http_port, alice["access_token"], 40 * 1024 * 1024)
    assert sent < length
    await asyncio.sleep(0.3)
    files, chunks = gridfs
    assert files.count_documents({}) == 0 and chunks.count_documents({}) == 0


@pytest.mark.gen_test
async def test_type_is_judged_by_content(login, upload, gridfs) -> None:
    """A PNG sent as application/pdf named .pdf is stored as PNG; an executable named .jpg is refused (415)."""
    alice = await login("alice")
    status, answer = await upload(alice["access_token"], PNG + b"rest", filename="report.pdf",
                                  part_type="application/pdf")
    assert status == 201 and answer["content_type"] == "image/png" and answer["filename"] == "report.pdf"
    status, answer = await upload(alice["access_token"], b"\x7fELF\x02\x01\x01" + b"\x00" * 500,
                                  filename="cat.jpg", part_type="image/jpeg")
    assert (status, answer["error"]["code"]) == (415, "unsupported_media_type")
    files, _ = gridfs
    assert files.count_documents({}) == 1


@pytest.mark.gen_test
async def test_filenames_are_sanitized_and_bad_forms_refused(login, upload) -> None:
    """Paths and control characters leave file names; a missing file field or a non-multipart body is refused."""
    alice = await login("alice")
    status, answer = await upload(alice["access_token"], PNG, filename="../../etc/pass\x07wd.png")
    assert status == 201 and answer["filename"] == "passwd.png"
    status, answer = await upload(alice["access_token"], PNG, field="image")
    assert (status, answer["error"]["code"]) == (400, "invalid_request")
    too_many = {f"f{i}": "x" for i in range(25)}
    status, answer = await upload(alice["access_token"], PNG, fields=too_many)
    assert (status, answer["error"]["code"]) == (400, "invalid_request")


@pytest.mark.gen_test
async def test_aborted_upload_leaves_nothing(login, http_port, gridfs) -> None:
    """A connection dropped mid-upload leaves no file and no chunks behind."""
    alice = await login("alice")
    body, headers = wx_upload_body(PNG + os.urandom(3 * 1024 * 1024))
    _, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write((f"POST /api/v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                  f"Content-Type: {headers['Content-Type']}\r\nAuthorization: Bearer {alice['access_token']}\r\n\r\n"
                  ).encode() + body[: len(body) // 2])
    await writer.drain()
    files, chunks = gridfs
    for _ in range(50):  # wait until the server has written chunks of it
        if chunks.count_documents({}) > 0:
            break
        await asyncio.sleep(0.05)
    assert chunks.count_documents({}) > 0
    writer.transport.abort()
    for _ in range(100):
        if chunks.count_documents({}) == 0:
            break
        await asyncio.sleep(0.05)
    assert chunks.count_documents({}) == 0 and files.count_documents({}) == 0


@pytest.mark.gen_test
async def test_range_etag_and_304(login, upload, http_client, base_url) -> None:
    """Single ranges give 206 with Content-Range; an unsatisfiable one 416; If-None-Match the ETag gives 304."""
    alice = await login("alice")
    content = PNG + bytes(range(256)) * 40
    _, answer = await upload(alice["access_token"], content)
    url, auth = base_url + answer["url"], {"Authorization": f"Bearer {alice['access_token']}"}
    part = await http_client.fetch(url, headers={**auth, "Range": "bytes=100-199"})
    assert part.code == 206 and part.body == content[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(content)}"
    tail = await http_client.fetch(url, headers={**auth, "Range": "bytes=-10"})
    assert tail.code == 206 and tail.body == content[-10:]
    bad = await http_client.fetch(url, headers={**auth, "Range": f"bytes={len(content)}-"}, raise_error=False)
    assert bad.code == 416 and bad.headers["Content-Range"] == f"bytes */{len(content)}"
    etag = (await http_client.fetch(url, headers=auth)).headers["ETag"]
    cached = await http_client.fetch(url, headers={**auth, "If-None-Match": etag}, raise_error=False)
    assert cached.code == 304 and cached.body == b""


@pytest.mark.gen_test
async def test_private_files_are_404_to_others_public_ones_are_open(login, upload, http_client, base_url) -> None:
    """Another user's private file is 404 (not 403); a public=true file is open to anyone; only the owner deletes."""
    alice, bob = await login("alice"), await login("bob")
    _, private = await upload(alice["access_token"], PNG + b"secret")
    _, shared = await upload(alice["access_token"], PNG + b"shared", fields={"public": "true"})
    as_bob = {"Authorization": f"Bearer {bob['access_token']}"}
    assert (await http_client.fetch(base_url + private["url"], headers=as_bob, raise_error=False)).code == 404
    assert (await http_client.fetch(base_url + private["url"], raise_error=False)).code == 404
    assert (await http_client.fetch(base_url + shared["url"], headers=as_bob)).body == PNG + b"shared"
    assert (await http_client.fetch(base_url + shared["url"])).code == 200
    deleted = await http_client.fetch(base_url + shared["url"], method="DELETE", headers=as_bob, raise_error=False)
    assert deleted.code == 404
    as_alice = {"Authorization": f"Bearer {alice['access_token']}"}
    deleted = await http_client.fetch(base_url + shared["url"], method="DELETE", headers=as_alice, raise_error=False)
    assert deleted.code == 204
    assert (await http_client.fetch(base_url + shared["url"], raise_error=False)).code == 404


# -- records --------------------------------------------------------------------------

FEEDBACK = {"name": "Li Lei", "rating": 5, "message": "great app"}


@pytest.mark.gen_test
async def test_valid_and_invalid_records(api, login, client, environ) -> None:
    """A valid record is stored (201); an invalid one lists every failing path (422); an unknown kind is 404."""
    token = (await login("alice"))["access_token"]
    status, record, _ = await api("POST", "/api/v1/records/feedback", FEEDBACK, token=token)
    assert status == 201 and record["kind"] == "feedback" and record["data"] == FEEDBACK
    status, body, _ = await api("POST", "/api/v1/records/feedback",
                                {"name": "", "rating": 9, "phone": "123", "extra": 1}, token=token)
    assert (status, body["error"]["code"]) == (422, "validation_failed")
    paths = sorted(d["path"] for d in body["error"]["details"])
    assert paths == ["/", "/", "/name", "/phone", "/rating"]  # missing message, unknown extra, three bad values
    assert (await api("POST", "/api/v1/records/nope", FEEDBACK, token=token))[0] == 404
    status, body, _ = await api("POST", "/api/v1/records/feedback", {**FEEDBACK, "name": {"$ne": 1}}, token=token)
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    assert client[environ["MONGO_DB"]].records.count_documents({}) == 1


def _readings(count: int) -> list[dict]:
    return [{"device": "d1", "at": f"2026-11-23T08:{i // 60 % 60:02d}:{i % 60:02d}Z", "temperature": 20 + i % 10}
            for i in range(count)]


@pytest.mark.gen_test(timeout=60)
async def test_batches_are_whole_or_nothing(api, login, client, environ) -> None:
    """A batch of 500 is stored; a batch with one bad item stores nothing and names the item; 501 is refused."""
    token = (await login("alice"))["access_token"]
    status, answer, _ = await api("POST", "/api/v1/records/reading", {"items": _readings(500)}, token=token)
    assert status == 201 and len(answer["items"]) == 500
    items = _readings(10)
    items[7]["temperature"] = "hot"
    status, body, _ = await api("POST", "/api/v1/records/reading", {"items": items}, token=token)
    assert status == 422 and [d["path"] for d in body["error"]["details"]] == ["/items/7/temperature"]
    status, body, _ = await api("POST", "/api/v1/records/reading", {"items": _readings(501)}, token=token)
    assert status == 422
    assert client[environ["MONGO_DB"]].records.count_documents({}) == 500


@pytest.mark.gen_test
async def test_idempotency_key(api, login, client, environ) -> None:
    """The same key returns the first answer and stores nothing twice; concurrent retries store once;
    the same key with another body is 409."""
    token = (await login("alice"))["access_token"]
    key = {"Idempotency-Key": "submit-42"}
    first = await api("POST", "/api/v1/records/feedback", FEEDBACK, token=token, headers=key)
    again = await api("POST", "/api/v1/records/feedback", FEEDBACK, token=token, headers=key)
    assert first[0] == again[0] == 201 and first[1] == again[1]
    other = await api("POST", "/api/v1/records/feedback", {**FEEDBACK, "rating": 1}, token=token, headers=key)
    assert (other[0], other[1]["error"]["code"]) == (409, "conflict")
    batch_key = {"Idempotency-Key": "batch-7"}
    results = await asyncio.gather(*(api("POST", "/api/v1/records/reading", {"items": _readings(50)}, token=token,
                                         headers=batch_key) for _ in range(5)))
    assert {r[0] for r in results} == {201}
    assert all(r[1] == results[0][1] for r in results)
    records = client[environ["MONGO_DB"]].records
    assert records.count_documents({"kind": "reading"}) == 50
    assert records.count_documents({"kind": "feedback"}) == 1
    bob = (await login("bob"))["access_token"]
    assert (await api("POST", "/api/v1/records/feedback", FEEDBACK, token=bob, headers=key))[0] == 201


@pytest.mark.gen_test(timeout=60)
async def test_paging_stays_correct_while_records_arrive(api, login) -> None:
    """Pages follow a cursor: records added between pages neither repeat nor push older ones off."""
    token = (await login("alice"))["access_token"]
    for n in range(25):
        await api("POST", "/api/v1/records/feedback", {**FEEDBACK, "message": f"m{n}"}, token=token)
    _, page, _ = await api("GET", "/api/v1/records/feedback?limit=10", token=token)
    seen = [r["data"]["message"] for r in page["items"]]
    assert seen == [f"m{n}" for n in range(24, 14, -1)]
    for n in range(25, 30):
        await api("POST", "/api/v1/records/feedback", {**FEEDBACK, "message": f"m{n}"}, token=token)
    while page["next"]:
        _, page, _ = await api("GET", f"/api/v1/records/feedback?limit=10&before={page['next']}", token=token)
        seen += [r["data"]["message"] for r in page["items"]]
    assert seen == [f"m{n}" for n in range(24, -1, -1)]
    other = (await login("bob"))["access_token"]
    assert (await api("GET", "/api/v1/records/feedback", token=other))[1]["items"] == []


def test_an_invalid_schema_stops_start_up(tmp_path, store) -> None:
    """run.py refuses to start on an invalid schema file, naming it."""
    (tmp_path / "bad.json").write_text('{"type": "object", "properties": {"x": {"type": "not-a-type"}}}')
    result = subprocess.run([sys.executable, "run.py", "--port", "0"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": os.environ.get("PATH", ""), "DATA_DIR": str(tmp_path / "d"),
                                 "MONGO_URI": store.uri, "SCHEMAS_DIR": str(tmp_path)}, timeout=60)
    assert result.returncode == 2 and "bad.json" in result.stderr


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("broken", [b"zz\r\nxx\r\n0\r\n\r\n", b"4\r\nxxxxYY0\r\n\r\n"])
async def test_an_upload_whose_chunked_framing_breaks_is_answered_in_the_envelope(login, http_port, gridfs,
                                                                                   broken: bytes) -> None:
    """A chunked upload whose framing breaks midway (a chunk size that is not hexadecimal, a chunk not ended
    by CRLF) is answered 400 invalid_request in the envelope, not Tornado's bare 400; what it stored is
    deleted."""
    alice = await login("alice")
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write((f"POST /api/v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {alice['access_token']}"
                  "\r\nContent-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
    part = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png'
            b"\r\n\r\n" + PNG + b"\x00" * 300_000)
    writer.write(b"%x\r\n%s\r\n" % (len(part), part) + broken)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length")))
    body = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
    writer.close()
    assert head.startswith(b"HTTP/1.1 400 ") and body["error"]["code"] == "invalid_request", (head, body)
    files, chunks = gridfs
    for _ in range(50):
        if files.count_documents({}) == 0 and chunks.count_documents({}) == 0:
            break
        await asyncio.sleep(0.1)
    assert files.count_documents({}) == 0 and chunks.count_documents({}) == 0
