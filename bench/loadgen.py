"""A WebSocket load generator: one process holding many sessions.

Each session is a plain ``asyncio.Protocol`` speaking RFC 6455 itself (no
WebSocket library: a library's per-message objects, queues and wake-ups cost more
CPU than the server under test spends on the delivery, and these processes share
the machine's two cores with it). It answers pings, and counts every delivered
message by its ``seq`` with a byte search; the publisher's send time
(``data.t``, epoch seconds; every process runs on this machine, so clocks agree)
gives the latency of every ``sample_every``-th delivery.

It speaks three dialects, so that one load generator drives every server the
benchmarks compare:

- ``ours``: this project's protocol: after the upgrade it sends ``subscribe``
  (with ``since`` when it reconnects) for each channel and waits for the replies;
  the replay in a reply counts as delivered.
- ``plain``: the server subscribes every socket itself (the peers' broadcasts).
- ``socketio``: Engine.IO 4 over a WebSocket: ``0{...}`` open, ``40`` to join the
  default namespace, ``2``/``3`` pings; messages are ``42["message",{...}]``.

Bounded: a worker stops after its time limit or when told to, and connects only
to the loopback address it is given. Several workers (processes) share the load
because each process holds at most 20,000 descriptors here; each worker connects
from its own source address (127.0.0.N) so ephemeral ports never run out.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import ujson

from bench.link import Link

CONNECTING = 64  # handshakes in flight per process: the ramp measures the server, not a queue
MAX_SESSIONS = 19_000  # per process: each holds at most 20,000 descriptors here
SEQ = b'"seq":'
SEQS = re.compile(rb'"seq": *(\d+)')  # a "seq" key and its value: only a key can match (quotes in strings are escaped)
MESSAGES = b'"messages":['
SUBSCRIBED = b'{"id":0,"result":'  # the start of a successful subscribe reply (command id 0)
OPEN_SECONDS = 120.0  # a session not subscribed this long after its connect counts as failed
T = b'"t":'
SHARED_IDS = 2**40  # command ids above this subscribe the shared channels
PAD = "x" * 100  # a message of about 140 bytes of data, as the fan-out bench sends


@dataclass
class Counts:
    """What one load-generator process saw since its last report."""

    opened: int = 0  # sessions that subscribed
    failed: int = 0  # sessions that could not connect or subscribe
    closed: int = 0  # sessions the server closed
    deliveries: int = 0  # messages received, all sessions (replays included)
    doubled: int = 0  # messages a session received twice (by seq)
    skipped: int = 0  # messages a session never got: a seq more than one past its last, or a replay short of it
    acked: int = 0  # publishes answered with a result
    refused: int = 0  # publishes answered with an error
    ack_latencies: list[float] = field(default_factory=list)  # seconds from publish to its reply
    latencies: list[float] = field(default_factory=list)  # seconds, a sample of deliveries
    by_seq: Counter[int] = field(default_factory=Counter)  # seq -> sessions that received it
    why_failed: dict[str, int] = field(default_factory=dict)  # why sessions failed -> how many


def _frame(opcode: int, payload: bytes) -> bytes:
    """A client frame, masked as RFC 6455 requires of clients."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, 0x80 | size])
    elif size < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    key = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big") if size else b""
    return header + mask + masked


def replay_seqs(reply: bytes) -> tuple[int, list[int]]:
    """The channel's seq and the replayed messages' seqs in a successful
    subscribe reply (``{"id":0,"result":{"channel":..,"seq":N,..,"messages":[..]}}``),
    found by scanning instead of decoding up to RECOVERY_MAX messages: exact as long
    as no message's data has a key named "seq" (the benchmarks' data never has).
    A reply of another shape raises ValueError."""
    start = reply.find(MESSAGES)
    current = SEQS.search(reply, 0, start) if start > 0 else None
    if current is None:
        raise ValueError("not a subscribe result with its seq before its messages")
    return int(current.group(1)), [int(seq) for seq in SEQS.findall(reply, start)]


