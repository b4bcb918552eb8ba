"""The PostgreSQL inbox end to end (issue 20): ``--inbox`` beside ``--broker``, the
schema's migrations (``tidings migrate``, ``--migrate``), and resumes through real nodes.

The inbox contract itself runs on PostgreSQL in tests/test_inbox_contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from tidings.brokers.memory import MemoryBroker
from tidings.brokers.redis import RedisBroker
from tidings.inbox.base import InboxLimits, split_announcement
from tidings.inbox.pg_schema import latest_version, schema_version
from tidings.inbox.postgresql import SWEEP_BATCH, PostgresInbox, lock_key
from tidings.message import APPLICATION_JSON, Message, id_key

from .conftest import StartServer
from .ports import free_port
from .postgres_fixture import PgCluster, PgDatabase
from .rabbit_fixture import RabbitServer
from .redis_fixture import RedisServer
from .test_catchup_e2e import run_scenario
from .test_cli import run_cli
from .test_inbox_contract import eventually
from .test_inbox_e2e import run_resume_scenario


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:
        yield session


@pytest.mark.parametrize("broker", ["memory", "redis", "redis-node-killed"])
async def test_resume_under_load_on_a_postgresql_inbox(
    broker: str,
    tidings_server: StartServer,
    redis_server: Any,
    postgres_db: PgDatabase,
    http: aiohttp.ClientSession,
) -> None:
    # Sessions dropped every 20 ms come back through the other node with
    # tidings-resume-after: every accepted message arrives exactly once, in order; with
    # a node SIGKILLed after 1 s, every accepted one arrives (tests/test_inbox_e2e.py).
    args = ["--inbox", postgres_db.url]
    killed = broker == "redis-node-killed"
    if broker == "memory":
        nodes = [await tidings_server(*args)]
    else:
        nodes = list(
            await asyncio.gather(
                *(
                    tidings_server(*args, "--broker", redis_server.url, "--node-id", f"N{n}")
                    for n in range(2)
                )
            )
        )
    readers = await run_resume_scenario(nodes, http, users=30, messages=1500, kill_node=killed)
    assert sum(r.reconnects for r in readers.values()) > 0
    conn = await postgres_db.connect()
    try:
        stored = await conn.fetchval("SELECT count(*) FROM tidings.messages")
    finally:
        await conn.close()
    if not killed:
        assert stored == 1500


async def test_migrate_creates_the_schema_once(pg_cluster: PgCluster) -> None:
    database = await pg_cluster.database(migrated=False)
    try:
        first = await asyncio.to_thread(run_cli, "migrate", "--inbox", database.url)
        assert first.returncode == 0, first.stderr
        applied = ", ".join(str(v) for v in range(1, latest_version() + 1))
        assert f"applied {applied}; schema version {latest_version()}" in first.stdout
        again = await asyncio.to_thread(run_cli, "migrate", env={"TIDINGS_INBOX": database.url})
        assert again.returncode == 0, again.stderr
        assert "nothing to apply" in again.stdout
        conn = await database.connect()
        try:
            assert await schema_version(conn) == latest_version()
            tables = await conn.fetch(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'tidings' ORDER BY 1"
            )
        finally:
            await conn.close()
        assert [t["table_name"] for t in tables] == [
            "acked",
            "channels",
            "idempotency",
            "messages",
            "nodes",
            "outbox",
            "presence",
            "read_floors",
            "read_ids",
            "sockjs_nodes",
            "sockjs_sessions",
            "tidings_schema_version",
        ]
    finally:
        await database.drop()


async def test_a_node_without_the_schema_refuses_to_start_and_migrate_fixes_it(
    pg_cluster: PgCluster, tidings_server: StartServer
) -> None:
    database = await pg_cluster.database(migrated=False)
    try:
        port = str(free_port())
        refused = await asyncio.to_thread(run_cli, "serve", "--port", port, "--inbox", database.url)
        assert refused.returncode == 2, refused.stderr
        assert f"schema is at version 0, this Tidings needs {latest_version()}" in refused.stderr
        assert "run `tidings migrate --inbox <url>` (or start with --migrate)" in refused.stderr
        assert "Traceback" not in refused.stderr
        node = await tidings_server("--inbox", database.url, "--migrate")
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{node.http_url}/api/v1/users/7/messages", json={"body": "hi"}) as reply,
        ):
            assert reply.status == 202, await reply.text()
        conn = await database.connect()
        try:
            assert await conn.fetchval("SELECT count(*) FROM tidings.messages") == 1
        finally:
            await conn.close()
    finally:
        await database.drop()


def test_migrate_needs_a_postgresql_url_and_a_reachable_database() -> None:
    missing = run_cli("migrate")
    assert missing.returncode == 2
    assert "--inbox postgresql://... is required" in missing.stderr
    unreachable = run_cli("migrate", "--inbox", "postgresql://nobody:secret@127.0.0.1:1/x")
    assert unreachable.returncode == 1
    assert "cannot connect to postgresql://nobody:***@127.0.0.1:1/x" in unreachable.stderr
    assert "secret" not in unreachable.stderr


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--broker", "redis://127.0.0.1:1/0", "--inbox", "memory://"],
            "--inbox memory:// keeps messages in this process",
        ),
        (
            ["--broker", "redis://127.0.0.1:1/0", "--inbox", "redis://127.0.0.1:2/0"],
            "must be the broker's own Redis",
        ),
        (["--inbox", "redis://127.0.0.1:2/0"], "must be the broker's own Redis"),
        (["--inbox", "mysql://x/y"], "expected a memory://, redis://"),
        (["--migrate"], "--migrate applies the schema of a --inbox postgresql://"),
        (
            ["--broker", "redis://h:1/0", "--legacy-channel", "c", "--inbox", "postgresql://h/d"],
            "--legacy-channel needs the Redis inbox",
        ),
        (
            ["--broker", "redis://h:1/0", "--inbox-min-replicas", "1", "--inbox", "postgres://h/d"],
            "--inbox-min-replicas waits for Redis replicas",
        ),
    ],
    ids=["memory-shared", "other-redis", "redis-memory", "scheme", "migrate", "legacy", "replicas"],
)
def test_inbox_combinations_that_cannot_work_exit_2(args: list[str], error: str) -> None:
    result = run_cli("serve", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("tidings serve: error: "), lines
    assert error in lines[1]


# -- the transactional outbox (issue 20, item 4) --------------------------------------------


class Heard(list[tuple[str, bytes]]):
    """What a subscriber heard, (channel, payload) in order; ``at_least`` waits for more."""

    def __init__(self) -> None:
        super().__init__()
        self._more = asyncio.Event()

    def __call__(self, channel: str, payload: bytes) -> None:
        self.append((channel, payload))
        self._more.set()

    async def at_least(self, count: int, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while len(self) < count:
                self._more.clear()
                await self._more.wait()

    async def all_committed(self, app: asyncpg.Connection) -> str:
        """Wait until everything the outbox holds now has been heard: a marker committed
        after it on each channel heard (``u:7`` and ``t:news``) is announced after that
        channel's earlier messages (one channel's announcements keep commit order; those
        of different channels drained in one batch go out side by side, so one marker
        says nothing of another channel). The markers are then taken off the list, and
        each must have been the last thing heard on its channel. Returns the id of the
        marker stored in ``u:7``'s inbox."""
        marker = f"end {uuid.uuid4().hex}".encode()
        async with app.transaction():
            await app.fetchval(
                "SELECT tidings.publish_to_user('7', to_jsonb($1::text))", marker.decode()
            )
            await app.fetchval(
                "SELECT tidings.publish_to_topic('news', to_jsonb($1::text))", marker.decode()
            )
        channels = {"u:7", "t:news"}
        async with asyncio.timeout(10.0):
            while {channel for channel, payload in self if marker in payload} != channels:
                self._more.clear()
                await self._more.wait()
        for channel in channels:
            last = [payload for heard, payload in self if heard == channel][-1]
            assert marker in last, f"heard on {channel} after its marker"
        [inbox_id] = [
            split_announcement(payload)[0]
            for channel, payload in self
            if channel == "u:7" and marker in payload
        ]
        self[:] = [(channel, payload) for channel, payload in self if marker not in payload]
        assert inbox_id is not None
        return inbox_id


