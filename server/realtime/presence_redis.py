"""Presence and socket counts in Redis, over every process (see presence.py).

Keys (a channel's on its shard, a user's on theirs, as the broker spreads them):
``mp:node:<node>`` exists while the process is alive (renewed every
a third of the TTL, expires after PRESENCE_TTL); ``mp:p:<channel>`` is the set of
users present; ``mp:pu:<channel>:<user>`` the set of processes holding that
user there; ``mp:u:<user>`` the user's sockets, ``<node>/<conn>`` scored by when
they opened. Each step is one Lua script, so two processes adding the same user
at once push one ``join``. Entries of processes whose key expired are pruned
where the scripts meet them, and never counted.

When Redis is away the answers fall back to this process's own entries (logged
once); when it comes back empty (restarted), the heartbeat finds this process's
key gone and writes its entries again; when it comes back with its data (a stall,
a partition shorter than the TTL), the heartbeat writes them again and sends the
removals that failed, so no one who left stays listed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from server.logs import fields
from server.realtime.brokers.redis import PREFIX, shard_of
from server.realtime.presence import MemoryPresence

log = logging.getLogger("server.presence")

PRESENCE_TTL = 10  # seconds after its last heartbeat that a process's entries stop counting (PRESENCE_TTL)
HEARTBEAT_SECONDS: float | None = None  # how often a process renews its key; None: a third of the TTL
NODE = PREFIX + "node:"
PIPELINE = 256  # calls sent per pipeline at most: each stays well inside REDIS_TIMEOUT under load

_ADD = """
local others = redis.call('SMEMBERS', KEYS[2])
local live = 0
for _, n in ipairs(others) do
  if n ~= ARGV[2] then
    if redis.call('EXISTS', ARGV[3] .. n) == 1 then live = 1 else redis.call('SREM', KEYS[2], n) end
  end
end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[1], ARGV[1])
return 1 - live
"""

_REMOVE = """
redis.call('SREM', KEYS[2], ARGV[2])
for _, n in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[3] .. n) == 1 then return 0 end
  redis.call('SREM', KEYS[2], n)
end
redis.call('SREM', KEYS[1], ARGV[1])
return 1
"""

_USERS = """
local alive, out = {}, {}
for _, u in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. u
  local any = false
  for _, n in ipairs(redis.call('SMEMBERS', key)) do
    local a = alive[n]
    if a == nil then a = redis.call('EXISTS', ARGV[2] .. n) == 1; alive[n] = a end
    if a then any = true else redis.call('SREM', key, n) end
  end
  if any then table.insert(out, u) else redis.call('SREM', KEYS[1], u) end
end
return out
"""

_CONNECTED = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], 86400)
if redis.call('ZCARD', KEYS[1]) <= tonumber(ARGV[2]) then return {} end
local alive, live, out = {}, {}, {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local n = string.match(m, '^([^/]+)/')
  local a = alive[n]
  if a == nil then a = redis.call('EXISTS', ARGV[3] .. n) == 1; alive[n] = a end
  if a then table.insert(live, m) else redis.call('ZREM', KEYS[1], m) end
end
for i = 1, #live - tonumber(ARGV[2]) do
  table.insert(out, live[i])
  redis.call('ZREM', KEYS[1], live[i])
end
return out
"""


