"""HTTP conventions: the error envelope, bad input on every endpoint, gzip,
request ids, health, readiness and metrics."""

from __future__ import annotations

import gzip
import json
import socket

import pytest
from tornado.httpclient import AsyncHTTPClient

import settings
from handlers.app import make_app
from server.storage import Storage

ENDPOINTS = ["/api/v1/auth/wechat", "/api/v1/auth/dev", "/api/v1/auth/refresh", "/api/v1/auth/logout"]


def assert_envelope(status: int, body: dict, want_status: int, want_code: str) -> None:
    assert status == want_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == want_code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in json.dumps(body)


@pytest.mark.gen_test
async def test_unknown_path_and_method(api, login) -> None:
    """An unknown path is not_found (404) and a wrong method method_not_allowed (405), in the envelope."""
    assert_envelope(*(await api("GET", "/api/v1/nothing-here"))[:2], 404, "not_found")
    token = (await login("alice"))["access_token"]
    assert_envelope(*(await api("DELETE", "/api/v1/me", token=token))[:2], 405, "method_not_allowed")
    assert_envelope(*(await api("GET", "/api/v1/auth/dev"))[:2], 405, "method_not_allowed")


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ENDPOINTS)
async def test_malformed_json_on_every_endpoint(api, client, environ, path: str) -> None:
    """Malformed JSON, an empty body and a non-object are invalid_json / validation_failed; nothing is written."""
    status, body, _ = await api("POST", path, raw=b'{"code": ')
    assert_envelope(status, body, 400, "invalid_json")
    status, body, _ = await api("POST", path, raw=b"")
    assert_envelope(status, body, 400, "invalid_json")
    status, body, _ = await api("POST", path, raw=b'["a list"]')
    assert_envelope(status, body, 422, "validation_failed")
    assert client[environ["MONGO_DB"]].users.count_documents({}) == 0


@pytest.mark.gen_test
@pytest.mark.parametrize("path, field", [(ENDPOINTS[0], "code"), (ENDPOINTS[1], "name"),
                                         (ENDPOINTS[2], "refresh_token"), (ENDPOINTS[3], "refresh_token")])
async def test_wrong_types_missing_fields_and_injection(api, client, environ, path: str, field: str) -> None:
    """Wrong types and missing fields list every failing path (422); an operator object is invalid_request (400)."""
    status, body, _ = await api("POST", path, {field: 12, "extra": True})
    assert_envelope(status, body, 422, "validation_failed")
    paths = sorted(d["path"] for d in body["error"]["details"])
    assert paths == ["/", f"/{field}"]  # the unknown field (at the root) and the wrong type
    status, body, _ = await api("POST", path, {})
    assert_envelope(status, body, 422, "validation_failed")
    assert "required" in body["error"]["details"][0]["message"]
    status, body, _ = await api("POST", path, {field: {"$gt": ""}})
    assert_envelope(status, body, 400, "invalid_request")
    assert body["error"]["details"] == [{"path": f"/{field}", "message": "an operator object is not a value"}]
    db = client[environ["MONGO_DB"]]
    assert db.users.count_documents({}) == 0 and db.refresh_tokens.count_documents({}) == 0