async def outbox_nodes(
    database: PgDatabase, redis_url: str, count: int, **kwargs: Any
) -> tuple[list[PostgresInbox], list[RedisBroker], Heard]:
    """``count`` inboxes draining the outbox, each announcing on its own Redis broker;
    and what a subscriber of ``u:7`` and ``t:news`` heard."""
    heard = Heard()
    brokers = [RedisBroker(redis_url) for _ in range(count + 1)]
    await brokers[0].start(heard)
    for channel in ("u:7", "t:news"):
        await brokers[0].subscribe(channel)
    inboxes = []
    for broker in brokers[1:]:
        await broker.start(lambda channel, payload: None)
        inbox = PostgresInbox(database.url, broker, InboxLimits(), pool_size=3, **kwargs)
        await inbox.start()
        inboxes.append(inbox)
    return inboxes, brokers, heard


async def close_all(inboxes: list[PostgresInbox], brokers: list[RedisBroker]) -> None:
    for inbox in inboxes:
        await inbox.close()
    for broker in brokers:
        await broker.close()


async def test_outbox_delivers_a_committed_transaction_and_nothing_of_a_rolled_back_one(
    postgres_db: PgDatabase, redis_server: Any
) -> None:
    inboxes, brokers, heard = await outbox_nodes(postgres_db, redis_server.url, 1)
    app = await postgres_db.connect()  # the back end's own connection and transactions
    try:
        async with app.transaction():
            await app.execute("CREATE TABLE orders (id int)")
        with contextlib.suppress(RuntimeError):
            async with app.transaction():
                await app.execute("INSERT INTO orders VALUES (1)")
                await app.fetchval("SELECT tidings.publish_to_user('7', '\"order 1\"')")
                raise RuntimeError("the order fails: roll back")
        async with app.transaction():
            await app.execute("INSERT INTO orders VALUES (2)")
            await app.fetchval("SELECT tidings.publish_to_user('7', '{\"order\": 2}', 'o-2')")
            await app.fetchval("SELECT tidings.publish_to_topic('news', '\"hello\"')")
        await heard.at_least(2)
        marker = await heard.all_committed(app)  # nothing more: neither order 1 nor a repeat
        assert sorted(channel for channel, _ in heard) == ["t:news", "u:7"]
        by_channel = {channel: split_announcement(payload) for channel, payload in heard}
        user_id, encoded = by_channel["u:7"]
        assert user_id is not None
        message = Message.decode(encoded, user_id)
        assert (message.body, message.content_type) == (b'{"order":2}', APPLICATION_JSON)
        assert Message.decode(by_channel["t:news"][1]).destination == "/topic/news"
        history = await inboxes[0].history("u:7", "0", limit=10)
        assert [m.message.id for m in history.messages] == [user_id, marker]
        assert await app.fetchval("SELECT count(*) FROM tidings.outbox") == 0
        # The idempotency key holds across the outbox and the API alike.
        again = await inboxes[0].publish(message, idempotency_key="o-2")
        assert again == user_id
    finally:
        await app.close()
        await close_all(inboxes, brokers)


