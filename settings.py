"""Every setting of the server, read once from the environment, cast and checked.

``load(environ)`` returns a frozen ``Settings`` or raises ``SettingsError`` whose
message is one line naming the variable and what it takes. Nothing else in the
project reads the environment.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

T = TypeVar("T")

DEVELOPMENT = "development"
PRODUCTION = "production"
DEFAULT_FILE_TYPES: tuple[str, ...] = ("jpeg", "png", "gif", "webp", "mp4", "mp3", "pdf")
KNOWN_FILE_TYPES = frozenset(DEFAULT_FILE_TYPES)
YEAR = 365 * 86400  # seconds
# Secrets that must never protect a production server.
_WEAK_SECRETS = frozenset({"secret", "changeme", "change-me", "development", "dev", "jwt-secret", "test"})


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one line naming it."""


@dataclass(frozen=True)
class Settings:
    """The server's whole configuration."""

    app_env: str = DEVELOPMENT  # "development" or "production"
    host: str = "127.0.0.1"  # address to listen on
    port: int = 8888  # port to listen on
    data_dir: str = "./data"  # the embedded store's files and the development secret
    mongo_uri: str | None = None  # a real MongoDB; None starts the embedded store
    mongo_db: str = "miniprogram"  # database name
    redis_url: str | None = None  # Redis for fan-out between processes: one URL, or several comma-separated
    jwt_secret: str = ""  # HS256 key of access tokens
    access_token_ttl: int = 7200  # seconds an access token lives
    refresh_token_ttl: int = 30 * 86400  # seconds a refresh token lives
    wechat_appid: str | None = None  # the Mini Program's AppID
    wechat_secret: str | None = None  # its AppSecret
    wechat_api_base: str = "https://api.weixin.qq.com"  # WeChat's API (a local fake in tests)
    content_check: bool = False  # msgSecCheck on room messages
    tls_cert: str | None = None  # certificate chain file for HTTPS/WSS
    tls_key: str | None = None  # its private key
    behind_proxy: bool = False  # trust X-Forwarded-* from a proxy on this machine
    api_keys: tuple[str, ...] = ()  # keys of the server API (X-API-Key)
    file_max_bytes: int = 10 * 1024 * 1024  # largest upload
    file_types: tuple[str, ...] = DEFAULT_FILE_TYPES  # accepted upload types, judged by content
    schemas_dir: str = "schemas"  # JSON Schemas of records, one file per kind
    ws_ping_interval: float = 25.0  # seconds between server pings
    ws_max_message_bytes: int = 64 * 1024  # largest WebSocket frame accepted
    ws_max_per_user: int = 5  # sockets one user may hold
    recovery_max: int = 300  # messages a subscribe with `since` replays at most
    max_connections: int | None = None  # open descriptors that may hold connections; None: from the limit
    listen_backlog: int = 4096  # connections the kernel queues before accept (capped by net.core.somaxconn)
    # Several processes (docs/scaling.md).
    redis_timeout: float = 2.0  # seconds any Redis call may take: below a third of presence_ttl
    presence_ttl: int = 10  # seconds after which a dead process's presence entries and sockets stop counting
    redis_publish_delay: float = 0.0  # tests only: holds this process's Redis publishes back (reordering)
    position_check: float = 15.0  # seconds between checks of quiet served channels against MongoDB; 0: off
    # A spent refresh token presented again this soon, its successor unused, is a retry
    # whose answer was lost: it refreshes instead of revoking the session (docs/api.md).
    refresh_reuse_grace: float = 30.0  # seconds; 0 turns the grace off
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # overrides from the command line

    @property
    def production(self) -> bool:
        return self.app_env == PRODUCTION

    @property
    def dev_login(self) -> bool:
        """POST /api/v1/auth/dev is served in development mode only."""
        return not self.production

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key)


