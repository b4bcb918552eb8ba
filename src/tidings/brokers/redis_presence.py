"""Presence in Redis: one sorted set per user, ``<prefix>presence:<user>``.

Members are ``<node>|<session>`` scored by their expiry time; the owning node refreshes
them every ``ttl / 3``. Reads count only members whose expiry is in the future, and a
query for many users is one pipeline: one round trip however many are asked.

Writes (adds, removes, the refresh) run ``WRITE_SCRIPT`` by EVALSHA on a connection of
their own (``ScriptConnection``, as the inbox's publishes): the changes of one loop turn
are one script call per WRITE_CHUNK users, and every write leaves in the order it was
made, so a session's removal never overtakes its entry.

On Redis Cluster (issue 18) a user's key is ``<prefix>presence:{u:<user>}``, in the slot
of the user's channel (``tidings.redis_keys``); a script call's users must share a slot,
so the changes of a turn are split per slot (``ClusterScripts`` writes those of one master
together), and queries go through redis-py's cluster pipeline, split per master.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from tidings.errors import BrokerUnavailable
from tidings.inbox.redis import script_connection
from tidings.presence import Changes, StoredPresence, UserPresence
from tidings.redis_cluster import slot_of
from tidings.redis_keys import KeyLayout

log = logging.getLogger(__name__)

WRITE_CHUNK = 100
"""Users per script call. A refresh sends one chunk, then the next once it is stored: the
loop and Redis (which runs a script to its end) are never held long."""

WRITE_SCRIPT = """
-- KEYS: users' sorted sets. ARGV: expiry score, now, key TTL in seconds, then per key in
-- turn: how many members to add (scored ARGV[1]), those members, how many to remove,
-- those members. Members that expired go; the key outlives its newest member by 1 s.
local expires, now, ttl = ARGV[1], ARGV[2], ARGV[3]
local i = 4
for _, key in ipairs(KEYS) do
  local last = i + tonumber(ARGV[i])
  for j = i + 1, last do redis.call('ZADD', key, expires, ARGV[j]) end
  i = last + 1
  last = i + tonumber(ARGV[i])
  for j = i + 1, last do redis.call('ZREM', key, ARGV[j]) end
  i = last + 1
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  redis.call('EXPIRE', key, ttl)
end
return #KEYS
"""


@contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as exc:
        raise BrokerUnavailable(f"redis unavailable: {exc}") from exc


class RedisPresence(StoredPresence):
    """Presence entries in Redis sorted sets with per-member expiry (see module docstring)."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        node_id: str,
        *,
        prefix: str = "tidings:",
        ttl_s: float = 15.0,
    ) -> None:
        super().__init__(node_id, ttl_s)
        self._redis = redis  # reads
        self._writer = script_connection(redis, WRITE_SCRIPT)
        self._layout = KeyLayout(prefix, cluster=isinstance(redis, RedisCluster))

    async def close(self) -> None:
        await super().close()
        await self._writer.close()

    def _write(self, changes: Sequence[tuple[str, Changes]]) -> Awaitable[None]:
        """Script calls of WRITE_CHUNK users, sent now (StoredPresence._write)."""
        return _answered([self._submit(chunk) for chunk in _chunks(changes)])

    def _submit(self, changes: Sequence[tuple[str, Changes]]) -> asyncio.Future[Any]:
        """One script call for ``changes`` (on a cluster, one per slot); its future fails
        with BrokerUnavailable."""
        if not self._layout.cluster:
            return self._submit_one(changes)
        by_slot: dict[int, list[tuple[str, Changes]]] = {}
        for change in changes:
            by_slot.setdefault(slot_of(self._key(change[0])), []).append(change)
        return asyncio.gather(*[self._submit_one(group) for group in by_slot.values()])

    def _submit_one(self, changes: Sequence[tuple[str, Changes]]) -> asyncio.Future[Any]:
        now = time.time()
        keys: list[str] = []
        args: list[str | int] = [repr(now + self.ttl_s), repr(now), int(self.ttl_s) + 1]
        prefix = self._member_prefix
        for user, (added, removed) in changes:
            keys.append(self._key(user))
            args.append(len(added))
            args += [prefix + session for session in added]
            args.append(len(removed))
            args += [prefix + session for session in removed]
        return self._writer.submit(keys, args)

    async def refresh(self) -> None:
        """Push every local entry's expiry forward, WRITE_CHUNK users per script call and
        one call at a time; the first failure is logged and ends this round."""
        users = list(self.by_user)
        for start in range(0, len(users), WRITE_CHUNK):
            # The sessions as they are now: one removed meanwhile is not written back.
            chunk: list[tuple[str, Changes]] = [
                (user, (list(sessions), []))
                for user in users[start : start + WRITE_CHUNK]
                if (sessions := self.by_user.get(user))
            ]
            try:
                await self._submit(chunk)
            except BrokerUnavailable as exc:
                log.warning("presence refresh failed (the next one retries): %s", exc)
                return

    async def get(self, user: str) -> UserPresence:
        with _redis_errors():
            members = await self._redis.zrangebyscore(self._key(user), time.time(), "+inf")
        nodes = sorted({_text(m).partition("|")[0] for m in members})
        return UserPresence(bool(members), len(members), nodes)

    async def query(self, users: list[str]) -> dict[str, bool]:
        now = time.time()
        with _redis_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for user in users:
                    pipe.zcount(self._key(user), now, "+inf")
                counts = await pipe.execute()
        return {user: count > 0 for user, count in zip(users, counts, strict=True)}

    def _key(self, user: str) -> str:
        return self._layout.user_key("presence", user)


def _chunks(
    changes: Sequence[tuple[str, Changes]],
) -> Iterable[Sequence[tuple[str, Changes]]]:
    return (changes[start : start + WRITE_CHUNK] for start in range(0, len(changes), WRITE_CHUNK))


async def _answered(writes: list[asyncio.Future[Any]]) -> None:
    """Once every write is answered: the first failure, if any (a write cancelled, as
    on a cluster connection that closes, is not one: it never raises out of here)."""
    for result in await asyncio.gather(*writes, return_exceptions=True):
        if isinstance(result, Exception):
            raise result


def _text(member: object) -> str:
    return member.decode() if isinstance(member, bytes) else str(member)
