"""Review finding: a WebSocket upgrade whose token query argument is not UTF-8
answered 500 internal (with a traceback logged) instead of invalid_request."""

from __future__ import annotations

import pytest

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.mark.gen_test(timeout=30)
async def test_upgrade_with_a_token_that_is_not_utf8(api) -> None:
    """GET /ws?token=%ff is 400 invalid_request in the contract's shape, never 500."""
    status, body, _ = await api("GET", "/ws?token=%ff", headers=UPGRADE)
    assert status == 400, body
    assert body["error"]["code"] == "invalid_request"