async def test_outbox_rules_are_checked_in_the_callers_transaction(
    postgres_db: PgDatabase,
) -> None:
    app = await postgres_db.connect()
    try:
        for call, error in [
            ("tidings.publish_to_user('a/b', '1')", "invalid user_id: a/b"),
            ("tidings.publish_to_user(NULL, '1')", "user_id and body are required"),
            ("tidings.publish_to_topic('/x', '1')", "invalid topic: /x"),
            ("tidings.publish_to_topic('a//b', '1')", "invalid topic"),
            ("tidings.publish_to_user('7', '1', '')", "invalid idempotency_key"),
            (f"tidings.publish_to_user('7', to_jsonb(repeat('x', {70_000})))", "the limit is"),
        ]:
            with pytest.raises(asyncpg.PostgresError, match=re.escape(error)):
                await app.fetchval(f"SELECT {call}")
        assert await app.fetchval("SELECT count(*) FROM tidings.outbox") == 0
        assert await app.fetchval("SELECT tidings.publish_to_topic('a/b', '1')") > 0
    finally:
        await app.close()


async def test_two_nodes_drain_the_outbox_exactly_once_in_order(
    postgres_db: PgDatabase, redis_server: Any
) -> None:
    # 600 messages in 60 transactions, two nodes draining while they commit.
    inboxes, brokers, heard = await outbox_nodes(postgres_db, redis_server.url, 2)
    app = await postgres_db.connect()
    try:
        for t in range(60):
            async with app.transaction():
                for i in range(10):
                    await app.fetchval(
                        "SELECT tidings.publish_to_user('7', to_jsonb($1::text))", f"m{t * 10 + i}"
                    )
        await heard.at_least(600, within=30)
        marker = await heard.all_committed(app)  # no repeat of any of the 600
        ids = [split_announcement(payload)[0] for _, payload in heard]
        bodies = [Message.decode(split_announcement(payload)[1]).body for _, payload in heard]
        assert len(heard) == 600 and len(set(ids)) == 600  # once each
        assert [id_key(i) for i in ids if i] == sorted(id_key(i) for i in ids if i)
        assert bodies == [f"m{n}".encode() for n in range(600)]  # in commit order
        assert all(inbox.outbox.drained > 0 for inbox in inboxes)  # both took a share
        assert sum(inbox.outbox.drained for inbox in inboxes) == 600 + 2  # and the markers
        history = await inboxes[1].history("u:7", "0", limit=1000)
        assert [m.message.id for m in history.messages] == [*ids, marker]
    finally:
        await app.close()
        await close_all(inboxes, brokers)


