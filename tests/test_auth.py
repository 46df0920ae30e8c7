"""Sign-in with WeChat (through the fake WeChat API) and dev login, access tokens,
refresh rotation with reuse detection, logout."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time

import jwt
import pytest
from bson import ObjectId
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from server.errors import ApiError
from tests.conftest import JWT_SECRET
from tests.fake_wechat import SESSION_KEY


@pytest.mark.gen_test
async def test_wechat_sign_in_creates_then_finds_the_user(api, wechat, client, environ) -> None:
    """A valid code signs in; the same openid later finds the same user; session_key never appears."""
    status, first, _ = await api("POST", "/api/v1/auth/wechat", {"code": "ok-alice"})
    assert status == 200
    assert set(first) == {"access_token", "expires_in", "refresh_token", "refresh_expires_in", "user"}
    assert first["expires_in"] == 7200 and first["refresh_expires_in"] == 30 * 86400
    assert set(first["user"]) == {"id", "created_at"} and first["user"]["created_at"].endswith("Z")
    status, second, _ = await api("POST", "/api/v1/auth/wechat", {"code": "ok-alice"})
    assert second["user"]["id"] == first["user"]["id"]
    user = client[environ["MONGO_DB"]].users.find_one({"_id": ObjectId(first["user"]["id"])})
    assert user["openid"] == "openid-alice" and user["unionid"] == "union-alice"
    assert "session_key" not in user and SESSION_KEY not in str(first)
    path, args = wechat.calls[0]
    assert path == "/sns/jscode2session" and args["grant_type"] == "authorization_code"
    assert args["appid"] == wechat.appid and args["js_code"] == "ok-alice"


@pytest.mark.gen_test
@pytest.mark.parametrize("code, status, error", [
    ("invalid", 401, "wechat_code_invalid"),
    ("used", 401, "wechat_code_invalid"),
    ("limited", 429, "wechat_rate_limited"),
    ("blocked", 403, "wechat_user_blocked"),
    ("busy-always", 502, "wechat_unavailable"),
    ("garbage", 502, "wechat_unavailable"),
])
async def test_wechat_errors_map_to_contract_codes(api, client, environ, code: str, status: int, error: str) -> None:
    """WeChat's errcodes (and malformed answers) become the contract's errors, and no user is created."""
    got, body, headers = await api("POST", "/api/v1/auth/wechat", {"code": code})
    assert (got, body["error"]["code"]) == (status, error)
    if code == "limited":
        assert headers["Retry-After"] == "60"
    assert client[environ["MONGO_DB"]].users.count_documents({}) == 0


@pytest.mark.gen_test
async def test_wechat_busy_once_is_retried(api, wechat) -> None:
    """errcode -1 (system busy) is retried, and the second answer signs in."""
    status, body, _ = await api("POST", "/api/v1/auth/wechat", {"code": "busy-once-bob"})
    assert status == 200 and body["user"]["id"]
    assert wechat.seen["busy-once-bob"] == 2


@pytest.mark.gen_test(timeout=20)
async def test_wechat_slow_answer_times_out(api, wechat) -> None:
    """An answer slower than the client's timeout is retried a bounded number of times, then 502."""
    wechat.slow_seconds = 1.5
    status, body, _ = await api("POST", "/api/v1/auth/wechat", {"code": "slow-carol"})
    assert (status, body["error"]["code"]) == (502, "wechat_unavailable")
    assert wechat.seen["slow-carol"] == 3  # one try and two retries


@pytest.mark.gen_test
async def test_wechat_unreachable(api, wechat) -> None:
    """WeChat not listening at all is wechat_unavailable (502)."""
    wechat.stop()
    wechat.server = None
    status, body, _ = await api("POST", "/api/v1/auth/wechat", {"code": "ok-dave"})
    assert (status, body["error"]["code"]) == (502, "wechat_unavailable")


