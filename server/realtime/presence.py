"""Who is in a room, and whose sockets are open, over every process.

``Presence`` is its own interface (as centrifuge's ``presence.go``): the hub
calls ``add`` when a user's first local socket subscribes to a room and
``remove`` when their last local one leaves; each answers whether that was the
user's first (last) socket *anywhere*, so ``join``/``leave`` are pushed once.
``connected`` registers a socket for the per-user cap (WS_MAX_PER_USER) and
answers which sockets, anywhere, must close (the oldest, 4010).

``MemoryPresence`` serves one process. ``RedisPresence`` keeps per-process
entries in Redis, tied to a per-process key that a heartbeat renews every third
of ``PRESENCE_TTL`` and that expires ``PRESENCE_TTL`` seconds after the
process stops renewing it: a dead process's entries stop counting within
``PRESENCE_TTL``, and a surviving process then removes them and reports, to the
callback given to ``bind``, each (room, user) that left with it, so their
``leave`` is pushed once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Presence(Protocol):
    """Room presence and socket counts over the deployment."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def bind(self, on_leave: Callable[[str, str], None]) -> None:
        """``on_leave(channel, user)``: a user left a room because their process died (push their leave)."""

    async def add(self, channel: str, user: str) -> bool:
        """This process now has ``user`` in ``channel``; True if no process had."""

    async def remove(self, channel: str, user: str) -> bool:
        """This process no longer has ``user`` in ``channel``; True if no process has."""

    async def users(self, channel: str) -> list[str]:
        """Everyone in ``channel``, over every process, sorted."""

    async def connected(self, user: str, conn: str, limit: int) -> list[tuple[str, str]]:
        """Registers socket ``conn`` of ``user``; returns the (node, conn) of the
        oldest sockets beyond ``limit``, anywhere, which must close."""

    async def disconnected(self, user: str, conn: str) -> None: ...

    async def nodes(self) -> list[str]:
        """The processes alive in the deployment."""

    async def user_count(self) -> int | None:
        """Distinct users with a socket anywhere; None when not known (sum the processes' figures)."""


class MemoryPresence:
    """One process: presence is what this process holds."""

    def __init__(self, node: str) -> None:
        self.node = node  # this process
        self.rooms: dict[str, set[str]] = {}  # channel -> users present
        self.sockets: dict[str, list[str]] = {}  # user -> their sockets, oldest first

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def bind(self, on_leave: Callable[[str, str], None]) -> None:
        return None  # no other process can die under this one

    async def add(self, channel: str, user: str) -> bool:
        users = self.rooms.setdefault(channel, set())
        first = user not in users
        users.add(user)
        return first

    async def remove(self, channel: str, user: str) -> bool:
        users = self.rooms.get(channel, set())
        last = user in users
        users.discard(user)
        if not users:
            self.rooms.pop(channel, None)
        return last

    async def users(self, channel: str) -> list[str]:
        return sorted(self.rooms.get(channel, ()))

    async def connected(self, user: str, conn: str, limit: int) -> list[tuple[str, str]]:
        sockets = self.sockets.setdefault(user, [])
        sockets.append(conn)
        extra = sockets[:max(0, len(sockets) - limit)]
        del sockets[:len(extra)]
        return [(self.node, c) for c in extra]

    async def disconnected(self, user: str, conn: str) -> None:
        sockets = self.sockets.get(user, [])
        if conn in sockets:
            sockets.remove(conn)
        if not sockets:
            self.sockets.pop(user, None)

    async def nodes(self) -> list[str]:
        return [self.node]

    async def user_count(self) -> int | None:
        return None  # the hub counts its own users (it does not call connected with one process)
