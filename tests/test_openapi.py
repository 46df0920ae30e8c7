"""docs/openapi.yaml: it describes exactly the route table, the server serves it,
and schemathesis, run from it against the real server, finds no 5xx, no answer
outside its declared schema and no error outside the envelope."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from typing import Any

import pytest
import schemathesis
import yaml
from tornado.web import RequestHandler

from handlers.app import ROUTES
from handlers.ops import OPENAPI
from handlers.socket import Upgrades

METHODS = ("get", "post", "put", "patch", "delete", "head", "options")

with open(OPENAPI, encoding="utf-8") as _source:
    DESCRIPTION: dict[str, Any] = yaml.safe_load(_source)


def concrete(path: str, item: dict[str, Any]) -> str:
    """An OpenAPI path with each parameter replaced by its example."""
    examples = {}
    for operation in [item, *(item[m] for m in METHODS if m in item)]:
        for parameter in operation.get("parameters", []):
            if "$ref" in parameter:
                parameter = DESCRIPTION["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
            if parameter["in"] == "path":
                examples[parameter["name"]] = str(parameter["example"])
    return re.sub(r"\{(\w+)\}", lambda m: examples[m.group(1)], path)


def implemented(handler: type[RequestHandler]) -> set[str]:
    """The HTTP methods a handler class answers."""
    return {m for m in METHODS if getattr(handler, m) is not getattr(RequestHandler, m)}


def test_route_table_and_description_agree() -> None:
    """Every route is described with exactly its handler's methods, and every described path is a route (or
    /ws, the upgrade the edge answers: GET only)."""
    described: dict[str, set[str]] = {route.pattern: set() for route in ROUTES}
    for path, item in DESCRIPTION["paths"].items():
        url = concrete(path, item)
        if url == Upgrades.route:
            assert {m for m in METHODS if m in item} == {"get"}, path
            continue
        matching = [r for r in ROUTES if re.fullmatch(r.pattern, url)]
        assert len(matching) == 1, f"{path} ({url}) matches {len(matching)} routes"
        described[matching[0].pattern] |= {m for m in METHODS if m in item}
    for route in ROUTES:
        assert described[route.pattern] == implemented(route.handler), f"{route.pattern}: methods differ"


def test_every_error_response_is_the_envelope() -> None:
    """Every described 4xx/5xx answer (and each default) is the Error schema, and every code is in server/errors."""
    from server.errors import STATUS

    components = DESCRIPTION["components"]
    assert set(components["schemas"]["ErrorCode"]["enum"]) == set(STATUS)
    for path, item in DESCRIPTION["paths"].items():
        for method in (m for m in METHODS if m in item):
            for status, response in item[method]["responses"].items():
                if status == "default" or int(status) >= 400:
                    name = response["$ref"].rsplit("/", 1)[1]
                    schema = components["responses"][name]["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, f"{method} {path} {status}"


def test_the_description_is_served(live_server) -> None:
    """GET /api/v1/openapi.json is docs/openapi.yaml as JSON."""
    with urllib.request.urlopen(live_server.url + "/api/v1/openapi.json", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("application/json")
        assert json.loads(answer.read()) == DESCRIPTION


# -- schemathesis ------------------------------------------------------------------------

CONFIG = schemathesis.Config.from_dict({
    "seed": 20261124,
    "generation": {"max-examples": int(os.environ.get("OPENAPI_EXAMPLES", "20")), "deterministic": True,
                   "mode": "all",
                   "database": "none"},
    "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
})
SCHEMA = schemathesis.openapi.from_dict(DESCRIPTION, config=CONFIG).exclude(
    path="/ws",  # an upgrade: docs/protocol.md and tests/test_realtime.py
)


@schemathesis.check
def error_in_the_envelope(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx and 5xx answer is {"error": {"code", "message", "details"}} with a known code."""
    from server.errors import STATUS

    if response.status_code < 400:
        return
    body = json.loads(response.content)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert STATUS.get(body["error"]["code"]) == response.status_code, body


@pytest.fixture(scope="module")
def credentials(live_server) -> dict[str, str]:
    """A signed-in user's bearer token and a server API key, sent with every generated request."""
    request = urllib.request.Request(live_server.url + "/api/v1/auth/dev", data=b'{"name": "fuzzer"}',
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        token = json.loads(answer.read())["access_token"]
    return {"Authorization": f"Bearer {token}", "X-API-Key": "server-key-1"}


@SCHEMA.parametrize()
def test_schemathesis(case: Any, live_server, credentials: dict[str, str]) -> None:
    """Generated requests (valid and not) get no 5xx, answers within their schema, errors in the envelope."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    headers = {**credentials, **(case.headers or {})}
    case.call_and_validate(base_url=live_server.url, headers=headers, timeout=10,
                           checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance, error_in_the_envelope])


def test_the_error_table_of_api_md_is_server_errors() -> None:
    """docs/api.md's error table lists exactly the codes of server/errors.py, each with its status."""
    from server.errors import STATUS

    with open(os.path.join(os.path.dirname(OPENAPI), "api.md"), encoding="utf-8") as source:
        rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", source.read(), re.M)
    assert {code: int(status) for code, status in rows} == STATUS
    assert len(rows) == len(STATUS)


ANNOTATIONS = {"description", "default", "example", "examples"}


def resolved(node: Any) -> Any:
    """A schema of the description with its $refs replaced and its annotations dropped."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = DESCRIPTION
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolved(target)
        return {k: resolved(v) for k, v in node.items() if k not in ANNOTATIONS}
    if isinstance(node, list):
        return [resolved(v) for v in node]
    return node


def test_request_bodies_are_the_handlers_schemas() -> None:
    """Each JSON body described is exactly the JSON Schema its handler validates with."""
    from handlers import auth, rooms, server_api

    validators = {
        ("/api/v1/auth/wechat", "post"): auth._CODE, ("/api/v1/auth/dev", "post"): auth._NAME,
        ("/api/v1/auth/refresh", "post"): auth._REFRESH, ("/api/v1/auth/logout", "post"): auth._REFRESH,
        ("/api/v1/rooms", "post"): rooms._ROOM, ("/api/v1/rooms/direct", "post"): rooms._USER,
        ("/api/v1/rooms/{room_id}/members", "post"): rooms._USER,
        ("/api/v1/server/publish", "post"): server_api._PUBLISH,
        ("/api/v1/server/broadcast", "post"): server_api._BROADCAST,
        ("/api/v1/server/disconnect", "post"): server_api._DISCONNECT,
    }
    described = {(path, method) for path, item in DESCRIPTION["paths"].items() for method in METHODS
                 if method in item and "application/json" in resolved(item[method].get("requestBody", {})).get(
                     "content", {}) and not path.startswith("/api/v1/records/")}
    assert described == set(validators)
    for (path, method), validator in validators.items():
        body = resolved(DESCRIPTION["paths"][path][method]["requestBody"])
        assert body["content"]["application/json"]["schema"] == validator.schema, f"{method} {path}"
