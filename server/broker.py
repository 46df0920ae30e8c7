"""Fan-out between server processes.

The hub hands every frame to the broker, and the broker hands it to every
process's hub (this one included) through ``on_frame``. ``InProcessBroker``
serves one process; a Redis broker for several processes and machines
implements the same interface, and the hub does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

FrameHandler = Callable[[str, bytes, int], None]  # (channel, frame, seq or 0) -> None


class Broker(Protocol):
    """What the hub needs of a broker."""

    # True when every message of every channel reaches this process, subscribed
    # or not; the hub then keeps a channel's recent messages after its last local
    # subscriber leaves (a reconnect storm replays them from memory).
    delivers_all: bool

    def bind(self, on_frame: FrameHandler) -> None:
        """Where frames published by any process arrive in this one."""

    def publish(self, channel: str, frame: bytes, seq: int) -> None:
        """Sends a pre-encoded frame to every process's subscribers of ``channel``."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class InProcessBroker:
    """One process: a publish is delivered at once, in the caller's order."""

    delivers_all = True  # the only process: it sees every message

    def __init__(self) -> None:
        self._on_frame: FrameHandler | None = None  # the hub's delivery

    def bind(self, on_frame: FrameHandler) -> None:
        self._on_frame = on_frame

    def publish(self, channel: str, frame: bytes, seq: int) -> None:
        if self._on_frame is not None:
            self._on_frame(channel, frame, seq)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
