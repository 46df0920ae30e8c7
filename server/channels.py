"""Channel names, parsed once into a value.

A channel is ``<kind>:<name>``: ``room:<room id>``, ``feed:<name>`` or
``user:<user id>``, the name 1 to 64 of ``A-Z a-z 0-9 _ -``. ``Channel`` is a
``str`` (so it keys dictionaries, compares, and encodes to JSON and BSON as the
name it is) that only ``Channel.parse`` builds, with ``kind`` and ``name``.
The whole text must match: ``feed:news\\n`` is not ``feed:news`` (``$`` in
``re.match`` matches before a final newline, ``fullmatch`` does not).
"""

from __future__ import annotations

import re
from typing import Any

from server.errors import ApiError

KINDS = ("room", "feed", "user")
PATTERN = r"(room|feed|user):[A-Za-z0-9_-]{1,64}"  # the whole name, for fullmatch
_CHANNEL = re.compile(PATTERN)
RULE = "channel must be room:, feed: or user: followed by 1 to 64 of A-Z a-z 0-9 _ -"


class Channel(str):
    """A valid channel name."""

    __slots__ = ()

    @classmethod
    def parse(cls, text: Any) -> Channel:
        """The channel ``text`` names; ``invalid_request`` if it names none."""
        if type(text) is cls:
            return text  # type: ignore[no-any-return]
        if not isinstance(text, str) or _CHANNEL.fullmatch(text) is None:
            raise ApiError("invalid_request", RULE)
        return cls(text)

    @property
    def kind(self) -> str:
        """``room``, ``feed`` or ``user``."""
        return self[: self.index(":")]

    @property
    def name(self) -> str:
        """What follows the kind: a room id, a feed's name, a user id."""
        return self[self.index(":") + 1:]
