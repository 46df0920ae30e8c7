"""The Redis broker: fan-out between processes and machines through Redis pub/sub.

A process subscribes to a channel's topic when its first local subscriber
arrives and unsubscribes when its last leaves, so a message reaches only the
processes that serve its channel, once each: ``<node> <seq> <payload>``, the
payload being the push the publisher encoded once. A process skips its own
messages (it delivered them itself). Several Redis servers (``REDIS_URL``
comma-separated) share the channels by jump consistent hashing. Control
messages go through every one that is up (every one, queued, if none is),
numbered by their sender; a receiver handles each number once (``Seen``), so
losing any one Redis server, the first included, does not lose control.

Every Redis call has a timeout (``REDIS_TIMEOUT``). A shard whose connection
fails is marked down (logged once), retried with backoff, and when it is back
every channel it carries is re-subscribed and then reported to
``on_recovered``: the hub reads what was missed from MongoDB. Publishes made
while it is down wait in a bounded queue and are sent when it is back
(receivers drop what they already have); if the queue overflowed, a ``resync``
control message asks every process to catch up.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import secrets
from collections import OrderedDict, deque
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from server.logs import fields
from server.realtime.brokers.base import BrokerEvents
from server.timeouts import LAG_CAP, answer_within, within

log = logging.getLogger("server.broker")

PREFIX = "mp:"  # every key and topic of this server in Redis
CONTROL = PREFIX + "control"  # the topic every process subscribes to
RESYNC = b'{"op":"resync"}'  # control: every process catches every channel up from MongoDB
BACKOFF_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)  # waits between reconnection attempts, the last repeated
PING_SECONDS = 1.0  # how often a shard's liveness is checked
MAX_QUEUED = 100_000  # publishes held while a shard is down; beyond, the oldest are dropped (and resync)
BATCH = 1000  # publishes sent per pipeline
CONTROL_WINDOW = 1024  # per sender: control numbers remembered; one this far behind its newest is dropped
CONTROL_SENDERS = 256  # senders remembered (the longest silent forgotten first)


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash: adding a bucket moves 1/n of the keys."""
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        candidate = int((bucket + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return bucket


def shard_of(channel: str, shards: int) -> int:
    """The shard carrying ``channel``: stable across processes, machines and restarts."""
    if shards == 1:
        return 0
    return jump_hash(int.from_bytes(hashlib.blake2b(channel.encode(), digest_size=8).digest(), "big"), shards)


def topic(channel: str) -> str:
    return PREFIX + "c:" + channel


class Seen:
    """The control messages already handled, by (sender, number): each arrives
    once per Redis server. Bounded: CONTROL_WINDOW numbers per sender (an older
    one counts as seen: late, or doubled), CONTROL_SENDERS senders."""

    def __init__(self) -> None:
        self.senders: OrderedDict[bytes, tuple[int, set[int]]] = OrderedDict()  # sender -> (newest, recent)

    def first(self, sender: bytes, number: int) -> bool:
        """True the first time (sender, number) arrives."""
        newest, recent = self.senders.pop(sender, (0, set()))
        fresh = number > newest - CONTROL_WINDOW and number not in recent
        if fresh:
            recent.add(number)
            if number > newest:
                newest = number
                if len(recent) > 2 * CONTROL_WINDOW:  # pruned now and then: O(1) a message
                    recent = {n for n in recent if n > newest - CONTROL_WINDOW}
        self.senders[sender] = (newest, recent)
        if len(self.senders) > CONTROL_SENDERS:
            self.senders.popitem(last=False)
        return fresh


def client_for(url: str, timeout: float, **options: Any) -> Redis:
    """A client of one Redis server with no retries of its own. Its calls are
    bounded by ``answer_within(..., timeout)``; its socket timeouts are only
    the backstop, as long as that bound can stretch on a busy loop."""
    backstop = timeout * LAG_CAP
    return Redis.from_url(url, socket_timeout=backstop, socket_connect_timeout=backstop,
                          retry=Retry(NoBackoff(), 0), **options)


class _Shard:
    """One Redis server: a pub/sub connection for what arrives, a command
    connection for publishes and pings, and their reconnection."""

    def __init__(self, broker: RedisBroker, url: str, index: int) -> None:
        self.broker = broker  # the owner: node id, events, settings
        self.url = url  # redis://host:port/db
        self.index = index  # position in REDIS_URL
        self.topics: set[str] = {CONTROL}  # topics this process wants from this shard
        self.up = False  # connected and subscribed to every topic
        self.ever_up = False  # a later connection is a recovery (channels may have missed messages)
        self.queue: deque[tuple[str, bytes]] = deque()  # publishes not yet sent
        self._wake = asyncio.Event()  # set when the queue has work
        self._client: Redis | None = None  # command connection
        self._pubsub: PubSub | None = None  # subscriptions
        self._confirm: dict[str, deque[asyncio.Future[None]]] = {}  # topic -> subscribes awaiting Redis's reply
        self._tasks: list[asyncio.Task[None]] = []  # the connection loop and the writer
        self._lost = asyncio.Event()  # set when the current connection failed
        self.failures = 0  # connection failures since the last success (for the backoff)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._connection_loop()), asyncio.create_task(self._writer())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await self._disconnect()

    # -- connecting --------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        while True:
            self._lost.clear()
            tasks: list[asyncio.Task[Any]] = []
            error: BaseException | None = None
            try:
                tasks = await self._connect()
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                error = next((t.exception() for t in done if t is not tasks[-1]), None)
            except (RedisError, OSError, TimeoutError) as exc:
                error = exc
            finally:
                for task in tasks:
                    task.cancel()
            self._down(error or ConnectionError("the connection was lost"))
            await self._disconnect()
            await asyncio.sleep(BACKOFF_SECONDS[min(self.failures - 1, len(BACKOFF_SECONDS) - 1)])

    async def _connect(self) -> list[asyncio.Task[Any]]:
        """Connects, subscribes to every wanted topic and waits for Redis to confirm
        them; returns the tasks whose end means the connection is lost."""
        timeout = self.broker.timeout
        self._client = client_for(self.url, timeout, health_check_interval=0)
        await answer_within(self._client.ping(), timeout)
        pubsub = self._client.pubsub()
        await answer_within(pubsub.connect(), timeout)  # type: ignore[no-untyped-call]
        self._pubsub = pubsub  # from here a subscribe() goes to Redis itself
        topics = sorted(self.topics)
        waiting = [self._expect(t) for t in topics]
        if topics:
            await answer_within(pubsub.subscribe(*topics), timeout)
        tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._ping(self._client)),
                 asyncio.create_task(self._lost.wait())]
        confirmed = asyncio.ensure_future(answer_within(asyncio.gather(*waiting), timeout))
        try:
            done, _ = await asyncio.wait([confirmed, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if confirmed not in done:
                raise ConnectionError("the connection was lost while subscribing")
            confirmed.result()
        except BaseException:  # a failure, or close() while the subscriptions wait: no task outlives it
            confirmed.cancel()
            for task in tasks:
                task.cancel()
            raise
        recovered = self.ever_up
        self.up = self.ever_up = True
        self.failures = 0
        self._wake.set()  # publishes held while down go now
        log.log(logging.WARNING if recovered else logging.INFO,
                "redis is back; catching up from MongoDB" if recovered else "redis connected",
                extra=fields(shard=self.index, url=self._safe_url()))
        # Channels served before this connection (Redis was away, or not there yet at start-up) may
        # have missed messages: each is read from MongoDB from its last delivered seq.
        channels = [t[len(PREFIX) + 2:] for t in self.topics if t != CONTROL]
        if channels:
            self.broker.recovered(self, channels)
        if self.broker.lost:  # publishes were dropped while a shard was away: every process catches up
            self.broker.lost = False
            self.broker.publish_control(RESYNC)
        return tasks

    def _safe_url(self) -> str:
        """The URL without its password."""
        head, at, tail = self.url.rpartition("@")
        return self.url if not at else head.split("://")[0] + "://[redacted]@" + tail

    def _down(self, exc: BaseException) -> None:
        self.failures += 1
        for futures in self._confirm.values():
            for future in futures:
                if not future.done():
                    future.set_exception(ConnectionError("redis is down"))
        self._confirm.clear()
        if self.up or self.failures == 1:  # logged once per outage, not per retry or per message
            log.error("redis is unreachable; deliveries to other processes pause",
                      extra=fields(shard=self.index, url=self._safe_url(), error=repr(exc)))
        self.up = False

    async def _disconnect(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        for closing in (pubsub, client):
            if closing is not None:
                try:
                    await within(closing.aclose(), self.broker.timeout)
                except (RedisError, OSError, TimeoutError, RuntimeError):
                    pass

    async def _ping(self, client: Redis) -> None:
        """Checks the connection's liveness; ends (the connection is lost) when Redis does not answer in time."""
        while True:
            await asyncio.sleep(PING_SECONDS)
            await answer_within(client.ping(), self.broker.timeout)

    # -- what arrives ------------------------------------------------------------------------

    def _expect(self, name: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirm.setdefault(name, deque()).append(future)
        return future

    async def _read(self) -> None:
        assert self._pubsub is not None
        pubsub = self._pubsub
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind = message["type"]
            name = message["channel"].decode()
            if kind == "message":
                self.broker.arrived(name, message["data"])
            elif kind == "subscribe":
                futures = self._confirm.get(name)
                if futures:
                    future = futures.popleft()
                    if not futures:
                        del self._confirm[name]
                    if not future.done():
                        future.set_result(None)

    # -- subscriptions -----------------------------------------------------------------------

    async def subscribe(self, name: str) -> None:
        self.topics.add(name)
        if self._pubsub is None:
            return  # subscribed on reconnection, then caught up through on_recovered
        confirmed = self._expect(name)
        try:
            await answer_within(self._pubsub.subscribe(name), self.broker.timeout)
            await answer_within(confirmed, self.broker.timeout)
        except (RedisError, OSError, TimeoutError, ConnectionError) as exc:
            self._lost.set()  # reconnects, re-subscribes everything, then catches up
            log.debug("subscribe failed", extra=fields(shard=self.index, error=repr(exc)))

    async def unsubscribe(self, name: str) -> None:
        self.topics.discard(name)
        if self._pubsub is not None:
            try:
                await answer_within(self._pubsub.unsubscribe(name), self.broker.timeout)
            except (RedisError, OSError, TimeoutError) as exc:
                self._lost.set()
                log.debug("unsubscribe failed", extra=fields(shard=self.index, error=repr(exc)))

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, name: str, data: bytes) -> None:
        if len(self.queue) >= MAX_QUEUED:
            self.queue.popleft()
            self.broker.lost = True
        self.queue.append((name, data))
        self._wake.set()

    async def _writer(self) -> None:
        """Sends queued publishes in order, a pipeline at a time; on failure they
        stay queued and go once the shard is back."""
        delay = self.broker.publish_delay
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue and self.up and self._client is not None:
                if delay:
                    await asyncio.sleep(delay)
                    if not self.up or self._client is None:
                        break  # the connection was lost meanwhile: sent once the shard is back
                batch = [self.queue[i] for i in range(min(BATCH, len(self.queue)))]
                pipe = self._client.pipeline(transaction=False)
                for name, data in batch:
                    pipe.publish(name, data)
                try:
                    await answer_within(pipe.execute(), self.broker.timeout)
                except (RedisError, OSError, TimeoutError) as exc:
                    self._lost.set()
                    log.debug("publish failed", extra=fields(shard=self.index, error=repr(exc)))
                    break
                for _ in batch:
                    self.queue.popleft()
                self.broker.sent += len(batch)


class RedisBroker:
    """Fan-out through one or several Redis servers (REDIS_URL)."""

    def __init__(self, urls: list[str], timeout: float = 2.0, publish_delay: float = 0.0) -> None:
        self.node = secrets.token_hex(6)  # this process's id: its own messages come back and are skipped
        self.timeout = timeout  # seconds any Redis call may take
        self.publish_delay = publish_delay  # tests only: holds this process's publishes back, so others overtake
        self.shards = [_Shard(self, url, index) for index, url in enumerate(urls)]  # one per Redis server
        self.events: BrokerEvents | None = None  # the hub
        self.received = 0  # messages from other processes
        self.sent = 0  # publishes sent to Redis
        self.lost = False  # publishes were dropped (a shard away too long): a resync follows its recovery
        self._control_numbers = itertools.count(1)  # this process's control messages, numbered
        self.seen = Seen()  # control messages handled (each comes once per shard)

    @property
    def up(self) -> bool:
        return all(shard.up for shard in self.shards)

    @property
    def control_up(self) -> bool:
        """Control messages reach the other processes (through one shard at least)."""
        return any(shard.up for shard in self.shards)

    async def start(self, events: BrokerEvents) -> None:
        """Starts connecting; returns once every shard answered or the timeout passed
        (the server starts with Redis down and catches up when it comes)."""
        self.events = events
        for shard in self.shards:
            shard.start()
        deadline = asyncio.get_running_loop().time() + self.timeout
        while not self.up and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for shard in self.shards:
            await shard.close()

    def _shard(self, channel: str) -> _Shard:
        return self.shards[shard_of(channel, len(self.shards))]

    async def subscribe(self, channel: str) -> None:
        await self._shard(channel).subscribe(topic(channel))

    async def unsubscribe(self, channel: str) -> None:
        await self._shard(channel).unsubscribe(topic(channel))

    def publish(self, channel: str, seq: int, payload: bytes) -> None:
        self._shard(channel).publish(topic(channel), b"%s %d %s" % (self.node.encode(), seq, payload))

    def publish_control(self, data: bytes) -> None:
        message = b"%s %d %s" % (self.node.encode(), next(self._control_numbers), data)
        for shard in [s for s in self.shards if s.up] or self.shards:
            shard.publish(CONTROL, message)

    # -- from the shards ----------------------------------------------------------------------

    def arrived(self, name: str, data: bytes) -> None:
        node, _, rest = data.partition(b" ")
        if node == self.node.encode() or self.events is None:
            return
        self.received += 1
        if name == CONTROL:
            if rest[:1] == b"{":  # a process of the previous version: "<node> <body>", sent once, on the first
                body = rest  # Redis only (nothing to de-duplicate); a rolling upgrade keeps its sign-outs working
            else:
                number, _, body = rest.partition(b" ")
                try:
                    if not self.seen.first(node, int(number)):
                        return
                except ValueError:
                    log.warning("a malformed control message; ignored", extra=fields(size=len(data)))
                    return
            if body == RESYNC:
                self.recovered(None, None)
            else:
                self.events.on_control(body)
            return
        seq, _, payload = rest.partition(b" ")
        try:
            self.events.on_message(name[len(PREFIX) + 2:], int(seq), payload)
        except ValueError:
            log.warning("a malformed message on a topic; ignored", extra=fields(topic=name))

    def recovered(self, shard: _Shard | None, channels: list[str] | None) -> None:
        if self.events is None:
            return
        if channels is None:  # a resync: every channel of every shard
            channels = [t[len(PREFIX) + 2:] for s in self.shards for t in s.topics if t != CONTROL]
        self.events.on_recovered(channels)

    def state(self) -> dict[str, Any]:
        return {"kind": "redis", "up": self.up, "shards": len(self.shards),
                "shards_up": sum(s.up for s in self.shards), "sent": self.sent, "received": self.received,
                "queued": sum(len(s.queue) for s in self.shards)}
