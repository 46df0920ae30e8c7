"""Sessions: JWT access tokens and rotated, hashed refresh tokens.

A sign-in starts a session: a refresh-token *family* whose id is the ``sid`` of
every access token it issues. Each refresh spends the refresh token it was given
and issues the next one of the family; presenting a spent one again means it was
stolen, and the whole family is revoked. Only a token's SHA-256 is stored.

One exception, for a refresh whose answer was lost on the way (a Mini Program's
"interrupted"): within ``reuse_grace`` seconds of its spending, a spent token whose
successor has not been used yet is refreshed again: the unused successor is spent
and a fresh pair issued (Auth0's "reuse interval"). docs/api.md weighs the risk.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from bson import ObjectId
from pymongo import ReturnDocument

from server.errors import ApiError
from server.storage import Storage, utcnow
from server.users import Users, public

ALGORITHMS = ["HS256"]  # fixed: "none" and every other algorithm are refused
LEEWAY_SECONDS = 10  # clock skew tolerated on exp and iat
_ACCESS_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")  # a JWS, whole (fullmatch)
_REFRESH_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")  # whole (fullmatch)
_SID = re.compile(r"[A-Za-z0-9_-]{16,64}")  # whole (fullmatch)
MAX_ACCESS_TOKEN = 4096  # characters
VERIFIED_TOKENS = 50_000  # access tokens whose signature check is remembered (a reconnect presents it again)
REFRESH_REUSE_GRACE = 30.0  # seconds (the default of settings.refresh_reuse_grace)
VOUCH_SECONDS = 30.0  # a session checked (or connected) this recently needs no lookup to open a socket


class VouchStore(Protocol):
    """Vouches shared by the processes of a deployment (Redis): a reconnect that lands
    on another process than its last socket's needs no lookup either."""

    async def vouched(self, sid: str) -> str | None:
        """The user some process vouched for ``sid`` within the window, if any."""

    def vouch(self, user: str, sid: str, seconds: float) -> None: ...

    def revoke(self, sid: str, seconds: float) -> None:
        """``sid`` is revoked: no process vouches for it again (for ``seconds``)."""


