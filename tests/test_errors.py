"""The one error type and its one table of codes, HTTP statuses and close codes."""

from __future__ import annotations

import pytest

from server.errors import CODES, STATUS, ApiError, CloseCode, close_code_of, status_of


def test_every_code_has_an_error_status_and_at_most_one_close_code() -> None:
    """Each code maps to a 4xx or 5xx status and to a contract close code or none; STATUS agrees."""
    for code, meaning in CODES.items():
        assert 400 <= meaning.status < 600 and code == code.lower()
        assert meaning.close is None or isinstance(meaning.close, CloseCode)
        assert STATUS[code] == status_of(code) == meaning.status and close_code_of(code) == meaning.close


def test_an_api_error_knows_its_status_close_code_and_command() -> None:
    """An ApiError answers with its code's status and close code, and carries the command id it answers."""
    error = ApiError("rate_limited", "slow down", command_id=7)
    assert (error.status, error.close_code, error.command_id) == (429, CloseCode.TOO_MANY_COMMANDS, 7)
    assert error.body() == {"error": {"code": "rate_limited", "message": "slow down", "details": []}}
    assert (ApiError("unauthorized", "x").close_code, ApiError("not_found", "x").close_code) == (4001, None)
    with pytest.raises(ValueError):
        ApiError("no_such_code", "x")
