"""The inbox contract (DESIGN.md §5, tidings/inbox/base.py), run unchanged on every inbox.

Each subject is an inbox on its own started broker whose handler records what was
announced, plus ``other``: for Redis a second ``RedisInbox`` on a second connection to
the same Redis (another node, another device), for memory the same inbox, for
PostgreSQL (issue 20) a second ``PostgresInbox`` on the same database, each announcing
on its own Redis broker of one redis-server (two nodes). Read and ack state is written
on one and checked on the other: every device agrees. Every Redis test runs its own
redis-server; the ``cluster`` subjects share the session's Redis Cluster
(tests/cluster_fixture.py), emptied for each test, and name keys as a cluster does
(``tidings.redis_keys``); every PostgreSQL test has its own database
(tests/postgres_fixture.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hiredis
import pytest

from tidings.brokers import MemoryBroker
from tidings.brokers.redis import RedisBroker, redis_broker
from tidings.errors import BrokerUnavailable
from tidings.inbox.base import Inbox, InboxLimits, compare_ids, split_announcement
from tidings.inbox.memory import MemoryInbox
from tidings.inbox.postgresql import PostgresInbox
from tidings.inbox.redis import InboxWriter, RedisInbox
from tidings.message import Message, id_key
from tidings.redis_keys import KeyLayout

from .cluster_fixture import ClusterServer
from .postgres_fixture import PgCluster, PgDatabase
from .redis_fixture import RedisServer
from .sentinel_fixture import one_sentinel

ID = re.compile(r"^[1-9][0-9]*-[0-9]+$")


async def eventually(
    condition: Callable[[], Awaitable[bool] | bool], within: float = 5.0, what: str = ""
) -> float:
    """Poll ``condition`` (sync or async) until true; return the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return loop.time() - start
        if loop.time() - start > within:
            pytest.fail(f"not true within {within}s: {what or condition}")
        await asyncio.sleep(0.01)


@dataclass
class Recorder:
    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def __call__(self, channel: str, payload: bytes) -> None:
        self.messages.append((channel, payload))

    def on(self, channel: str) -> list[bytes]:
        return [payload for name, payload in self.messages if name == channel]


@dataclass
class Subject:
    kind: str
    inbox: Inbox
    other: Inbox
    broker: MemoryBroker | RedisBroker
    got: Recorder
    server: RedisServer | ClusterServer | None
    keys: KeyLayout
    pg: PgDatabase | None = None

    async def announced(self, channel: str) -> list[bytes]:
        """Everything announced on ``channel`` (subscribed) so far: a marker published
        after them comes back last, since each channel keeps its order."""
        marker = b"barrier-" + os.urandom(4).hex().encode()
        await self.broker.publish(channel, marker)
        await eventually(lambda: marker in self.got.on(channel), what=f"barrier on {channel}")
        payloads = self.got.on(channel)
        return [p for p in payloads if not p.startswith(b"barrier-")]


Make = Callable[..., Awaitable[Subject]]


@pytest.fixture(params=["memory", "redis", "sentinel", "cluster", "postgresql"])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Make]:
    """Factory: ``subject = await make(**InboxLimits fields)``; all closed at teardown.

    ``sentinel``: Redis found through a sentinel (``redis+sentinel://``), with a replica
    and ``min_replicas=1``: every publish waits for the replica (WAIT).
    ``postgresql``: the inbox in a database of its own, announced on Redis brokers."""
    server: RedisServer | ClusterServer | None = None
    pg: PgDatabase | None = None
    url = ""
    stack = contextlib.AsyncExitStack()
    defaults: dict[str, Any] = {}
    if request.param == "postgresql":
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        pg = await cluster.database()
        server = RedisServer(tmp_path)
        await server.start()
        url = server.url
    elif request.param == "redis":
        server = RedisServer(tmp_path)
        await server.start()
        url = server.url
    elif request.param == "sentinel":
        sentinels = await stack.enter_async_context(one_sentinel(tmp_path))
        server, url = sentinels.servers.master, sentinels.url
        defaults = {"min_replicas": 1}
    elif request.param == "cluster":
        server = ClusterServer(request.getfixturevalue("cluster"))
        await server.open()
        stack.push_async_callback(server.close)
        url = server.url
    brokers: list[MemoryBroker | RedisBroker] = []
    inboxes: list[Inbox] = []

    async def build(**limits: Any) -> Subject:
        inbox_limits = InboxLimits(**{**defaults, **limits})
        got = Recorder()
        broker: MemoryBroker | RedisBroker
        inbox: Inbox
        other: Inbox
        if server is None:
            broker = MemoryBroker()
            await broker.start(got)
            inbox = other = MemoryInbox(broker, inbox_limits)
        else:
            broker = redis_broker(url)
            second = redis_broker(url)
            brokers.append(second)
            await broker.start(got)
            await second.start(Recorder())
            if pg is not None:
                inbox = PostgresInbox(pg.url, broker, inbox_limits, pool_size=4)
                other = PostgresInbox(pg.url, second, inbox_limits, pool_size=4)
            else:
                inbox = RedisInbox(broker, inbox_limits)
                other = RedisInbox(second, inbox_limits)
        brokers.append(broker)
        inboxes.extend((inbox, other))
        await inbox.start()
        await other.start()
        keys = KeyLayout(cluster=request.param == "cluster")
        return Subject(request.param, inbox, other, broker, got, server, keys, pg)

    async with stack:
        yield build
        for each in inboxes:
            await each.close()
        for broker in brokers:
            await broker.close()
        if request.param in ("redis", "postgresql") and server is not None:
            await server.stop()
        if pg is not None:
            await pg.drop()


