"""Presence and socket counts in Redis, over every process (see presence.py).

Keys (a channel's on its shard, a user's on theirs, as the broker spreads them;
a node's on every shard):

- ``mp:node:<node>``: exists while the process is alive (renewed every third of
  the TTL, expires PRESENCE_TTL seconds after its last renewal);
- ``mp:nodes``: sorted set of the nodes, scored by their last heartbeat (Redis's
  ``TIME``); the live ones are those scored within the TTL (``nodes``);
- ``mp:p:<channel>``: the users present; ``mp:pu:<channel>:<user>``: the
  nodes holding that user there;
- ``mp:u:<user>``: the user's sockets, ``<node>/<conn>`` scored by when they
  opened; ``mp:users``: the users with a socket (those of this shard: the
  deployment's distinct users are the sum over shards);
- ``mp:nr:<node>`` and ``mp:ns:<node>``: that node's index on this shard, of
  its room entries (``<channel> <user>``) and sockets (``<conn> <user>``), so
  its entries are found without a SCAN when it dies;
- ``mp:reap:<node>``: the claim of the process removing a dead node's entries;
  ``mp:reaped:<node>``: left for a day once that pushed a leave, so a node back
  from a stall (reaped, not dead) pushes the joins of the users it writes back.
- ``mp:v:<sid>``: the shared session vouch (``!`` once revoked).

Each step is one Lua script (presence_lua.py), so two processes adding the
same user at once push one ``join``. A dead node's entries never count, and are
removed by the *reaper*: each heartbeat also answers the nodes whose score is
older than the TTL; one surviving process claims each, removes its entries
chunk by chunk through its index, and ``on_leave`` is told each (room, user)
that no live process holds any more, to push their ``leave`` once. A process
killed is out of presence within PRESENCE_TTL and its users' leaves pushed
within PRESENCE_TTL and a heartbeat (a third of it) of its death.

When a Redis server is away the answers it would give fall back to this
process's own entries (logged once; later calls to it fail at once until a
heartbeat finds it back); when it comes back empty (restarted), the heartbeat
finds this process's key gone and writes its entries again; when it comes back
with its data (a stall, a partition shorter than the TTL), the heartbeat writes
them again and sends the removals that failed, so no one who left stays listed.
Each Redis server is rewritten on its own, when it answers again, whatever the
others do.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from server.logs import fields
from server.realtime import presence_lua as lua
from server.realtime.brokers.redis import PREFIX, client_for, shard_of
from server.realtime.presence import MemoryPresence
from server.timeouts import answer_within, within

log = logging.getLogger("server.presence")

PRESENCE_TTL = 10  # seconds after its last heartbeat that a process's entries stop counting (PRESENCE_TTL)
HEARTBEAT_SECONDS: float | None = None  # how often a process renews its key; None: a third of the TTL
NODE = PREFIX + "node:"  # + node: exists while that node is alive
NODES = PREFIX + "nodes"  # every node, scored by its last heartbeat
USERS = PREFIX + "users"  # the users with a socket (per shard)
PIPELINE = 256  # calls sent per pipeline at most: each stays well inside REDIS_TIMEOUT under load
REWRITE_WINDOW = 2 * PIPELINE  # a rewrite's calls queued and unanswered at most: one pipeline in flight, one
# queued behind it
REAP_CHUNK = 256  # a dead node's room entries and sockets removed per script call
SCRIPTS = {"beat": lua.BEAT, "nodes": lua.NODES, "close": lua.CLOSE, "add": lua.ADD, "remove": lua.REMOVE,
           "users": lua.USERS, "connected": lua.CONNECTED, "disconnected": lua.DISCONNECTED, "count": lua.COUNT,
           "reap": lua.REAP, "vouched": lua.VOUCHED, "vouch": lua.VOUCH, "revoke": lua.REVOKE}

REVOKED = b"!"  # a vouch key's value once its session is revoked: no process vouches for it again

Call = tuple[str, list[str], list[Any], "asyncio.Future[Any]"]  # (script, keys, args, its answer)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisPresence:
    """Presence over every process, in Redis; this process's part also kept locally."""

    def __init__(self, urls: list[str], node: str, timeout: float = 2.0, ttl: int | None = None) -> None:
        self.node = node  # this process's id (the broker's)
        self.timeout = timeout  # seconds any Redis call may take
        self.ttl = ttl or PRESENCE_TTL  # seconds this process's entries outlive its last heartbeat
        self.clients = [client_for(url, timeout) for url in urls]  # one per shard
        self.local = MemoryPresence(node)  # this process's entries: re-written after a Redis restart, and the
        # fallback answer while Redis is away
        self.scripts = [{name: client.register_script(source) for name, source in SCRIPTS.items()}
                        for client in self.clients]  # per shard: its script objects
        # Calls are sent a pipeline at a time per shard (one round trip, one connection for a reconnect
        # storm's thousands of sockets); those made while one is in flight go with the next.
        self._batches: list[list[Call]] = [[] for _ in urls]  # per shard: calls waiting to be sent
        self._sending = [False] * len(urls)  # per shard: a pipeline in flight
        self._tasks: set[asyncio.Future[Any]] = set()  # pipelines being sent, reaps running
        self.down: set[int] = set()  # shards whose calls failed, until a heartbeat answers (logged once)
        self.closing = False  # close() began: calls fail at once, silently
        self._heartbeat: asyncio.Task[None] | None = None  # renews this process's key
        self._stale: set[int] = set()  # shards where a call failed: they may miss what this process changed
        # meanwhile (written again once they answer, each on its own)
        self._unsent_leaves: set[tuple[str, str]] = set()  # (channel, user) whose remove failed: sent when back
        self._unsent_closes: set[tuple[str, str]] = set()  # (user, conn) whose disconnected failed: sent when back
        self._unannounced: set[tuple[str, str]] = set()  # (channel, user) put back after a reaping whose join
        # push failed with its add: the next rewrite pushes it
        self._reaping: set[tuple[int, str]] = set()  # (shard, dead node) this process is removing
        self._rewriting: asyncio.Task[None] | None = None  # the rewrite running, beside the heartbeat (a long one
        # must not let this process's key expire)
        self._rewrite_wanted: tuple[set[int], set[int]] | None = None  # a rewrite asked for meanwhile: its
        # shards, and those of them a reaper took this process out of
        self.on_leave: Callable[[str, str], None] | None = None  # told (channel, user) a dead node's reap took
        # out of a room: their leave
        self.on_join: Callable[[str, str], None] | None = None  # told (channel, user) this process wrote back
        # into a room after a reaper had pushed their leave: their join

    @property
    def reachable(self) -> bool:
        """Every shard answers."""
        return not self.down and not self.closing

    def bind(self, on_leave: Callable[[str, str], None], on_join: Callable[[str, str], None] | None = None) -> None:
        self.on_leave, self.on_join = on_leave, on_join

    def _shard(self, key: str) -> int:
        return shard_of(key, len(self.clients))

    def _queue(self, shard: int, script: str, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Queues one call for ``shard``'s next pipeline (sent in the order queued);
        its future holds the answer, or the error (at once if the shard is known
        down). A failure marks the shard stale, and down."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda done: self._answered(shard, done))
        if shard in self.down or self.closing:  # known down: fail at once, not after REDIS_TIMEOUT each (the
            # heartbeat finds it back, then rewrites this process's entries and sends what failed meanwhile)
            self._stale.add(shard)
            future.set_exception(RedisConnectionError("redis is unreachable; presence answers for this process only"))
            return future
        self._batches[shard].append((script, keys, args, future))
        if not self._sending[shard]:
            asyncio.get_running_loop().call_soon(self._send, shard)  # after this loop turn's other calls
        return future

    def _answered(self, shard: int, future: asyncio.Future[Any]) -> None:
        """Run as each call is answered (before whoever awaits it resumes), so the
        shard is marked stale in the order of the calls, awaited or not."""
        error = None if future.cancelled() else future.exception()
        if isinstance(error, (RedisError, OSError, TimeoutError)):
            self._stale.add(shard)
            self._unreachable(shard, error)

    async def _call(self, shard: int, script: str, keys: list[str], args: list[Any]) -> Any:
        return await self._queue(shard, script, keys, args)  # answered within REDIS_TIMEOUT: the pipeline
        # carries the timeout

    def _unreachable(self, shard: int, exc: BaseException) -> None:
        if shard not in self.down and not self.closing:
            self.down.add(shard)
            log.error("presence: redis is unreachable; answering for this process only",
                      extra=fields(shard=shard, error=repr(exc)))

    def _send(self, shard: int) -> None:
        if self._sending[shard] or not self._batches[shard]:
            return
        self._sending[shard] = True
        batch, self._batches[shard] = self._batches[shard][:PIPELINE], self._batches[shard][PIPELINE:]
        self._spawn(self._pipeline(shard, batch))

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pipeline(self, shard: int, batch: list[Call]) -> None:
        try:
            try:
                results = await answer_within(self._execute(shard, batch), self.timeout)
            except (RedisError, OSError, TimeoutError) as exc:
                results = [exc] * len(batch)
            for (_, _, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._sending[shard] = False
            self._send(shard)

    async def _execute(self, shard: int, batch: list[Call]) -> list[Any]:
        """One pipeline of EVALSHAs (no SCRIPT EXISTS round trip first, as redis-py's
        Script does per pipeline); the calls Redis answers NOSCRIPT (it restarted,
        or SCRIPT FLUSH) go again once the scripts are loaded: all of them at once
        (MULTI), so no process's pipeline ever meets some loaded and others not,
        which would run its later calls before the earlier ones sent again."""
        results = await self._evalshas(shard, batch)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            try:
                loading = self.clients[shard].pipeline(transaction=True)
                for source in SCRIPTS.values():
                    loading.script_load(source)
                await loading.execute()
                again = await self._evalshas(shard, [batch[i] for i in missing])
            except (RedisError, OSError) as exc:  # only these failed: the others' answers stand
                again = [exc] * len(missing)
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return results

    async def _evalshas(self, shard: int, batch: list[Call]) -> list[Any]:
        pipe = self.clients[shard].pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.execute_command("EVALSHA", self.scripts[shard][script].sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def start(self) -> None:
        await self._beat()
        self._heartbeat = asyncio.create_task(self._beating())

    async def close(self) -> None:
        self.closing = True  # what fails from here on is the shutdown, not Redis: nothing to log
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for shard, client in enumerate(self.clients):
            try:  # gone at once, not at TTL; the others' reapers remove what this process still holds
                await within(self.scripts[shard]["close"](keys=[NODE + self.node, NODES],
                                                                    args=[self.node]), self.timeout)
            except (RedisError, OSError, TimeoutError):
                pass
            await client.aclose()

    async def _beating(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS or self.ttl / 3)
            await self._beat()

    async def _beat(self) -> None:
        """Renews this process's key and score on every shard; where the key had
        vanished (Redis restarted empty), writes this process's entries again;
        starts reaping the dead nodes each shard names. The shards are asked at
        once: one that hangs costs REDIS_TIMEOUT once, not once per shard after it."""
        answers = await asyncio.gather(*(answer_within(
            self.scripts[shard]["beat"](keys=[NODE + self.node, NODES, f"{PREFIX}reaped:{self.node}"],
                                        args=[self.node, self.ttl]), self.timeout)
            for shard in range(len(self.clients))), return_exceptions=True)
        rewrite: set[int] = set()  # the shards whose entries of this process are written again
        reaped: set[int] = set()  # those of them a reaper took this process out of
        for shard, answer in enumerate(answers):
            if isinstance(answer, (RedisError, OSError, TimeoutError)):
                self._unreachable(shard, answer)
                continue
            if isinstance(answer, BaseException):
                raise answer
            existed, dead, was_reaped = answer
            if shard in self.down:
                self.down.discard(shard)
                log.warning("presence: redis is back", extra=fields(shard=shard))
            if not existed:  # it lost this process's entries (restarted empty), or a reaper removed them
                rewrite.add(shard)
                if was_reaped:
                    reaped.add(shard)
            for node in dead:
                self._reap_later(shard, _text(node))
        back = self._stale - self.down  # answering again, its data kept (a stall, a partition), calls missed
        self._stale -= back
        rewrite |= back
        if rewrite:  # one rewrite for all of them
            self._rewrite_soon(rewrite, reaped)

    def _rewrite_soon(self, shards: set[int], reaped: set[int]) -> None:
        """Runs ``_rewrite`` off the heartbeat (tens of thousands of entries take
        seconds), one at a time: one asked for meanwhile runs after."""
        wanted, was_reaped = self._rewrite_wanted or (set(), set())
        self._rewrite_wanted = (wanted | shards, was_reaped | reaped)
        if self._rewriting is None or self._rewriting.done():
            self._rewriting = asyncio.create_task(self._rewrites())
            self._tasks.add(self._rewriting)
            self._rewriting.add_done_callback(self._tasks.discard)

    async def _rewrites(self) -> None:
        while self._rewrite_wanted is not None:
            (shards, reaped), self._rewrite_wanted = self._rewrite_wanted, None
            await self._rewrite(shards, reaped)

    def _reap_later(self, shard: int, dead: str) -> None:
        if dead != self.node and (shard, dead) not in self._reaping and shard not in self.down:
            self._reaping.add((shard, dead))
            self._spawn(self._reap(shard, dead))

    async def _reap(self, shard: int, dead: str) -> None:
        """Removes a dead node's entries on one shard (if this process wins the
        claim), a chunk per call, and tells ``on_leave`` of each user it took
        out of a room. A failure leaves the rest to the next heartbeat (this
        process's, or another's once the claim expires)."""
        left = 0
        try:
            while True:
                found = await self._call(shard, "reap", [NODES, NODE + dead, f"{PREFIX}nr:{dead}",
                                                         f"{PREFIX}ns:{dead}", USERS, f"{PREFIX}reap:{dead}",
                                                         f"{PREFIX}reaped:{dead}"],
                                         [dead, self.node, self.ttl, REAP_CHUNK, PREFIX])
                for i in range(1, len(found), 2):
                    left += 1
                    if self.on_leave is not None:
                        self.on_leave(_text(found[i]), _text(found[i + 1]))
                if found[0] != 1:
                    break
            if found[0] == 2:
                log.info("presence: a dead process's entries removed",
                         extra=fields(dead=dead, shard=shard, leaves=left))
        except (RedisError, OSError, TimeoutError):
            pass
        finally:
            self._reaping.discard((shard, dead))

    def _room_call(self, script: str, channel: str, user: str) -> asyncio.Future[Any]:
        """The add or remove of ``user`` in ``channel`` by this process, queued."""
        return self._queue(self._shard(channel), script,
                           [PREFIX + "p:" + channel, f"{PREFIX}pu:{channel}:{user}", f"{PREFIX}nr:{self.node}"],
                           [user, self.node, NODE, f"{channel} {user}"])

    def _socket_call(self, script: str, user: str, conn: str, limit: int = 0) -> asyncio.Future[Any]:
        """The connected or disconnected of socket ``conn`` of ``user`` on this process, queued."""
        keys = [PREFIX + "u:" + user, f"{PREFIX}ns:{self.node}", USERS]
        if script == "connected":
            return self._queue(self._shard(user), script, keys,
                               [f"{self.node}/{conn}", limit, NODE, f"{conn} {user}", user])
        return self._queue(self._shard(user), script, keys, [f"{self.node}/{conn}", f"{conn} {user}", user])

    async def _rewrite(self, shards: set[int], reaped: set[int]) -> None:
        """This process's entries on ``shards``, written again, and the removals that failed
        there (no join or leave is pushed for them, except the join of a user a reaper
        took out of a room of a ``reaped`` shard). Each is checked against the local
        state just before it is queued, so a call made meanwhile is sent after it; they
        are queued without waiting for each answer (a pipeline of PIPELINE at a time),
        at most REWRITE_WINDOW unanswered, so the calls made meanwhile wait for a few
        pipelines, not for the whole rewrite. What fails (a shard still down) is tried
        again by a later heartbeat."""
        window: deque[asyncio.Future[Any]] = deque()  # the rewrite's calls queued, not yet awaited

        async def queued(future: asyncio.Future[Any],
                         answered: Callable[[asyncio.Future[Any]], None] | None = None) -> None:
            if answered is not None:  # run as it is answered, in the order of the calls
                future.add_done_callback(answered)
            window.append(future)
            if len(window) >= REWRITE_WINDOW:  # the oldest pipeline's worth answered before more are queued
                await asyncio.wait([window.popleft() for _ in range(PIPELINE)])

        def unsent_again(unsent: set[tuple[str, str]], entry: tuple[str, str]
                         ) -> Callable[[asyncio.Future[Any]], None]:
            def answered(future: asyncio.Future[Any]) -> None:
                if future.cancelled() or future.exception() is not None:
                    unsent.add(entry)  # a later rewrite sends it
            return answered

        def added(channel: str, user: str) -> Callable[[asyncio.Future[Any]], None]:
            def answered(future: asyncio.Future[Any]) -> None:
                if future.cancelled() or future.exception() is not None:
                    self._unannounced.add((channel, user))  # the join is still owed: the next rewrite pushes it
                    return
                self._unannounced.discard((channel, user))
                if future.result() == 2 and self.on_join is not None:
                    self.on_join(channel, user)
            return answered

        self._unannounced = {(channel, user) for channel, user in self._unannounced
                             if user in self.local.rooms.get(channel, ())}  # gone since: no join owed

        for channel, user in list(self._unsent_leaves):
            if self._shard(channel) not in shards or (channel, user) not in self._unsent_leaves:
                continue
            self._unsent_leaves.discard((channel, user))  # added back if this removal fails
            if user not in self.local.rooms.get(channel, ()):
                await queued(self._room_call("remove", channel, user),
                             unsent_again(self._unsent_leaves, (channel, user)))
        for user, conn in list(self._unsent_closes):
            if self._shard(user) not in shards or (user, conn) not in self._unsent_closes:
                continue
            self._unsent_closes.discard((user, conn))  # added back if this close fails
            if conn not in self.local.sockets.get(user, ()):
                await queued(self._socket_call("disconnected", user, conn),
                             unsent_again(self._unsent_closes, (user, conn)))
        for channel, users in list(self.local.rooms.items()):
            if self._shard(channel) not in shards:
                continue
            reaped_here = self._shard(channel) in reaped
            for user in list(users):
                if user in self.local.rooms.get(channel, ()):
                    announce = reaped_here or (channel, user) in self._unannounced
                    await queued(self._room_call("add", channel, user), added(channel, user) if announce else None)
        for user, conns in list(self.local.sockets.items()):
            if self._shard(user) not in shards:
                continue
            for conn in list(conns):
                if conn in self.local.sockets.get(user, ()):
                    await queued(self._socket_call("connected", user, conn, 10**9))
        if window:
            await asyncio.wait(window)

    # -- Presence --------------------------------------------------------------------------

    async def add(self, channel: str, user: str) -> bool:
        first_here = await self.local.add(channel, user)
        try:
            return bool(await self._room_call("add", channel, user))
        except (RedisError, OSError, TimeoutError):  # _call marked its shard stale
            return first_here
        finally:
            self._unsent_leaves.discard((channel, user))

    async def remove(self, channel: str, user: str) -> bool:
        last_here = await self.local.remove(channel, user)
        try:
            return bool(await self._room_call("remove", channel, user))
        except (RedisError, OSError, TimeoutError):  # _call marked its shard stale
            self._unsent_leaves.add((channel, user))
            return last_here

    async def users(self, channel: str) -> list[str]:
        try:
            found = await self._call(self._shard(channel), "users", [PREFIX + "p:" + channel],
                                     [f"{PREFIX}pu:{channel}:", NODE])
        except (RedisError, OSError, TimeoutError):
            return await self.local.users(channel)
        return sorted(_text(u) for u in found)

    async def connected(self, user: str, conn: str, limit: int) -> list[tuple[str, str]]:
        local = await self.local.connected(user, conn, 10**9)  # the cap is decided below, over every process
        assert not local
        try:
            found = await self._socket_call("connected", user, conn, limit)
        except (RedisError, OSError, TimeoutError):  # _call marked its shard stale
            sockets = self.local.sockets.get(user, [])
            return [(self.node, c) for c in sockets[:max(0, len(sockets) - limit)]]
        closing = []
        for member in found:
            node, _, other = _text(member).partition("/")
            closing.append((node, other))
        return closing

    async def disconnected(self, user: str, conn: str) -> None:
        await self.local.disconnected(user, conn)
        try:
            await self._socket_call("disconnected", user, conn)
        except (RedisError, OSError, TimeoutError):  # _call marked its shard stale
            self._unsent_closes.add((user, conn))

    async def nodes(self) -> list[str]:
        """The nodes that renewed within the TTL, as any shard knows them (no SCAN)."""
        answers = await asyncio.gather(*(self._call(shard, "nodes", [NODES], [self.ttl])
                                         for shard in range(len(self.clients))), return_exceptions=True)
        found = {_text(n) for answer in answers if not isinstance(answer, BaseException) for n in answer}
        return sorted(found | {self.node})

    async def user_count(self) -> int | None:
        """Distinct users with a socket on a live process (or one not yet reaped); None if Redis fails."""
        try:
            counts = await asyncio.gather(*(self._call(shard, "count", [USERS], [])
                                            for shard in range(len(self.clients))))
        except (RedisError, OSError, TimeoutError):
            return None
        return sum(int(c) for c in counts)

    # -- the session vouch, shared (server/auth.py VouchStore) ---------------------------------

    async def vouched(self, sid: str) -> str | None:
        """The user a process vouched for ``sid`` within the vouch window, if any."""
        try:
            found = await self._call(self._shard(sid), "vouched", [PREFIX + "v:" + sid], [])
        except (RedisError, OSError, TimeoutError):
            return None
        return None if found in (None, REVOKED) else _text(found)

    def vouch(self, user: str, sid: str, seconds: float) -> None:
        self._fire(sid, "vouch", [PREFIX + "v:" + sid], [user, int(seconds * 1000)])

    def revoke(self, sid: str, seconds: float) -> None:
        self._fire(sid, "revoke", [PREFIX + "v:" + sid], [int(seconds * 1000)])

    def _fire(self, key: str, script: str, keys: list[str], args: list[Any]) -> None:
        """A call whose answer nobody waits for (a failure is already logged once by _call)."""
        async def call() -> None:
            try:
                await self._call(self._shard(key), script, keys, args)
            except (RedisError, OSError, TimeoutError):
                pass

        self._spawn(call())
