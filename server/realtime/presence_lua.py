"""The Lua scripts of ``RedisPresence`` (presence_redis.py describes the keys).

Each runs atomically on one Redis server and touches only what it names: a
room's users, one user's holders or sockets, one node's index. A node is alive
while its key ``mp:node:<node>`` exists (``ARGV`` passes that prefix); the
scripts never count a dead node's entries and never remove them either, except
``REAP``, which owns that (and the ``leave`` it implies). Times are Redis's own
(``TIME``), so processes' clocks never matter.
"""

from __future__ import annotations

# KEYS: mp:node:<me>, mp:nodes; ARGV: me, ttl. Renews this node, answers {its key existed, dead nodes}.
BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local existed = redis.call('SET', KEYS[1], 1, 'EX', ARGV[2], 'GET')
redis.call('ZADD', KEYS[2], now, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - tonumber(ARGV[2])), 'LIMIT', 0, 64)
return {existed and 1 or 0, dead}
"""

# KEYS: mp:nodes; ARGV: ttl. The nodes that renewed within the TTL.
NODES = """
local t = redis.call('TIME')
return redis.call('ZRANGEBYSCORE', KEYS[1], tonumber(t[1]) + tonumber(t[2]) / 1000000 - tonumber(ARGV[1]), '+inf')
"""

# KEYS: mp:node:<me>, mp:nodes; ARGV: me. A clean close: gone now, and reaped by the others' next heartbeat.
CLOSE = """
redis.call('DEL', KEYS[1])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
"""

# KEYS: mp:p:<channel>, mp:pu:<channel>:<user>, mp:nr:<me>; ARGV: user, me, node prefix, '<channel> <user>'.
# 1 if no live node held the user there (a join).
ADD = """
local live = 0
for _, n in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if n ~= ARGV[2] and redis.call('EXISTS', ARGV[3] .. n) == 1 then live = 1 break end
end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('SADD', KEYS[1], ARGV[1])
return 1 - live
"""

# Same keys and arguments as ADD. 1 if no live node holds the user there any more (a leave).
REMOVE = """
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[4])
for _, n in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[3] .. n) == 1 then return 0 end
end
redis.call('SREM', KEYS[1], ARGV[1])
return 1
"""

# KEYS: mp:p:<channel>; ARGV: 'mp:pu:<channel>:', node prefix. The users a live node holds there (read only).
USERS = """
local alive, out = {}, {}
for _, u in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  for _, n in ipairs(redis.call('SMEMBERS', ARGV[1] .. u)) do
    local a = alive[n]
    if a == nil then a = redis.call('EXISTS', ARGV[2] .. n) == 1; alive[n] = a end
    if a then table.insert(out, u) break end
  end
end
return out
"""

# KEYS: mp:u:<user>, mp:ns:<me>, mp:users; ARGV: '<me>/<conn>', limit, node prefix, '<conn> <user>', user.
# The live sockets beyond the limit, oldest first (removed here: they close). Dead nodes' sockets are dropped.
CONNECTED = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], 86400)
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[5])
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

# KEYS: mp:u:<user>, mp:ns:<me>, mp:users; ARGV: '<me>/<conn>', '<conn> <user>', user.
DISCONNECTED = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[3]) end
return 1
"""

COUNT = "return redis.call('SCARD', KEYS[1])"  # KEYS: mp:users

# KEYS: mp:nodes, mp:node:<dead>, mp:nr:<dead>, mp:ns:<dead>, mp:users, mp:reap:<dead>;
# ARGV: dead, me, claim seconds, chunk, key prefix ('mp:').
# Removes up to ``chunk`` of each of the dead node's room entries and sockets. Answers {state, channel, user,
# ...}: state 0 (alive again, or another node reaps it), 1 (more to do), 2 (done: the node is forgotten); then
# each (channel, user) this call took out of the room because no live node holds them there: a leave, once.
REAP = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {0} end
local claim = redis.call('GET', KEYS[6])
if claim and claim ~= ARGV[2] then return {0} end
redis.call('SET', KEYS[6], ARGV[2], 'EX', ARGV[3])
local out, n, p = {1}, tonumber(ARGV[4]), ARGV[5]
local rooms = redis.call('SPOP', KEYS[3], n)
for _, e in ipairs(rooms) do
  local at = string.find(e, ' ', 1, true)
  local channel, user = string.sub(e, 1, at - 1), string.sub(e, at + 1)
  local holders = p .. 'pu:' .. channel .. ':' .. user
  redis.call('SREM', holders, ARGV[1])
  local live = false
  for _, h in ipairs(redis.call('SMEMBERS', holders)) do
    if redis.call('EXISTS', p .. 'node:' .. h) == 1 then live = true break end
  end
  if not live and redis.call('SREM', p .. 'p:' .. channel, user) == 1 then
    table.insert(out, channel)
    table.insert(out, user)
  end
end
local sockets = redis.call('SPOP', KEYS[4], n)
for _, e in ipairs(sockets) do
  local at = string.find(e, ' ', 1, true)
  local conn, user = string.sub(e, 1, at - 1), string.sub(e, at + 1)
  local key = p .. 'u:' .. user
  redis.call('ZREM', key, ARGV[1] .. '/' .. conn)
  if redis.call('ZCARD', key) == 0 then redis.call('SREM', KEYS[5], user) end
end
if #rooms < n and #sockets < n then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[6])
  out[1] = 2
end
return out
"""

VOUCHED = "return redis.call('GET', KEYS[1])"
VOUCH = """
if redis.call('GET', KEYS[1]) == '!' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
REVOKE = "return redis.call('SET', KEYS[1], '!', 'PX', ARGV[1])"
