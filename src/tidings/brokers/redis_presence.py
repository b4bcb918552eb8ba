"""Presence in Redis: one sorted set per user, ``<prefix>presence:<user>``.

Members are ``<node>|<session>`` scored by their expiry time; the owning node refreshes
them every ``ttl / 3``. Reads count only members whose expiry is in the future, and a
query for many users is one pipeline: one round trip however many are asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.errors import BrokerUnavailable
from tidings.presence import LocalSessions, UserPresence

log = logging.getLogger(__name__)

REFRESH_CHUNK = 100  # users per pipeline when refreshing


@contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise BrokerUnavailable(f"redis unavailable: {exc}") from exc


class RedisPresence(LocalSessions):
    """Presence entries in Redis sorted sets with per-member expiry (see module docstring)."""

    def __init__(
        self, redis: Redis, node_id: str, *, prefix: str = "tidings:", ttl_s: float = 15.0
    ) -> None:
        super().__init__(node_id)
        self._redis = redis
        self._prefix = prefix + "presence:"
        self.ttl_s = ttl_s
        self._refresher: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Future[object]] = set()
        self._adds: dict[str, set[str]] = {}  # waiting for this loop turn's pipeline
        self._adds_written: asyncio.Future[None] | None = None

    def _key(self, user: str) -> str:
        return self._prefix + user

    def _member(self, session_id: str) -> str:
        return f"{self.node_id}|{session_id}"

    async def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        # Best effort: remove our entries so a clean shutdown reads offline at once.
        with contextlib.suppress(Exception):
            async with self._redis.pipeline(transaction=False) as pipe:
                for user, sessions in self.by_user.items():
                    pipe.zrem(self._key(user), *(self._member(s) for s in sessions))
                await pipe.execute()
        self.by_user.clear()

    async def add(self, user: str, session_id: str) -> None:
        """Written with the other adds of this loop turn, in one pipeline (a CONNECT storm
        sends one round trip per turn, not one per session); returns once it is stored."""
        self.add_local(user, session_id)
        self._adds.setdefault(user, set()).add(session_id)
        if self._adds_written is None:
            loop = asyncio.get_running_loop()
            self._adds_written = loop.create_future()
            loop.call_soon(self._write_adds)
        await asyncio.shield(self._adds_written)

    def _write_adds(self) -> None:
        adds, self._adds = self._adds, {}
        written, self._adds_written = self._adds_written, None
        assert written is not None
        self._background(self._write_chunks(list(adds.items()), written))

    async def _write_chunks(
        self, users: list[tuple[str, set[str]]], written: asyncio.Future[None] | None = None
    ) -> None:
        """Write in chunks of REFRESH_CHUNK users; a failure is logged, the refresh retries."""
        try:
            for start in range(0, len(users), REFRESH_CHUNK):
                await self._write(dict(users[start : start + REFRESH_CHUNK]))
        except (RedisError, OSError) as exc:
            log.warning("presence write failed (the next refresh retries): %s", exc)
        finally:
            if written is not None:
                written.set_result(None)

    def remove(self, user: str, session_id: str) -> None:
        super().remove(user, session_id)
        self._background(self._redis.zrem(self._key(user), self._member(session_id)))

    def _background(self, coro: Awaitable[object]) -> None:
        task = asyncio.ensure_future(coro)
        self._writes.add(task)
        task.add_done_callback(self._write_done)

    def _write_done(self, task: asyncio.Future[object]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("presence write failed: %s", task.exception())

    async def _write(self, sessions_by_user: dict[str, set[str]]) -> None:
        expires = time.time() + self.ttl_s
        async with self._redis.pipeline(transaction=False) as pipe:
            for user, sessions in sessions_by_user.items():
                key = self._key(user)
                pipe.zadd(key, {self._member(s): expires for s in sessions})
                pipe.zremrangebyscore(key, "-inf", time.time())
                pipe.expire(key, int(self.ttl_s) + 1)
            await pipe.execute()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            # In chunks: one pipeline for 1,000 users held the event loop for ~20 ms
            # (deliveries waited); 100 at a time keep each stall near 3 ms.
            try:
                await self._write_chunks([(u, set(s)) for u, s in self.by_user.items()])
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


def _text(member: object) -> str:
    return member.decode() if isinstance(member, bytes) else str(member)