async def test_a_drainer_leaves_a_channel_whose_earlier_row_another_drainer_holds(
    postgres_db: PgDatabase, redis_server: Any
) -> None:
    # This node drains by hand (outbox_poll_s=0); another drainer, played by a
    # connection of the test, took u:7's first row and has not committed. u:7's second
    # row must wait for it (stored first, it would get the earlier id), t:news goes on.
    inboxes, brokers, heard = await outbox_nodes(postgres_db, redis_server.url, 1, outbox_poll_s=0)
    [inbox] = inboxes
    app = await postgres_db.connect()
    other = await postgres_db.connect()
    try:
        for body in ("first", "second"):
            await app.fetchval("SELECT tidings.publish_to_user('7', to_jsonb($1::text))", body)
        await app.fetchval("SELECT tidings.publish_to_topic('news', '\"news\"')")
        async with other.transaction():
            await other.fetchval("SELECT n FROM tidings.outbox ORDER BY n LIMIT 1 FOR UPDATE")
            assert await inbox.outbox.drain_batch() == 1  # t:news only
            assert await inbox.outbox.drain_batch() == -1  # u:7's second still waits
            await heard.at_least(1)
            assert [channel for channel, _ in heard] == ["t:news"]
        # The other drainer gave its row back: both go, in order.
        assert await inbox.outbox.drain_batch() == 2
        await heard.at_least(3)
        bodies = [
            Message.decode(split_announcement(payload)[1]).body
            for channel, payload in heard
            if channel == "u:7"
        ]
        assert bodies == [b"first", b"second"]
        assert await app.fetchval("SELECT count(*) FROM tidings.outbox") == 0
    finally:
        await app.close()
        await other.close()
        await close_all(inboxes, brokers)


