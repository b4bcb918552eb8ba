"""The inbox on Redis Streams, paired with the Redis broker (DESIGN.md §5). Redis >= 7.0.

Keys, with the broker's prefix ``P`` (default ``tidings:``):

* ``P inbox:<channel>``: a stream per channel (``u:<user>``, ``t:<topic>``); entry fields
  ``n`` (ordinal: the previous entry's + 1), ``p`` (the previous entry's id), ``d``
  (destination) and ``m`` (the encoded message with an empty id; readers put the entry id
  in). Trimmed exactly by count and by age on publish, and by age before every read, so
  nothing older than ``max_age_s`` is ever returned. Redis records trimmed ids nowhere
  (``max-deleted-entry-id`` counts XDEL only), so ``gap`` uses ``p`` of the oldest
  retained entry: the greatest trimmed id (or, for an emptied stream, its last id).
* ``P acked:<user>``, ``P read:<user>``: sorted sets of ids scored by the id's ms, holding
  only retained ids (trimming removes the rest); ``read`` only ids above
  ``P readfloor:<user>``, the ``up_to`` floor, which only moves forward. So the unread
  count is "entries after the floor" (a difference of two ordinals) minus ``ZCARD read``,
  without walking the inbox.
* ``P ackcursor:<user>``: per destination, an id before which everything of that
  destination is acked: where the next ``unacked`` scan starts.
* ``P idem:<len(channel)>:<channel>:<key>``: the id first stored under an idempotency key.

Every operation is one Lua script (EVALSHA), so each is atomic: a publish stores, trims
and announces (``PUBLISH P<channel> "<id> <message with id>"``) in one step, and no node
sees a live message whose id is not stored yet. Keys expire ``max_age_s`` (plus a
second) after their last write: abandoned users' data goes away. What an expired stream
held is unknown: it reports ``gap`` for any resume but ``"0"``, and so does a new stream
for a resume from before its first id.

``InboxWriter`` is the publish half alone, which ``tidings.publisher`` shares: a back end
publishing straight to Redis runs the very same script as a node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from tidings.brokers.redis import RedisBroker
from tidings.errors import BrokerUnavailable, TidingsError
from tidings.inbox.base import History, InboxLimits, Stored, UnreadState
from tidings.inbox.memory import (
    MAX_ID_PART,
    TTL_MARGIN_S,
    canonical_id,
    check_limits,
    known_ids,
    parse_id,
    user_of,
)
from tidings.inbox.resp import ScriptConnection
from tidings.legacy import SPRING_DESTINATION, outbound_json
from tidings.message import Message
from tidings.redis_connect import bulk

log = logging.getLogger(__name__)

# Ids reach the scripts canonical ("<ms>-<seq>", no leading zeros) and are compared
# exactly as digit strings (Lua numbers are doubles). The read scripts start with all of
# _PRELUDE; the publish script, which runs for every message, has only what it uses, and
# these functions only in the branch that needs them (each Lua function is a new closure
# on every run of its script).
_ID_FUNCTIONS = """
local function num_lt(a, b) return #a < #b or (#a == #b and a < b) end
local function id_lt(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then return num_lt(am, bm) end
  return num_lt(as, bs)
end

-- Remove from id set `zset` the ids before `id` (and `id` itself if `incl`).
local function drop_until(zset, id, incl)
  local ms = string.match(id, '^(%d+)-')
  redis.call('ZREMRANGEBYSCORE', zset, '-inf', '(' .. ms)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', zset, ms, ms)) do
    if id_lt(member, id) or (incl and member == id) then redis.call('ZREM', zset, member) end
  end
end
"""

# Shared by the read scripts below.
_PRELUDE = (
    _ID_FUNCTIONS
    + """
-- Trim `stream` to `max_len` entries (if given) and by age; if anything went, or
-- `forget`, the id sets `zsets` forget every id before the oldest retained one.
local function trim(stream, max_len, max_age_ms, zsets, forget)
  local n = 0
  if max_len then n = redis.call('XTRIM', stream, 'MAXLEN', max_len) end
  local t = redis.call('TIME')
  local min_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - max_age_ms
  if min_ms > 0 then
    n = n + redis.call('XTRIM', stream, 'MINID', string.format('%.0f', min_ms))
  end
  if #zsets == 0 or (n == 0 and not forget) or redis.call('EXISTS', unpack(zsets)) == 0 then
    return
  end
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  for _, zset in ipairs(zsets) do
    if first then drop_until(zset, first[1], false) else redis.call('DEL', zset) end
  end
end

-- A field of XINFO STREAM (cheap on the empty streams it is used on).
local function stream_info(stream, name)
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == name then return info[i + 1] end
  end
end

-- The id sets of KEYS (acked, read) for a user inbox; none for a topic.
local function user_sets()
  if KEYS[2] == '' then return {} end
  return {KEYS[2], KEYS[3]}
end

-- Entry fields are {'n', n, 'p', previous id, 'd', destination, 'm', message}:
-- e[2][2] is the ordinal, e[2][4] the previous id, e[2][6] the destination, e[2][8] the message.

-- The newest entry with an id <= `id`, or nil. Checked against the first entry, since
-- an XREVRANGE from below it walks the whole stream (Redis 7.0).
local function entry_at(stream, id)
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if not first or id_lt(id, first[1]) then return nil end
  return redis.call('XREVRANGE', stream, id, '-', 'COUNT', 1)[1]
end

-- The newest id `stream` gave out, even if trimmed or deleted since ('' for no stream):
-- what an inbox-state event's count took into account (issue 16).
local function newest(stream)
  local e = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if e then return e[1] end
  if redis.call('EXISTS', stream) == 1 then return stream_info(stream, 'last-generated-id') end
  return ''
end

-- Retained entries after `floor` minus the read ids (all retained and above the floor).
local function unread(stream, read, floor)
  local after = redis.call('XLEN', stream)
  local at = entry_at(stream, floor)
  if at then
    local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
    after = tonumber(last[2][2]) - tonumber(at[2][2])
  end
  return after - redis.call('ZCARD', read)
end
"""
)

# KEYS: stream, acked, read (both '' for a topic), then the idempotency key if any
# ARGV: message encoded with id "", destination, max_len, max_age_ms, ttl_ms, live
#       channel, then the idempotency key's ttl_ms if there is one, then (bridged to
#       Spring) the legacy channel and the JSON for it
#
# It runs for every message, on a Redis that shares a core with the nodes, so it does no
# work its outcome does not need (docs/decisions.md, 2026-11-27, has the measurements).
# What costs: each redis.call (~4k instructions even for TIME or XLEN), each reply turned
# into Lua values (the XREVRANGE of one entry ~30k: every field becomes a Lua string), and
# each Lua number passed to redis.call (Redis 7.0 prints it with snprintf "%.17g"), so
# numbers go as strings (string.format '%d' prints an integer cheaply). Even an argument
# of the script costs (~1.3k): the idempotency key and its TTL come only when used.
#
# Pieces: _STORE (store, trim, announce: the local `id`) is shared with the legacy
# channel's store script (inbox/redis_legacy.py), which claims instead of deduping.
_STORE_LOCALS = """
local stream, acked, read = KEYS[1], KEYS[2], KEYS[3]
"""
_IDEMPOTENT = """if KEYS[4] then
  local first = redis.call('GET', KEYS[4])
  if first then return first end
end
"""
_STORE = (
    """
-- The newest entry: the new one's ordinal is its + 1, the new one's `p` its id.
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
local n, prev = 1, ''
if last then
  n, prev = tonumber(last[2][2]) + 1, last[1]
else
  if redis.call('EXISTS', stream) == 1 then  -- emptied by age: p is its last id
    local info = redis.call('XINFO', 'STREAM', stream)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then prev = info[i + 1] end
    end
  end  -- else a new stream, p '': what came before its first id is unknown
  -- The user's id sets may still name ids of a stream that expired or emptied; they only
  -- ever hold ids that were in the stream, all below the new one: forget them all.
  if acked ~= '' then redis.call('DEL', acked, read) end
end

-- Store, trimming by count (exact). Retained ordinals run without a hole up to the
-- newest's, from 1 or more, so a stream whose new ordinal is <= max_len holds at most
-- max_len entries: nothing to trim, nothing for the id sets to forget. Beyond that, XADD
-- trims inline (MAXLEN), unless the user's id sets exist: then XTRIM counts what went.
local trimmed, sets = 0, nil  -- sets: whether the user's id sets exist, once asked
if acked ~= '' and n > tonumber(ARGV[3]) then
  sets = redis.call('EXISTS', acked, read) > 0
end
local id
if sets then
  id = redis.call('XADD', stream, '*',
    'n', string.format('%d', n), 'p', prev, 'd', ARGV[2], 'm', ARGV[1])
  trimmed = redis.call('XTRIM', stream, 'MAXLEN', ARGV[3])
else
  id = redis.call('XADD', stream, 'MAXLEN', ARGV[3], '*',
    'n', string.format('%d', n), 'p', prev, 'd', ARGV[2], 'm', ARGV[1])
end

-- Trim by age (exact): drop the ids below now - max_age. XADD '*' makes "<clock ms>-0"
-- when the clock is past the stream's last id, else "<last ms>-<last seq + 1>": an id
-- with seq 0 carries the clock, read a moment ago, and spares a TIME. Any other (a second
-- publish within a ms, or a clock gone back) asks TIME, so no younger entry ever goes. A
-- new or emptied stream holds only the new entry: nothing to do.
if last then
  local dash, now_ms = string.find(id, '-', 1, true), nil
  if dash == #id - 1 and string.byte(id, -1) == 48 then  -- seq '0'
    now_ms = tonumber(string.sub(id, 1, dash - 1))
  else
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  local min_ms = now_ms - tonumber(ARGV[4])
  if min_ms > 0 then
    trimmed = trimmed + redis.call('XTRIM', stream, 'MINID', string.format('%d', min_ms))
  end
end

-- Something went: the user's id sets forget every id before the oldest retained one.
if trimmed > 0 and acked ~= '' then
  if sets == nil then sets = redis.call('EXISTS', acked, read) > 0 end
  if sets then
"""
    + _ID_FUNCTIONS
    + """
    local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
    for _, zset in ipairs({acked, read}) do
      if first then drop_until(zset, first[1], false) else redis.call('DEL', zset) end
    end
  end
end

redis.call('PEXPIRE', stream, ARGV[5])
-- announce the message with its id: '["",...' becomes '["<id>",...'
redis.call('PUBLISH', ARGV[6], id .. ' ["' .. id .. '"' .. string.sub(ARGV[1], 4))
"""
)
# The Spring bridge (--legacy-channel, tidings.legacy): two more arguments, last, the
# channel and the JSON the Spring code reads; Tidings' mark goes before its first field.
# Without them (8 or more arguments only then), one length and one comparison.
_PUBLISH_END = """if KEYS[4] then redis.call('SET', KEYS[4], id, 'PX', ARGV[7]) end
local argc = #ARGV
if argc >= 8 then
  redis.call('PUBLISH', ARGV[argc - 1],
    '{"tidingsId":"' .. id .. '",' .. string.sub(ARGV[argc], 2))
end
return id
"""
_PUBLISH = _STORE_LOCALS + _IDEMPOTENT + _STORE + _PUBLISH_END

# KEYS: stream, acked, read ('' '' for a topic). ARGV: after ('0-0': all), limit, max_age_ms
# Returns {gap, id, message, id, message, ...}.
_HISTORY = """
trim(KEYS[1], false, tonumber(ARGV[3]), user_sets(), false)
-- gap: an id > after was trimmed, i.e. after < the greatest trimmed id (`below`)
local out = {0}
if ARGV[1] ~= '0-0' then
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  local below
  if first then
    below = first[2][4]
    if below == '' then below = first[1] end  -- first of a new stream: unknown before it
  elseif redis.call('EXISTS', KEYS[1]) == 1 then
    below = stream_info(KEYS[1], 'last-generated-id')  -- all trimmed
  end
  if not below or id_lt(ARGV[1], below) then out[1] = 1 end  -- no stream: unknown
end
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])) do
  out[#out + 1] = e[1]
  out[#out + 1] = e[2][8]
end
return out
"""

# KEYS: stream, acked, read, readfloor. ARGV: after, limit, max_age_ms
# Returns {id, message, read (0/1), ...}.
_LISTING = """
trim(KEYS[1], false, tonumber(ARGV[3]), user_sets(), false)
local floor = redis.call('GET', KEYS[4]) or '0-0'
local out = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])) do
  local read = not id_lt(floor, e[1]) or redis.call('ZSCORE', KEYS[3], e[1])
  out[#out + 1] = e[1]
  out[#out + 1] = e[2][8]
  out[#out + 1] = read and 1 or 0
end
return out
"""

# KEYS: stream, acked, read, readfloor. ARGV: max_age_ms.
# Returns {the unread count, the newest id given out or ''}.
_UNREAD = """
trim(KEYS[1], false, tonumber(ARGV[1]), user_sets(), false)
return {unread(KEYS[1], KEYS[3], redis.call('GET', KEYS[4]) or '0-0'), newest(KEYS[1])}
"""

# KEYS: stream, acked, read, readfloor. ARGV: max_age_ms, ttl_ms, up_to or '', ids...
# Returns {the unread count after, the newest id given out or ''}.
_MARK_READ = """
trim(KEYS[1], false, tonumber(ARGV[1]), user_sets(), false)
local floor = redis.call('GET', KEYS[4]) or '0-0'
if ARGV[3] ~= '' then
  -- the floor moves to the newest retained id <= up_to, and only forward
  local at = entry_at(KEYS[1], ARGV[3])
  if at and id_lt(floor, at[1]) then
    floor = at[1]
    redis.call('SET', KEYS[4], floor)
    drop_until(KEYS[3], floor, true)
  end
end
for i = 4, #ARGV do
  local id = ARGV[i]
  if id_lt(floor, id) and redis.call('XRANGE', KEYS[1], id, id)[1] then
    redis.call('ZADD', KEYS[3], string.match(id, '^(%d+)-'), id)
  end
end
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('PEXPIRE', KEYS[4], ARGV[2])
return {unread(KEYS[1], KEYS[3], floor), newest(KEYS[1])}
"""

# KEYS: stream, acked, read. ARGV: max_age_ms, ttl_ms, ids...
_ACK = """
trim(KEYS[1], false, tonumber(ARGV[1]), user_sets(), false)
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('XRANGE', KEYS[1], id, id)[1] then
    redis.call('ZADD', KEYS[2], string.match(id, '^(%d+)-'), id)
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 0
"""

# KEYS: stream, acked, read, ackcursor. ARGV: max_age_ms, destination, limit, ttl_ms
# Returns {id, message, ...}: the oldest `limit` entries for `destination` not acked.
# The scan starts after the destination's cursor in the hash `ackcursor`, the last entry
# before its oldest unacked one (entries only ever become acked), and moves it forward:
# a device that acks what it gets is not walked through the whole inbox again.
_UNACKED = """
trim(KEYS[1], false, tonumber(ARGV[1]), user_sets(), false)
local out, limit, dest = {}, tonumber(ARGV[3]), ARGV[2]
local cursor = redis.call('HGET', KEYS[4], dest)
local start, passed, full = cursor and '(' .. cursor or '-', nil, false
while not full do
  local batch = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 100)
  for _, e in ipairs(batch) do
    if e[2][6] == dest and not redis.call('ZSCORE', KEYS[2], e[1]) then
      out[#out + 1] = e[1]
      out[#out + 1] = e[2][8]
      full = #out >= 2 * limit
      if full then break end
    elseif #out == 0 then
      passed = e[1]  -- everything up to here is acked or another destination's
    end
  end
  if #batch < 100 then break end
  start = '(' .. batch[#batch][1]
end
if passed then
  redis.call('HSET', KEYS[4], dest, passed)
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
return out
"""

# KEYS: stream, acked, read, readfloor. ARGV: max_age_ms, first id kept ('' : none kept)
# Returns {deleted, unread after, the newest id given out or ''}. Trimmed from the front
# as retention trims (XTRIM), so the oldest kept entry's `p` names the greatest deleted id
# (gap) and the stream keeps its last id even when emptied (new ids are greater).
_DELETE = """
trim(KEYS[1], false, tonumber(ARGV[1]), user_sets(), false)
local n
if ARGV[2] == '' then
  n = redis.call('XTRIM', KEYS[1], 'MAXLEN', '0')
else
  n = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
end
if n > 0 then
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  for _, zset in ipairs(user_sets()) do
    if first then drop_until(zset, first[1], false) else redis.call('DEL', zset) end
  end
end
return {n, unread(KEYS[1], KEYS[3], redis.call('GET', KEYS[4]) or '0-0'), newest(KEYS[1])}
"""

# KEYS: streams. Returns each one's newest id, '' where it has no entry. A new channel
# subscription's starting point for the node's catch-up (tidings.catchup).
_LAST_IDS = """
local out = {}
for i, key in ipairs(KEYS) do
  local e = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  out[i] = e and e[1] or ''
end
return out
"""

CATCHUP_BATCH = 1000
"""Channels per command of ``behind`` and ``last_ids`` (all in one round trip)."""

_PACKED_CHANNELS = 4096
"""How many channels' packed publish arguments an InboxWriter keeps (then starts over)."""

MIN_REDIS_VERSION = (7, 0)
"""``XINFO STREAM``'s ``max-deleted-entry-id`` (gap detection) came with Redis 7.0."""


class InboxWriter:
    """The publish half of the inbox: stores messages and announces them, nothing else.

    ``RedisInbox`` is one; ``tidings.publisher`` uses one on its own, so that a back end
    publishing straight to Redis assigns ids, trims, expires, dedupes and announces with
    the same script, keys and limits as a node. Publishes go over a connection of their
    own (``ScriptConnection``): those made in one loop turn share one write and one round
    trip. ``close`` closes that connection.
    """

    def __init__(
        self,
        client: Redis,
        limits: InboxLimits,
        *,
        prefix: str = "tidings:",
        legacy_channel: str | None = None,
    ) -> None:
        check_limits(limits)
        self._redis = client
        # The Spring bridge (tidings.legacy): user messages to /message are also published
        # there, by the publish script itself (one step: stored means forwarded). Chosen
        # here, so that a writer without one runs the very same ``submit`` as before.
        self._legacy = bulk(legacy_channel) if legacy_channel else None
        if self._legacy is not None:
            self.submit = self._submit_bridging  # type: ignore[method-assign]
        self._limits = limits
        self._prefix = prefix
        self._max_age_ms = int(limits.max_age_s * 1000)
        self._ttl_ms = self._max_age_ms + int(TTL_MARGIN_S * 1000)
        self._idempotency_ttl_ms = max(1, int(limits.idempotency_ttl_s * 1000))
        self._closed = False
        # ids: str; with min_replicas, a WAIT after each write (ScriptConnection)
        wait = (limits.min_replicas, limits.replica_timeout_s)
        self._publisher = ScriptConnection(client, _PUBLISH, encoding="ascii", wait=wait)
        # EVALSHA of _PUBLISH: KEYS stream, acked, read[, idempotency key]; ARGV message,
        # then 5 per channel, then the idempotency key's TTL if there is one. All but the
        # message and the idempotency key are the same for every publish to a channel:
        # packed once (hiredis.pack_command of the whole call was ~8% of a node's
        # instructions per HTTP publish, docs/decisions.md).
        self._head = self._publisher.head(3, 6)
        self._head_keyed = self._publisher.head(4, 7)
        self._keyed_ttl = bulk(self._idempotency_ttl_ms)
        self._packed: dict[tuple[str, str], tuple[bytes, bytes]] = {}

    async def start(self) -> None:
        """Check the Redis version; if Redis is unreachable now, only log (as the broker)."""
        self._closed = False
        try:
            info = await self._redis.info("server")
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis inbox: cannot check the redis version now: %s", exc)
            return
        version = str(info.get("redis_version", "0"))
        if tuple(int(part) for part in version.split(".")[:2]) < MIN_REDIS_VERSION:
            raise TidingsError(f"the inbox needs redis >= 7.0, this one is {version}")

    async def close(self) -> None:
        """Stop taking calls, close the publish connection; whoever made the Redis client
        closes it."""
        self._closed = True
        await self._publisher.close()

    async def publish(self, message: Message, *, idempotency_key: str | None = None) -> str:
        """Store ``message`` on its channel's stream and announce it; see ``Inbox.publish``."""
        return await self.submit(message, idempotency_key=idempotency_key)

    def submit(
        self, message: Message, *, idempotency_key: str | None = None
    ) -> asyncio.Future[str]:
        """``publish`` without the coroutine; see ``Inbox.submit``."""
        self._check_open()
        channel = message.channel
        # The id is the stream's: a message of publish_rules comes without one.
        encoded = (dataclasses.replace(message, id="") if message.id else message).encode()
        packed = self._packed.get((channel, message.destination))
        if packed is None:
            packed = self._pack_constants(channel, message.destination)
        keys, args = packed
        parts: tuple[bytes, ...]
        if idempotency_key is None:
            parts = (self._head, keys, bulk(encoded), args)
        else:
            key = f"{self._prefix}idem:{len(channel)}:{channel}:{idempotency_key}"
            parts = (self._head_keyed, keys, bulk(key), bulk(encoded), args, self._keyed_ttl)
        future: asyncio.Future[str] = self._publisher.submit_packed(b"".join(parts))
        return future

    def _submit_bridging(
        self, message: Message, *, idempotency_key: str | None = None
    ) -> asyncio.Future[str]:
        """``submit`` of a writer with a legacy channel: a user's message to ``/message``
        gets the Spring bridge's two arguments last (the channel and the JSON for it);
        anything else (a topic, another destination) is an ordinary ``submit``."""
        user = user_of(message.channel) if message.destination == SPRING_DESTINATION else None
        if user is None or self._legacy is None:
            return InboxWriter.submit(self, message, idempotency_key=idempotency_key)
        self._check_open()
        encoded = (dataclasses.replace(message, id="") if message.id else message).encode()
        keys, args = self.packed_call(message.channel, message.destination)
        bridge = self._legacy + bulk(outbound_json(user, message.body))
        parts: tuple[bytes, ...]
        if idempotency_key is None:
            parts = (self._publisher.head(3, 8), keys, bulk(encoded), args, bridge)
        else:
            key = f"{self._prefix}idem:{len(message.channel)}:{message.channel}:{idempotency_key}"
            head = self._publisher.head(4, 9)
            parts = (head, keys, bulk(key), bulk(encoded), args, self._keyed_ttl, bridge)
        future: asyncio.Future[str] = self._publisher.submit_packed(b"".join(parts))
        return future

    def packed_call(self, channel: str, destination: str) -> tuple[bytes, bytes]:
        """The keys (stream, acked, read) and the arguments after the message (destination,
        limits, live channel) of the publish script's call for ``channel`` and
        ``destination``, packed (``redis_connect.bulk``): what any script built on
        ``_STORE`` takes (inbox/redis_legacy.py)."""
        packed = self._packed.get((channel, destination))
        return packed if packed is not None else self._pack_constants(channel, destination)

    def _pack_constants(self, channel: str, destination: str) -> tuple[bytes, bytes]:
        """The keys (but the idempotency key) and the arguments after the message of the
        publish script's call for ``channel`` and ``destination``, packed and kept."""
        user = user_of(channel)
        limit = self._limits.max_messages if user is not None else self._limits.topic_history
        keys = [self._stream(channel), *self._sets(user)]
        args: list[str | int] = [
            destination,
            limit,
            self._max_age_ms,
            self._ttl_ms,
            self._prefix + channel,
        ]
        packed = b"".join([bulk(key) for key in keys]), b"".join([bulk(arg) for arg in args])
        if len(self._packed) >= _PACKED_CHANNELS:
            self._packed.clear()
        self._packed[channel, destination] = packed
        return packed

    def _stream(self, channel: str) -> str:
        return f"{self._prefix}inbox:{channel}"

    def _sets(self, user: str | None) -> list[str]:
        """The user's acked and read sets; two empty names (no sets) for a topic."""
        if user is None:
            return ["", ""]
        return [f"{self._prefix}acked:{user}", f"{self._prefix}read:{user}"]

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerUnavailable("inbox is closed")


class RedisInbox(InboxWriter):
    """User inboxes and topic histories on the Redis of ``broker``; see the module docstring."""

    def __init__(
        self,
        broker: RedisBroker,
        limits: InboxLimits,
        *,
        prefix: str = "tidings:",
        legacy_channel: str | None = None,
    ) -> None:
        super().__init__(broker.redis, limits, prefix=prefix, legacy_channel=legacy_channel)
        register = self._redis.register_script
        self._history = register(_PRELUDE + _HISTORY)
        self._listing = register(_PRELUDE + _LISTING)
        self._unread = register(_PRELUDE + _UNREAD)
        self._mark_read = register(_PRELUDE + _MARK_READ)
        self._ack = register(_PRELUDE + _ACK)
        self._unacked = register(_PRELUDE + _UNACKED)
        self._last_ids = register(_LAST_IDS)
        self._delete = register(_PRELUDE + _DELETE)

    async def history(self, channel: str, after: str, *, limit: int) -> History:
        after = canonical_id(after)
        keys = [self._stream(channel), *self._sets(user_of(channel))]
        count = max(limit, 1)  # the gap is wanted even for no messages; COUNT 0 is no limit
        reply = await self._run(self._history, keys, [after, count, self._max_age_ms])
        pairs = list(zip(reply[1::2], reply[2::2], strict=True))[: max(limit, 0)]
        return History([Stored(_decode(i, m)) for i, m in pairs], gap=bool(reply[0]))

    async def histories(self, after: Mapping[str, str], *, limit: int) -> dict[str, History]:
        """One pipeline of the ``history`` script per channel: one round trip for all."""
        self._check_open()
        if not after:
            return {}
        count = max(limit, 1)
        pipe = self._redis.pipeline(transaction=False)
        for channel, inbox_id in after.items():
            keys = [self._stream(channel), *self._sets(user_of(channel))]
            args: list[str | int] = [canonical_id(inbox_id), count, self._max_age_ms]
            await self._history(keys=keys, args=args, client=pipe)
        replies = await self._execute(pipe)
        out = {}
        for channel, reply in zip(after, replies, strict=True):
            pairs = list(zip(reply[1::2], reply[2::2], strict=True))[: max(limit, 0)]
            out[channel] = History([Stored(_decode(i, m)) for i, m in pairs], gap=bool(reply[0]))
        return out

    async def last_ids(self, channels: Sequence[str]) -> dict[str, str | None]:
        """The ``_LAST_IDS`` script on batches of CATCHUP_BATCH streams, pipelined."""
        self._check_open()
        if not channels:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for start in range(0, len(channels), CATCHUP_BATCH):
            keys = [self._stream(channel) for channel in channels[start : start + CATCHUP_BATCH]]
            await self._last_ids(keys=keys, args=[], client=pipe)
        replies = await self._execute(pipe)
        ids = [i.decode("ascii") if i else None for reply in replies for i in reply]
        return dict(zip(channels, ids, strict=True))

    async def behind(self, after: Mapping[str, str]) -> list[str]:
        """``XREAD COUNT 1 STREAMS <keys> <ids>`` in batches: Redis answers only for the
        streams with an entry after the given id, so an up-to-date channel costs one
        lookup and nothing on the wire."""
        self._check_open()
        if not after:
            return []
        channels = list(after)
        by_key = {self._stream(channel).encode(): channel for channel in channels}
        pipe = self._redis.pipeline(transaction=False)
        for start in range(0, len(channels), CATCHUP_BATCH):
            batch = channels[start : start + CATCHUP_BATCH]
            ids = [canonical_id(after[channel]) for channel in batch]
            keys = [self._stream(channel) for channel in batch]
            pipe.execute_command("XREAD", "COUNT", 1, "STREAMS", *keys, *ids)
        replies = await self._execute(pipe)
        return [by_key[bytes(key)] for reply in replies if reply for key, _ in reply]

    async def unacked(self, user: str, destination: str, *, limit: int) -> list[Stored]:
        if limit <= 0:
            self._check_open()
            return []
        keys = [*self._user_keys(user)[:3], f"{self._prefix}ackcursor:{user}"]
        args = [self._max_age_ms, destination, limit, self._ttl_ms]
        reply = await self._run(self._unacked, keys, args)
        return [Stored(_decode(i, m)) for i, m in zip(reply[::2], reply[1::2], strict=True)]

    async def ack(self, user: str, ids: Sequence[str]) -> None:
        known = _canonical(ids)
        if not known:
            self._check_open()
            return
        keys = self._user_keys(user)[:3]
        await self._run(self._ack, keys, [self._max_age_ms, self._ttl_ms, *known])

    async def listing(self, user: str, after: str, *, limit: int) -> list[Stored]:
        after = canonical_id(after)
        if limit <= 0:
            self._check_open()
            return []
        reply = await self._run(
            self._listing, self._user_keys(user), [after, limit, self._max_age_ms]
        )
        return [
            Stored(_decode(i, m), read=bool(r))
            for i, m, r in zip(reply[::3], reply[1::3], reply[2::3], strict=True)
        ]

    async def unread(self, user: str) -> int:
        return (await self.unread_state(user))[0]

    async def unread_state(self, user: str) -> UnreadState:
        count, last = await self._run(self._unread, self._user_keys(user), [self._max_age_ms])
        return _state(count, last)

    async def mark_read(
        self, user: str, *, ids: Sequence[str] = (), up_to: str | None = None
    ) -> UnreadState:
        floor = canonical_id(up_to) if up_to is not None else ""
        args = [self._max_age_ms, self._ttl_ms, floor, *_canonical(ids)]
        count, last = await self._run(self._mark_read, self._user_keys(user), args)
        return _state(count, last)

    async def delete(self, user: str, *, up_to: str | None = None) -> tuple[int, UnreadState]:
        kept = ""
        if up_to is not None:
            ms, seq = parse_id(up_to)
            # XTRIM MINID keeps ids >= its argument: the id right after up_to.
            kept = f"{ms}-{seq + 1}" if seq < MAX_ID_PART else f"{ms + 1}-0"
        deleted, count, last = await self._run(
            self._delete, self._user_keys(user), [self._max_age_ms, kept]
        )
        return int(deleted), _state(count, last)

    # -- internals -------------------------------------------------------------------

    def _user_keys(self, user: str) -> list[str]:
        """stream, acked, read, readfloor of ``user``."""
        return [
            self._stream(f"u:{user}"),
            *self._sets(user),
            f"{self._prefix}readfloor:{user}",
        ]

    async def _execute(self, pipe: Any) -> list[Any]:
        try:
            replies: list[Any] = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from exc
        finally:
            await pipe.reset()
        return replies

    async def _run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        self._check_open()
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from exc


def _state(count: int, last: bytes) -> UnreadState:
    """A read script's count and newest id ('' for none) as the inbox's answer."""
    return UnreadState(int(count), last.decode("ascii") if last else None)


def _canonical(ids: Sequence[str]) -> list[str]:
    """The well-formed ids, canonical; malformed ones are unknown ids, so ignored."""
    return [f"{ms}-{seq}" for ms, seq in known_ids(ids)]


def _decode(inbox_id: bytes, encoded: bytes) -> Message:
    return Message.decode(encoded, inbox_id.decode("ascii"))