def msg(channel: str, body: str = "hi", destination: str = "/message") -> Message:
    return Message(id="", channel=channel, destination=destination, body=body.encode())


async def publish_n(inbox: Inbox, channel: str, n: int, destination: str = "/message") -> list[str]:
    return [await inbox.publish(msg(channel, f"m{i}", destination)) for i in range(n)]


async def not_stored(s: Subject, channel: str) -> bool:
    """True once ``channel``'s inbox is gone, looked at without trimming it."""
    if s.pg is not None:
        conn = await s.pg.connect()
        try:
            live = await conn.fetchval(
                "SELECT count(*) FROM tidings.channels"
                " WHERE channel = $1 AND expires_ms > tidings.now_ms()",
                channel,
            )
        finally:
            await conn.close()
        return bool(live == 0)
    if s.server is None:
        assert isinstance(s.inbox, MemoryInbox)
        return s.inbox._streams.get(channel) is None
    client = s.server.client()
    try:
        return await client.exists(s.keys.stream(channel)) == 0
    finally:
        await client.aclose()


async def stored_state(s: Subject, user: str) -> tuple[int, int, int]:
    """(messages, acked ids, read ids) stored for ``user``, looked at without trimming."""
    if s.pg is not None:
        conn = await s.pg.connect()
        try:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM tidings.messages WHERE channel = 'u:' || $1),"
                " (SELECT count(*) FROM tidings.acked WHERE user_id = $1),"
                " (SELECT count(*) FROM tidings.read_ids WHERE user_id = $1)",
                user,
            )
        finally:
            await conn.close()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])
    if s.server is None:
        assert isinstance(s.inbox, MemoryInbox)
        stream = s.inbox._streams.get(f"u:{user}")
        read = s.inbox._read.get(user)
        return (
            len(stream.keys) if stream else 0,
            len(s.inbox._acked.get(user) or ()),
            len(read.ids) if read else 0,
        )
    client = s.server.client()
    try:
        return (
            await client.xlen(s.keys.stream(f"u:{user}")),
            await client.zcard(s.keys.user_key("acked", user)),
            await client.zcard(s.keys.user_key("read", user)),
        )
    finally:
        await client.aclose()


def id_of(announcement: bytes) -> str:
    inbox_id, _ = split_announcement(announcement)
    assert inbox_id is not None
    return inbox_id


def ids_of(stored: list[Any]) -> list[str]:
    return [s.message.id for s in stored]


class TestPublish:
    async def test_ids_increase_and_each_is_announced_once(self, make: Make) -> None:
        s = await make()
        await s.broker.subscribe("u:42")
        sent = [
            Message("x1", "u:42", "/message", "héllo ✓".encode(), headers=(("k", "v"),)),
            Message("x2", "u:42", "/queue/a", b'{"n":1}', "application/json;charset=UTF-8"),
            Message("x3", "u:42", "/message", b""),
        ]
        ids = [await s.inbox.publish(m) for m in sent]
        assert all(ID.match(i) for i in ids), ids
        assert [compare_ids(a, b) for a, b in itertools.pairwise(ids)] == [-1, -1]
        expected = [
            i.encode() + b" " + m.stored_as(i).encode() for i, m in zip(ids, sent, strict=True)
        ]
        assert await s.announced("u:42") == expected
        for payload, m, i in zip(expected, sent, ids, strict=True):
            got_id, encoded = split_announcement(payload)
            assert got_id == i
            assert Message.decode(encoded).stored_as(i) == m.stored_as(i)

    async def test_history_returns_what_was_published(self, make: Make) -> None:
        s = await make()
        sent = Message("x", "u:1", "/queue/q", "ünïcode".encode(), "text/x", (("a", "b"),))
        inbox_id = await s.inbox.publish(sent)
        history = await s.other.history("u:1", "0", limit=10)
        assert history.gap is False
        assert [m.message for m in history.messages] == [sent.stored_as(inbox_id)]
        assert history.messages[0].message.order is not None
        assert not history.messages[0].read

    async def test_only_inbox_channels(self, make: Make) -> None:
        s = await make()
        with pytest.raises(ValueError, match="not an inbox channel"):
            await s.inbox.publish(msg("x:1"))
        with pytest.raises(ValueError):
            await s.inbox.history("nope", "0", limit=1)

    async def test_2000_concurrent_publishes_keep_order(self, make: Make) -> None:
        s = await make(max_messages=5000)
        await s.broker.subscribe("u:9")

        async def publisher(task: int) -> list[str]:
            return [await s.inbox.publish(msg("u:9", f"{task}-{i}")) for i in range(100)]

        returned = await asyncio.gather(*(publisher(t) for t in range(20)))
        await eventually(lambda: len(s.got.on("u:9")) >= 2000, within=20, what="2000 announced")
        announced = [id_of(p) for p in await s.announced("u:9")]
        assert len(announced) == 2000
        assert all(compare_ids(a, b) < 0 for a, b in itertools.pairwise(announced))
        history = await s.inbox.history("u:9", "0", limit=5000)
        assert ids_of(history.messages) == announced
        assert sorted(i for ids in returned for i in ids) == sorted(announced)
        bodies = {m.message.body for m in history.messages}
        assert len(bodies) == 2000  # none lost, none doubled


