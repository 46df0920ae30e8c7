"""settings.py: every setting typed and checked, one line naming what is wrong;
production refuses unsafe defaults; development keeps its generated secret."""

from __future__ import annotations

import math
import os
import stat

import pytest
from hypothesis import given
from hypothesis import settings as settings_profile
from hypothesis import strategies as st

import settings


def test_development_needs_nothing_and_keeps_its_secret(tmp_path) -> None:
    """With nothing set, development mode loads; its JWT secret is made once, kept 0600, reused."""
    first = settings.load({"DATA_DIR": str(tmp_path)})
    assert first.app_env == "development" and first.dev_login and first.mongo_uri is None
    assert (first.host, first.port, first.mongo_db) == ("127.0.0.1", 8888, "miniprogram")
    assert (first.access_token_ttl, first.refresh_token_ttl, first.recovery_max) == (7200, 2592000, 300)
    assert first.file_max_bytes == 10 * 1024 * 1024 and first.ws_max_message_bytes == 65536
    assert first.max_connections is None and first.listen_backlog == 4096
    assert first.refresh_reuse_grace == 30.0
    assert len(first.jwt_secret) >= 32
    assert stat.S_IMODE(os.stat(tmp_path / "jwt_secret").st_mode) == 0o600
    assert settings.load({"DATA_DIR": str(tmp_path)}).jwt_secret == first.jwt_secret


@pytest.mark.parametrize("name, value", [
    ("PORT", "eighty"), ("PORT", "70000"), ("APP_ENV", "staging"), ("MONGO_URI", "http://db:27017"),
    ("REDIS_URL", "localhost:6379"), ("REDIS_URL", "redis://a:1,,redis://b:2"), ("REDIS_URL", "redis://a:1,b:2"),
    ("REDIS_TIMEOUT", "0"), ("PRESENCE_TTL", "0.5"), ("ACCESS_TOKEN_TTL", "-5"), ("CONTENT_CHECK", "maybe"),
    ("BEHIND_PROXY", "perhaps"), ("FILE_MAX_BYTES", "10MB"), ("FILE_TYPES", "jpeg,exe"),
    ("WS_PING_INTERVAL", "0"), ("WS_MAX_PER_USER", "many"), ("RECOVERY_MAX", "1.5"),
    ("WECHAT_API_BASE", "ftp://x"), ("JWT_SECRET", "short"), ("TLS_CERT", "/nonexistent/cert.pem"),
    ("MAX_CONNECTIONS", "0"), ("MAX_CONNECTIONS", "lots"), ("LISTEN_BACKLOG", "0"), ("LISTEN_BACKLOG", "70000"),
    ("LISTEN_BACKLOG", "1e3"), ("WS_PING_INTERVAL", "inf"), ("WS_PING_INTERVAL", "1e-10"),
    ("ACCESS_TOKEN_TTL", "1" + "0" * 30), ("REFRESH_TOKEN_TTL", "100000000000"),
    ("REFRESH_REUSE_GRACE", "-1"), ("REFRESH_REUSE_GRACE", "3601"), ("REFRESH_REUSE_GRACE", "nan"),
])
def test_bad_values_name_the_variable(tmp_path, name: str, value: str) -> None:
    """Each malformed value stops loading with one line that names the variable."""
    env = {"DATA_DIR": str(tmp_path), name: value}
    if name == "TLS_CERT":
        env["TLS_KEY"] = "/nonexistent/key.pem"
    with pytest.raises(settings.SettingsError) as error:
        settings.load(env)
    message = str(error.value)
    assert name in message and "\n" not in message


def test_descriptor_and_backlog_settings_are_read(tmp_path) -> None:
    """MAX_CONNECTIONS and LISTEN_BACKLOG are read as whole numbers."""
    config = settings.load({"DATA_DIR": str(tmp_path), "MAX_CONNECTIONS": "5000", "LISTEN_BACKLOG": " 1024 "})
    assert (config.max_connections, config.listen_backlog) == (5000, 1024)


PRODUCTION = {
    "APP_ENV": "production", "MONGO_URI": "mongodb://db.internal:27017/",
    "JWT_SECRET": "Zk8#q2Lw!pR7vN4x@bT6yH1mC9sD3fG5",
    "WECHAT_APPID": "wx1234567890", "WECHAT_SECRET": "0123456789abcdef", "BEHIND_PROXY": "1",
}


def test_production_with_everything_set_loads() -> None:
    """A complete production environment loads, with dev login off."""
    config = settings.load(PRODUCTION)
    assert config.production and not config.dev_login and config.behind_proxy


@pytest.mark.parametrize("change, named", [
    ({"MONGO_URI": None}, "MONGO_URI"),
    ({"JWT_SECRET": None}, "JWT_SECRET"),
    ({"JWT_SECRET": "too-short"}, "JWT_SECRET"),
    ({"JWT_SECRET": "a" * 40}, "JWT_SECRET"),
    ({"WECHAT_APPID": None}, "WECHAT_APPID"),
    ({"WECHAT_SECRET": None}, "WECHAT_SECRET"),
    ({"BEHIND_PROXY": None}, "TLS_CERT"),
])
def test_production_refuses_each_unsafe_setting(change: dict, named: str) -> None:
    """Production refuses a missing MONGO_URI, a short or weak JWT_SECRET, missing WeChat credentials, no TLS."""
    env = {k: v for k, v in {**PRODUCTION, **change}.items() if v is not None}
    with pytest.raises(settings.SettingsError) as error:
        settings.load(env)
    assert named in str(error.value)


