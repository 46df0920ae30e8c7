"""The load generator's scan of a subscribe reply (bench/loadgen.py replay_seqs) against a full JSON decode, for
replies built by the server's own encoders, both ways it builds them (a dict, or spliced from pushed JSON)."""

from __future__ import annotations

from typing import Any

import pytest
import ujson
from hypothesis import given
from hypothesis import strategies as st

from bench.loadgen import replay_seqs
from server.protocol import encode_message_push, encode_result, encode_subscribe_result

_KEYS = st.text(max_size=8).filter(lambda key: key != "seq")  # the scan's one assumption: no data key "seq"
_DATA = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
                     max_leaves=12)
_CHANNEL = st.text(min_size=1, max_size=20)


def _messages(channel: str, first: int, data: list[Any]) -> list[dict[str, Any]]:
    return [{"channel": channel, "seq": first + n, "id": f"{n:024x}", "from": "u1", "data": value, "ts": 1.5}
            for n, value in enumerate(data)]


@given(_CHANNEL, st.integers(0, 10**12), st.lists(_DATA, max_size=8))
def test_scan_finds_what_a_decode_finds_in_a_reply_built_as_a_dict(channel: str, first: int, data: list[Any]) -> None:
    """A reply encoded from a dict (the MongoDB path) gives the channel's seq and each message's seq, in order."""
    messages = _messages(channel, first + 1, data)
    current = first + len(data) + 3
    reply = encode_result(0, {"channel": channel, "seq": current, "recovered": True, "messages": messages})
    raw = reply if isinstance(reply, bytes) else reply.encode()
    decoded = ujson.loads(raw)["result"]
    assert replay_seqs(raw) == (decoded["seq"], [m["seq"] for m in decoded["messages"]]) == (
        current, [m["seq"] for m in messages])


@given(_CHANNEL, st.integers(0, 10**12), st.lists(_DATA, max_size=8))
def test_scan_finds_what_a_decode_finds_in_a_spliced_reply(channel: str, first: int, data: list[Any]) -> None:
    """A reply spliced from the pushes' JSON (the recent-messages path) gives the same seqs a decode gives."""
    messages = _messages(channel, first + 1, data)
    pushed = [encode_message_push(m)[len(b'{"push":"message","message":'):-1] for m in messages]
    raw = encode_result(0, encode_subscribe_result(channel, first + len(data), pushed))
    assert isinstance(raw, bytes)
    decoded = ujson.loads(raw)["result"]
    assert replay_seqs(raw) == (decoded["seq"], [m["seq"] for m in decoded["messages"]])


@pytest.mark.parametrize("reply", [b'{"id":0,"error":{"code":"forbidden","message":"no"}}', b'{"id":0,"result":{}}',
                                   b'{"id":0,"result":{"messages":[{"seq":1}],"seq":1}}'])
def test_scan_refuses_replies_of_another_shape(reply: bytes) -> None:
    """An error, or a result without its seq before its messages, is refused rather than miscounted."""
    with pytest.raises(ValueError):
        replay_seqs(reply)