class TestHistory:
    async def test_after_and_limit(self, make: Make) -> None:
        s = await make()
        ids = await publish_n(s.inbox, "t:news", 5)
        assert ids_of((await s.inbox.history("t:news", "0", limit=10)).messages) == ids
        assert ids_of((await s.inbox.history("t:news", "0-0", limit=10)).messages) == ids
        assert ids_of((await s.inbox.history("t:news", ids[1], limit=10)).messages) == ids[2:]
        assert ids_of((await s.inbox.history("t:news", "0", limit=2)).messages) == ids[:2]
        assert ids_of((await s.inbox.history("t:news", ids[0], limit=2)).messages) == ids[1:3]
        end = await s.inbox.history("t:news", ids[-1], limit=10)
        assert end.messages == [] and end.gap is False
        none = await s.inbox.history("t:news", "0", limit=0)
        assert none.messages == [] and none.gap is False
        assert (await s.inbox.history("t:empty", "0", limit=10)).messages == []
        with pytest.raises(ValueError):
            await s.inbox.history("t:news", "yesterday", limit=10)

    async def test_trim_by_count_reports_gaps(self, make: Make) -> None:
        s = await make(max_messages=3)
        ids = await publish_n(s.inbox, "u:5", 5)
        assert ids_of((await s.inbox.history("u:5", "0", limit=10)).messages) == ids[2:]
        assert (await s.inbox.history("u:5", "0", limit=10)).gap is False  # all retained
        trimmed = await s.other.history("u:5", ids[0], limit=10)
        assert trimmed.gap is True  # ids[1] was after it and is gone
        assert ids_of(trimmed.messages) == ids[2:]
        # ids[1] itself is gone, but nothing after it: a complete resume.
        assert (await s.other.history("u:5", ids[1], limit=10)).gap is False
        assert (await s.other.history("u:5", ids[2], limit=10)).gap is False
        assert (await s.other.history("u:5", ids[2], limit=0)).gap is False
        assert (await s.other.history("u:5", ids[0], limit=0)).gap is True

    async def test_topic_history_is_shorter(self, make: Make) -> None:
        s = await make(max_messages=10, topic_history=2)
        topic = await publish_n(s.inbox, "t:a", 4)
        user = await publish_n(s.inbox, "u:a", 4)
        assert ids_of((await s.inbox.history("t:a", "0", limit=10)).messages) == topic[2:]
        assert ids_of((await s.inbox.history("u:a", "0", limit=10)).messages) == user

    async def test_trim_by_age(self, make: Make) -> None:
        s = await make(max_age_s=0.4)
        old = await publish_n(s.inbox, "u:3", 2)
        await s.other.mark_read("3", ids=[old[0]])
        await s.other.ack("3", [old[1]])

        async def aged_out() -> bool:
            return (await s.other.history("u:3", "0", limit=10)).messages == []

        took = await eventually(aged_out, within=5, what="old messages trimmed by age")
        assert took >= 0.2  # not trimmed early
        assert await s.other.unread("3") == 0
        assert (await s.other.history("u:3", old[0], limit=10)).gap is True
        assert (await s.other.history("u:3", old[1], limit=10)).gap is False
        new = await s.inbox.publish(msg("u:3", "new"))
        after_old = await s.other.history("u:3", old[0], limit=10)
        assert (ids_of(after_old.messages), after_old.gap) == ([new], True)
        assert (await s.other.history("u:3", old[1], limit=10)).gap is False
        assert await s.other.unread("3") == 1
        assert ids_of(await s.other.unacked("3", "/message", limit=10)) == [new]

    async def test_expired_inbox_reports_a_gap(self, make: Make) -> None:
        s = await make(max_age_s=0.2)
        old = await s.inbox.publish(msg("u:8"))
        assert (await s.inbox.history("u:8", old, limit=10)).gap is False

        async def forgotten() -> bool:
            return (await s.inbox.history("u:8", old, limit=10)).gap

        # The key (and with it what came before) goes max_age_s + 1 s after the write.
        await eventually(forgotten, within=5, what="inbox expired")
        assert (await s.inbox.history("u:8", "0", limit=10)).gap is False
        new = await s.inbox.publish(msg("u:8"))
        assert compare_ids(old, new) < 0
        assert (await s.inbox.history("u:8", old, limit=10)).gap is True
        assert (await s.inbox.history("u:8", new, limit=10)).gap is False

    async def test_a_publish_trims_by_age_and_the_id_sets_forget(self, make: Make) -> None:
        # Nothing reads the inbox between its messages aging out and the next publish: the
        # publish trims them itself, and the user's id sets forget them there and then.
        s = await make(max_age_s=1.5)
        loop = asyncio.get_running_loop()
        old = await publish_n(s.inbox, "u:3", 2)
        stored_by = loop.time()  # both messages' ages started before this
        await s.other.ack("3", [old[0]])
        # Within their 1.5 s (a publish behind a replica's WAIT can take a while).
        assert (await s.other.mark_read("3", ids=[old[1]])).unread == 1
        # Older than max_age_s, while the inbox (kept max_age_s + 1 s after a write) stays.
        await asyncio.sleep(stored_by + 1.7 - loop.time())
        new = await s.inbox.publish(msg("u:3", "new"))
        assert await stored_state(s, "3") == (1, 0, 0)  # looked at before any read trims
        assert await s.other.unread("3") == 1
        assert ids_of(await s.other.unacked("3", "/message", limit=10)) == [new]
        after_old = await s.other.history("u:3", old[0], limit=10)
        assert (ids_of(after_old.messages), after_old.gap) == ([new], True)
        # old[1] is gone, but nothing after it: the new message says what came before it.
        assert (await s.other.history("u:3", old[1], limit=10)).gap is False

    async def test_a_topic_without_history(self, make: Make) -> None:
        s = await make(topic_history=0)
        await s.broker.subscribe("t:live")
        ids = await publish_n(s.inbox, "t:live", 3)
        assert [compare_ids(a, b) for a, b in itertools.pairwise(ids)] == [-1, -1]
        assert [id_of(p) for p in await s.announced("t:live")] == ids  # still announced
        everything = await s.other.history("t:live", "0", limit=10)
        assert (everything.messages, everything.gap) == ([], False)
        assert (await s.other.history("t:live", ids[1], limit=10)).gap is True
        assert (await s.other.history("t:live", ids[2], limit=10)).gap is False