# Each numeric setting and the values it takes (docs/configuration.md).
NUMERIC: dict[str, tuple[type, float, float]] = {
    "PORT": (int, 0, 65535), "ACCESS_TOKEN_TTL": (int, 1, 365 * 86400), "REFRESH_TOKEN_TTL": (int, 1, 3650 * 86400),
    "FILE_MAX_BYTES": (int, 1, 1 << 30), "WS_PING_INTERVAL": (float, 0.1, 3600),
    "WS_MAX_MESSAGE_BYTES": (int, 1, 16 << 20), "WS_MAX_PER_USER": (int, 1, 1_000_000),
    "RECOVERY_MAX": (int, 1, 10_000),
    "MAX_CONNECTIONS": (int, 1, 1 << 30), "LISTEN_BACKLOG": (int, 1, 65535),
    "REDIS_TIMEOUT": (float, 0.05, 60), "PRESENCE_TTL": (int, 1, 3600), "REDIS_PUBLISH_DELAY": (float, 0, 5),
}
_NUMBERS = st.one_of(st.text(), st.integers().map(str), st.floats().map(repr), st.decimals().map(str),
                     st.sampled_from(["1e400", "inf", "-inf", "nan", "1_000", "²", "٣", "0x10", " 7 ", "+5", "1e3"]))


@settings_profile(max_examples=300, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(NUMERIC)), raw=_NUMBERS)
def test_a_numeric_setting_is_within_its_bounds_or_refused(tmp_path_factory, name: str, raw: str) -> None:
    """Any text for a numeric setting loads as a finite number within the setting's bounds, or is refused
    with one line naming the variable; nothing else is raised."""
    field = name.lower()
    kind, low, high = NUMERIC[name]
    try:
        value = getattr(settings.load({"DATA_DIR": str(tmp_path_factory.getbasetemp()), name: raw}), field)
    except settings.SettingsError as error:
        assert name in str(error) and "\n" not in str(error)
        return
    if not raw.strip():
        assert value == getattr(settings.Settings(), field)  # unset: the default
        return
    assert isinstance(value, kind) and not isinstance(value, bool)
    assert math.isfinite(value) and low <= value <= high


@settings_profile(max_examples=200, deadline=None, derandomize=True)
@given(raw=st.one_of(st.text(max_size=60), st.lists(st.sampled_from(
    ["redis://a:1", "rediss://b:2/0", "unix://c", "redis://", "x", " ", "", "http://d:3"]), max_size=4).map(",".join)))
def test_redis_url_is_every_server_or_refused(tmp_path_factory, raw: str) -> None:
    """REDIS_URL: each comma-separated part is a redis://, rediss:// or unix:// URL with a host, or the whole
    setting is refused with one line naming REDIS_URL."""
    try:
        value = settings.load({"DATA_DIR": str(tmp_path_factory.getbasetemp()), "REDIS_URL": raw}).redis_url
    except settings.SettingsError as error:
        assert "REDIS_URL" in str(error) and "\n" not in str(error)
        return
    if not raw.strip():
        assert value is None
        return
    assert value is not None
    for url in value.split(","):
        assert url.split("://")[0] in ("redis", "rediss", "unix") and url.split("://")[1]


@settings_profile(max_examples=300, deadline=None, derandomize=True)
@given(ttl=st.one_of(st.none(), st.integers(1, 3600)),
       timeout=st.one_of(st.none(), st.floats(0.05, 60).map(repr), st.integers(1, 60).map(str)))
def test_redis_timeout_stays_below_a_third_of_presence_ttl(tmp_path_factory, ttl: int | None,
                                                           timeout: str | None) -> None:
    """A REDIS_TIMEOUT of a third of PRESENCE_TTL or more is refused with one line naming both; whatever loads keeps
    two renewals of a process's key (each up to REDIS_TIMEOUT late, a third of the TTL apart) within the TTL."""
    env = {"DATA_DIR": str(tmp_path_factory.getbasetemp())}
    if ttl is not None:
        env["PRESENCE_TTL"] = str(ttl)
    if timeout is not None:
        env["REDIS_TIMEOUT"] = timeout
    try:
        config = settings.load(env)
    except settings.SettingsError as error:
        assert timeout is not None and float(timeout) * 3 >= (ttl or 10)
        assert "REDIS_TIMEOUT" in str(error) and "PRESENCE_TTL" in str(error) and "\n" not in str(error)
        return
    assert 2 * config.redis_timeout + config.presence_ttl / 3 < config.presence_ttl
    if timeout is None:  # unset: 2 s, or a quarter of the TTL if less
        assert config.redis_timeout == min(2.0, config.presence_ttl / 4)
    else:
        assert config.redis_timeout == float(timeout)
