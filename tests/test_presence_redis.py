"""RedisPresence on a real redis-server: what its writes leave in Redis, and when.

Writes go as EVALSHA of one script on a connection of their own, the changes of a loop
turn together (``brokers/redis_presence.py``). These tests read Redis with a client of
their own and count commands with ``INFO commandstats``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tidings.brokers.redis import command_client
from tidings.brokers.redis_presence import WRITE_CHUNK, RedisPresence

from .redis_fixture import RedisServer

TTL_S = 15.0
KEY = "tidings:presence:"


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = redis_server.client()
    yield client
    await client.aclose()


@pytest.fixture
async def presence(redis_server: RedisServer) -> AsyncIterator[RedisPresence]:
    """Node A's presence; its refresher sleeps TTL/3, longer than any test here."""
    client = command_client(redis_server.url)
    presence = RedisPresence(client, "A", ttl_s=TTL_S)
    await presence.start()
    yield presence
    await presence.close()
    await client.aclose()


async def evalsha_calls(admin: Redis) -> int:
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def members(admin: Redis, user: str) -> dict[str, float]:
    return {m.decode(): s for m, s in await admin.zrange(KEY + user, 0, -1, withscores=True)}


async def test_add_returns_once_stored_and_one_turn_is_one_script_call(
    presence: RedisPresence, admin: Redis
) -> None:
    await presence.add("first", "s")  # loads the script (NOSCRIPT, SCRIPT LOAD, again)
    before = await evalsha_calls(admin)
    started = time.time()
    await asyncio.gather(*(presence.add(f"u{n}", f"s{n}") for n in range(WRITE_CHUNK)))
    assert await evalsha_calls(admin) == before + 1
    for n in range(WRITE_CHUNK):
        (score,) = (await members(admin, f"u{n}")).values()
        assert started + TTL_S <= score <= time.time() + TTL_S
        assert 0 < await admin.ttl(KEY + f"u{n}") <= int(TTL_S) + 1
    seen = await presence.get("u7")
    assert (seen.online, seen.sessions, seen.nodes) == (True, 1, ["A"])

    # one more user than a chunk: two script calls, still all stored on return
    before = await evalsha_calls(admin)
    await asyncio.gather(*(presence.add("v", f"s{n}") for n in range(3)), presence.add("w", "x"))
    await asyncio.gather(*(presence.add(f"x{n}", "s") for n in range(WRITE_CHUNK + 1)))
    assert await evalsha_calls(admin) == before + 1 + 2
    assert set(await members(admin, "v")) == {"A|s0", "A|s1", "A|s2"}
    assert await presence.query([f"x{n}" for n in range(WRITE_CHUNK + 1)] + ["nobody"]) == {
        **{f"x{n}": True for n in range(WRITE_CHUNK + 1)},
        "nobody": False,
    }


async def test_a_removal_never_overtakes_its_entry(presence: RedisPresence, admin: Redis) -> None:
    await presence.add("u", "old")
    # Added and removed in one loop turn: the removal is written after the entry.
    add = asyncio.ensure_future(presence.add("u", "gone"))
    await asyncio.sleep(0)  # the add is queued, not written
    presence.remove("u", "gone")
    presence.remove("u", "old")
    await add
    assert await members(admin, "u") == {}
    assert await presence.query(["u"]) == {"u": False}
    assert presence.by_user == {}


async def test_writes_drop_expired_members_and_leave_other_nodes_alone(
    presence: RedisPresence, admin: Redis
) -> None:
    now = time.time()
    await admin.zadd(KEY + "u", {"B|dead": now - 1, "B|live": now + 60})
    await presence.add("u", "s")
    assert set(await members(admin, "u")) == {"B|live", "A|s"}
    presence.remove("u", "s")
    await presence.add("other", "s")  # written after the removal, in order
    assert set(await members(admin, "u")) == {"B|live"}


async def test_refresh_pushes_every_expiry_forward_in_chunks(
    presence: RedisPresence, admin: Redis
) -> None:
    users = [f"u{n}" for n in range(2 * WRITE_CHUNK + 50)]
    await asyncio.gather(*(presence.add(user, "s") for user in users))
    await presence.add("u0", "t")
    old = {user: (await members(admin, user))["A|s"] for user in users}
    before = await evalsha_calls(admin)
    await presence.refresh()
    assert await evalsha_calls(admin) == before + 3  # 250 users, at most 100 per call
    for user in users:
        assert (await members(admin, user))["A|s"] > old[user]
    assert set(await members(admin, "u0")) == {"A|s", "A|t"}


async def test_a_failed_add_returns_and_the_next_refresh_repairs_it(
    redis_server: RedisServer, presence: RedisPresence, caplog: pytest.LogCaptureFixture
) -> None:
    await presence.add("u", "first")
    await redis_server.stop()
    with caplog.at_level(logging.WARNING, "tidings.brokers.redis_presence"):
        await presence.add("u", "second")  # does not raise: the node serves on
        await presence.refresh()  # nor does this
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("presence write failed (the next refresh retries)") for m in messages)
    assert any(m.startswith("presence refresh failed (the next one retries)") for m in messages)

    await redis_server.start()  # empty: it saves nothing
    admin = redis_server.client()
    try:
        assert await members(admin, "u") == {}
        await presence.refresh()
        assert set(await members(admin, "u")) == {"A|first", "A|second"}
        await admin.script_flush()  # NOSCRIPT: loaded again, the write goes through
        await presence.add("u", "third")
        assert set(await members(admin, "u")) == {"A|first", "A|second", "A|third"}
    finally:
        await admin.aclose()


async def test_close_removes_this_nodes_entries(redis_server: RedisServer, admin: Redis) -> None:
    client = command_client(redis_server.url)
    presence = RedisPresence(client, "A", ttl_s=TTL_S)  # not started: close() awaits nothing
    try:
        await admin.zadd(KEY + "u", {"B|s": time.time() + 60})
        await asyncio.gather(presence.add("u", "s1"), presence.add("u", "s2"))
        await presence.add("v", "s1")
        presence.remove("v", "s1")
        late = asyncio.ensure_future(presence.add("w", "s1"))
        await asyncio.sleep(0)  # queued in this turn's changes when close() begins
        await presence.close()
        await late
        assert set(await members(admin, "u")) == {"B|s"}
        assert await members(admin, "v") == {}
        assert await members(admin, "w") == {}
    finally:
        await client.aclose()