class TestCatchUpReads:
    """What a node's catch-up asks (tidings.catchup): many channels in few round trips."""

    async def test_histories_of_many_channels_with_gaps(self, make: Make) -> None:
        s = await make(max_messages=3, topic_history=2)
        users = {f"u:{n}": await publish_n(s.inbox, f"u:{n}", 2) for n in range(50)}
        trimmed = await publish_n(s.inbox, "u:trim", 5)  # the first two are gone
        topic = await publish_n(s.inbox, "t:news", 1)
        after = {channel: ids[0] for channel, ids in users.items()}
        after |= {"u:trim": trimmed[0], "t:news": "0", "u:none": "0", "u:gone": "5-0"}
        pages = await s.other.histories(after, limit=10)
        assert list(pages) == list(after)  # every channel answered, in the asked order
        for channel, ids in users.items():
            assert (ids_of(pages[channel].messages), pages[channel].gap) == (ids[1:], False)
        assert (ids_of(pages["u:trim"].messages), pages["u:trim"].gap) == (trimmed[2:], True)
        assert (ids_of(pages["t:news"].messages), pages["t:news"].gap) == (topic, False)
        assert (pages["u:none"].messages, pages["u:none"].gap) == ([], False)
        assert (pages["u:gone"].messages, pages["u:gone"].gap) == ([], True)  # unknown
        paged = await s.other.histories({"u:trim": trimmed[0]}, limit=2)
        assert ids_of(paged["u:trim"].messages) == trimmed[2:4]
        assert await s.other.histories({}, limit=10) == {}

    async def test_last_ids_and_behind(self, make: Make) -> None:
        s = await make()
        channels = [f"u:{n}" for n in range(1500)]  # more than one batch
        tops = {c: (await publish_n(s.inbox, c, 2))[-1] for c in channels[:1200:3]}
        last = await s.other.last_ids([*channels, "t:quiet"])
        assert last == {**dict.fromkeys([*channels, "t:quiet"]), **tops}
        assert await s.other.last_ids([]) == {}

        # Up to date everywhere: nothing behind, whatever the number of channels.
        after = {c: tops.get(c, "0") for c in channels}
        assert await s.other.behind(after) == []
        newer = {c: await s.inbox.publish(msg(c)) for c in channels[3:1500:500]}
        assert sorted(await s.other.behind(after)) == sorted(newer)
        assert await s.other.behind({c: i for c, i in newer.items()}) == []
        assert await s.other.behind({}) == []


class TestIdempotency:
    async def test_same_key_stores_and_announces_once(self, make: Make) -> None:
        s = await make()
        await s.broker.subscribe("u:1")
        first = await s.inbox.publish(msg("u:1", "a"), idempotency_key="k1")
        again = await s.inbox.publish(msg("u:1", "a"), idempotency_key="k1")
        on_other = await s.other.publish(msg("u:1", "a"), idempotency_key="k1")
        assert first == again == on_other
        assert ids_of((await s.inbox.history("u:1", "0", limit=10)).messages) == [first]
        announced = await s.announced("u:1")
        assert [id_of(p) for p in announced] == [first]

    async def test_keys_are_per_channel(self, make: Make) -> None:
        s = await make()
        a = await s.inbox.publish(msg("u:1"), idempotency_key="k")
        b = await s.inbox.publish(msg("u:2"), idempotency_key="k")
        c = await s.inbox.publish(msg("t:1"), idempotency_key="k")
        # "u:a:b" + "c" and "u:a" + "b:c" must not be the same key
        d = await s.inbox.publish(msg("u:a:b"), idempotency_key="c")
        e = await s.inbox.publish(msg("u:a"), idempotency_key="b:c")
        for channel, inbox_id in [("u:1", a), ("u:2", b), ("t:1", c), ("u:a:b", d), ("u:a", e)]:
            stored = await s.inbox.history(channel, "0", limit=10)
            assert ids_of(stored.messages) == [inbox_id]
        plain = await s.inbox.publish(msg("u:1"))
        assert plain != a

    async def test_key_expires(self, make: Make) -> None:
        s = await make(idempotency_ttl_s=0.3)
        loop = asyncio.get_running_loop()
        # The key's 0.3 s start when its script runs, after this; a publish may return
        # later (behind a WAIT for its replica, say), so the clock starts here.
        start = loop.time()
        first = await s.inbox.publish(msg("u:1"), idempotency_key="k")
        ids = {first}

        async def stored_anew() -> bool:
            ids.add(await s.inbox.publish(msg("u:1"), idempotency_key="k"))
            return len(ids) == 2

        await eventually(stored_anew, within=5, what="idempotency key expired")
        assert loop.time() - start >= 0.25  # it lived its time (less the clocks' grain)
        assert len((await s.inbox.history("u:1", "0", limit=10)).messages) == 2