@pytest.mark.gen_test
async def test_dev_login_and_me(api, login) -> None:
    """Dev login signs in by name; /me answers the caller; no token is 401."""
    tokens = await login("alice")
    status, me, _ = await api("GET", "/api/v1/me", token=tokens["access_token"])
    assert status == 200 and me == tokens["user"]
    status, body, _ = await api("GET", "/api/v1/me")
    assert (status, body["error"]["code"]) == (401, "unauthorized")


def _forge(claims: dict, key: str = JWT_SECRET, algorithm: str = "HS256", headers: dict | None = None) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hmac_token(claims: dict, key: bytes) -> str:
    """An HS256 token keyed with arbitrary bytes (pyjwt refuses to make one with a PEM key)."""
    signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@pytest.mark.gen_test
async def test_bad_access_tokens_are_refused(api, login) -> None:
    """Expired, wrongly signed, alg none, RS/HS confusion, malformed and missing-claim tokens are refused."""
    tokens = await login("alice")
    good = jwt.decode(tokens["access_token"], JWT_SECRET, algorithms=["HS256"])
    now = int(time.time())
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    _, payload, _ = tokens["access_token"].split(".")
    none_header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    cases = {
        "expired": (_forge({**good, "iat": now - 9000, "exp": now - 3600}), "token_expired"),
        "wrong signature": (_forge(good, key="another-secret-" + "x" * 40), "unauthorized"),
        "alg none": (f"{none_header}.{payload}.", "unauthorized"),
        "RS256": (_forge(good, key=private, algorithm="RS256"), "unauthorized"),  # type: ignore[arg-type]
        "HS256 keyed with an RSA public key": (_hmac_token(good, public_pem), "unauthorized"),
        "no sid": (_forge({k: v for k, v in good.items() if k != "sid"}), "unauthorized"),
        "sub not an id": (_forge({**good, "sub": {"$gt": ""}}), "unauthorized"),
        "garbage": ("not.a.token", "unauthorized"),
    }
    for name, (token, code) in cases.items():
        status, body, _ = await api("GET", "/api/v1/me", token=token)
        assert (status, body["error"]["code"]) == (401, code), name


@pytest.mark.gen_test
async def test_token_of_a_deleted_user_is_refused(api, login, client, environ) -> None:
    """A valid token whose user was deleted is 401."""
    tokens = await login("ghost")
    client[environ["MONGO_DB"]].users.delete_one({"_id": ObjectId(tokens["user"]["id"])})
    status, body, _ = await api("GET", "/api/v1/me", token=tokens["access_token"])
    assert (status, body["error"]["code"]) == (401, "unauthorized")


@pytest.mark.gen_test
async def test_refresh_rotates_and_reuse_revokes_the_family(api, login, client, environ) -> None:
    """A refresh spends its token; presenting it again revokes the whole session (token_reused)."""
    first = await login("alice")
    status, second, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert status == 200 and second["refresh_token"] != first["refresh_token"]
    assert second["user"]["id"] == first["user"]["id"]
    status, third, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": second["refresh_token"]})
    assert status == 200
    status, body, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert (status, body["error"]["code"]) == (401, "token_reused")
    status, body, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": third["refresh_token"]})
    assert status == 401  # the newest of the family is revoked too
    status, body, _ = await api("GET", "/api/v1/me", token=third["access_token"])
    assert status == 401  # and so are the session's access tokens
    stored = list(client[environ["MONGO_DB"]].refresh_tokens.find())
    assert all(first["refresh_token"] not in str(doc) for doc in stored)  # only hashes are stored
    assert all(doc["revoked_at"] is not None for doc in stored)


@pytest.mark.gen_test
async def test_a_refresh_retried_after_its_answer_was_lost_refreshes(api, login) -> None:
    """A spent token presented again at once, its successor unused (the answer was lost),
    gets a fresh pair of the same session; the lost pair is spent; the session goes on."""
    first = await login("alice")
    status, lost, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert status == 200  # the answer never reached the client
    status, retried, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert status == 200, retried
    assert retried["refresh_token"] not in (lost["refresh_token"], first["refresh_token"])
    assert jwt.decode(retried["access_token"], options={"verify_signature": False})["sid"] == \
        jwt.decode(first["access_token"], options={"verify_signature": False})["sid"]
    status, again, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert status == 200  # a second retry in the window supersedes the first retry's pair
    status, onward, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": again["refresh_token"]})
    assert status == 200
    assert (await api("GET", "/api/v1/me", token=onward["access_token"]))[0] == 200


