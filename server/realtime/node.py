"""This process as one node of the deployment: the broker, the per-channel
order, presence and the control messages between processes, behind the few
calls the hub makes (as centrifuge's ``Node``).

The hub acquires a channel when a local socket subscribes and releases it when
one leaves. A channel is *served* from its first acquire until ``LINGER``
seconds after its last release: the broker subscribes to it, and every message
of it, published here or elsewhere, reaches ``Local.deliver`` once, in seq
order (``Orderer``). Lingering keeps a channel's recent messages complete for
a reconnect storm and spares Redis subscribe churn.

With the memory broker there is no other process: every message published here
is delivered at once, channel served or not (``Messages`` hands them over in
seq order), so the replay cache sees every message.

Control messages (JSON) go to every other process: ``tell`` sends one, ``ask``
sends one and gathers every live process's answer (bounded by
``ASK_SECONDS``). Handlers are registered by op with ``on``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import ujson

from server.logs import fields
from server.protocol import encode_presence_push
from server.realtime.brokers.base import Broker
from server.realtime.ordering import Fetch, Orderer
from server.realtime.presence import Presence
from server.timeouts import within

log = logging.getLogger("server.node")

LINGER = 30.0  # seconds a channel stays served after its last local subscriber left
ASK_SECONDS = 1.0  # how long ``ask`` waits for the other processes' answers
POSITION_CHECKS = 500  # quiet channels compared with MongoDB per round at most (the next round goes on)

Handler = Callable[[dict[str, Any]], Any]  # a control message -> its answer (for ask), may be awaitable


class Local(Protocol):
    """What the node needs of this process's hub."""

    def deliver(self, channel: str, seq: int, payload: bytes) -> None:
        """A push payload for the local subscribers of ``channel`` (seq 0: not a message)."""

    def forget(self, channel: str) -> None:
        """``channel`` is no longer served: its recent messages would go stale."""