class Session(asyncio.Protocol):
    """One WebSocket connection, subscribed to one channel."""

    def __init__(self, worker: Worker, channel: str, token: str, last: int = 0) -> None:
        self.worker = worker  # counters and settings shared by this process's sessions
        self.channel = channel  # subscribed (ours)
        self.token = token  # its bearer token (ours)
        self.last = last  # newest seq received: a reconnect asks for what follows it
        self.transport: Link | None = None  # its connection, once made
        self.buffer = b""  # bytes not yet parsed
        self.upgraded = False  # the 101 arrived
        self.settled = False  # subscribed or failed (the worker was told)
        self.started = 0.0  # when its connect began (monotonic seconds)
        self.subscribing = False  # the subscribe reply is due
        self.shared_due = 0  # subscribe replies of the worker's shared channels still due
        self.behind = False  # not yet at the worker's target seq
        self.next_id = 1  # command ids
        self.acks: dict[int, float] = {}  # publish command id -> when it was sent

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: Link) -> None:  # type: ignore[override]
        self.transport = transport
        worker = self.worker
        key = base64.b64encode(os.urandom(16)).decode()
        headers = [f"GET {worker.path} HTTP/1.1", f"Host: {worker.host}:{worker.port}", "Upgrade: websocket",
                   "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if self.token:
            headers.append(f"Authorization: Bearer {self.token}")
        transport.write(("\r\n".join(headers) + "\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.settled:
            self._settle(False, f"connection lost before subscribing ({type(exc).__name__ if exc else 'closed'})")
        elif not self.worker.dropping:
            self.worker.counts.closed += 1

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.buffer = b""
                self._fail(buffer[:buffer.find(b"\r\n")].decode("latin-1") + " " + buffer[end + 4:end + 164].decode(
                    "utf-8", "replace"))
                return
            self.upgraded = True
            buffer = buffer[end + 4:]
            self._opened()
        position, size = 0, len(buffer)
        while size - position >= 2:
            length = buffer[position + 1] & 0x7F
            start = position + 2
            if length == 126:
                length = int.from_bytes(buffer[start:start + 2], "big")
                start += 2
            elif length == 127:
                length = int.from_bytes(buffer[start:start + 8], "big")
                start += 8
            end = start + length
            if end > size:
                break
            opcode = buffer[position] & 0x0F
            position = end
            if opcode == 1:
                self._text(buffer[start:end])
            elif opcode == 9:
                self.send(10, buffer[start:end])
            elif opcode == 8 and self.transport is not None:
                if not self.settled:
                    self._fail(f"closed {int.from_bytes(buffer[start:start + 2], 'big')} before subscribing: "
                               + buffer[start + 2:end].decode("utf-8", "replace"))
                self.transport.close()
        self.buffer = buffer[position:]

    # -- the dialects ----------------------------------------------------------------------

    def _opened(self) -> None:
        dialect = self.worker.dialect
        if dialect == "plain":
            self._subscribed()
        elif dialect == "ours":
            self.subscribing = True
            command: dict[str, Any] = {"id": 0, "op": "subscribe", "channel": self.channel}
            if self.last:
                command["since"] = self.last
            self.send(1, ujson.dumps(command).encode())
            self.shared_due = len(self.worker.shared)
            for index, channel in enumerate(self.worker.shared, 1):  # held only: their pushes are not tracked
                self.send(1, ujson.dumps({"id": SHARED_IDS + index, "op": "subscribe", "channel": channel}).encode())

    def stage(self) -> str:
        """Where an unsettled session stands, for the reason it failed."""
        link = self.transport
        if link is None:
            return "no connection"
        if link.pending:
            return f"connect not established, {len(link.pending)} bytes of the upgrade unsent"
        if not self.upgraded:
            return "upgrade sent, no answer" if not self.buffer else f"upgrade answered in part: {self.buffer[:80]!r}"
        if self.subscribing:
            return "upgraded, subscribe unanswered"
        return f"upgraded, {self.shared_due} shared subscribes unanswered"

    def _subscribed(self) -> None:
        if self.subscribing or self.shared_due:
            return
        if not self.settled:
            self._settle(True)

    def _fail(self, why: str) -> None:
        if not self.settled:
            self._settle(False, why)
        if self.transport is not None:
            self.transport.close()

    def _settle(self, ok: bool, why: str = "") -> None:
        self.settled = True
        if not ok:
            failures = self.worker.counts.why_failed
            failures[why] = failures.get(why, 0) + 1
        self.worker.settled(self, ok)

    def _text(self, payload: bytes) -> None:
        if payload.startswith(b'{"id"'):
            self._reply(payload)
            return
        if self.worker.dialect == "socketio" and payload[:1] in b"0234":
            if payload == b"2":
                self.send(1, b"3")
            elif payload.startswith(b"0{"):
                self.send(1, b"40")
            elif payload.startswith(b"40"):
                self._subscribed()
            if not payload.startswith(b"42"):
                return
        at = payload.find(SEQ, 0, 300)
        if at < 0:
            return  # presence and other pushes
        begin = at + 6
        while payload[begin] == 32:  # Tornado's JSON puts a space after the colon
            begin += 1
        end = begin
        while 48 <= payload[end] <= 57:
            end += 1
        seq = int(payload[begin:end])
        sent = None
        if self.worker.counts.deliveries % self.worker.sample_every == 0:
            at = payload.find(T)
            if at >= 0:
                sent = float(payload[at + 4:payload.find(b",", at)].strip())
        self._message(seq, sent)

    def _reply(self, payload: bytes) -> None:
        if self.subscribing and payload.startswith(b'{"id":0,'):
            self._replay(payload)
            return
        reply = ujson.loads(payload)
        if reply["id"] is None:  # the server could not read a command
            self._fail("a command unread: " + payload[:160].decode("utf-8", "replace"))
            return
        if reply["id"] > SHARED_IDS and self.shared_due:  # a shared channel's subscribe reply
            if "result" not in reply:
                self._fail("a shared channel's subscribe refused: " + payload[:160].decode("utf-8", "replace"))
                return
            self.shared_due -= 1
            self._subscribed()
            return
        sent = self.acks.pop(reply["id"], None)
        if sent is not None:
            counts = self.worker.counts
            if "result" in reply:
                counts.acked += 1
                counts.ack_latencies.append(time.perf_counter() - sent)
            else:
                counts.refused += 1

    def _replay(self, payload: bytes) -> None:
        """The subscribe reply: every replayed message counted, in order, and the
        session's place moved to the channel's seq (with ``since``, any message
        between the replay's end and that seq was skipped)."""
        try:
            if not payload.startswith(SUBSCRIBED):
                raise ValueError("an error")
            current, seqs = replay_seqs(payload)
        except ValueError:
            self._fail("subscribe refused: " + payload[:160].decode("utf-8", "replace"))
            return
        self.subscribing = False
        self._replayed(seqs)
        if self.last and current > self.last:
            self.worker.counts.skipped += current - self.last
        self.last = max(self.last, current)
        self._subscribed()
        self._check_target()

    def _replayed(self, seqs: list[int]) -> None:
        """A replay's messages counted as ``_message`` counts each, in one go when
        they are exactly the seqs after the session's last (the common case: a
        replay of 100 messages per session in a storm was 100 calls, a fifth of the
        generator's CPU, which it takes from the server on this 2-core machine)."""
        last = self.last
        if not seqs or seqs != list(range(last + 1, last + 1 + len(seqs))):
            for seq in seqs:
                self._message(seq, None)
            return
        counts = self.worker.counts
        counts.deliveries += len(seqs)
        counts.by_seq.update(seqs)
        self.last = seqs[-1]

    def _message(self, seq: int, sent: float | None) -> None:
        counts = self.worker.counts
        counts.deliveries += 1
        counts.by_seq[seq] = counts.by_seq.get(seq, 0) + 1
        if sent is not None:
            counts.latencies.append(time.time() - sent)
        last = self.last
        if seq <= last:
            counts.doubled += 1
            return
        if last and seq > last + 1:
            counts.skipped += seq - last - 1
        self.last = seq
        if self.behind and seq >= self.worker.target:
            self._check_target()

    def _check_target(self) -> None:
        if self.behind and self.last >= self.worker.target:
            self.behind = False
            self.worker.caught_up()

    def publish(self, number: int) -> None:
        """A publish command (ours) carrying its send time, for the chat bench."""
        command_id = self.next_id
        self.next_id += 1
        self.acks[command_id] = time.perf_counter()
        command = {"id": command_id, "op": "publish", "channel": self.channel, "cid": f"c{command_id}",
                   "data": {"t": time.time(), "n": number, "pad": PAD}}
        self.send(1, ujson.dumps(command).encode())

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(opcode, payload))


class Worker:
    """One load-generator process: its sessions and counters."""

    def __init__(self, url: str, tokens: list[str], dialect: str, channels: list[str], sample_every: int,
                 source: str, shared: list[str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError("the load generator connects to loopback only")
        self.host, self.port = "127.0.0.1", int(parts.port or 80)
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.tokens = tokens or [""]  # session i sends tokens[i % len(tokens)] as a bearer token
        self.dialect = dialect  # ours, plain or socketio
        self.channels = channels  # session i subscribes to channels[i % len(channels)] (ours)
        self.shared = shared or []  # and every session to each of these (ours)
        self.sample_every = max(1, sample_every)  # every Nth delivery's latency
        self.source = source  # 127.0.0.N
        self.counts = Counts()  # what was seen since the last report
        self.sessions: list[Session] = []  # the subscribed sessions
        self.waiting: deque[Session] = deque()  # sessions still to connect
        self.connecting: set[Session] = set()  # sessions connected (or connecting) and not yet subscribed
        self.all_open: asyncio.Future[None] | None = None  # done when every session of open() has settled
        self.expiry: asyncio.TimerHandle | None = None  # the next look for sessions too long unsubscribed
        self.dropping = False  # closing every session on purpose
        self.target = 0  # the seq every session must reach (reconnect storm)
        self.behind = 0  # sessions not yet at target
        self.all_caught_up = 0.0  # when the last one got there (epoch seconds)

    async def open(self, sessions: list[Session]) -> None:
        """Connects ``sessions``, at most CONNECTING handshakes at a time, each
        started from the callback that settled another (no task per session);
        done when each has subscribed or failed."""
        loop = asyncio.get_running_loop()
        self.all_open = loop.create_future()
        self.waiting.extend(sessions)
        self._connect_more()
        self.expiry = loop.call_later(OPEN_SECONDS / 4, self._expire)
        try:
            await self.all_open
        finally:
            self.expiry.cancel()

    def _connect_more(self) -> None:
        now = time.monotonic()
        while len(self.connecting) < CONNECTING and self.waiting:
            session = self.waiting.popleft()
            session.started = now
            self.connecting.add(session)
            Link(session, self.source, (self.host, self.port))
        if not self.connecting and self.all_open is not None and not self.all_open.done():
            self.all_open.set_result(None)

    def settled(self, session: Session, ok: bool) -> None:
        """``session`` subscribed (``ok``) or failed: counted, and the next one connects."""
        self.connecting.discard(session)
        if ok:
            self.counts.opened += 1
            self.sessions.append(session)
        else:
            self.counts.failed += 1
            if session.behind:
                session.behind = False
                self.caught_up()
        self._connect_more()

    def _expire(self) -> None:
        """Fails the sessions still not subscribed OPEN_SECONDS after their connect (a guard)."""
        now = time.monotonic()
        for session in [s for s in self.connecting if now - s.started > OPEN_SECONDS]:
            session._fail(f"not subscribed {OPEN_SECONDS:.0f} s after its connect ({session.stage()})")
        self.expiry = asyncio.get_running_loop().call_later(OPEN_SECONDS / 4, self._expire)

    def drop(self) -> None:
        """Closes every session at once (the client side of a reconnect storm)."""
        self.dropping = True
        for session in self.sessions:
            if session.transport is not None:
                session.transport.abort()

    async def reconnect(self, target: int) -> None:
        """Reopens every dropped session with ``since`` its last seq; done when
        each has every message up to ``target``."""
        self.target = target
        self.counts = Counts()
        self.dropping = False
        fresh = [Session(self, s.channel, s.token, s.last) for s in self.sessions]
        self.sessions = []
        self.behind = len(fresh)
        for session in fresh:
            session.behind = True
        await self.open(fresh)

    def caught_up(self) -> None:
        self.behind -= 1
        if self.behind == 0:
            self.all_caught_up = time.time()


async def _worker(url: str, tokens: list[str], dialect: str, sessions: int, channels: list[str], seconds: float,
                  commands: Any, reports: Any, sample_every: int, source: str, shared: list[str]) -> None:
    if sessions > MAX_SESSIONS:
        raise ValueError(f"at most {MAX_SESSIONS} sessions per load-generator process: use more processes")
    worker = Worker(url, tokens, dialect, channels, sample_every, source, shared)
    started = time.perf_counter()
    await worker.open([Session(worker, channels[i % len(channels)] if channels else "",
                               worker.tokens[i % len(worker.tokens)]) for i in range(sessions)])
    reports.put(("ready", worker.counts.opened, worker.counts.failed, time.perf_counter() - started,
                 dict(worker.counts.why_failed)))
    loop = asyncio.get_running_loop()
    deadline = started + seconds
    publishing: asyncio.Task[None] | None = None
    while time.perf_counter() < deadline:
        command = await loop.run_in_executor(None, _poll, commands)
        if command is None:
            continue
        name, argument = command
        if name == "report":
            counts = worker.counts
            reports.put(("report", counts))
            worker.counts = Counts()
        elif name == "drop":
            worker.drop()
            await asyncio.sleep(0.5)
            reports.put(("dropped", len(worker.sessions)))
        elif name == "reconnect":  # argument: the seq every session must reach
            start = time.time()
            opening = asyncio.create_task(worker.reconnect(argument))
            while (not opening.done() or worker.behind > 0) and time.perf_counter() < deadline:
                await asyncio.sleep(0.02)
            lost = sum(max(0, argument - s.last) for s in worker.sessions) + worker.counts.skipped
            reports.put(("storm", worker.counts.opened, worker.counts.failed, start,
                         worker.all_caught_up or time.time(), lost, worker.counts.doubled, worker.counts.deliveries,
                         worker.counts.why_failed))
        elif name == "publish":  # argument: (messages per second per session, seconds)
            publishing = asyncio.create_task(_publish(worker, *argument))
        elif name == "stop":
            break
    if publishing is not None:
        publishing.cancel()
    for session in worker.sessions:
        if session.transport is not None:
            session.transport.close()
    await asyncio.sleep(0.2)


async def _publish(worker: Worker, rate: float, seconds: float) -> None:
    """Every session publishes ``rate`` messages a second, spread evenly."""
    sessions = list(worker.sessions)
    total = rate * len(sessions)
    start = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(elapsed * total)
        while sent < due:
            sessions[sent % len(sessions)].publish(sent)
            sent += 1
        await asyncio.sleep(0.002)


def _poll(commands: Any) -> tuple[str, Any] | None:
    try:
        command = commands.get(timeout=0.2)
    except Exception:
        return None
    return (command, None) if isinstance(command, str) else tuple(command)  # type: ignore[return-value]


def run_worker(url: str, tokens: list[str], sessions: int, channels: list[str], seconds: float, commands: Any,
               reports: Any, sample_every: int = 1, dialect: str = "ours", source: str = "127.0.0.1",
               shared: list[str] | None = None) -> None:
    """Entry point of one load-generator process."""
    asyncio.run(_worker(url, tokens, dialect, sessions, channels, seconds, commands, reports, sample_every, source,
                        shared or []))