@dataclass(frozen=True)
class Principal:
    """Who a valid access token speaks for."""

    user_id: str  # the user's id (ObjectId hex)
    sid: str  # the session (refresh-token family)
    expires_at: float  # when the access token expires (epoch seconds)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Auth:
    """Issues and checks tokens; keeps refresh tokens in ``refresh_tokens``."""

    def __init__(self, storage: Storage, users: Users, secret: str, access_ttl: int, refresh_ttl: int,
                 reuse_grace: float = REFRESH_REUSE_GRACE) -> None:
        self._tokens = storage["refresh_tokens"]  # {_id, user_id, family, token_hash, created_at, expires_at, ...}
        self._users = users  # to check the token's user still exists
        self._secret = secret  # HS256 key
        self.access_ttl = access_ttl  # seconds
        self.refresh_ttl = refresh_ttl  # seconds
        self.reuse_grace = reuse_grace  # seconds a spent token may be presented again (its answer lost)
        # sid -> (user id, monotonic time until which a socket may open without the two lookups).
        self._vouched: dict[str, tuple[str, float]] = {}
        self._revoked: dict[str, float] = {}  # sid -> when this process revoked it (never vouched again)
        self.on_revoke: Callable[[str], None] | None = None  # told a sid revoked here (other processes forget it)
        self.shared: VouchStore | None = None  # the other processes' vouches (with Redis)
        self._verified: dict[str, Principal] = {}  # access token -> its principal: the signature is checked once

    # -- access tokens ---------------------------------------------------------------

    def issue_access(self, user_id: str, sid: str) -> str:
        now = int(time.time())
        claims = {"sub": user_id, "sid": sid, "iat": now, "exp": now + self.access_ttl}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify_access(self, token: Any) -> Principal:
        """The principal of a well-signed, unexpired access token."""
        if not isinstance(token, str) or not token:
            raise ApiError("unauthorized", "a bearer access token is required")
        # Checked before PyJWT sees it: a lone surrogate or a NUL would raise outside its errors.
        if len(token) > MAX_ACCESS_TOKEN or _ACCESS_TOKEN.fullmatch(token) is None:
            raise ApiError("unauthorized", "the access token is not valid")
        known = self._verified.get(token)
        if known is not None:  # this very string verified before: only its expiry can have changed
            if time.time() > known.expires_at + LEEWAY_SECONDS:
                raise ApiError("token_expired", "the access token has expired; refresh it")
            return known
        try:
            claims = jwt.decode(token, self._secret, algorithms=ALGORITHMS, leeway=LEEWAY_SECONDS,
                                options={"require": ["sub", "sid", "iat", "exp"]})
        except jwt.ExpiredSignatureError:
            raise ApiError("token_expired", "the access token has expired; refresh it") from None
        except jwt.PyJWTError:
            raise ApiError("unauthorized", "the access token is not valid") from None
        sub, sid = claims.get("sub"), claims.get("sid")
        if not (isinstance(sub, str) and ObjectId.is_valid(sub) and isinstance(sid, str) and _SID.fullmatch(sid)):
            raise ApiError("unauthorized", "the access token is not valid")
        principal = Principal(sub, sid, float(claims["exp"]))
        if len(self._verified) >= VERIFIED_TOKENS:
            self._verified.clear()
        self._verified[token] = principal
        return principal

    async def authenticate(self, token: Any, vouched: bool = False) -> Principal:
        """verify_access, and the user still exists and the session is not revoked.

        With ``vouched`` (the WebSocket handshake), a session this process checked
        or held open within VOUCH_SECONDS skips the two lookups: a reconnect storm
        then costs a signature check per socket, not two database round trips.
        Signing out here forgets the session at once; a user deleted or a session
        revoked directly in the database is refused within VOUCH_SECONDS.
        """
        principal = self.verify_access(token)
        if vouched:
            known = self._vouched.get(principal.sid)
            if known is not None and known[0] == principal.user_id and known[1] > time.monotonic():
                return principal
            if (self.shared is not None and principal.sid not in self._revoked
                    and await self.shared.vouched(principal.sid) == principal.user_id):
                return principal
        if await self._users.get(ObjectId(principal.user_id)) is None:
            raise ApiError("unauthorized", "the user of this token no longer exists")
        if await self.session_revoked(principal.sid):
            raise ApiError("unauthorized", "this session has been signed out")
        self.vouch(principal.user_id, principal.sid)
        return principal

    def vouch(self, user_id: str, sid: str, share: bool = False) -> None:
        """Trusts ``sid`` for VOUCH_SECONDS more (checked now, or its socket just
        closed), unless this process revoked it; with ``share``, every process
        does (through ``shared``, unless some process revoked it)."""
        now = time.monotonic()
        if sid in self._revoked:
            return
        if len(self._vouched) >= 100_000:  # a sweep now and then keeps the map to live sessions
            self._vouched = {k: v for k, v in self._vouched.items() if v[1] > now}
            self._forget_old_revocations(now)
        self._vouched[sid] = (user_id, now + VOUCH_SECONDS)
        if share and self.shared is not None:  # a socket closed: its reconnect may land on another process
            self.shared.vouch(user_id, sid, VOUCH_SECONDS)

    def _forget_old_revocations(self, now: float) -> None:
        """Revocations older than any vouch that could still be alive are not needed."""
        self._revoked = {k: t for k, t in self._revoked.items() if t > now - 2 * VOUCH_SECONDS}

    def forget_session(self, sid: str) -> None:
        """``sid`` was revoked (here or by another process): never vouched for again."""
        self._vouched.pop(sid, None)
        if self.shared is not None:
            self.shared.revoke(sid, 2 * VOUCH_SECONDS)
        now = time.monotonic()
        if len(self._revoked) >= 10_000:
            self._forget_old_revocations(now)
        self._revoked[sid] = now

    async def session_revoked(self, sid: str) -> bool:
        return await self._tokens.find_one({"family": sid, "revoked_at": {"$ne": None}}, {"_id": 1}) is not None

    # -- sessions ------------------------------------------------------------------------

    async def start_session(self, user: dict[str, Any]) -> dict[str, Any]:
        """A new session for ``user``: the sign-in answer of the contract."""
        family = secrets.token_urlsafe(18)
        return await self._issue_pair(user, family)

    async def _issue_pair(self, user: dict[str, Any], family: str, parent: Any = None) -> dict[str, Any]:
        """A new pair of ``family``; ``parent`` is the _id of the refresh token spent for it."""
        refresh = secrets.token_urlsafe(32)
        now = utcnow()
        await self._tokens.insert_one({
            "user_id": user["_id"], "family": family, "token_hash": token_hash(refresh), "created_at": now,
            "expires_at": now + datetime.timedelta(seconds=self.refresh_ttl), "spent_at": None, "revoked_at": None,
            "parent": parent,
        })
        return {
            "access_token": self.issue_access(str(user["_id"]), family),
            "expires_in": self.access_ttl,
            "refresh_token": refresh,
            "refresh_expires_in": self.refresh_ttl,
            "user": public(user),
        }

    @staticmethod
    def _check_refresh_token(token: Any) -> str:
        if not isinstance(token, str) or not _REFRESH_TOKEN.fullmatch(token):
            raise ApiError("unauthorized", "the refresh token is not valid")
        return token

    async def refresh(self, token: Any) -> dict[str, Any]:
        """Spends ``token`` and issues the next pair of its session."""
        hashed = token_hash(self._check_refresh_token(token))
        now = utcnow()
        spent = await self._tokens.find_one_and_update(
            {"token_hash": hashed, "spent_at": None, "revoked_at": None, "expires_at": {"$gt": now}},
            {"$set": {"spent_at": now}}, return_document=ReturnDocument.BEFORE)
        if spent is None:
            existing = await self._tokens.find_one({"token_hash": hashed})
            if existing is None:
                raise ApiError("unauthorized", "the refresh token is not valid")
            if existing.get("revoked_at") is not None:
                raise ApiError("unauthorized", "this session has been signed out")
            if existing.get("spent_at") is None:
                raise ApiError("token_expired", "the refresh token has expired; sign in again")
            if not await self._spend_unused_successor(existing, now):
                await self.revoke_family(existing["family"])
                raise ApiError("token_reused", "this refresh token was already used; the session is revoked")
            spent = existing
        user = await self._users.get(spent["user_id"])
        if user is None:
            raise ApiError("unauthorized", "the user of this token no longer exists")
        return await self._issue_pair(user, spent["family"], spent["_id"])

    async def _spend_unused_successor(self, spent: dict[str, Any], now: datetime.datetime) -> bool:
        """Whether ``spent`` (presented again) is a retry of a refresh whose answer was
        lost: spent less than ``reuse_grace`` ago, and the pair its refresh issued not
        used since. That successor is then spent (it is never to be used) and True."""
        if now - spent["spent_at"] > datetime.timedelta(seconds=self.reuse_grace):
            return False
        successor = await self._tokens.find_one_and_update(
            {"family": spent["family"], "parent": spent["_id"], "spent_at": None, "revoked_at": None,
             "expires_at": {"$gt": now}},
            {"$set": {"spent_at": now, "superseded": True}})
        return successor is not None

    async def logout(self, token: Any) -> str:
        """Revokes the session of ``token``; returns its sid."""
        found = await self._tokens.find_one({"token_hash": token_hash(self._check_refresh_token(token))})
        if found is None:
            raise ApiError("unauthorized", "the refresh token is not valid")
        await self.revoke_family(found["family"])
        return str(found["family"])

    async def revoke_family(self, family: str) -> None:
        self.forget_session(family)
        await self._tokens.update_many({"family": family, "revoked_at": None}, {"$set": {"revoked_at": utcnow()}})
        if self.on_revoke is not None:  # once stored: another process's next lookup sees the revocation
            self.on_revoke(family)
