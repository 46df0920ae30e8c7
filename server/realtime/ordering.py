"""Per-channel order across processes: every served channel is delivered in
``seq`` order, gapless, nothing twice, whatever order the broker hands messages in.

Two processes publishing in one channel reach Redis in any order, and a process
can miss a Redis message (Redis restarted, a connection dropped). So each
process keeps, per channel it serves, the last seq it delivered. A message ahead
of it waits ``GAP_WAIT`` for the missing ones (not counting time the loop was
too busy to read them: a ``FreeTimer``), which are then read from MongoDB
(where every message is stored before it is published); a message at or below
it is a duplicate and dropped. When the broker comes back after an outage,
every served channel is read from MongoDB from its last delivered seq, and live
messages that arrive meanwhile wait behind that read.

``ChannelOrder`` is the pure core (no I/O, no clock); ``Orderer`` runs it with
timers and the MongoDB read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from server.logs import fields
from server.timeouts import FreeTimer

log = logging.getLogger("server.ordering")

GAP_WAIT = 0.05  # seconds a message ahead waits for the missing ones before they are read from MongoDB
FILL_PAGE = 500  # messages read from MongoDB per round trip when filling a gap or catching up
MAX_AHEAD = 10_000  # messages held ahead per channel; beyond, the newest are dropped (MongoDB has them)
RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0)  # waits between failed MongoDB reads, the last repeated
EMPTY_READS = 40  # reads finding nothing before held messages are given up (MongoDB never had their seqs)

Deliver = Callable[[str, int, bytes], None]  # (channel, seq, message push payload)
Fetch = Callable[[str, int, int], Awaitable[list[tuple[int, bytes]]]]  # (channel, after seq, limit)


class ChannelOrder:
    """One channel: releases messages strictly in seq order from ``last + 1``."""

    __slots__ = ("ahead", "last")

    def __init__(self, last: int) -> None:
        self.last = last  # the last seq delivered (or known to be before what is delivered)
        self.ahead: dict[int, bytes] = {}  # seq -> payload, held until the gap before it closes

    def offer(self, seq: int, payload: bytes) -> list[tuple[int, bytes]]:
        """A message arrived; returns what may now be delivered, in order."""
        if seq <= self.last or seq in self.ahead:
            return []
        if seq != self.last + 1:
            if len(self.ahead) < MAX_AHEAD:
                self.ahead[seq] = payload
            return []
        self.last = seq
        released = [(seq, payload)]
        self._release(released)
        return released

    def _release(self, released: list[tuple[int, bytes]]) -> None:
        while self.ahead:
            payload = self.ahead.pop(self.last + 1, None)
            if payload is None:
                break
            self.last += 1
            released.append((self.last, payload))

    @property
    def gap(self) -> bool:
        """Messages are held behind a missing one."""
        return bool(self.ahead)

    def fill(self, stored: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """Messages read from MongoDB after ``last``, in seq order; returns what
        may now be delivered (those and any held ones they join up with)."""
        released: list[tuple[int, bytes]] = []
        for seq, payload in stored:
            if seq == self.last + 1:
                self.last = seq
                self.ahead.pop(seq, None)
                released.append((seq, payload))
            elif seq > self.last + 1:
                break  # not contiguous (a read behind a write): the rest waits for the next fill
        self._release(released)
        for seq in [s for s in self.ahead if s <= self.last]:
            del self.ahead[seq]
        return released


class Orderer:
    """Every served channel's order, with the timers and reads that close gaps.

    A channel is served from ``serve(channel, last)`` until ``stop(channel)``;
    with ``last`` None its first message sets where it starts (one process, where
    messages arrive in seq order). Messages of channels not served are dropped.
    """

    def __init__(self, deliver: Deliver, fetch: Fetch, wait: float = GAP_WAIT) -> None:
        self.deliver = deliver  # hands a message, in order, to the local subscribers
        self.fetch = fetch  # reads stored messages after a seq from MongoDB
        self.wait = wait  # how long a message ahead waits for those before it
        self.channels: dict[str, ChannelOrder | None] = {}  # served channel -> its order (None: start unknown)
        self.waiting: dict[str, list[tuple[int, bytes]]] = {}  # channel whose start is unknown -> what arrived
        self._timers: dict[str, FreeTimer] = {}  # channel -> its pending gap fill (its wait counts free loop time)
        self._filling: dict[str, asyncio.Task[None]] = {}  # channel -> its running read
        self._catch_up: set[str] = set()  # channels whose catch-up waits for their running gap read
        self.fills = 0  # messages delivered from MongoDB rather than from the broker (a metric)
        self.held = 0  # messages that arrived ahead of a missing one (a metric)

    def serve(self, channel: str, last: int | None) -> None:
        if channel in self.channels and self.channels[channel] is not None:
            return
        if last is None:
            self.channels[channel] = None
            self.waiting.setdefault(channel, [])
            return
        self.channels[channel] = ChannelOrder(last)
        for seq, payload in sorted(self.waiting.pop(channel, [])):
            self.offer(channel, seq, payload)

    def stop(self, channel: str) -> None:
        self.channels.pop(channel, None)
        self.waiting.pop(channel, None)
        self._catch_up.discard(channel)
        timer = self._timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
        task = self._filling.pop(channel, None)
        if task is not None:
            task.cancel()

    def last(self, channel: str) -> int | None:
        order = self.channels.get(channel)
        return None if order is None else order.last

    def offer(self, channel: str, seq: int, payload: bytes) -> None:
        """A message from this process or from the broker."""
        if channel not in self.channels:
            return
        order = self.channels[channel]
        if order is None:
            self.serve(channel, seq - 1)  # one process: the first message after subscribing starts it
            order = self.channels[channel]
            assert order is not None
        for released_seq, released in order.offer(seq, payload):
            self.deliver(channel, released_seq, released)
        if seq in order.ahead:
            self.held += 1
        if order.gap and channel not in self._timers and channel not in self._filling:
            self._timers[channel] = FreeTimer(self.wait, self._fill, channel)

    def _fill(self, channel: str) -> None:
        self._timers.pop(channel, None)
        order = self.channels.get(channel)
        if order is not None and order.gap and channel not in self._filling:
            self._start_read(channel, whole=False)

    def catch_up(self, channel: str) -> None:
        """Reads everything after the channel's last delivered seq (the broker was away)."""
        if self.channels.get(channel) is None:
            return
        if channel in self._filling:  # a gap read stops at the gap: the whole read follows it
            self._catch_up.add(channel)
        else:
            self._start_read(channel, whole=True)

    def _start_read(self, channel: str, whole: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._read(channel, whole))
        self._filling[channel] = task
        task.add_done_callback(lambda _: self._read_done(channel, task))

    def _read_done(self, channel: str, task: asyncio.Task[None]) -> None:
        if self._filling.get(channel) is task:
            del self._filling[channel]
        if channel in self._catch_up:
            self._catch_up.discard(channel)
            self.catch_up(channel)
            return
        order = self.channels.get(channel)
        if order is not None and order.gap and channel not in self._timers:  # arrived during the read
            self._timers[channel] = FreeTimer(self.wait, self._fill, channel)

    async def _read(self, channel: str, whole: bool) -> None:
        """Reads pages after ``last`` until the gap is closed (or, ``whole``, until
        MongoDB has nothing newer); a failed read is retried with backoff."""
        failures = empty = 0
        while True:
            order = self.channels.get(channel)
            if order is None or not (whole or order.gap):
                return
            try:
                stored = await self.fetch(channel, order.last, FILL_PAGE)
            except Exception as exc:
                if failures == 0:
                    log.warning("could not read missed messages; retrying",
                                extra=fields(channel=channel, error=repr(exc)))
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
                continue
            if self.channels.get(channel) is not order:
                return  # stopped (or restarted) meanwhile
            released = order.fill(stored)
            self.fills += len(released)
            for seq, payload in released:
                self.deliver(channel, seq, payload)
            if len(stored) < FILL_PAGE:
                if order.gap and not released:
                    empty += 1
                    if empty >= EMPTY_READS:  # held seqs MongoDB never had: not from a publish of ours
                        log.error("messages ahead of a gap MongoDB cannot fill; dropped",
                                  extra=fields(channel=channel, last=order.last, held=len(order.ahead)))
                        order.ahead.clear()
                        return
                    await asyncio.sleep(self.wait)  # MongoDB does not show it yet: look again shortly
                    continue
                if not order.gap:
                    return
