"""RedisPresence on a real redis-server: what its writes leave in Redis, and when.

Writes go as EVALSHA of one script on a connection of their own, the changes of a loop
turn together (``brokers/redis_presence.py``). These tests read Redis with a client of
their own and count commands with ``INFO commandstats``. Each runs on one Redis and on the
session's Redis Cluster (tests/cluster_fixture.py), where a script call's users share a
slot: a turn's changes are one call per slot there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from tidings.brokers.redis import RedisClient, command_client
from tidings.brokers.redis_presence import WRITE_CHUNK, RedisPresence
from tidings.redis_cluster import cluster_client, slot_of
from tidings.redis_keys import KeyLayout

from .cluster_fixture import ClusterServer
from .presence_contract import add_and_remove_in_one_turn
from .redis_fixture import RedisServer

TTL_S = 15.0


@dataclass
class Target:
    """One Redis or the cluster: its URL, a way to stop and start it, and its key names."""

    url: str
    server: RedisServer | ClusterServer
    keys: KeyLayout

    def client(self) -> RedisClient:
        if self.keys.cluster:
            return cluster_client(self.url)
        return command_client(self.url)

    def key(self, user: str) -> str:
        return self.keys.user_key("presence", user)

    def calls(self, chunks: Iterable[Sequence[str]]) -> int:
        """Script calls a write of these chunks of users takes: one per chunk, on a
        cluster one per slot of each chunk."""
        if not self.keys.cluster:
            return len(list(chunks))
        return sum(len({slot_of(self.key(user)) for user in chunk}) for chunk in chunks)

    async def start(self) -> None:
        if isinstance(self.server, RedisServer):
            await self.server.start()
        else:
            await asyncio.to_thread(self.server.cluster.restart)


@pytest.fixture(params=["redis", "cluster"])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    if request.param == "cluster":
        cluster = ClusterServer(request.getfixturevalue("cluster"))
        yield Target(cluster.url, cluster, KeyLayout(cluster=True))
        await cluster.close()
        return
    server = RedisServer(tmp_path)
    await server.start()
    yield Target(server.url, server, KeyLayout())
    await server.stop()


@pytest.fixture
async def admin(target: Target) -> AsyncIterator[RedisClient]:
    client = target.client()
    yield client
    await client.aclose()


@pytest.fixture
async def presence(target: Target) -> AsyncIterator[RedisPresence]:
    """Node A's presence; its refresher sleeps TTL/3, longer than any test here."""
    client = target.client()
    presence = RedisPresence(client, "A", ttl_s=TTL_S)
    await presence.start()
    yield presence
    await presence.close()
    await client.aclose()


async def evalsha_calls(admin: RedisClient) -> int:
    """EVALSHA calls so far (on a cluster: over every master)."""
    if isinstance(admin, RedisCluster):
        per_node = await admin.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        return sum(
            int(stats.get("cmdstat_evalsha", {}).get("calls", 0)) for stats in per_node.values()
        )
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def members(admin: RedisClient, user: str) -> dict[str, float]:
    key = KeyLayout(cluster=isinstance(admin, RedisCluster)).user_key("presence", user)
    return {m.decode(): s for m, s in await admin.zrange(key, 0, -1, withscores=True)}