async def test_outbox_wakes_on_notify_and_polls_when_it_cannot_listen(
    postgres_db: PgDatabase, redis_server: Any
) -> None:
    app = await postgres_db.connect()
    # Polling every 30 s: a delivery within 5 s is the NOTIFY's doing.
    inboxes, brokers, heard = await outbox_nodes(
        postgres_db, redis_server.url, 1, outbox_poll_s=30.0
    )
    try:
        await app.fetchval("SELECT tidings.publish_to_user('7', '\"woken\"')")
        await heard.at_least(1, within=5)
    finally:
        await close_all(inboxes, brokers)
    # Polling every 0.2 s, with the LISTEN connection killed: the poll finds the rows.
    inboxes, brokers, heard = await outbox_nodes(
        postgres_db, redis_server.url, 1, outbox_poll_s=0.2
    )
    try:
        await asyncio.wait_for(inboxes[0].outbox.listening.wait(), 5)
        killed = await app.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        )
        assert killed == 1
        await app.fetchval("SELECT tidings.publish_to_user('7', '\"polled\"')")

        def bodies() -> list[bytes]:
            return [Message.decode(split_announcement(p)[1]).body for _, p in heard]

        # The first node may have been stopped before it recorded its announcement of
        # "woken": then this one announces it again first (subscribers drop the repeat).
        await heard.at_least(1, within=5)
        if bodies()[0] == b"woken":
            await heard.at_least(2, within=5)
        assert bodies()[-1] == b"polled"
    finally:
        await app.close()
        await close_all(inboxes, brokers)


# -- no loss through broker faults, with the messages in PostgreSQL (issue 20, item 5) -----


async def test_redis_restart_with_a_postgresql_inbox_loses_nothing(
    tidings_server: StartServer, redis_server: RedisServer, postgres_db: PgDatabase
) -> None:
    # tests/test_catchup_e2e.py's scenario: two nodes, 20 plain sessions, a publish every
    # 20 ms; Redis (routing only, no data: the messages are in PostgreSQL) restarts
    # mid-stream. Publishes keep being stored meanwhile; the catch-up delivers them.
    async def restart() -> None:
        await redis_server.stop()
        await asyncio.sleep(0.5)  # the outage: its length is the scenario, not a wait
        await redis_server.start()

    await run_scenario(
        tidings_server,
        redis_server,
        restart,
        "redis restart, postgresql inbox",
        node_args=["--inbox", postgres_db.url],
    )


async def test_killed_pubsub_connections_with_a_postgresql_inbox_lose_nothing(
    tidings_server: StartServer, redis_server: RedisServer, postgres_db: PgDatabase
) -> None:
    async def kill() -> None:
        assert await redis_server.kill_pubsub_clients() == 2  # one per node

    await run_scenario(
        tidings_server,
        redis_server,
        kill,
        "CLIENT KILL TYPE pubsub, postgresql inbox",
        node_args=["--inbox", postgres_db.url],
    )


async def store_unannounced(conn: asyncpg.Connection, channel: str, body: bytes) -> str:
    """What a publisher does before it announces: ``tidings.store`` under the channel's
    advisory lock (held by ``conn`` until it ends); returns the id."""
    row = await conn.fetchrow(
        "SELECT * FROM tidings.store($1, '/message', $2, 1000, 60000, 61000, NULL, 1, $3)",
        channel,
        Message("", channel, "/message", body).encode(),
        lock_key(channel),
    )
    return f"{row['id_ms']}-{row['id_seq']}"