class TestAcks:
    async def test_unacked_per_destination(self, make: Make) -> None:
        s = await make()
        a = await publish_n(s.inbox, "u:1", 4, "/queue/a")
        b = await publish_n(s.inbox, "u:1", 2, "/queue/b")
        await publish_n(s.inbox, "u:2", 2, "/queue/a")
        assert ids_of(await s.other.unacked("1", "/queue/a", limit=10)) == a  # never delivered
        await s.inbox.ack("1", [a[0], a[2]])
        assert ids_of(await s.other.unacked("1", "/queue/a", limit=10)) == [a[1], a[3]]
        assert ids_of(await s.other.unacked("1", "/queue/a", limit=1)) == [a[1]]
        assert await s.other.unacked("1", "/queue/a", limit=0) == []
        assert ids_of(await s.other.unacked("1", "/queue/b", limit=10)) == b
        assert await s.other.unacked("1", "/queue/none", limit=10) == []
        assert len(await s.other.unacked("2", "/queue/a", limit=10)) == 2  # other user untouched
        unacked = await s.other.unacked("1", "/queue/a", limit=10)
        assert unacked[0].message == msg("u:1", "m1", "/queue/a").stored_as(a[1])

    async def test_acks_in_any_order(self, make: Make) -> None:
        s = await make()
        dests = ["/a", "/b", "/a", "/a", "/b", "/a"]
        ids = [await s.inbox.publish(msg("u:1", f"m{i}", d)) for i, d in enumerate(dests)]
        a0, b0, a1, a2, b1, a3 = ids

        async def unacked(destination: str = "/a", limit: int = 10) -> list[str]:
            return ids_of(await s.other.unacked("1", destination, limit=limit))

        assert await unacked() == [a0, a1, a2, a3]
        await s.inbox.ack("1", [a1])
        assert await unacked() == [a0, a2, a3]
        await s.inbox.ack("1", [a0])
        assert await unacked(limit=1) == [a2]
        assert await unacked() == [a2, a3]
        await s.inbox.ack("1", [a3])
        assert await unacked() == [a2]
        await s.inbox.ack("1", [a2])
        assert await unacked() == []
        assert await unacked() == []
        a4 = await s.inbox.publish(msg("u:1", "m6", "/a"))
        assert await unacked() == [a4]
        assert await unacked("/b") == [b0, b1]
        await s.inbox.ack("1", [b1])
        assert await unacked("/b") == [b0]

    async def test_ack_of_unknown_ids_is_harmless(self, make: Make) -> None:
        s = await make()
        ids = await publish_n(s.inbox, "u:1", 2)
        await s.inbox.publish(msg("u:2"))
        await s.inbox.ack("1", ["99999999999999-0", "1-1", "garbage", "", "1-"])
        await s.inbox.ack("nobody", ids)
        await s.inbox.ack("1", [])
        assert ids_of(await s.other.unacked("1", "/message", limit=10)) == ids
        await s.inbox.ack("1", [ids[0], ids[0]])
        assert ids_of(await s.other.unacked("1", "/message", limit=10)) == ids[1:]

    async def test_acks_forget_trimmed_ids(self, make: Make) -> None:
        s = await make(max_messages=2)
        old = await publish_n(s.inbox, "u:1", 2)
        await s.inbox.ack("1", old)
        new = await publish_n(s.inbox, "u:1", 2)
        assert ids_of(await s.other.unacked("1", "/message", limit=10)) == new
        assert (await stored_state(s, "1"))[1] == 0  # no acked id kept


