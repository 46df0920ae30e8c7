"""The recent-messages cache (server/realtime/recent.py): what it may answer, and when it must say it cannot."""

from __future__ import annotations

import json

from server.protocol import encode_message_push
from server.realtime.recent import Recent


def _push(channel: str, seq: int) -> bytes:
    return encode_message_push({"channel": channel, "seq": seq, "data": {"n": seq}})


def _seqs(answer: tuple[int, list[bytes]] | None) -> list[int] | None:
    return None if answer is None else [json.loads(m)["seq"] for m in answer[1]]


def test_answers_only_what_it_holds_contiguously() -> None:
    recent = Recent(per_channel=5)
    assert recent.after("feed:a", 0, 100) is None and recent.newest("feed:a") is None
    for seq in (3, 4, 5):
        recent.add("feed:a", seq, _push("feed:a", seq))
    assert _seqs(recent.after("feed:a", 2, 100)) == [3, 4, 5]
    assert _seqs(recent.after("feed:a", 4, 100)) == [5]
    assert recent.after("feed:a", 5, 100) == (5, [])
    assert recent.after("feed:a", 1, 100) is None  # seq 2 was never seen here
    assert recent.after("feed:a", 6, 100) is None  # ahead of what it knows: MongoDB decides
    assert recent.after("feed:a", 2, 2) is None  # more than the limit: MongoDB says recovered false
    recent.add("feed:a", 4, _push("feed:a", 4))  # late: ignored
    assert _seqs(recent.after("feed:a", 2, 100)) == [3, 4, 5]
    recent.add("feed:a", 8, _push("feed:a", 8))  # a gap: starts again at 8
    assert recent.after("feed:a", 5, 100) is None and _seqs(recent.after("feed:a", 7, 100)) == [8]
    for seq in range(9, 15):
        recent.add("feed:a", seq, _push("feed:a", seq))
    assert _seqs(recent.after("feed:a", 9, 100)) == [10, 11, 12, 13, 14]  # the newest per_channel
    assert recent.after("feed:a", 8, 100) is None


def test_keeps_only_message_pushes_and_a_bounded_number_of_channels() -> None:
    recent = Recent(per_channel=5, channels=2)
    recent.add("room:x", 1, b'{"push":"join","channel":"room:x","user":"u"}')
    assert recent.newest("room:x") is None
    for channel in ("feed:a", "feed:b", "feed:c"):
        recent.add(channel, 1, _push(channel, 1))
    assert recent.newest("feed:a") is None and recent.newest("feed:c") == 1  # the least recently used went


def test_a_noted_newest_seq_answers_live_subscribes_and_later_messages_follow_it() -> None:
    recent = Recent(per_channel=5)
    recent.note("feed:a", 7)
    assert recent.newest("feed:a") == 7 and recent.after("feed:a", 7, 100) is None
    recent.add("feed:a", 7, _push("feed:a", 7))  # stored before the note was read: not held, already counted
    recent.add("feed:a", 8, _push("feed:a", 8))
    assert _seqs(recent.after("feed:a", 7, 100)) == [8] and recent.after("feed:a", 6, 100) is None
    recent.note("feed:a", 3)  # only for channels it knew nothing of
    assert recent.newest("feed:a") == 8
    recent.forget("feed:a")
    assert recent.newest("feed:a") is None
