"""REFRESH_REUSE_GRACE=0: the server takes the setting, and every reuse of a spent refresh token revokes."""

from __future__ import annotations

import pytest


@pytest.fixture
def extra_env() -> dict[str, str]:
    return {"REFRESH_REUSE_GRACE": "0"}


@pytest.mark.gen_test
async def test_with_the_grace_off_a_retried_refresh_is_reuse(api, login) -> None:
    """With REFRESH_REUSE_GRACE=0 a spent token presented again at once is token_reused and the session ends."""
    first = await login("alice")
    status, lost, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert status == 200
    status, body, _ = await api("POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert (status, body["error"]["code"]) == (401, "token_reused")
    assert (await api("GET", "/api/v1/me", token=lost["access_token"]))[0] == 401