_DISCONNECTED = "return redis.call('ZREM', KEYS[1], ARGV[1])"
_VOUCHED = "return redis.call('GET', KEYS[1])"
_VOUCH = """
if redis.call('GET', KEYS[1]) == '!' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_REVOKE = "return redis.call('SET', KEYS[1], '!', 'PX', ARGV[1])"
REVOKED = b"!"  # a vouch key's value once its session is revoked: no process vouches for it again

Call = tuple[str, list[str], list[Any], "asyncio.Future[Any]"]  # (script, keys, args, its answer)


class RedisPresence:
    """Presence over every process, in Redis; this process's part also kept locally."""

    def __init__(self, urls: list[str], node: str, timeout: float = 2.0, ttl: int | None = None) -> None:
        self.node = node  # this process's id (the broker's)
        self.timeout = timeout  # seconds any Redis call may take
        self.ttl = ttl or PRESENCE_TTL  # seconds this process's entries outlive its last heartbeat
        self.clients = [Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                       retry=Retry(NoBackoff(), 0)) for url in urls]  # one per shard
        self.local = MemoryPresence(node)  # this process's entries: re-written after a Redis restart, and the
        # fallback answer while Redis is away
        self.scripts = [{name: client.register_script(source) for name, source in
                         (("add", _ADD), ("remove", _REMOVE), ("users", _USERS), ("connected", _CONNECTED),
                          ("disconnected", _DISCONNECTED), ("vouched", _VOUCHED), ("vouch", _VOUCH),
                          ("revoke", _REVOKE))}
                        for client in self.clients]  # per shard: its script objects
        # Calls are sent a pipeline at a time per shard (one round trip, one connection for a reconnect
        # storm's thousands of sockets); those made while one is in flight go with the next.
        self._batches: list[list[Call]] = [[] for _ in urls]  # per shard: calls waiting to be sent
        self._sending = [False] * len(urls)  # per shard: a pipeline in flight
        self._tasks: set[asyncio.Task[None]] = set()  # pipelines being sent
        self.reachable = True  # False while Redis calls fail (logged once per outage)
        self._heartbeat: asyncio.Task[None] | None = None  # renews this process's key
        self._stale = False  # a call failed: Redis may miss what this process changed meanwhile (resent)
        self._unsent_leaves: set[tuple[str, str]] = set()  # (channel, user) whose remove failed: sent when back
        self._unsent_closes: set[tuple[str, str]] = set()  # (user, conn) whose disconnected failed: sent when back

    def _shard(self, key: str) -> int:
        return shard_of(key, len(self.clients))

    async def _call(self, key: str, script: str, keys: list[str], args: list[Any]) -> Any:
        if not self.reachable:  # known down: fail at once, not after REDIS_TIMEOUT each (the heartbeat
            # finds Redis back, then rewrites this process's entries and sends what failed meanwhile)
            self._stale = True
            raise RedisConnectionError("redis is unreachable; presence answers for this process only")
        shard = self._shard(key)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batches[shard].append((script, keys, args, future))
        if not self._sending[shard]:
            asyncio.get_running_loop().call_soon(self._send, shard)  # after this loop turn's other calls
        try:
            return await future  # answered within REDIS_TIMEOUT: the pipeline carries the timeout
        except (RedisError, OSError, TimeoutError) as exc:
            if self.reachable:
                self.reachable = False
                log.error("presence: redis is unreachable; answering for this process only",
                          extra=fields(error=repr(exc)))
            raise

    def _send(self, shard: int) -> None:
        if self._sending[shard] or not self._batches[shard]:
            return
        self._sending[shard] = True
        batch, self._batches[shard] = self._batches[shard][:PIPELINE], self._batches[shard][PIPELINE:]
        task = asyncio.create_task(self._pipeline(shard, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pipeline(self, shard: int, batch: list[Call]) -> None:
        try:
            pipe = self.clients[shard].pipeline(transaction=False)
            for script, keys, args, _ in batch:
                await self.scripts[shard][script](keys=keys, args=args, client=pipe)
            try:
                results = await asyncio.wait_for(pipe.execute(raise_on_error=False), self.timeout)
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

    async def start(self) -> None:
        await self._beat()
        self._heartbeat = asyncio.create_task(self._beating())

    async def close(self) -> None:
        self.reachable = False  # what fails from here on is the shutdown, not Redis: nothing to log
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for client in self.clients:
            try:
                await asyncio.wait_for(client.delete(NODE + self.node), self.timeout)  # gone at once, not at TTL
            except (RedisError, OSError, TimeoutError):
                pass
            await client.aclose()

    async def _beating(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS or self.ttl / 3)
            await self._beat()

    async def _beat(self) -> None:
        """Renews this process's key on every shard; where it had vanished (Redis
        restarted empty), writes this process's entries again."""
        for client in self.clients:
            try:
                existed = await asyncio.wait_for(client.set(NODE + self.node, 1, ex=self.ttl, get=True),
                                                 self.timeout)
            except (RedisError, OSError, TimeoutError) as exc:
                if self.reachable:
                    self.reachable = False
                    log.error("presence: redis is unreachable", extra=fields(error=repr(exc)))
                continue
            if existed is None:
                await self._rewrite()
        if not self.reachable and all([await self._alive(c) for c in self.clients]):
            self.reachable = True
            log.warning("presence: redis is back")
        if self.reachable and self._stale:  # Redis was away but kept this process's key (a stall, a partition)
            self._stale = False
            await self._rewrite()

    async def _alive(self, client: Redis) -> bool:
        try:
            return bool(await asyncio.wait_for(client.exists(NODE + self.node), self.timeout))
        except (RedisError, OSError, TimeoutError):
            return False

    async def _rewrite(self) -> None:
        """This process's entries, written again, and the removals that failed
        (no join or leave is pushed for them). Each is checked against the local
        state just before it is queued, so a call made meanwhile is sent after it."""
        try:
            for channel, user in list(self._unsent_leaves):
                if user not in self.local.rooms.get(channel, ()):
                    await self._call(channel, "remove", [PREFIX + "p:" + channel, f"{PREFIX}pu:{channel}:{user}"],
                                     [user, self.node, NODE])
                self._unsent_leaves.discard((channel, user))
            for user, conn in list(self._unsent_closes):
                if conn not in self.local.sockets.get(user, ()):
                    await self._call(user, "disconnected", [PREFIX + "u:" + user], [f"{self.node}/{conn}"])
                self._unsent_closes.discard((user, conn))
            for channel, users in list(self.local.rooms.items()):
                for user in list(users):
                    if user in self.local.rooms.get(channel, ()):
                        await self._call(channel, "add", [PREFIX + "p:" + channel, f"{PREFIX}pu:{channel}:{user}"],
                                         [user, self.node, NODE])
            for user, conns in list(self.local.sockets.items()):
                for conn in list(conns):
                    if conn in self.local.sockets.get(user, ()):
                        await self._call(user, "connected", [PREFIX + "u:" + user],
                                         [f"{self.node}/{conn}", 10**9, NODE])
        except (RedisError, OSError, TimeoutError):
            self._stale = True  # the next heartbeat tries again

    # -- Presence --------------------------------------------------------------------------

    async def add(self, channel: str, user: str) -> bool:
        first_here = await self.local.add(channel, user)
        try:
            return bool(await self._call(channel, "add", [PREFIX + "p:" + channel, f"{PREFIX}pu:{channel}:{user}"],
                                         [user, self.node, NODE]))
        except (RedisError, OSError, TimeoutError):
            self._stale = True
            return first_here
        finally:
            self._unsent_leaves.discard((channel, user))

    async def remove(self, channel: str, user: str) -> bool:
        last_here = await self.local.remove(channel, user)
        try:
            return bool(await self._call(channel, "remove", [PREFIX + "p:" + channel,
                                                             f"{PREFIX}pu:{channel}:{user}"], [user, self.node, NODE]))
        except (RedisError, OSError, TimeoutError):
            self._stale = True
            self._unsent_leaves.add((channel, user))
            return last_here

    async def users(self, channel: str) -> list[str]:
        try:
            found = await self._call(channel, "users", [PREFIX + "p:" + channel], [f"{PREFIX}pu:{channel}:", NODE])
        except (RedisError, OSError, TimeoutError):
            return await self.local.users(channel)
        return sorted(u.decode() if isinstance(u, bytes) else str(u) for u in found)

    async def connected(self, user: str, conn: str, limit: int) -> list[tuple[str, str]]:
        local = await self.local.connected(user, conn, 10**9)  # the cap is decided below, over every process
        assert not local
        try:
            found = await self._call(user, "connected", [PREFIX + "u:" + user], [f"{self.node}/{conn}", limit, NODE])
        except (RedisError, OSError, TimeoutError):
            self._stale = True
            sockets = self.local.sockets.get(user, [])
            return [(self.node, c) for c in sockets[:max(0, len(sockets) - limit)]]
        closing = []
        for member in found:
            node, _, other = (member.decode() if isinstance(member, bytes) else str(member)).partition("/")
            closing.append((node, other))
        return closing

    async def disconnected(self, user: str, conn: str) -> None:
        await self.local.disconnected(user, conn)
        try:
            await self._call(user, "disconnected", [PREFIX + "u:" + user], [f"{self.node}/{conn}"])
        except (RedisError, OSError, TimeoutError):
            self._stale = True
            self._unsent_closes.add((user, conn))

    # -- the session vouch, shared (server/auth.py VouchStore) ---------------------------------

    async def vouched(self, sid: str) -> str | None:
        """The user a process vouched for ``sid`` within the vouch window, if any."""
        try:
            found = await self._call(sid, "vouched", [PREFIX + "v:" + sid], [])
        except (RedisError, OSError, TimeoutError):
            return None
        return None if found in (None, REVOKED) else (found.decode() if isinstance(found, bytes) else str(found))

    def vouch(self, user: str, sid: str, seconds: float) -> None:
        self._fire(sid, "vouch", [PREFIX + "v:" + sid], [user, int(seconds * 1000)])

    def revoke(self, sid: str, seconds: float) -> None:
        self._fire(sid, "revoke", [PREFIX + "v:" + sid], [int(seconds * 1000)])

    def _fire(self, key: str, script: str, keys: list[str], args: list[Any]) -> None:
        """A call whose answer nobody waits for (a failure is already logged once by _call)."""
        async def call() -> None:
            try:
                await self._call(key, script, keys, args)
            except (RedisError, OSError, TimeoutError):
                pass

        task = asyncio.create_task(call())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def nodes(self) -> list[str]:
        try:
            keys = [k async for k in self.clients[0].scan_iter(match=NODE + "*", count=1000)]
        except (RedisError, OSError, TimeoutError):
            return [self.node]
        return sorted((k.decode() if isinstance(k, bytes) else str(k))[len(NODE):] for k in keys)
