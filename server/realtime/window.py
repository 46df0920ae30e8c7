"""A channel's flush window: the message frames delivered to this process since
the hub's last flush, in seq order, for every local subscriber to take at once.

Fan-out used to queue each message's frame on each subscriber (a Python call
and a list append per socket per message) and join each socket's frames at the
flush. A window holds a channel's frames once; at the flush each subscriber
takes the ones it has not had (by seq): for nearly all of them that is every
frame, joined once for the whole channel and written as the same bytes object
to each socket. Per socket, the cost is one step per flush instead of one per
message.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator


class Window:
    """One channel's frames since the last flush, by ascending seq."""

    __slots__ = ("_joined", "frames", "seqs", "size")

    def __init__(self) -> None:
        self.seqs: list[int] = []  # the frames' seqs, ascending
        self.frames: list[bytes] = []  # whole WebSocket frames, as each is written
        self.size = 0  # their bytes
        self._joined: bytes | None = None  # every frame as one bytes object, built once when first asked

    def add(self, seq: int, frame: bytes) -> bool:
        """Adds the frame of message ``seq``; False (ignored) when it is not newer than the last one."""
        if self.seqs and seq <= self.seqs[-1]:
            return False
        self.seqs.append(seq)
        self.frames.append(frame)
        self.size += len(frame)
        self._joined = None
        return True

    @property
    def last(self) -> int:
        return self.seqs[-1]

    def after(self, seq: int) -> tuple[int, bytes] | None:
        """(how many, their frames as one bytes object) of the frames after ``seq``; None when there are none.
        A subscriber that had none of them (nearly always) gets the bytes shared by every such subscriber."""
        seqs = self.seqs
        if not seqs or seq >= seqs[-1]:
            return None
        if seq < seqs[0]:
            if self._joined is None:
                self._joined = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            return len(seqs), self._joined
        start = bisect_right(seqs, seq)
        return len(seqs) - start, b"".join(self.frames[start:])

    def entries(self) -> Iterator[tuple[int, bytes]]:
        """(seq, frame) of every frame, in order."""
        return zip(self.seqs, self.frames, strict=True)
