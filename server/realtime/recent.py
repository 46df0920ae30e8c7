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


class _Channel:
    """One channel's newest messages, contiguous by seq, and its newest seq."""

    __slots__ = ("entries", "newest")

    def __init__(self, per_channel: int, newest: int) -> None:
        self.entries: deque[tuple[int, bytes]] = deque(maxlen=per_channel)  # (seq, message JSON)
        self.newest = newest  # the newest seq known to exist


class Recent:
    """Per channel, up to ``per_channel`` newest messages; at most ``channels``
    channels, the least recently used forgotten first."""

    def __init__(self, per_channel: int, channels: int = 1000) -> None:
        self.per_channel = per_channel  # RECOVERY_MAX: a longer replay is answered from MongoDB anyway
        self.channels = channels  # bound on memory: ~per_channel x message size each
        self._channels: OrderedDict[str, _Channel] = OrderedDict()

    def _channel(self, channel: str, newest: int) -> _Channel:
        kept = self._channels.get(channel)
        if kept is None:
            kept = self._channels[channel] = _Channel(self.per_channel, newest)
            if len(self._channels) > self.channels:
                self._channels.popitem(last=False)
        else:
            self._channels.move_to_end(channel)
        return kept

    def add(self, channel: str, seq: int, payload: bytes) -> None:
        """Keeps a message push frame's payload (``encode_message_push``)."""
        if not payload.startswith(MESSAGE_PUSH_PREFIX):
            return
        kept = self._channel(channel, 0)
        if seq <= kept.newest:
            return  # late or repeated: already held, or passed
        if seq != kept.newest + 1:
            kept.entries.clear()  # a gap: what lies between was never seen here
        kept.entries.append((seq, payload[len(MESSAGE_PUSH_PREFIX):-1]))
        kept.newest = seq

    def note(self, channel: str, newest: int) -> None:
        """MongoDB's newest seq of a channel this process knew nothing of: later
        live-only subscribes need not ask again."""
        if channel not in self._channels:
            self._channel(channel, newest)

    def after(self, channel: str, since: int, limit: int) -> tuple[int, list[bytes]] | None:
        """The newest seq and every message after ``since``, as JSON; None when
        the entries do not reach back to ``since + 1``, do not know the channel,
        or hold more than ``limit`` after it (MongoDB answers those)."""
        kept = self._channels.get(channel)
        if kept is None or not kept.entries:
            return None
        first, last = kept.entries[0][0], kept.newest
        if since + 1 < first or since > last or last - since > limit:
            return None
        return last, [message for _, message in islice(kept.entries, since + 1 - first, None)]

    def newest(self, channel: str) -> int | None:
        """The newest seq of ``channel`` (0: none yet), if this process knows it."""
        kept = self._channels.get(channel)
        return None if kept is None else kept.newest

    def forget(self, channel: str) -> None:
        """The broker stops handing this channel's messages to this process."""
        self._channels.pop(channel, None)
