"""Shared fixtures: a real embedded store process, real drivers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest

import settings
from handlers.app import make_app
from server.wechat import WeChatClient
from tests.fake_wechat import FakeWeChat
from tests.mongo_process import StoreProcess


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    """One embedded store for the whole session; tests keep apart by database."""
    process = StoreProcess(str(tmp_path_factory.mktemp("store")), "--ttl-interval", "0.2",
                           "--enable-test-commands").start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def client(store: StoreProcess) -> Iterator[pymongo.MongoClient]:
    """A pymongo client of the session's store."""
    mongo: pymongo.MongoClient = pymongo.MongoClient(store.uri, serverSelectionTimeoutMS=5000)
    yield mongo
    mongo.close()


@pytest.fixture
def db(client: pymongo.MongoClient) -> Iterator[pymongo.database.Database]:
    """A database of its own for one test, dropped after it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield client[name]
    client.drop_database(name)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Prints the CRUD conformance tally when those tests ran."""
    from tests.unified_runner import RESULTS

    if RESULTS:
        applicable = RESULTS["passed"] + RESULTS["failed"]
        rate = 100.0 * RESULTS["passed"] / applicable if applicable else 0.0
        terminalreporter.write_line(
            f"MongoDB CRUD spec tests: {RESULTS['passed']} passed, {RESULTS['failed']} failed "
            "(each an expected failure, listed with its reason) "
            f"({rate:.1f}% of {applicable} applicable), {RESULTS['not applicable']} not applicable"
        )


# -- the server ---------------------------------------------------------------------

JWT_SECRET = "test-secret-" + "k3Yp9qZ" * 6  # 54 bytes


@pytest.fixture(scope="module")
def live_server(store: StoreProcess, client: pymongo.MongoClient, tmp_path_factory: pytest.TempPathFactory):
    """The real server in a thread of its own (for blocking clients), one per test module."""
    from tests.live_server import LiveServer

    env = {"JWT_SECRET": JWT_SECRET, "DATA_DIR": str(tmp_path_factory.mktemp("live") / "data")}
    with LiveServer(store.uri, env) as live:
        yield live
    client.drop_database(live.environ["MONGO_DB"])


@pytest.fixture
def wechat(io_loop) -> Iterator[FakeWeChat]:
    """The fake WeChat API on a loopback port of this test's IOLoop."""
    fake = FakeWeChat().start()
    yield fake
    fake.stop()


@pytest.fixture
def extra_env() -> dict[str, str]:
    """Settings a test module adds (override this fixture in the module)."""
    return {}


@pytest.fixture
def environ(store: StoreProcess, wechat: FakeWeChat, tmp_path, extra_env: dict[str, str]) -> dict[str, str]:
    """The environment a test server starts from: the session's store, a database
    of its own, the fake WeChat API."""
    return {
        "MONGO_URI": store.uri, "MONGO_DB": f"srv_{uuid.uuid4().hex[:10]}", "JWT_SECRET": JWT_SECRET,
        "WECHAT_APPID": wechat.appid, "WECHAT_SECRET": wechat.secret, "WECHAT_API_BASE": wechat.url,
        "DATA_DIR": str(tmp_path / "data"), "API_KEYS": "server-key-1,server-key-2", **extra_env,
    }


@pytest.fixture
def server(io_loop, environ: dict[str, str], wechat: FakeWeChat, client: pymongo.MongoClient):
    """make_app's application and services, started, with a fast-failing WeChat client."""
    config = settings.load(environ)
    fast = WeChatClient(wechat.url, wechat.appid, wechat.secret, timeout=0.5, retries=2, backoff=0.02)
    app, services = make_app(config, wechat=fast)
    io_loop.run_sync(services.start)
    yield app, services
    io_loop.run_sync(services.close)
    client.drop_database(environ["MONGO_DB"])


@pytest.fixture
def app(server):
    """The application pytest-tornado serves on http_port."""
    return server[0]


@pytest.fixture
def services(server):
    return server[1]


@pytest.fixture
def api(http_client, base_url: str):
    """Calls the server: ``await api("POST", "/path", body, token=...)`` -> (status, json, headers)."""

    async def call(method: str, path: str, body: Any = None, token: str | None = None,
                   headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any, Any]:
        request_headers = {"Content-Type": "application/json", **(headers or {})}
        if token:
            request_headers["Authorization"] = f"Bearer {token}"
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if payload is None and method in ("POST", "PUT", "PATCH"):
            payload = b""
        response = await http_client.fetch(base_url + path, method=method, body=payload, headers=request_headers,
                                           raise_error=False, allow_nonstandard_methods=True)
        try:
            decoded = json.loads(response.body) if response.body else None
        except ValueError:
            decoded = response.body
        return response.code, decoded, response.headers

    return call


@pytest.fixture
def login(api):
    """Signs a user in with dev login: ``await login("alice")`` -> the token answer."""

    async def sign_in(name: str) -> dict[str, Any]:
        status, body, _ = await api("POST", "/api/v1/auth/dev", {"name": name})
        assert status == 200, body
        return body

    return sign_in


@pytest.fixture
def server_api(api):
    """Calls the server API with a valid X-API-Key."""

    async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, payload, _ = await api(method, path, body, headers={"X-API-Key": "server-key-2"})
        return status, payload

    return call


@pytest.fixture
def connect(base_url: str, http_server):
    """Opens sockets: ``await connect(token)`` -> tests.ws_client.Client; all closed after the test."""
    from tests.ws_client import Client

    opened: list[Client] = []

    async def open_socket(token: str, via: str = "header") -> Client:
        client = await Client.connect(base_url, token, via)
        opened.append(client)
        return client

    yield open_socket
    for client in opened:
        client.close()