async def test_a_message_whose_publisher_died_before_announcing_goes_out_first(
    postgres_db: PgDatabase, redis_server: RedisServer
) -> None:
    # A node commits a message and dies before announcing it: the channel's next publish,
    # from any node, announces it first (a subscriber drops an id lower than one it got,
    # so it must not come after a newer one), then its own.
    heard = Heard()
    listener, publisher = RedisBroker(redis_server.url), RedisBroker(redis_server.url)
    await listener.start(heard)
    await listener.subscribe("u:7")
    await publisher.start(lambda channel, payload: None)
    inbox = PostgresInbox(postgres_db.url, publisher, InboxLimits(), pool_size=2)
    await inbox.start()
    dying = await postgres_db.connect()
    try:
        orphan_id = await store_unannounced(dying, "u:7", b"orphan")
        dying.terminate()  # gone without announcing; its advisory lock goes with it
        new_id = await inbox.publish(Message("", "u:7", "/message", b"next"))
        await heard.at_least(2)
        again = await inbox.publish(Message("", "u:7", "/message", b"after"))
        await heard.at_least(3)
        assert [split_announcement(p)[0] for _, p in heard] == [orphan_id, new_id, again]
        bodies = [Message.decode(split_announcement(p)[1]).body for _, p in heard]
        assert bodies == [b"orphan", b"next", b"after"]  # each once
    finally:
        await inbox.close()
        await listener.close()
        await publisher.close()


async def test_a_new_channel_starts_its_catch_up_before_what_is_not_announced_yet(
    postgres_db: PgDatabase, redis_server: RedisServer
) -> None:
    # A node that subscribes a channel starts its catch-up at last_ids and drops live
    # announcements at or below it. A message committed but still on its way to the broker
    # (or whose publisher died there) must stay above that start, or its announcement (or
    # the safety net's read) would be taken for delivered.
    publisher = RedisBroker(redis_server.url)
    await publisher.start(lambda channel, payload: None)
    inbox = PostgresInbox(postgres_db.url, publisher, InboxLimits(), pool_size=2)
    await inbox.start()
    dying = await postgres_db.connect()
    try:
        assert await inbox.last_ids(["u:8"]) == {"u:8": None}

        async def recorded(inbox_id: str) -> None:
            # A publish returns before its release records the announcement: until then
            # the start stays older (safe: what follows it passes).
            async def check() -> bool:
                return await inbox.last_ids(["u:8"]) == {"u:8": inbox_id}

            await eventually(check, within=5, what=f"{inbox_id} recorded as announced")

        announced = await inbox.publish(Message("", "u:8", "/message", b"announced"))
        await recorded(announced)
        committed = await store_unannounced(dying, "u:8", b"on its way")
        assert id_key(committed) > id_key(announced)
        assert await inbox.last_ids(["u:8"]) == {"u:8": announced}  # not `committed`
        assert await inbox.behind({"u:8": announced}) == ["u:8"]  # the safety net reads it
        dying.terminate()  # its publisher died: the next publish announces it first
        after = await inbox.publish(Message("", "u:8", "/message", b"after"))
        await recorded(after)
    finally:
        await inbox.close()
        await publisher.close()


async def test_the_sweep_deletes_what_expired_in_batches(postgres_db: PgDatabase) -> None:
    # Redis' key TTLs, here: 600 users' inboxes (more than one batch of SWEEP_BATCH), their
    # read floors and idempotency keys go once expired; an inbox written since stays.
    broker = MemoryBroker()
    await broker.start(lambda channel, payload: None)
    limits = InboxLimits(max_age_s=0.3, idempotency_ttl_s=0.3)
    inbox = PostgresInbox(postgres_db.url, broker, limits, sweep_interval_s=0, outbox_poll_s=0)
    await inbox.start()
    conn = await postgres_db.connect()

    async def count(table: str) -> int:
        return int(await conn.fetchval(f"SELECT count(*) FROM tidings.{table}"))

    try:
        assert SWEEP_BATCH < 600
        await asyncio.gather(
            *(
                inbox.publish(Message("", f"u:{n}", "/message", b"x"), idempotency_key="k")
                for n in range(600)
            )
        )
        await inbox.mark_read("1", up_to="99999999999999-0")
        await asyncio.sleep(1.5)  # the clock: past max_age_s + 1 s
        kept = await inbox.publish(Message("", "u:kept", "/message", b"y"))
        assert await inbox.sweep() >= 600
        for table in ("messages", "channels"):
            assert await count(table) == 1, table
        assert await count("idempotency") == 0
        assert await count("read_floors") == 0
        history = await inbox.history("u:kept", "0", limit=10)
        assert [m.message.id for m in history.messages] == [kept]
    finally:
        await conn.close()
        await inbox.close()