class TestReadState:
    async def test_mark_read_ids_and_up_to(self, make: Make) -> None:
        s = await make()
        ids = await publish_n(s.inbox, "u:7", 5)
        assert await s.other.unread("7") == 5
        assert (await s.inbox.mark_read("7", ids=[ids[1], ids[3]])).unread == 3
        assert await s.other.unread("7") == 3
        assert (await s.inbox.mark_read("7", ids=[ids[1]])).unread == 3  # again: no change
        flags = [m.read for m in await s.other.listing("7", "0", limit=10)]
        assert flags == [False, True, False, True, False]
        assert (await s.inbox.mark_read("7", up_to=ids[2])).unread == 1
        flags = [m.read for m in await s.other.listing("7", "0", limit=10)]
        assert flags == [True, True, True, True, False]
        assert (await s.inbox.mark_read("7", up_to=ids[0])).unread == 1  # the floor never goes back
        listing = await s.other.listing("7", ids[2], limit=1)
        assert [(m.message.id, m.read) for m in listing] == [(ids[3], True)]
        assert listing[0].message == msg("u:7", "m3").stored_as(ids[3])
        assert (await s.other.mark_read("7", ids=[ids[4]], up_to=ids[1])).unread == 0
        assert await s.inbox.unread("7") == 0
        assert all(m.read for m in await s.other.listing("7", "0", limit=10))

    async def test_unread_state_is_the_count_and_the_newest_id(self, make: Make) -> None:
        s = await make(max_messages=3)
        assert await s.other.unread_state("9") == (0, None)
        ids = await publish_n(s.inbox, "u:9", 4)  # ids[0] trimmed
        await s.inbox.publish(msg("u:10"))
        assert await s.other.unread_state("9") == (3, ids[3])
        assert (await s.inbox.mark_read("9", up_to=ids[2])).unread == 1
        assert await s.other.unread_state("9") == (1, ids[3])

    async def test_read_and_delete_answer_the_newest_id_they_counted(self, make: Make) -> None:
        """Issue 16: an inbox-state event carries the count and ``last``, taken in one step,
        where ``last`` is the newest id given out (even deleted): ids above it are not
        counted, so a client can order the event against the messages it receives."""
        s = await make()
        ids = await publish_n(s.inbox, "u:8", 3)
        assert await s.inbox.mark_read("8", ids=[ids[0]]) == (2, ids[2])
        later = await s.other.publish(msg("u:8"))
        assert await s.other.mark_read("8", up_to=ids[1]) == (2, later)
        assert await s.inbox.delete("8", up_to=ids[2]) == (3, (1, later))
        assert await s.other.delete("8") == (1, (0, later))
        assert await s.inbox.unread_state("8") == (0, later)
        newer = await s.inbox.publish(msg("u:8"))
        assert await s.other.mark_read("8") == (1, newer)
        assert await s.inbox.mark_read("nobody") == (0, None)

    async def test_a_read_state_and_its_last_agree_under_concurrent_publishes(
        self, make: Make
    ) -> None:
        """The race of issue 16: reads of another device interleaved with publishes; each
        answer's count is exactly the messages after the floor up to its ``last``."""
        s = await make()
        first = await s.inbox.publish(msg("u:8"))
        calls: list[Awaitable[Any]] = []
        for _ in range(30):
            calls += [s.inbox.publish(msg("u:8")), s.other.mark_read("8", up_to=first)]
        results = await asyncio.gather(*calls)
        published = sorted([first, *results[::2]], key=id_key)
        for state in results[1::2]:
            assert state.last is not None
            assert state.unread == published.index(state.last), (state, published)

    async def test_unknown_ids_and_future_floor(self, make: Make) -> None:
        s = await make()
        ids = await publish_n(s.inbox, "u:7", 2)
        await s.inbox.publish(msg("u:8"))
        assert (await s.inbox.mark_read("7", ids=["99999999999999-0", "1-1", "junk"])).unread == 2
        assert (await s.inbox.mark_read("7")).unread == 2
        assert (await s.inbox.mark_read("nobody", ids=ids, up_to=ids[1])).unread == 0
        assert await s.other.unread("8") == 1
        # up_to beyond the newest covers what exists, not what comes later
        assert (await s.inbox.mark_read("7", up_to="99999999999999-0")).unread == 0
        later = await s.inbox.publish(msg("u:7"))
        assert await s.other.unread("7") == 1
        assert [m.read for m in await s.other.listing("7", ids[1], limit=10)] == [False]
        assert (await s.inbox.mark_read("7", ids=[later])).unread == 0
        with pytest.raises(ValueError):
            await s.inbox.mark_read("7", up_to="junk")

    async def test_read_state_forgets_trimmed_ids(self, make: Make) -> None:
        s = await make(max_messages=3)
        old = await publish_n(s.inbox, "u:4", 3)
        assert (await s.inbox.mark_read("4", ids=old[1:])).unread == 1
        new = await publish_n(s.inbox, "u:4", 2)  # old[0] and old[1] trimmed
        assert await s.other.unread("4") == 2
        assert (await s.other.mark_read("4", up_to=old[1])).unread == 2  # nothing retained up to it
        listing = await s.other.listing("4", "0", limit=10)
        assert [(m.message.id, m.read) for m in listing] == [
            (old[2], True),
            (new[0], False),
            (new[1], False),
        ]
        await publish_n(s.inbox, "u:4", 3)  # everything read is gone
        assert await s.other.unread("4") == 3
        assert (await stored_state(s, "4"))[2] == 0  # no read id kept

    async def test_unread_counts_across_trims_by_count(self, make: Make) -> None:
        s = await make(max_messages=3)
        ids = await publish_n(s.inbox, "u:5", 3)
        assert (await s.inbox.mark_read("5", up_to=ids[1])).unread == 1
        more = await publish_n(s.inbox, "u:5", 2)  # ids[0] and the floor ids[1] trimmed
        assert await s.other.unread("5") == 3
        assert (
            await s.inbox.mark_read("5", up_to=ids[2])
        ).unread == 2  # a floor on a retained entry
        assert (await s.inbox.mark_read("5", ids=[more[1]])).unread == 1
        last = await s.inbox.publish(msg("u:5", "last"))  # the floor ids[2] trimmed
        assert await s.other.unread("5") == 2
        listing = await s.other.listing("5", "0", limit=10)
        assert [(m.message.id, m.read) for m in listing] == [
            (more[0], False),
            (more[1], True),
            (last, False),
        ]

    async def test_delete_up_to_then_all(self, make: Make) -> None:
        s = await make()
        ids = await publish_n(s.inbox, "u:6", 5)
        await s.inbox.publish(msg("u:9"))
        assert (await s.inbox.mark_read("6", ids=[ids[1], ids[3]])).unread == 3
        await s.inbox.ack("6", [ids[0], ids[4]])
        assert await s.other.delete("6", up_to=ids[2]) == (3, (1, ids[4]))  # ids[4] unread
        assert await stored_state(s, "6") == (2, 1, 1)  # the marks of ids 0-2 went with them
        listing = await s.inbox.listing("6", "0", limit=10)
        assert [(m.message.id, m.read) for m in listing] == [(ids[3], True), (ids[4], False)]
        assert (await s.inbox.history("u:6", ids[1], limit=10)).gap  # deleted = missed
        assert not (await s.inbox.history("u:6", ids[2], limit=10)).gap
        assert await s.inbox.delete("6", up_to=ids[2]) == (0, (1, ids[4]))  # nothing left there
        assert await s.other.delete("6") == (2, (0, ids[4]))  # still the newest given out
        assert await stored_state(s, "6") == (0, 0, 0)
        assert await s.other.unread("6") == 0
        later = await s.inbox.publish(msg("u:6", "later"))
        assert compare_ids(later, ids[4]) == 1  # ids keep increasing
        assert await s.inbox.unread("6") == 1
        assert (await s.inbox.history("u:6", ids[3], limit=10)).gap
        assert await s.inbox.unread("9") == 1  # another user's inbox untouched
        assert await s.inbox.delete("nobody") == (0, (0, None))
        with pytest.raises(ValueError):
            await s.inbox.delete("6", up_to="junk")

    async def test_read_ids_of_an_expired_inbox_do_not_count(self, make: Make) -> None:
        # 3 s: the publishes and the read below must fit in it, behind a replica's WAIT
        # beside the suite's other workers (1 s ran out on a Sentinel subject once).
        s = await make(max_age_s=3.0)
        old = await publish_n(s.inbox, "u:6", 2)
        await asyncio.sleep(0.15)  # the clock: the read state must outlive the inbox
        assert (await s.inbox.mark_read("6", ids=[old[1]])).unread == 1
        # Untouched (every call would trim it by age), the inbox expires before the read
        # ids do; watch it without calling the inbox.
        await eventually(lambda: not_stored(s, "u:6"), within=10, what="inbox expired")
        await publish_n(s.inbox, "u:6", 2)
        assert await s.other.unread("6") == 2


