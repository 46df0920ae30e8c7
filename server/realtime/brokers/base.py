"""What the hub needs of a broker: carrying messages and control messages to
the *other* processes of the deployment.

Modelled on centrifuge's ``broker.go``: subscribe, unsubscribe, publish, and an
event handler for what arrives. The publishing process delivers to its own
subscribers itself; a broker only moves what other processes need. MongoDB is
the record: a broker may lose or reorder messages (the hub's ``Orderer`` reads
what is missing from MongoDB), but must say so through ``on_recovered`` when it
may have lost some, and through ``up`` while it cannot carry anything.
"""

from __future__ import annotations

from typing import Any, Protocol


class BrokerEvents(Protocol):
    """What a broker hands to this process."""

    def on_message(self, channel: str, seq: int, payload: bytes) -> None:
        """A message another process published (seq 0: a presence push, unordered)."""

    def on_control(self, data: bytes) -> None:
        """A control message another process sent to every process."""

    def on_recovered(self, channels: list[str]) -> None:
        """The broker is back after an outage: these channels' messages may have been missed."""


class Broker(Protocol):
    """Fan-out between processes."""

    node: str  # this process's id in the deployment

    @property
    def up(self) -> bool:
        """False while messages may not reach other processes (for /readyz and /metrics)."""

    @property
    def control_up(self) -> bool:
        """False while control messages cannot reach other processes."""

    async def start(self, events: BrokerEvents) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, channel: str) -> None:
        """Returns once other processes' messages of ``channel`` reach this one (or, the
        broker down, once it will subscribe when back: ``on_recovered`` follows)."""

    async def unsubscribe(self, channel: str) -> None: ...

    def publish(self, channel: str, seq: int, payload: bytes) -> None:
        """Sends a stored message's push payload (encoded once) to the other
        processes; never waits and never fails: MongoDB already holds it."""

    def publish_control(self, data: bytes) -> None:
        """Sends a control message to every other process."""

    def state(self) -> dict[str, Any]:
        """Figures for /metrics and stats."""
