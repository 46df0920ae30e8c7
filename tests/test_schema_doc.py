"""docs/schema.md: its collections and indexes are the server's, and each of its
admin queries runs in mongosh against a database the server wrote."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
import uuid
from typing import Any

import pytest
from websockets.sync.client import connect

from server.storage import INDEXES
from tests.test_mongosh import MONGOSH

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "schema.md")
EXAMPLE_USER = "65a1b2c3d4e5f60718293a4b"

with open(DOC, encoding="utf-8") as _source:
    TEXT = _source.read()
QUERIES = re.findall(r"```js\n(.*?)\n```", TEXT, re.S)


def test_every_collection_and_index_is_documented() -> None:
    """Each collection the server indexes has a section, and each index is named in it."""
    for collection, models in INDEXES.items():
        assert f"`{collection}`" in TEXT, collection
        for model in models:
            assert f"`{model.document['name']}`" in TEXT or model.document["name"] in TEXT, model.document["name"]


def _call(url: str, body: bytes, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def _server_data(live_server) -> str:
    """A user, a room's messages, a record and a file, written through the API; the user's id."""
    session = _call(live_server.url + "/api/v1/auth/dev", b'{"name": "admin-doc"}',
                    {"Content-Type": "application/json"})
    bearer = {"Authorization": f"Bearer {session['access_token']}"}
    for n in range(3):
        _call(live_server.url + "/api/v1/server/publish",
              json.dumps({"channel": "room:lobby", "data": {"n": n}}).encode(),
              {"Content-Type": "application/json", "X-API-Key": "server-key-1"})
    _call(live_server.url + "/api/v1/records/feedback", b'{"name": "Li", "rating": 5, "message": "fine"}',
          {"Content-Type": "application/json", **bearer})
    room = _call(live_server.url + "/api/v1/rooms", b'{"name": "mine"}', {"Content-Type": "application/json", **bearer})
    with connect(live_server.url.replace("http", "ws", 1) + "/ws", additional_headers=bearer) as socket:
        socket.send(json.dumps({"id": 1, "op": "publish", "channel": f"room:{room['id']}", "data": {"hi": 1}}))
        assert "result" in json.loads(socket.recv(timeout=10))
    boundary = uuid.uuid4().hex
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG\r\n\x1a\n" + b"0" * 64 + \
        f"\r\n--{boundary}--\r\n".encode()
    _call(live_server.url + "/api/v1/files", form,
          {"Content-Type": f"multipart/form-data; boundary={boundary}", **bearer})
    return str(session["user"]["id"])


def test_the_admin_queries_run(live_server) -> None:
    """Every mongosh query of docs/schema.md runs against the server's data; those that should find it do."""
    if MONGOSH is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mongosh is needed in CI (.ci/run installs it)")
        pytest.skip("mongosh is not installed")
    user = _server_data(live_server)
    assert len(QUERIES) >= 6
    uri = f"{live_server.environ['MONGO_URI'].rstrip('/')}/{live_server.environ['MONGO_DB']}"
    script = "\n".join(f"print(JSON.stringify(({q.replace(EXAMPLE_USER, user)}).toArray().length));" for q in QUERIES)
    result = subprocess.run([MONGOSH, "--quiet", "--norc", uri, "--eval", script],  # type: ignore[list-item]
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    counts = [int(line) for line in result.stdout.split()]
    # the room's messages, the user's, records per day, the user's files, new users, gaps in the room
    assert counts == [3, 1, 1, 1, 1, 0]
