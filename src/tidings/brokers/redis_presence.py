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
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from tidings.errors import BrokerUnavailable
from tidings.inbox.redis import script_connection
from tidings.presence import LocalSessions, UserPresence
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

_Changes = tuple[list[str], list[str]]
"""One user's sessions to add and to remove."""


@contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as exc:
        raise BrokerUnavailable(f"redis unavailable: {exc}") from exc


class RedisPresence(LocalSessions):
    """Presence entries in Redis sorted sets with per-member expiry (see module docstring)."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        node_id: str,
        *,
        prefix: str = "tidings:",
        ttl_s: float = 15.0,
    ) -> None:
        super().__init__(node_id)
        self._redis = redis  # reads
        self._writer = script_connection(redis, WRITE_SCRIPT)
        self._layout = KeyLayout(prefix, cluster=isinstance(redis, RedisCluster))
        self._member_prefix = node_id + "|"
        self.ttl_s = ttl_s
        self._refresher: asyncio.Task[None] | None = None
        self._changes: dict[str, _Changes] = {}  # this loop turn's, by user
        self._stored: list[asyncio.Future[None]] = []  # add()s waiting for them
        self._closed = False

    async def start(self) -> None:
        self._closed = False
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def close(self) -> None:
        self._closed = True
        self._flush()  # this turn's changes first: the removals below come after them
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        # Best effort: remove our entries so a clean shutdown reads offline at once.
        entries: list[tuple[str, _Changes]] = [
            (user, ([], list(sessions))) for user, sessions in self.by_user.items()
        ]
        writes = [self._submit(chunk) for chunk in _chunks(entries)]
        await asyncio.gather(*writes, return_exceptions=True)  # failed: they expire
        await self._writer.close()
        self.by_user.clear()

    async def add(self, user: str, session_id: str) -> None:
        """Written with the other changes of this loop turn (a CONNECT storm sends one
        script call per turn, not one per session); returns once it is stored."""
        self.add_local(user, session_id)
        if self._closed:
            return
        self._user_changes(user)[0].append(session_id)
        stored = asyncio.get_running_loop().create_future()
        self._stored.append(stored)
        await stored

    def remove(self, user: str, session_id: str) -> None:
        super().remove(user, session_id)
        if not self._closed:
            self._user_changes(user)[1].append(session_id)

    def _user_changes(self, user: str) -> _Changes:
        changes = self._changes.get(user)
        if changes is None:
            if not self._changes:
                asyncio.get_running_loop().call_soon(self._flush)
            changes = self._changes[user] = ([], [])
        return changes

    def _flush(self) -> None:
        """Send this turn's changes; the add()s return when Redis has run them all."""
        changes, self._changes = self._changes, {}
        stored, self._stored = self._stored, []
        if not changes:
            return  # flushed already, by close()
        writes = [self._submit(chunk) for chunk in _chunks(list(changes.items()))]
        release = _Release(stored, writes)
        for write in writes:
            write.add_done_callback(release)

    def _submit(self, changes: Sequence[tuple[str, _Changes]]) -> asyncio.Future[Any]:
        """One script call for ``changes`` (on a cluster, one per slot); its future fails
        with BrokerUnavailable."""
        if not self._layout.cluster:
            return self._submit_one(changes)
        by_slot: dict[int, list[tuple[str, _Changes]]] = {}
        for change in changes:
            by_slot.setdefault(slot_of(self._key(change[0])), []).append(change)
        return asyncio.gather(*[self._submit_one(group) for group in by_slot.values()])

    def _submit_one(self, changes: Sequence[tuple[str, _Changes]]) -> asyncio.Future[Any]:
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
            chunk: list[tuple[str, _Changes]] = [
                (user, (list(sessions), []))
                for user in users[start : start + WRITE_CHUNK]
                if (sessions := self.by_user.get(user))
            ]
            try:
                await self._submit(chunk)
            except BrokerUnavailable as exc:
                log.warning("presence refresh failed (the next one retries): %s", exc)
                return

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self.refresh()
            except Exception:  # never let the refresher die: entries would expire
                log.exception("presence refresh failed")

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
    changes: Sequence[tuple[str, _Changes]],
) -> Iterable[Sequence[tuple[str, _Changes]]]:
    return (changes[start : start + WRITE_CHUNK] for start in range(0, len(changes), WRITE_CHUNK))


class _Release:
    """The done-callback of a flush's writes: once every one is answered, the flush's
    add()s return, stored or not, and a failure is logged once."""

    __slots__ = ("_stored", "_waiting", "_writes")

    def __init__(self, stored: list[asyncio.Future[None]], writes: list[asyncio.Future[Any]]):
        self._stored = stored
        self._writes = writes
        self._waiting = len(writes)

    def __call__(self, _: asyncio.Future[Any]) -> None:
        self._waiting -= 1
        if self._waiting:
            return
        for future in self._stored:
            if not future.done():
                future.set_result(None)
        failed = [w.exception() for w in self._writes if not w.cancelled() and w.exception()]
        if failed:
            log.warning("presence write failed (the next refresh retries): %s", failed[0])


def _text(member: object) -> str:
    return member.decode() if isinstance(member, bytes) else str(member)
