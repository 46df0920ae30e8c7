"""One process: no other process to reach."""

from __future__ import annotations

import secrets
from typing import Any

from server.realtime.brokers.base import BrokerEvents


class MemoryBroker:
    """The broker of a deployment of one process (REDIS_URL unset)."""

    up = True  # nothing to lose: there is no other process
    control_up = True  # likewise

    def __init__(self) -> None:
        self.node = secrets.token_hex(6)  # this process's id

    async def start(self, events: BrokerEvents) -> None:
        return None

    async def close(self) -> None:
        return None

    async def subscribe(self, channel: str) -> None:
        return None

    async def unsubscribe(self, channel: str) -> None:
        return None

    def publish(self, channel: str, seq: int, payload: bytes) -> None:
        return None

    def publish_control(self, data: bytes) -> None:
        return None

    def state(self) -> dict[str, Any]:
        return {"kind": "memory", "up": True}
