"""The flush window (server/realtime/window.py): what a subscriber takes is
exactly the frames after the seq it had, in order, whatever came before."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from server.realtime.window import Window


@given(st.lists(st.integers(min_value=1, max_value=10_000), max_size=40), st.integers(min_value=0, max_value=10_050))
def test_a_subscriber_takes_exactly_the_frames_after_its_seq_in_order(offered: list[int], had: int) -> None:
    window = Window()
    kept: list[int] = []
    for seq in offered:  # seqs as a broker might hand them over: late or repeated ones are refused
        added = window.add(seq, f"<{seq}>".encode())
        assert added == (not kept or seq > kept[-1])
        if added:
            kept.append(seq)
    assert window.size == sum(len(f"<{s}>") for s in kept)
    wanted = [s for s in kept if s > had]
    part = window.after(had)
    if not wanted:
        assert part is None
    else:
        assert part == (len(wanted), b"".join(f"<{s}>".encode() for s in wanted))
    assert list(window.entries()) == [(s, f"<{s}>".encode()) for s in kept]


def test_subscribers_that_had_none_share_one_bytes_object() -> None:
    window = Window()
    for seq in (5, 6, 7):
        window.add(seq, b"x%d" % seq)
    first, second = window.after(0), window.after(4)
    assert first is not None and second is not None
    assert first[1] is second[1] and first == (3, b"x5x6x7")  # joined once for the channel
    window.add(8, b"x8")
    assert window.after(0) == (4, b"x5x6x7x8")  # a new frame: joined again