# -- RabbitMQ routing, PostgreSQL storage (issue 20, items 1-3 and 5) ------------------------


async def test_resume_under_load_on_rabbitmq_and_postgresql(
    tidings_server: StartServer,
    rabbit_server: RabbitServer,
    postgres_db: PgDatabase,
    http: aiohttp.ClientSession,
) -> None:
    url = rabbit_server.url()
    nodes = list(
        await asyncio.gather(
            *(
                tidings_server("--broker", url, "--inbox", postgres_db.url, "--node-id", f"N{n}")
                for n in range(2)
            )
        )
    )
    readers = await run_resume_scenario(nodes, http, users=30, messages=1500)
    assert sum(r.reconnects for r in readers.values()) > 0


async def test_rabbitmq_restart_with_a_postgresql_inbox_loses_nothing(
    tidings_server: StartServer,
    rabbit_server: RabbitServer,
    redis_server: RedisServer,
    postgres_db: PgDatabase,
) -> None:
    # tests/test_catchup_e2e.py's scenario (2 nodes, 20 plain live sessions, 520
    # publishes), RabbitMQ stopped and started again mid-stream: publishes go on being
    # stored in PostgreSQL, and the catch-up delivers what the broker could not.
    async def restart() -> None:
        await rabbit_server.stop()
        await rabbit_server.start()

    await run_scenario(
        tidings_server,
        redis_server,
        restart,
        "rabbitmq restart, postgresql inbox",
        broker=rabbit_server.url(),
        node_args=["--inbox", postgres_db.url],
    )


async def pg_nodes(
    database: PgDatabase, redis_url: str, count: int, channels: list[str]
) -> tuple[list[PostgresInbox], list[RedisBroker], Heard]:
    """``count`` inboxes (nodes) announcing on Redis brokers of their own, the advisory
    lock per channel taken as on any shared broker; and what a subscriber of ``channels``
    heard."""
    heard = Heard()
    brokers = [RedisBroker(redis_url) for _ in range(count + 1)]
    await brokers[0].start(heard)
    for channel in channels:
        await brokers[0].subscribe(channel)
    inboxes = []
    for broker in brokers[1:]:
        await broker.start(lambda channel, payload: None)
        inbox = PostgresInbox(database.url, broker, InboxLimits(), pool_size=4, outbox_poll_s=0)
        await inbox.start()
        inboxes.append(inbox)
    return inboxes, brokers, heard


async def test_two_nodes_group_commit_publishes_to_many_channels_in_order(
    postgres_db: PgDatabase, redis_server: RedisServer
) -> None:
    # 800 publishes submitted at once, alternately on two nodes, over 40 channels: each
    # node stores them in batches (one statement each) whose channels overlap the other
    # node's. Every message is stored and announced once, each channel's announcements
    # in id order, each node's publishes of a channel in the order submitted; no batch
    # waits for ever on another's locks.
    channels = [f"u:g{n}" for n in range(40)]
    inboxes, brokers, heard = await pg_nodes(postgres_db, redis_server.url, 2, channels)
    try:
        sent = [
            (i % 2, Message("", channels[i * 7 % 40], "/message", b"m%d" % i)) for i in range(800)
        ]
        async with asyncio.timeout(60):
            ids = await asyncio.gather(*(inboxes[node].submit(m) for node, m in sent))
            await heard.at_least(800, within=30)
        # Ids are per channel: (channel, id) is what names a message.
        announced = {
            (channel, split_announcement(payload)[0]): Message.decode(
                split_announcement(payload)[1]
            ).body
            for channel, payload in heard
        }
        assert len(announced) == 800 == len(heard)  # once each
        sent_ids = [(m.channel, i) for i, (_, m) in zip(ids, sent, strict=True)]
        assert [announced[key] for key in sent_ids] == [m.body for _, m in sent]
        for channel in channels:
            order = [split_announcement(p)[0] for c, p in heard if c == channel]
            assert [id_key(i) for i in order if i] == sorted(id_key(i) for i in order if i)
            for node in range(2):
                mine = [
                    i
                    for i, (n, m) in zip(ids, sent, strict=True)
                    if (n, m.channel) == (node, channel)
                ]
                assert mine == sorted(mine, key=id_key), (channel, node)
        # Grouped: far fewer statements than publishes on each node.
        assert all(0 < inbox._group.batches < 400 for inbox in inboxes)
    finally:
        await close_all(inboxes, brokers)


