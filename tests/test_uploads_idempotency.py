"""Idempotency-Key on POST /api/v1/files: a retried upload stores one file and gets the
first answer, racing uploads leave one file and no orphan chunks, another file under the
same key is 409, keys are per user, bad keys are 400; against the real app and store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import string
import urllib.error
import urllib.request
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.errors import ApiError
from server.records import idempotency_key
from tests.strategies import PROPERTY
from tests.test_uploads import PNG, wx_upload_body

KEY_CHARACTERS = set(string.ascii_letters + string.digits + "_.:-")  # docs/uploads.md, written apart from the regex


def allowed(key: str) -> bool:
    """The documented rule: 1 to 64 of A-Z a-z 0-9 _ . : -"""
    return 1 <= len(key) <= 64 and set(key) <= KEY_CHARACTERS


@pytest.fixture
def gridfs(client, environ):
    db = client[environ["MONGO_DB"]]
    return db["files.files"], db["files.chunks"]


@pytest.fixture
def inserts(client):
    """The store's count of documents inserted so far (serverStatus opcounters)."""
    return lambda: int(client.admin.command("serverStatus")["opcounters"]["insert"])


@pytest.fixture
def upload(http_client, base_url: str):
    """Uploads ``content`` with an optional key: (status, answer)."""

    async def send(token: str, content: bytes, key: str | None = None, **kwargs: Any) -> tuple[int, Any]:
        body, headers = wx_upload_body(content, **kwargs)
        headers["Authorization"] = f"Bearer {token}"
        if key is not None:
            headers["Idempotency-Key"] = key
        response = await http_client.fetch(base_url + "/api/v1/files", method="POST", body=body, headers=headers,
                                           raise_error=False, request_timeout=60)
        return response.code, json.loads(response.body) if response.body else None

    return send


async def open_upload(port: int, token: str, content: bytes, key: str) -> tuple[Any, Any, bytes]:
    """A raw connection with an upload's head sent: (reader, writer, the body still to send)."""
    body, headers = wx_upload_body(content)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"POST /api/v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                  f"Content-Type: {headers['Content-Type']}\r\nAuthorization: Bearer {token}\r\n"
                  f"Idempotency-Key: {key}\r\n\r\n").encode())
    return reader, writer, body