@pytest.mark.gen_test
async def test_huge_body_and_wrong_media_type(api) -> None:
    """A JSON body over 1 MiB is payload_too_large (413); a form body is unsupported_media_type (415)."""
    huge = json.dumps({"name": "x" * (1024 * 1024 + 10)}).encode()
    assert_envelope(*(await api("POST", "/api/v1/auth/dev", raw=huge))[:2], 413, "payload_too_large")
    status, body, _ = await api("POST", "/api/v1/auth/dev", raw=b"name=alice",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_envelope(status, body, 415, "unsupported_media_type")


@pytest.mark.gen_test
async def test_request_ids_and_gzip(http_client, base_url: str) -> None:
    """Every answer carries X-Request-Id (the client's, when well-formed); JSON is gzipped when accepted."""
    response = await http_client.fetch(base_url + "/healthz", headers={"X-Request-Id": "client-chosen-id-1"})
    assert response.headers["X-Request-Id"] == "client-chosen-id-1"
    response = await http_client.fetch(base_url + "/healthz", headers={"X-Request-Id": "bad id with spaces"})
    assert len(response.headers["X-Request-Id"]) == 32
    raw = AsyncHTTPClient(force_instance=True, defaults={"decompress_response": False})
    response = await raw.fetch(base_url + "/metrics", headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert b"http_requests_total" in gzip.decompress(response.body)
    raw.close()


@pytest.mark.gen_test
async def test_health_ready_and_metrics(api, http_client, base_url: str, login) -> None:
    """/healthz and /readyz answer 200; /metrics counts requests by route and status, with a latency histogram."""
    assert (await api("GET", "/healthz"))[:2] == (200, {"status": "ok"})
    assert (await api("GET", "/readyz"))[:2] == (200, {"status": "ready"})
    await login("alice")
    await api("GET", "/api/v1/me")
    text = (await http_client.fetch(base_url + "/metrics")).body.decode()
    assert 'http_requests_total{method="POST",route="/api/v1/auth/dev",status="200"} 1.0' in text
    assert 'http_requests_total{method="GET",route="/api/v1/me",status="401"} 1.0' in text
    assert 'http_request_duration_seconds_bucket{le="0.005",route="/api/v1/auth/dev"}' in text
    assert "ws_connections 0.0" in text


@pytest.mark.gen_test
async def test_metrics_methods_bounded(http_client, base_url: str) -> None:
    """Requests with made-up HTTP methods count under method="other": a client cannot grow /metrics a series each."""
    for n in range(5):
        await http_client.fetch(base_url + "/healthz", method=f"BREW{n}", allow_nonstandard_methods=True,
                                raise_error=False)
    text = (await http_client.fetch(base_url + "/metrics")).body.decode()
    assert "BREW" not in text
    assert 'http_requests_total{method="other",route="/healthz",status="405"} 5.0' in text


@pytest.mark.gen_test
async def test_not_ready_once_shutting_down(api, services) -> None:
    """Once shutdown began (SIGTERM), /readyz is 503 unavailable while open connections drain; /healthz stays 200."""
    await services.shutdown()
    status, body, _ = await api("GET", "/readyz")
    assert_envelope(status, body, 503, "unavailable")
    assert (await api("GET", "/healthz"))[0] == 200


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dead_db_app(io_loop, environ: dict[str, str]):
    """An app whose MongoDB does not answer (nothing listens on its port)."""
    config = settings.load({**environ, "MONGO_URI": f"mongodb://127.0.0.1:{_dead_port()}/"})
    app, services = make_app(config, storage=Storage(config.mongo_uri or "", config.mongo_db, 300))
    yield app
    io_loop.run_sync(services.close)


@pytest.mark.gen_test(timeout=20)
async def test_database_down(http_client, dead_db_app, base_url: str) -> None:
    """With the database down: /healthz 200, /readyz 503, an API call unavailable (503), never a hang."""
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(dead_db_app)
    server.add_sockets(sockets)
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    try:
        assert (await http_client.fetch(url + "/healthz")).code == 200
        ready = await http_client.fetch(url + "/readyz", raise_error=False)
        assert_envelope(ready.code, json.loads(ready.body), 503, "unavailable")
        login = await http_client.fetch(url + "/api/v1/auth/dev", method="POST", body=b'{"name": "alice"}',
                                        headers={"Content-Type": "application/json"}, raise_error=False)
        assert_envelope(login.code, json.loads(login.body), 503, "unavailable")
    finally:
        server.stop()


@pytest.mark.gen_test
async def test_demo_page_in_development_only(http_client, base_url: str, services) -> None:
    """GET / serves the demo chat page in development mode and is not_found in production."""
    page = await http_client.fetch(base_url + "/")
    assert page.code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert b'from "/sdk/index.mjs"' in page.body and b"signIn({ dev: name })" in page.body  # built on the SDK
    object.__setattr__(services.settings, "app_env", "production")
    hidden = await http_client.fetch(base_url + "/", raise_error=False)
    assert hidden.code == 404


@pytest.mark.gen_test
async def test_in_flight_count_survives_requests_finished_before_prepare(api, services) -> None:
    """Requests Tornado answers before prepare (an unknown method) do not lower the in-flight count."""
    services.track_request(+1)  # a request still being answered
    status, _, _ = await api("PROPFIND", "/healthz")
    assert status == 405
    assert services.in_flight == 1
    services.track_request(-1)
    assert services.in_flight == 0