@pytest.mark.gen_test
async def test_a_superseded_pair_presented_later_is_reuse(api, login) -> None:
    """The lost pair, spent by the retry, presented afterwards is token_reused: the session is revoked."""
    first = await login("alice")
    _, lost, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    _, retried, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    status, body, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": lost["refresh_token"]})
    assert (status, body["error"]["code"]) == (401, "token_reused")
    assert (await api("POST", "/api/v1/auth/refresh", {"refresh_token": retried["refresh_token"]}))[0] == 401
    assert (await api("GET", "/api/v1/me", token=retried["access_token"]))[0] == 401


@pytest.mark.gen_test
async def test_a_spent_token_presented_after_the_grace_is_reuse(api, login, client, environ) -> None:
    """Past REFRESH_REUSE_GRACE (30 s) since its spending, a spent token is reuse even if its successor is unused."""
    first = await login("alice")
    _, lost, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=31)
    client[environ["MONGO_DB"]].refresh_tokens.update_many({"spent_at": {"$ne": None}},
                                                           {"$set": {"spent_at": long_ago}})
    status, body, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert (status, body["error"]["code"]) == (401, "token_reused")
    assert (await api("POST", "/api/v1/auth/refresh", {"refresh_token": lost["refresh_token"]}))[0] == 401


@pytest.mark.gen_test
async def test_expired_refresh_token(api, login, client, environ) -> None:
    """A refresh token past its expiry is token_expired and is not spent."""
    tokens = await login("alice")
    tokens_collection = client[environ["MONGO_DB"]].refresh_tokens
    tokens_collection.drop_index("expires_at_1")  # else the TTL sweeper may delete it first (tested apart)
    tokens_collection.update_many({}, {"$set": {"expires_at": datetime.datetime(2000, 1, 1)}})
    status, body, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]})
    assert (status, body["error"]["code"]) == (401, "token_expired")


@pytest.mark.gen_test
async def test_logout_revokes_the_session_only(api, login) -> None:
    """Logout revokes that session's tokens; the user's other session goes on."""
    phone = await login("alice")
    tablet = await login("alice")
    status, _, _ = await api("POST", "/api/v1/auth/logout", {"refresh_token": phone["refresh_token"]})
    assert status == 200
    assert (await api("GET", "/api/v1/me", token=phone["access_token"]))[0] == 401
    assert (await api("POST", "/api/v1/auth/refresh", {"refresh_token": phone["refresh_token"]}))[0] == 401
    assert (await api("GET", "/api/v1/me", token=tablet["access_token"]))[0] == 200


@pytest.mark.gen_test
async def test_refresh_tokens_expire_through_a_ttl_index(client, environ, services) -> None:
    """refresh_tokens has its TTL index on expires_at (expired tokens are removed by the database)."""
    info = client[environ["MONGO_DB"]].refresh_tokens.index_information()
    assert info["expires_at_1"]["expireAfterSeconds"] == 0
    assert info["token_hash_1"]["unique"] is True


@pytest.mark.gen_test
async def test_a_remembered_token_still_expires(services, login, monkeypatch) -> None:
    """A token verified once is not re-verified, but it is refused as expired once its exp passes."""
    import server.auth

    tokens = await login("alice")
    auth = services.auth
    principal = auth.verify_access(tokens["access_token"])
    assert auth.verify_access(tokens["access_token"]) is principal  # remembered, not decoded again
    later = principal.expires_at + server.auth.LEEWAY_SECONDS + 1
    monkeypatch.setattr(server.auth.time, "time", lambda: later)
    with pytest.raises(ApiError) as error:
        auth.verify_access(tokens["access_token"])
    assert error.value.code == "token_expired"