async def test_a_message_the_database_refuses_fails_alone_in_its_batch(
    postgres_db: PgDatabase, redis_server: RedisServer
) -> None:
    # One message of a batch is refused (a trigger of the application's): the batch's
    # transaction rolls back, each is stored again alone, the others succeed and are
    # announced, and no channel's advisory lock stays held (another node publishes to
    # each of them at once after).
    conn = await postgres_db.connect()
    try:
        await conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF position('refused'::bytea IN NEW.body) > 0 THEN"
            " RAISE EXCEPTION 'refused by a trigger'; END IF; RETURN NEW; END $$;"
            "CREATE TRIGGER refuse BEFORE INSERT ON tidings.messages"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    finally:
        await conn.close()
    channels = [f"u:r{n}" for n in range(20)]
    inboxes, brokers, heard = await pg_nodes(postgres_db, redis_server.url, 2, channels)
    try:
        bodies = [b"refused" if n == 7 else b"fine" for n in range(20)]
        outcomes = await asyncio.gather(
            *(
                inboxes[0].submit(Message("", channel, "/message", body))
                for channel, body in zip(channels, bodies, strict=True)
            ),
            return_exceptions=True,
        )
        assert isinstance(outcomes[7], asyncpg.PostgresError)
        assert "refused by a trigger" in str(outcomes[7])
        assert all(isinstance(o, str) for n, o in enumerate(outcomes) if n != 7), outcomes
        assert inboxes[0]._group.batches < 20  # they went together first
        await heard.at_least(19)
        assert sorted(c for c, _ in heard) == sorted(c for c in channels if c != "u:r7")
        async with asyncio.timeout(10):  # every lock was released
            again = await asyncio.gather(
                *(inboxes[1].publish(Message("", c, "/message", b"again")) for c in channels)
            )
        assert len(again) == 20
        await heard.at_least(39)
        assert sorted(c for c, _ in heard[19:]) == sorted(channels)
    finally:
        await close_all(inboxes, brokers)


async def test_publishes_to_one_channel_go_together_in_submission_order(
    postgres_db: PgDatabase, redis_server: RedisServer
) -> None:
    # 300 publishes to one topic submitted at once: the channel is in one batch at a time,
    # and what waits meanwhile goes as the next batch, so they take far fewer statements
    # than publishes; ids follow the submission order, each announced once, in order.
    inboxes, brokers, heard = await pg_nodes(postgres_db, redis_server.url, 1, ["t:busy"])
    try:
        messages = [Message("", "t:busy", "/topic/busy", b"m%d" % i) for i in range(300)]
        ids = await asyncio.gather(*(inboxes[0].submit(m) for m in messages))
        assert ids == sorted(ids, key=id_key) and len(set(ids)) == 300
        await heard.at_least(300)
        announced = [split_announcement(payload) for _, payload in heard]
        assert [inbox_id for inbox_id, _ in announced] == ids
        assert [Message.decode(encoded).body for _, encoded in announced] == [
            m.body for m in messages
        ]
        assert inboxes[0]._group.batches < 100
    finally:
        await close_all(inboxes, brokers)