def _text(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _cast(env: Mapping[str, str], name: str, default: T, cast: Callable[[str], T], expects: str) -> T:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        return cast(raw)
    except (ValueError, TypeError):
        raise SettingsError(f"{name}={raw!r} is invalid: it takes {expects}") from None


def _whole(low: int, high: int) -> Callable[[str], int]:
    """A whole number from ``low`` to ``high``."""
    def cast(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(raw)
        return value

    return cast


def _seconds(low: float, high: float) -> Callable[[str], float]:
    """A number of seconds from ``low`` to ``high``."""
    def cast(raw: str) -> float:
        value = float(raw)
        if not low <= value <= high:  # NaN and infinities fail here
            raise ValueError(raw)
        return value

    return cast


def _switch(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "on", "true", "yes"):
        return True
    if lowered in ("0", "off", "false", "no"):
        return False
    raise ValueError(raw)


def _file_types(raw: str) -> tuple[str, ...]:
    kinds = tuple(t.strip().lower() for t in raw.split(",") if t.strip())
    if not kinds or any(k not in KNOWN_FILE_TYPES for k in kinds):
        raise ValueError(raw)
    return kinds


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def check(raw: str) -> str:
        parsed = urlparse(raw)
        if parsed.scheme not in schemes or not parsed.netloc:
            raise ValueError(raw)
        return raw.rstrip("/") if parsed.scheme.startswith("http") else raw

    return check


def _redis_urls(raw: str) -> str:
    """REDIS_URL: one redis:// (rediss://, unix://) URL or several, comma-separated."""
    urls = [url.strip() for url in raw.split(",")]
    if not all(urls):
        raise ValueError(raw)
    for url in urls:
        _url(("redis", "rediss", "unix"))(url)
    return ",".join(urls)


def _development_secret(data_dir: str) -> str:
    """A JWT secret made once and kept in the data directory, so that tokens
    survive restarts in development."""
    path = os.path.join(data_dir, "jwt_secret")
    try:
        with open(path) as handle:
            secret = handle.read().strip()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    os.makedirs(data_dir, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret


def load(env: Mapping[str, str], **overrides: Any) -> Settings:
    """Settings from ``env`` (``os.environ``), with command-line ``overrides``
    (host, port) applied last."""
    app_env = (_text(env, "APP_ENV", DEVELOPMENT) or DEVELOPMENT).lower()
    if app_env not in (DEVELOPMENT, PRODUCTION):
        raise SettingsError(f"APP_ENV={app_env!r} is invalid: it takes development or production")
    data_dir = _text(env, "DATA_DIR", "./data") or "./data"
    values: dict[str, Any] = {
        "app_env": app_env,
        "host": _text(env, "HOST", "127.0.0.1"),
        "port": _cast(env, "PORT", 8888, _whole(0, 65535), "a port number from 0 to 65535"),
        "data_dir": data_dir,
        "mongo_uri": _cast(env, "MONGO_URI", None, _url(("mongodb", "mongodb+srv")), "a mongodb:// URI"),
        "mongo_db": _text(env, "MONGO_DB", "miniprogram"),
        "redis_url": _cast(env, "REDIS_URL", None, _redis_urls, "a redis:// URL, or several separated by commas"),
        "access_token_ttl": _cast(env, "ACCESS_TOKEN_TTL", 7200, _whole(1, YEAR),
                                  f"a whole number of seconds from 1 to {YEAR} (a year)"),
        "refresh_token_ttl": _cast(env, "REFRESH_TOKEN_TTL", 30 * 86400, _whole(1, 10 * YEAR),
                                   f"a whole number of seconds from 1 to {10 * YEAR} (ten years)"),
        "wechat_appid": _text(env, "WECHAT_APPID"),
        "wechat_secret": _text(env, "WECHAT_SECRET"),
        "wechat_api_base": _cast(env, "WECHAT_API_BASE", "https://api.weixin.qq.com", _url(("http", "https")),
                                 "an http(s):// URL"),
        "content_check": _cast(env, "CONTENT_CHECK", False, _switch, "on or off"),
        "tls_cert": _text(env, "TLS_CERT"),
        "tls_key": _text(env, "TLS_KEY"),
        "behind_proxy": _cast(env, "BEHIND_PROXY", False, _switch, "1 or 0"),
        "api_keys": tuple(k.strip() for k in (_text(env, "API_KEYS", "") or "").split(",") if k.strip()),
        "file_max_bytes": _cast(env, "FILE_MAX_BYTES", 10 * 1024 * 1024, _whole(1, 1 << 30),
                                "a number of bytes from 1 to 1073741824 (1 GiB)"),
        "file_types": _cast(env, "FILE_TYPES", tuple(DEFAULT_FILE_TYPES), _file_types,
                            "a comma-separated list of " + ", ".join(DEFAULT_FILE_TYPES)),
        "schemas_dir": _text(env, "SCHEMAS_DIR", "schemas"),
        "ws_ping_interval": _cast(env, "WS_PING_INTERVAL", 25.0, _seconds(0.1, 3600),
                                  "a number of seconds from 0.1 to 3600"),
        "ws_max_message_bytes": _cast(env, "WS_MAX_MESSAGE_BYTES", 64 * 1024, _whole(1, 16 << 20),
                                      "a number of bytes from 1 to 16777216 (16 MiB)"),
        "ws_max_per_user": _cast(env, "WS_MAX_PER_USER", 5, _whole(1, 1_000_000),
                                 "a whole number from 1 to 1000000"),
        "recovery_max": _cast(env, "RECOVERY_MAX", 300, _whole(1, 10_000), "a whole number from 1 to 10000"),
        "max_connections": _cast(env, "MAX_CONNECTIONS", None, _whole(1, 1 << 30),
                                 "a whole number from 1 to 1073741824"),
        "listen_backlog": _cast(env, "LISTEN_BACKLOG", 4096, _whole(1, 65535), "a whole number from 1 to 65535"),
        # Several processes (docs/scaling.md).
        "presence_ttl": _cast(env, "PRESENCE_TTL", 10, _whole(1, 3600), "a whole number of seconds from 1 to 3600"),
        "redis_timeout": _cast(env, "REDIS_TIMEOUT", None, _seconds(0.05, 60), "a number of seconds from 0.05 to 60"),
        "redis_publish_delay": _cast(env, "REDIS_PUBLISH_DELAY", 0.0, _seconds(0, 5),
                                     "a number of seconds from 0 to 5 (tests only)"),
        "position_check": _cast(env, "POSITION_CHECK", 15.0, _seconds(0, 3600),
                                "a number of seconds from 0 to 3600 (0 turns the check off)"),
        # Refresh tokens presented again after a lost answer (docs/api.md).
        "refresh_reuse_grace": _cast(env, "REFRESH_REUSE_GRACE", 30.0, _seconds(0, 3600),
                                     "a number of seconds from 0 to 3600"),
    }
    _check_heartbeat(values)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        missing = "TLS_KEY" if values["tls_key"] is None else "TLS_CERT"
        raise SettingsError(f"{missing} is missing: TLS_CERT and TLS_KEY go together")
    for name in ("tls_cert", "tls_key"):
        if values[name] is not None and not os.path.isfile(values[name]):
            raise SettingsError(f"{name.upper()}={values[name]!r} is invalid: it takes a readable file")
    secret = _text(env, "JWT_SECRET")
    if app_env == PRODUCTION:
        _check_production(values, secret)
    elif secret is None:
        secret = _development_secret(data_dir)
    elif len(secret.encode()) < 32:
        raise SettingsError("JWT_SECRET is too short: it takes at least 32 bytes")
    values["jwt_secret"] = secret
    return Settings(**values)


def _check_heartbeat(values: dict[str, Any]) -> None:
    """REDIS_TIMEOUT below a third of PRESENCE_TTL (unset: 2 s, or a quarter of the
    TTL if less). A heartbeat starts a third of the TTL after the previous one ended
    and waits for every Redis server at once, each call bounded by REDIS_TIMEOUT; a
    server that answers within it may run the renewal anywhere in that wait. So two
    renewals on one server are at most 2 x REDIS_TIMEOUT + PRESENCE_TTL / 3 apart,
    which stays below PRESENCE_TTL (the key never lapses on a server that answers,
    whichever others hang) exactly while REDIS_TIMEOUT < PRESENCE_TTL / 3; what is
    left over, twice the difference, absorbs event-loop and network delays."""
    ttl = values["presence_ttl"]
    if values["redis_timeout"] is None:
        values["redis_timeout"] = min(2.0, ttl / 4)
    elif values["redis_timeout"] * 3 >= ttl:
        raise SettingsError(f"REDIS_TIMEOUT={values['redis_timeout']:g} is too long for PRESENCE_TTL={ttl}: it takes "
                            f"less than a third of PRESENCE_TTL ({ttl / 3:.3g} s), or a live process can be taken "
                            "for dead while one Redis server stalls")


def _check_production(values: dict[str, Any], secret: str | None) -> None:
    """Production refuses every unsafe default, naming the variable."""
    if not values["mongo_uri"]:
        raise SettingsError("MONGO_URI is missing: production needs a real MongoDB (mongodb://...)")
    if secret is None:
        raise SettingsError("JWT_SECRET is missing: production needs a secret of at least 32 bytes")
    if len(secret.encode()) < 32 or secret.lower() in _WEAK_SECRETS or len(set(secret)) < 8:
        raise SettingsError("JWT_SECRET is unsafe: production needs a random secret of at least 32 bytes")
    if not values["wechat_appid"]:
        raise SettingsError("WECHAT_APPID is missing: production signs users in with WeChat")
    if not values["wechat_secret"]:
        raise SettingsError("WECHAT_SECRET is missing: production signs users in with WeChat")
    if not (values["tls_cert"] and values["tls_key"]) and not values["behind_proxy"]:
        raise SettingsError("TLS_CERT/TLS_KEY are missing: production needs them, or BEHIND_PROXY=1 behind a "
                            "TLS-terminating proxy")