async def read_answer(reader: Any) -> tuple[int, Any]:
    """An HTTP/1.1 answer's status and JSON body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    return int(lines[0].split()[1]), json.loads(await reader.readexactly(length))


async def until(predicate: Any, what: str) -> None:
    """Polls ``predicate`` (a guard against hanging, not a measure)."""
    for _ in range(400):
        if predicate():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


def chunks_of(size: int) -> int:
    return -(-size // (255 * 1024))


@pytest.mark.gen_test(timeout=60)
async def test_a_retry_after_a_lost_answer_gets_the_first_answer(login, upload, http_port, gridfs, inserts) -> None:
    """An upload whose connection closes once sent is stored whole; its retry gets that answer and writes nothing."""
    alice = await login("alice")
    content = PNG + os.urandom(600 * 1024)
    _, writer, body = await open_upload(http_port, alice["access_token"], content, "photo-1")
    writer.write(body)
    await writer.drain()
    writer.close()  # the answer is never read: lost
    files, chunks = gridfs
    await until(lambda: files.count_documents({}) == 1, "the first upload stored")
    doc = files.find_one({})
    before = inserts()
    status, answer = await upload(alice["access_token"], content, key="photo-1")
    assert inserts() == before, "the retry wrote to GridFS"
    assert status == 201 and answer["id"] == str(doc["_id"]) and answer["sha256"] == hashlib.sha256(content).hexdigest()
    assert answer["size"] == len(content) and answer["filename"] == doc["filename"]
    assert (await upload(alice["access_token"], content, key="photo-1")) == (status, answer)
    assert files.count_documents({}) == 1 and doc["metadata"]["idempotency_key"] == "photo-1"
    assert chunks.count_documents({"files_id": doc["_id"]}) == chunks.count_documents({}) == chunks_of(len(content))


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("same_file", [True, False])
async def test_racing_uploads_with_one_key_store_one_file(login, http_port, gridfs, same_file: bool) -> None:
    """Two uploads with one key, both writing chunks at once: one file document, the loser's chunks deleted,
    the loser answered as a retry (the same answer, or 409 for another file)."""
    alice = await login("alice")
    first = PNG + os.urandom(700 * 1024)
    second = first if same_file else PNG + os.urandom(700 * 1024)
    uploads = [await open_upload(http_port, alice["access_token"], content, "race-1") for content in (first, second)]
    for _, writer, body in uploads:
        writer.write(body[:600 * 1024])
        await writer.drain()
    files, chunks = gridfs
    await until(lambda: len(chunks.distinct("files_id")) == 2, "both uploads writing chunks")
    for _, writer, body in uploads:
        writer.write(body[600 * 1024:])
    answers = await asyncio.gather(*(read_answer(reader) for reader, _, _ in uploads))
    for _, writer, _ in uploads:
        writer.close()
    assert files.count_documents({}) == 1
    doc = files.find_one({})
    winner = answers[0] if answers[0][0] == 201 and answers[0][1]["id"] == str(doc["_id"]) else answers[1]
    loser = answers[1] if winner is answers[0] else answers[0]
    assert winner[0] == 201 and winner[1]["id"] == str(doc["_id"])
    if same_file:
        assert loser == winner
    else:
        assert (loser[0], loser[1]["error"]["code"]) == (409, "conflict")
    await until(lambda: chunks.count_documents({"files_id": {"$ne": doc["_id"]}}) == 0, "the loser's chunks deleted")
    assert chunks.count_documents({"files_id": doc["_id"]}) == chunks_of(doc["length"])


@pytest.mark.gen_test(timeout=60)
async def test_same_key_another_file_is_409_and_stores_nothing(login, upload, gridfs, inserts) -> None:
    """Another file under a key already used is 409 conflict, and nothing of it is written."""
    alice = await login("alice")
    status, answer = await upload(alice["access_token"], PNG + b"first", key="k-2")
    assert status == 201
    before = inserts()
    status, refused = await upload(alice["access_token"], PNG + os.urandom(300 * 1024), key="k-2")
    assert (status, refused["error"]["code"]) == (409, "conflict")
    assert inserts() == before
    files, chunks = gridfs
    assert files.count_documents({}) == 1 and chunks.count_documents({}) == 1
    assert (await upload(alice["access_token"], PNG + b"first", key="k-2")) == (201, answer)


@pytest.mark.gen_test(timeout=60)
async def test_keys_are_per_user_and_failures_leave_no_key(login, upload, http_port, gridfs) -> None:
    """Two users' same key are two files; a refused (415) or dropped upload leaves its key free for the retry."""
    alice, bob = await login("alice"), await login("bob")
    content = PNG + b"shared key"
    status_a, answer_a = await upload(alice["access_token"], content, key="same")
    status_b, answer_b = await upload(bob["access_token"], content, key="same")
    assert status_a == status_b == 201 and answer_a["id"] != answer_b["id"]
    status, refused = await upload(alice["access_token"], b"MZ not an image at all", key="after-415")
    assert (status, refused["error"]["code"]) == (415, "unsupported_media_type")
    assert (await upload(alice["access_token"], content, key="after-415"))[0] == 201
    _, writer, body = await open_upload(http_port, alice["access_token"], PNG + os.urandom(600 * 1024), "after-drop")
    writer.write(body[: len(body) // 2])
    await writer.drain()
    files, chunks = gridfs
    await until(lambda: chunks.count_documents({}) > 3, "the dropped upload writing chunks")
    writer.transport.abort()
    await until(lambda: chunks.count_documents({}) == 3, "the dropped upload's chunks deleted")
    status, answer = await upload(alice["access_token"], content, key="after-drop")
    assert status == 201 and answer["id"] not in (answer_a["id"], answer_b["id"])
    assert files.count_documents({}) == 4
    assert {d["metadata"].get("idempotency_key") for d in files.find({})} == {"same", "after-415", "after-drop"}


@pytest.mark.gen_test
async def test_bad_keys_are_400(login, upload, gridfs) -> None:
    """Keys outside 1 to 64 of A-Z a-z 0-9 _ . : - are 400 invalid_request, storing nothing; a 64-long one is fine."""
    alice = await login("alice")
    for key in ["", "k" * 65, "a b", "a/b", "a#1", "é"]:
        status, answer = await upload(alice["access_token"], PNG + b"x", key=key)
        assert (status, answer["error"]["code"]) == (400, "invalid_request"), key
        assert "Idempotency-Key" in answer["error"]["message"]
    files, chunks = gridfs
    assert files.count_documents({}) == chunks.count_documents({}) == 0
    key = ("Az09_.:-" * 8)[:64]
    assert (await upload(alice["access_token"], PNG + b"x", key=key))[0] == 201


@PROPERTY
@given(st.one_of(st.text(max_size=70), st.text(alphabet="".join(sorted(KEY_CHARACTERS)) + "#/ é\x00", max_size=70)))
def test_the_key_rule(key: str) -> None:
    """idempotency_key takes exactly the documented keys; anything else is invalid_request."""
    try:
        assert idempotency_key(key) == key and allowed(key)
    except ApiError as exc:
        assert exc.code == "invalid_request" and not allowed(key)


def _post(live_server: Any, token: str, key: str) -> tuple[int, Any]:
    body, headers = wx_upload_body(PNG + key.encode("latin-1"))
    request = urllib.request.Request(live_server.url + "/api/v1/files", data=body, method="POST",
                                     headers={**headers, "Authorization": f"Bearer {token}", "Idempotency-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def live_token(live_server: Any) -> str:
    request = urllib.request.Request(live_server.url + "/api/v1/auth/dev", data=b'{"name": "keys"}',
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return str(json.loads(answer.read())["access_token"])


@settings(PROPERTY, max_examples=40)
@given(st.text(alphabet="".join(sorted(KEY_CHARACTERS)) + "#/é\x7f", min_size=0, max_size=66))
def test_the_key_rule_over_http(live_server: Any, live_token: str, key: str) -> None:
    """Over HTTP, a documented key is stored (and a resend answered the same); any other is 400 invalid_request."""
    status, answer = _post(live_server, live_token, key)
    if allowed(key):
        assert status == 201 and _post(live_server, live_token, key) == (status, answer)
    else:
        assert (status, answer["error"]["code"]) == (400, "invalid_request")
