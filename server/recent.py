"""The newest messages of each busy channel, kept as the JSON they were pushed
as, so that a reconnect storm replays from memory instead of from MongoDB.

The hub adds every message frame the broker hands it, in the order it arrives.
A channel's entries are always *contiguous* (seq n, n+1, n+2...): a frame that
does not follow the last one starts the channel afresh, and a late one (a seq
already passed) is ignored. So when the entries start at or before ``since + 1``
and the broker delivers every message of the channel to this process, the
entries after ``since`` are exactly what the client missed, up to the newest
message this process has seen; anything newer is on its way through the broker
and reaches the session live. When the entries cannot answer, the caller reads
MongoDB as before.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from itertools import islice

MESSAGE_PUSH_PREFIX = b'{"push":"message","message":'  # what encode_message_push writes before the message


class Recent:
    """Per channel, up to ``per_channel`` newest messages; at most ``channels``
    channels, the least recently published forgotten first."""

    def __init__(self, per_channel: int, channels: int = 1000) -> None:
        self.per_channel = per_channel  # RECOVERY_MAX: a longer replay is answered from MongoDB anyway
        self.channels = channels  # bound on memory: ~per_channel x message size each
        self._entries: OrderedDict[str, deque[tuple[int, bytes]]] = OrderedDict()  # channel -> (seq, message JSON)

    def add(self, channel: str, seq: int, payload: bytes) -> None:
        """Keeps a message push frame's payload (``encode_message_push``)."""
        if not payload.startswith(MESSAGE_PUSH_PREFIX):
            return
        entries = self._entries.get(channel)
        if entries is None:
            entries = self._entries[channel] = deque(maxlen=self.per_channel)
            if len(self._entries) > self.channels:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(channel)
            last = entries[-1][0] if entries else 0
            if seq <= last:
                return  # late or repeated: the entries already hold or passed it
            if seq != last + 1:
                entries.clear()  # a gap: what lies between was never seen here
        entries.append((seq, payload[len(MESSAGE_PUSH_PREFIX):-1]))

    def after(self, channel: str, since: int, limit: int) -> tuple[int, list[bytes]] | None:
        """The newest seq seen and every message after ``since``, as JSON; None
        when the entries do not reach back to ``since + 1``, do not know the
        channel, or hold more than ``limit`` after it (MongoDB answers those)."""
        entries = self._entries.get(channel)
        if not entries:
            return None
        first, last = entries[0][0], entries[-1][0]
        if since + 1 < first or since > last or last - since > limit:
            return None
        return last, [message for _, message in islice(entries, since + 1 - first, None)]

    def newest(self, channel: str) -> int | None:
        """The newest seq this process has seen of ``channel``, if it keeps it."""
        entries = self._entries.get(channel)
        return entries[-1][0] if entries else None

    def forget(self, channel: str) -> None:
        """The broker stops handing this channel's messages to this process."""
        self._entries.pop(channel, None)