async def test_add_returns_once_stored_and_one_turn_is_one_script_call(
    presence: RedisPresence, admin: RedisClient, target: Target
) -> None:
    # loads the script (NOSCRIPT, SCRIPT LOAD, again), on every master of a cluster
    await asyncio.gather(*(presence.add(f"first{n}", "s") for n in range(60)))
    before = await evalsha_calls(admin)
    started = time.time()
    users = [f"u{n}" for n in range(WRITE_CHUNK)]
    await asyncio.gather(*(presence.add(user, f"s{n}") for n, user in enumerate(users)))
    assert await evalsha_calls(admin) == before + target.calls([users])
    for n in range(WRITE_CHUNK):
        (score,) = (await members(admin, f"u{n}")).values()
        assert started + TTL_S <= score <= time.time() + TTL_S
        assert 0 < await admin.ttl(target.key(f"u{n}")) <= int(TTL_S) + 1
    seen = await presence.get("u7")
    assert (seen.online, seen.sessions, seen.nodes) == (True, 1, ["A"])

    # one more user than a chunk: two script calls, still all stored on return
    before = await evalsha_calls(admin)
    await asyncio.gather(*(presence.add("v", f"s{n}") for n in range(3)), presence.add("w", "x"))
    xs = [f"x{n}" for n in range(WRITE_CHUNK + 1)]
    await asyncio.gather(*(presence.add(user, "s") for user in xs))
    chunks = [["v", "w"], xs[:WRITE_CHUNK], xs[WRITE_CHUNK:]]
    assert await evalsha_calls(admin) == before + target.calls(chunks)
    assert set(await members(admin, "v")) == {"A|s0", "A|s1", "A|s2"}
    assert await presence.query([f"x{n}" for n in range(WRITE_CHUNK + 1)] + ["nobody"]) == {
        **{f"x{n}": True for n in range(WRITE_CHUNK + 1)},
        "nobody": False,
    }


async def test_a_removal_never_overtakes_its_entry(
    presence: RedisPresence, admin: RedisClient
) -> None:
    await add_and_remove_in_one_turn(presence, "u")  # the removal is written after the entry
    assert await members(admin, "u") == {}
    assert await presence.query(["u"]) == {"u": False}
    assert presence.by_user == {}


async def test_writes_drop_expired_members_and_leave_other_nodes_alone(
    presence: RedisPresence, admin: RedisClient, target: Target
) -> None:
    now = time.time()
    await admin.zadd(target.key("u"), {"B|dead": now - 1, "B|live": now + 60})
    await presence.add("u", "s")
    assert set(await members(admin, "u")) == {"B|live", "A|s"}
    presence.remove("u", "s")
    await presence.add("other", "s")  # written after the removal, in order
    assert set(await members(admin, "u")) == {"B|live"}


async def test_refresh_pushes_every_expiry_forward_in_chunks(
    presence: RedisPresence, admin: RedisClient, target: Target
) -> None:
    users = [f"u{n}" for n in range(2 * WRITE_CHUNK + 50)]
    await asyncio.gather(*(presence.add(user, "s") for user in users))
    await presence.add("u0", "t")
    old = {user: (await members(admin, user))["A|s"] for user in users}
    before = await evalsha_calls(admin)
    await presence.refresh()
    # 250 users, at most 100 per call (per slot of them, on a cluster)
    chunks = [users[start : start + WRITE_CHUNK] for start in range(0, len(users), WRITE_CHUNK)]
    assert await evalsha_calls(admin) == before + target.calls(chunks)
    for user in users:
        assert (await members(admin, user))["A|s"] > old[user]
    assert set(await members(admin, "u0")) == {"A|s", "A|t"}


async def test_a_failed_add_returns_and_the_next_refresh_repairs_it(
    target: Target, presence: RedisPresence, caplog: pytest.LogCaptureFixture
) -> None:
    await presence.add("u", "first")
    await target.server.stop()
    with caplog.at_level(logging.WARNING, "tidings.brokers.redis_presence"):
        await presence.add("u", "second")  # does not raise: the node serves on
        await presence.refresh()  # nor does this
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("presence write failed (the next refresh retries)") for m in messages)
    assert any(m.startswith("presence refresh failed (the next one retries)") for m in messages)

    await target.start()  # empty: it saves nothing
    admin = target.client()
    try:
        assert await members(admin, "u") == {}
        await presence.refresh()
        assert set(await members(admin, "u")) == {"A|first", "A|second"}
        await admin.script_flush()  # NOSCRIPT: loaded again, the write goes through
        await presence.add("u", "third")
        assert set(await members(admin, "u")) == {"A|first", "A|second", "A|third"}
    finally:
        await admin.aclose()


async def test_close_removes_this_nodes_entries(target: Target, admin: RedisClient) -> None:
    client = target.client()
    presence = RedisPresence(client, "A", ttl_s=TTL_S)  # not started: close() awaits nothing
    try:
        await admin.zadd(target.key("u"), {"B|s": time.time() + 60})
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