class Node:
    """The broker, ordering, presence and control of this process."""

    def __init__(self, broker: Broker, presence: Presence, fetch: Fetch,
                 last_seq: Callable[[str], Awaitable[int]], position_check: float = 0.0) -> None:
        self.broker = broker  # fan-out to the other processes
        self.presence = presence  # rooms' users and sockets over processes
        self.last_seq = last_seq  # a channel's newest stored seq (MongoDB): where serving starts
        self.local: Local | None = None  # this process's hub, once bound
        self.orderer = Orderer(self._deliver, fetch)  # per-channel seq order for messages from other processes
        self.delivers_all = broker.state()["kind"] == "memory"  # one process: it sees every message
        self.users: dict[str, int] = {}  # served channel -> local subscriptions
        self._opening: dict[str, asyncio.Future[None]] = {}  # channel -> its broker subscribe and start read
        self._lingering: dict[str, asyncio.TimerHandle] = {}  # released channel -> when it stops being served
        self._handlers: dict[str, Handler] = {}  # control op -> handler
        self._asks: dict[str, tuple[asyncio.Queue[Any], set[str]]] = {}  # ask id -> (answers, who answered)
        self._ids = itertools.count(1)  # ask ids
        self._tasks: set[asyncio.Future[Any]] = set()  # control handlers and unsubscribes running
        self.position_check = position_check  # seconds between checks of quiet channels (0: none)
        self._mine: list[tuple[str, int, bytes]] = []  # messages stored here, for delivery here next (published)
        self._delivered_at: dict[str, float] = {}  # served channel -> loop time of its last delivered message
        self._checker: asyncio.Task[None] | None = None  # the position check
        self._check_from = 0  # where the next position check round starts among the served channels
        self.on("answer", self._answer)
        presence.bind(self._left, self._joined)

    @property
    def node(self) -> str:
        return self.broker.node

    def bind(self, local: Local) -> None:
        self.local = local

    async def start(self) -> None:
        await self.broker.start(self)
        await self.presence.start()
        if not self.delivers_all and self.position_check > 0:
            self._checker = asyncio.get_running_loop().create_task(self._check_positions())

    async def close(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
        for timer in self._lingering.values():
            timer.cancel()
        for channel in list(self.orderer.channels):
            self.orderer.stop(channel)
        await self.presence.close()
        await self.broker.close()

    # -- channels -------------------------------------------------------------------------

    async def acquire(self, channel: str) -> None:
        """A local socket subscribes to ``channel``: returns once the channel is served."""
        self.users[channel] = self.users.get(channel, 0) + 1
        timer = self._lingering.pop(channel, None)
        if timer is not None:
            timer.cancel()
        if self.delivers_all:
            return
        opening = self._opening.get(channel)
        if opening is None:
            if self.orderer.last(channel) is not None:
                return  # served already (lingering)
            opening = self._opening[channel] = asyncio.ensure_future(self._open(channel))
            opening.add_done_callback(lambda _: self._opening.pop(channel, None))
        try:
            await asyncio.shield(opening)
        except BaseException:
            self.release(channel)
            raise

    async def _open(self, channel: str) -> None:
        await self.broker.subscribe(channel)
        # Subscribed first, then read: a message stored after this read is published after the
        # subscribe took effect, so it arrives (or its gap is filled); one stored before is counted here.
        last = await self.last_seq(channel)
        self.orderer.serve(channel, last)

    def release(self, channel: str) -> None:
        """A local socket left ``channel``."""
        count = self.users.get(channel, 0) - 1
        if count > 0:
            self.users[channel] = count
            return
        self.users.pop(channel, None)
        if channel not in self._lingering and not self.delivers_all:
            self._lingering[channel] = asyncio.get_running_loop().call_later(LINGER, self._stop, channel)

    def _stop(self, channel: str) -> None:
        self._lingering.pop(channel, None)
        if self.users.get(channel) or self.delivers_all:  # one process: every message reaches it anyway
            return
        if self.local is not None:
            self.local.forget(channel)
        self.orderer.stop(channel)
        self._delivered_at.pop(channel, None)
        self._spawn(self.broker.unsubscribe(channel))

    async def _check_positions(self) -> None:
        """Every ``position_check`` seconds, each served channel that delivered nothing
        meanwhile is compared with MongoDB's newest seq, and caught up if behind: a
        message whose publisher died before sending it to Redis reaches this process
        although no later message of its channel opens a gap. A busy channel needs no
        check (its next message shows the gap)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.position_check)
            quiet_since = loop.time() - self.position_check
            served = list(self.orderer.channels)
            start = self._check_from % len(served) if served else 0
            quiet = [channel for channel in served[start:] + served[:start]
                     if self._delivered_at.get(channel, 0.0) <= quiet_since][:POSITION_CHECKS]
            self._check_from = start + len(quiet)
            for channel in quiet:
                last = self.orderer.last(channel)
                if last is None:  # stopped serving meanwhile
                    continue
                try:
                    newest = await self.last_seq(channel)
                except Exception as exc:  # the database is away: the next round tries again
                    log.warning("position check failed", extra=fields(channel=channel, error=repr(exc)))
                    break
                current = self.orderer.last(channel)  # it may have moved during the read
                if current is not None and newest > current:
                    log.info("position check: channel behind; catching up",
                             extra=fields(channel=channel, last=last, newest=newest))
                    self.orderer.catch_up(channel)

    # -- messages ---------------------------------------------------------------------------

    def published(self, channel: str, seq: int, payload: bytes) -> None:
        """A message stored by this process (called in seq order): sent to the others, then delivered here.
        With other processes, the local delivery waits for the next loop turn: the broker's writer, woken
        first, sends a whole group commit's messages before this process spends the turn fanning them out to
        its sockets, so the other processes, which may hold the next seqs waiting for these, do not wait
        behind that (it was up to 0.8 s on a busy worker; 1 ms since)."""
        self.broker.publish(channel, seq, payload)
        if self.delivers_all:
            self._deliver(channel, seq, payload)
            return
        if not self._mine:
            asyncio.get_running_loop().call_soon(self._offer_mine)
        self._mine.append((channel, seq, payload))

    def _offer_mine(self) -> None:
        """This process's messages of the last loop turn, delivered here once the broker's writer, woken before,
        has sent them on: a group commit's messages reach the other processes before its fan-out here starts."""
        mine, self._mine = self._mine, []
        for channel, seq, payload in mine:
            self.orderer.offer(channel, seq, payload)

    def push(self, channel: str, payload: bytes) -> None:
        """A push outside the message order (join, leave), here and everywhere."""
        self._deliver(channel, 0, payload)
        self.broker.publish(channel, 0, payload)

    def _left(self, channel: str, user: str) -> None:
        """A dead process held ``user``'s last socket in room ``channel``: their leave, as a live one's."""
        self.push(channel, encode_presence_push("leave", channel, user))

    def _joined(self, channel: str, user: str) -> None:
        """This process, back from a stall, wrote ``user`` back into room ``channel`` after a reaper pushed their
        leave: their join."""
        self.push(channel, encode_presence_push("join", channel, user))

    def _deliver(self, channel: str, seq: int, payload: bytes) -> None:
        if seq:
            self._delivered_at[channel] = asyncio.get_running_loop().time()
        if self.local is not None:
            self.local.deliver(channel, seq, payload)

    # -- BrokerEvents ---------------------------------------------------------------------

    def on_message(self, channel: str, seq: int, payload: bytes) -> None:
        if seq == 0:
            if channel in self.users:
                self._deliver(channel, 0, payload)
        else:
            self.orderer.offer(channel, seq, payload)

    def on_recovered(self, channels: list[str]) -> None:
        for channel in channels:
            self.orderer.catch_up(channel)

    def on_control(self, data: bytes) -> None:
        try:
            message = ujson.loads(data)
            handler = self._handlers[message["op"]]
        except (ValueError, KeyError, TypeError):
            log.warning("an unknown control message; ignored", extra=fields(size=len(data)))
            return
        self._spawn(self._run(handler, message))

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: Handler, message: dict[str, Any]) -> None:
        try:
            result = handler(message)
            if asyncio.iscoroutine(result):
                result = await result
        except Exception:
            log.exception("a control message failed", extra=fields(op=message.get("op")))
            return
        if "ask" in message and message["op"] != "answer":
            self.tell("answer", ask=message["ask"], node=self.node, result=result)

    # -- control ------------------------------------------------------------------------------

    def on(self, op: str, handler: Handler) -> None:
        self._handlers[op] = handler

    def tell(self, op: str, **values: Any) -> None:
        """Sends a control message to every other process."""
        self.broker.publish_control(ujson.dumps({"op": op, **values}).encode())

    async def ask(self, op: str, **values: Any) -> list[tuple[str, Any]]:
        """Sends a control message; returns every other live process's (node, answer)
        that came within ASK_SECONDS."""
        expected = set(await self.presence.nodes()) - {self.node}
        if not expected or not self.broker.control_up:
            return []
        ask = f"{self.node}-{next(self._ids)}"
        answers: asyncio.Queue[Any] = asyncio.Queue()
        self._asks[ask] = (answers, set())
        self.tell(op, ask=ask, **values)
        gathered: list[tuple[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + ASK_SECONDS
        try:
            while expected - {node for node, _ in gathered}:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    gathered.append(await within(answers.get(), remaining))
                except TimeoutError:
                    break
        finally:
            del self._asks[ask]
        return gathered

    def _answer(self, message: dict[str, Any]) -> None:
        waiting = self._asks.get(message.get("ask", ""))
        if waiting is not None and message["node"] not in waiting[1]:
            waiting[1].add(message["node"])
            waiting[0].put_nowait((message["node"], message.get("result")))

    async def users_anywhere(self, summed: int) -> int:
        """Distinct users with a socket in the deployment; ``summed`` (the processes'
        own figures added up) when presence does not know (one process, Redis down)."""
        count = await self.presence.user_count()
        return summed if count is None else count

    def state(self) -> dict[str, Any]:
        return {**self.broker.state(), "node": self.node, "channels_served": len(self.orderer.channels),
                "filled_from_mongodb": self.orderer.fills}