class TestFailure:
    async def test_storage_failure_raises_broker_unavailable(self, make: Make) -> None:
        s = await make()
        ids = await publish_n(s.inbox, "u:1", 1)
        if s.pg is not None:
            await s.pg.drop()  # every connection ends, and none can be made again
        elif s.server is not None:
            await s.server.stop()
        else:
            await s.broker.close()
        with pytest.raises(BrokerUnavailable):
            await s.inbox.publish(msg("u:1", "lost"))
        if s.server is None:
            stored = await s.inbox.history("u:1", "0", limit=10)
            assert ids_of(stored.messages) == ids  # nothing stored when it cannot announce
            return
        calls: list[Awaitable[Any]] = [
            s.inbox.publish(msg("u:1"), idempotency_key="k"),
            s.inbox.history("u:1", "0", limit=10),
            s.inbox.unacked("1", "/message", limit=10),
            s.inbox.ack("1", ids),
            s.inbox.listing("1", "0", limit=10),
            s.inbox.unread("1"),
            s.inbox.mark_read("1", ids=ids),
        ]
        engine = "postgresql" if s.pg is not None else "redis"
        for call in calls:
            with pytest.raises(BrokerUnavailable, match=f"{engine} unavailable"):
                await call

    async def test_closed_inbox_refuses(self, make: Make) -> None:
        s = await make()
        await s.inbox.close()
        with pytest.raises(BrokerUnavailable):
            await s.inbox.publish(msg("u:1"))
        with pytest.raises(BrokerUnavailable):
            await s.inbox.unread("1")
        with pytest.raises(BrokerUnavailable):
            await s.inbox.ack("1", ["1-0"])


# -- one inbox only ------------------------------------------------------------------


async def test_memory_ids_never_go_back(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = MemoryBroker()
    await broker.start(Recorder())
    inbox = MemoryInbox(broker, InboxLimits())
    clock = [5_000_000]
    monkeypatch.setattr("tidings.inbox.memory._wall_ms", lambda: clock[0])
    a = await inbox.publish(msg("u:1"))
    clock[0] -= 1000  # the clock steps back
    b = await inbox.publish(msg("u:1"))
    c = await inbox.publish(msg("u:1"))
    clock[0] += 5000
    d = await inbox.publish(msg("u:1"))
    assert [a, b, c, d] == ["5000000-0", "5000000-1", "5000000-2", "5004000-0"]
    assert await inbox.publish(msg("u:2")) == "5004000-0"  # one sequence per channel


async def test_redis_keys_and_ttls(redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url)
    await broker.start(Recorder())
    inbox = RedisInbox(broker, InboxLimits(max_age_s=60))
    client = redis_server.client()
    try:
        inbox_id = await inbox.publish(msg("u:42"), idempotency_key="k")
        await inbox.publish(msg("t:news"))
        await inbox.ack("42", [inbox_id])
        await inbox.mark_read("42", ids=[inbox_id], up_to=inbox_id)
        await inbox.mark_read("42", ids=[await inbox.publish(msg("u:42"))])
        assert len(await inbox.unacked("42", "/message", limit=10)) == 1
        names = await client.keys("tidings:*")
        keys = sorted(k.decode() if isinstance(k, bytes) else k for k in names)
        assert keys == [
            "tidings:ackcursor:42",
            "tidings:acked:42",
            "tidings:idem:4:u:42:k",
            "tidings:inbox:t:news",
            "tidings:inbox:u:42",
            "tidings:read:42",
            "tidings:readfloor:42",
        ]
        for key in keys:
            ttl = await client.pttl(key)
            limit = 24 * 3600 * 1000 if "idem" in key else 61_000
            assert 0 < ttl <= limit, key
    finally:
        await client.aclose()
        await broker.close()


async def test_redis_publishes_share_round_trips_and_survive_a_script_flush(
    redis_server: RedisServer,
) -> None:
    broker = RedisBroker(redis_server.url)
    got = Recorder()
    await broker.start(got)
    await broker.subscribe("u:7")
    inbox = RedisInbox(broker, InboxLimits())
    client = redis_server.client()
    try:
        # 200 concurrent publishes: pipelined, yet each caller gets its own, distinct id.
        ids = await asyncio.gather(*(inbox.publish(msg("u:7", f"m{n}")) for n in range(200)))
        assert len(set(ids)) == 200
        history = await inbox.history("u:7", "0", limit=1000)
        assert sorted(ids_of(history.messages), key=id_key) == ids_of(history.messages)
        assert sorted(ids, key=id_key) == ids_of(history.messages)
        # Redis forgets its scripts (as after a restart): the next publishes load it again.
        await client.script_flush()
        again = await asyncio.gather(*(inbox.publish(msg("u:7", f"x{n}")) for n in range(5)))
        assert len(set(again)) == 5
        newest = max(ids, key=id_key)
        assert ids_of((await inbox.history("u:7", newest, limit=10)).messages) == sorted(
            again, key=id_key
        )
    finally:
        await client.aclose()
        await broker.close()


async def test_redis_entries_chain_ordinals_and_previous_ids(redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url)
    await broker.start(Recorder())
    inbox = RedisInbox(broker, InboxLimits(max_messages=3))
    client = redis_server.client()
    try:
        ids = await publish_n(inbox, "u:1", 5)
        topic = await inbox.publish(msg("t:1"))
        entries = await client.xrange("tidings:inbox:u:1")
        assert [(i.decode(), f[b"n"], f[b"p"].decode()) for i, f in entries] == [
            (ids[2], b"3", ids[1]),
            (ids[3], b"4", ids[2]),
            (ids[4], b"5", ids[3]),
        ]
        ((topic_id, fields),) = await client.xrange("tidings:inbox:t:1")
        assert topic_id.decode() == topic
        assert fields == {b"n": b"1", b"p": b"", b"d": b"/message", b"m": msg("t:1").encode()}
    finally:
        await client.aclose()
        await broker.close()


async def test_redis_trim_by_age_counts_from_the_clock_when_it_is_behind(
    redis_server: RedisServer,
) -> None:
    # Ids never go back: with the clock behind a stream's last id (as after the clock
    # stepped back), XADD reuses that id's ms. What the trim by age keeps still depends on
    # the clock: a message 30 s old stays, one 90 s old goes.
    broker = RedisBroker(redis_server.url)
    await broker.start(Recorder())
    inbox = RedisInbox(broker, InboxLimits(max_age_s=60))
    client = redis_server.client()
    try:
        seconds, micros = await client.time()
        now_ms = seconds * 1000 + micros // 1000
        stream, encoded = "tidings:inbox:u:1", msg("u:1").encode()
        old, young, ahead = (
            f"{now_ms - 90_000}-0",
            f"{now_ms - 30_000}-0",
            f"{now_ms + 3_600_000}-0",
        )
        previous = ""
        for n, entry_id in enumerate([old, young, ahead], start=1):
            fields = {"n": n, "p": previous, "d": "/message", "m": encoded}
            await client.xadd(stream, fields, id=entry_id)  # type: ignore[arg-type]
            previous = entry_id
        new = await inbox.publish(msg("u:1", "new"))
        assert new == f"{now_ms + 3_600_000}-1"
        stored = [i.decode() for i, _ in await client.xrange(stream)]  # before any read trims
        assert stored == [young, ahead, new]
        assert ids_of((await inbox.history("u:1", "0", limit=10)).messages) == stored
    finally:
        await client.aclose()
        await broker.close()


async def test_redis_publish_sends_the_whole_call_pack_command_makes(
    redis_server: RedisServer,
) -> None:
    # InboxWriter packs a channel's keys and arguments once and keeps them: each call must
    # still be, byte for byte, the EVALSHA of the script's contract (its KEYS and ARGV).
    client = redis_server.client()
    writer = InboxWriter(client, InboxLimits(max_messages=7, topic_history=5, max_age_s=60))
    sent: list[bytes] = []
    submit_packed = writer._publisher.submit_packed

    def record(command: bytes) -> asyncio.Future[Any]:
        sent.append(command)
        return submit_packed(command)

    writer._publisher.submit_packed = record  # type: ignore[method-assign]
    calls = [
        (msg("u:ü1"), None),
        (msg("u:ü1", "again"), None),  # the same channel: packed parts reused
        (msg("u:ü1", destination="/alerts"), None),
        (msg("t:news"), None),
        (msg("u:ü1", "keyed"), "k-1"),
        (msg("t:news", "keyed"), "k-1"),
    ]
    try:
        ids = [await writer.submit(m, idempotency_key=key) for m, key in calls]
        stored = {(m.channel, inbox_id) for (m, _), inbox_id in zip(calls, ids, strict=True)}
        assert len(stored) == len(calls)  # every call ran and stored its message
        for (message, key), command in zip(calls, sent, strict=True):
            user = message.channel.startswith("u:")
            name = message.channel[2:]
            keys = [f"tidings:inbox:{message.channel}"]
            keys += [f"tidings:acked:{name}", f"tidings:read:{name}"] if user else ["", ""]
            args: list[str | bytes | int] = [message.encode(), message.destination]
            args += [7 if user else 5, 60_000, 61_000, f"tidings:{message.channel}"]
            if key is not None:
                keys.append(f"tidings:idem:{len(message.channel)}:{message.channel}:{key}")
                args.append(int(InboxLimits().idempotency_ttl_s * 1000))
            sha = writer._publisher._sha
            whole = (b"EVALSHA", sha, len(keys), *keys, *args)
            assert command == hiredis.pack_command(whole), (message, key)  # type: ignore[arg-type]
    finally:
        await writer.close()
        await client.aclose()


async def test_redis_publish_runs_few_commands(redis_server: RedisServer) -> None:
    # What a publish costs Redis is mostly the commands its script runs (docs/decisions.md,
    # 2026-11-27). To an inbox that exists and has room: XREVRANGE (the newest entry),
    # XADD, XTRIM (by age), PEXPIRE, PUBLISH; TIME only when its id's seq is not 0.
    broker = RedisBroker(redis_server.url)
    await broker.start(Recorder())
    inbox = RedisInbox(broker, InboxLimits())
    client = redis_server.client()
    try:
        await inbox.publish(msg("u:1"))  # a new stream: also EXISTS, and DEL of the id sets
        await client.config_resetstat()
        ids = await publish_n(inbox, "u:1", 50)
        stats = await client.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        for command in ["xrevrange", "xadd", "xtrim", "pexpire", "evalsha"]:
            assert calls.pop(command) == 50, command
        assert calls.pop("time", 0) == sum(1 for i in ids if not i.endswith("-0"))
        assert calls.pop("publish") >= 50  # and the broker's probes, if one came
        assert set(calls) <= {"info", "config|resetstat", "ping"}, calls
    finally:
        await client.aclose()
        await broker.close()
