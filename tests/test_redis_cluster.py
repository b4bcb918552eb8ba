"""What only Redis Cluster has (issue 18): keys spread over the masters by hash tag, live
subscriptions as shard channels on the owning master, routing past a stale slot map
(MOVED), a slot moving away from a subscribed channel, and ``redis+cluster://`` URLs.

The contract suites (broker, inbox, presence) run on the cluster too; these tests use the
same session cluster (tests/cluster_fixture.py), emptied for each.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import redis

from tidings.brokers import REDIS_SCHEMES, broker_from_url
from tidings.brokers.redis import redis_broker
from tidings.brokers.redis_cluster import RedisClusterBroker
from tidings.brokers.redis_presence import RedisPresence
from tidings.inbox.base import InboxLimits, split_announcement
from tidings.inbox.redis import RedisInbox
from tidings.message import Message
from tidings.options import BrokerUrl, redact_url
from tidings.publisher import Publisher
from tidings.redis_cluster import ClusterScripts, first_key, parse, slot_of
from tidings.redis_connect import pack

from .cluster_fixture import RedisCluster


async def eventually(condition: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"not true within {within}s: {what}")
        await asyncio.sleep(0.01)


class Got:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, channel: str, payload: bytes) -> None:
        self.messages.append((channel, payload))

    def on(self, channel: str) -> list[bytes]:
        return [payload for name, payload in self.messages if name == channel]


@pytest.fixture
async def node(cluster: RedisCluster) -> AsyncIterator[tuple[RedisClusterBroker, RedisInbox, Got]]:
    """A node's broker and inbox on the cluster, started; closed at teardown."""
    broker = redis_broker(cluster.url)
    assert isinstance(broker, RedisClusterBroker)
    inbox = RedisInbox(broker, InboxLimits())
    got = Got()
    await broker.start(got)
    await inbox.start()
    yield broker, inbox, got
    await inbox.close()
    await broker.close()


def msg(channel: str, body: str = "hi") -> Message:
    return Message(id="", channel=channel, destination="/message", body=body.encode())


def keys_by_master(cluster: RedisCluster) -> dict[int, list[str]]:
    out = {}
    for port in cluster.masters():
        with cluster.client(port) as client:
            out[port] = [key.decode() for key in client.keys("tidings:*")]
    return out


def owner(cluster: RedisCluster, key: str) -> int:
    """The port of the master serving ``key``'s slot."""
    slot = slot_of(key)
    with cluster.client(cluster.masters()[0]) as client:
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
    raise AssertionError(f"no master for slot {slot}")


async def test_keys_of_many_users_and_topics_spread_and_each_channels_share_a_slot(
    cluster: RedisCluster, node: tuple[RedisClusterBroker, RedisInbox, Got]
) -> None:
    broker, inbox, _ = node
    presence = RedisPresence(broker.redis, "A")
    users = [str(n) for n in range(60)]
    for user in users:
        first = await inbox.publish(msg(f"u:{user}"), idempotency_key="k")
        second = await inbox.publish(msg(f"u:{user}"))
        await inbox.ack(user, [first])
        assert await inbox.unacked(user, "/message", limit=10) != []  # moves the ack cursor
        assert (await inbox.mark_read(user, ids=[second], up_to=first)).unread == 0
        await presence.add(user, "s")
    for topic in range(20):
        await inbox.publish(msg(f"t:news{topic}"))

    by_master = keys_by_master(cluster)
    assert len(by_master) == 3
    for port, keys in by_master.items():
        assert len([k for k in keys if k.startswith("tidings:inbox:{u:")]) >= 5, port
        assert any(k.startswith("tidings:inbox:{t:") for k in keys), port
    everything = [key for keys in by_master.values() for key in keys]
    for user in users[:10]:  # every key of a user is where the user's stream is
        mine = [k for k in everything if k.endswith(f"{{u:{user}}}") or f"{{u:{user}}}:" in k]
        kinds = {k.split(":")[1] for k in mine}
        assert kinds == {"inbox", "acked", "read", "readfloor", "ackcursor", "idem", "presence"}
        assert {owner(cluster, k) for k in mine} == {owner(cluster, f"tidings:inbox:{{u:{user}}}")}
    await presence.close()


async def test_a_subscription_is_a_shard_channel_on_the_owning_master(
    cluster: RedisCluster, node: tuple[RedisClusterBroker, RedisInbox, Got]
) -> None:
    broker, inbox, got = node
    channels = [f"u:{n}" for n in range(12)]
    for channel in channels:
        await broker.subscribe(channel)
    for channel in channels:
        live = f"tidings:{{{channel}}}"
        home = owner(cluster, live)
        for port in cluster.masters():
            with cluster.client(port) as client:
                shard_channels = {c.decode() for c in client.pubsub_shardchannels()}
            assert (live in shard_channels) == (port == home), (channel, port)
    # the publish script announces on that shard channel (SPUBLISH from the script)
    inbox_id = await inbox.publish(msg("u:3", "live"))
    await eventually(lambda: bool(got.on("u:3")), what="the announcement")
    assert split_announcement(got.on("u:3")[0])[0] == inbox_id
    await broker.unsubscribe("u:3")
    home = owner(cluster, "tidings:{u:3}")

    def gone() -> bool:
        with cluster.client(home) as client:
            return b"tidings:{u:3}" not in client.pubsub_shardchannels()

    await eventually(gone, what="SUNSUBSCRIBE")


async def test_a_stale_slot_map_is_followed_by_moved(
    cluster: RedisCluster, node: tuple[RedisClusterBroker, RedisInbox, Got]
) -> None:
    broker, _, _ = node
    client = broker.redis
    scripts = ClusterScripts(client, "return redis.call('INCR', KEYS[1])")
    try:
        assert await scripts.submit(["k{a}"], []) == 1
        slot = slot_of("k{a}")
        right = client.nodes_manager.slots_cache[slot]
        wrong = next(n for n in client.get_primaries() if n.name != right[0].name)
        client.nodes_manager.slots_cache[slot] = [wrong]  # as after a resharding
        assert await scripts.submit(["k{a}"], []) == 2  # MOVED, map loaded again, resent
        assert client.nodes_manager.slots_cache[slot][0].name == right[0].name
    finally:
        await scripts.close()


@dataclass(frozen=True)
class Migration:
    """A slot half-way from the master at ``source`` to the one at ``target``."""

    slot: int
    source: int
    target: int
    target_id: str  # the target's node id (CLUSTER MYID)


def node_id(cluster: RedisCluster, port: int) -> str:
    with cluster.client(port) as client:
        return str(client.execute_command("CLUSTER", "MYID").decode())


def begin_migration(cluster: RedisCluster, key: str) -> Migration:
    """Start moving ``key``'s slot to another master, as redis-cli --cluster does: the
    target IMPORTING it, then the source MIGRATING it (no key moved yet)."""
    slot, source = slot_of(key), owner(cluster, key)
    target = next(port for port in cluster.masters() if port != source)
    migration = Migration(slot, source, target, node_id(cluster, target))
    with cluster.client(target) as client:
        client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(cluster, source))
    with cluster.client(source) as client:
        client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", migration.target_id)
    return migration


def end_migration(cluster: RedisCluster, migration: Migration) -> None:
    """Every master learns that the target owns the slot: the target first, as redis-cli
    --cluster does."""
    rest = (port for port in cluster.masters() if port != migration.target)
    for port in [migration.target, *rest]:
        with cluster.client(port) as client:
            client.execute_command(
                "CLUSTER", "SETSLOT", migration.slot, "NODE", migration.target_id
            )


async def test_a_publish_to_a_migrating_slot_follows_ask_and_tryagain(
    cluster: RedisCluster, node: tuple[RedisClusterBroker, RedisInbox, Got]
) -> None:
    """A slot half-way through a migration: the source answers a channel whose keys are
    not there ASK, the target (after ASKING) TRYAGAIN while not all the script's keys are
    there; the publish is sent again until the migration ends (MOVED) and is stored on
    the new owner, once."""
    _, inbox, _ = node
    stream = "tidings:inbox:{u:asked}"
    migration = begin_migration(cluster, stream)
    with cluster.client(migration.source) as client:
        asks_before = _errorstat(client, "ASK")
        publish = asyncio.ensure_future(inbox.publish(msg("u:asked", "asked")))
        # a few rounds of ASK, ASKING + TRYAGAIN, wait: the publish waits for the migration
        await eventually(
            lambda: _errorstat(client, "ASK") >= asks_before + 3, what="three rounds of ASK"
        )
        assert not publish.done()
    end_migration(cluster, migration)
    inbox_id = await asyncio.wait_for(publish, 5)
    with cluster.client(migration.target) as client:
        assert [entry[0].decode() for entry in client.xrange(stream)] == [inbox_id]
    with cluster.client(migration.source) as client:
        assert client.execute_command("CLUSTER", "COUNTKEYSINSLOT", migration.slot) == 0


def _errorstat(client: redis.Redis, code: str) -> int:
    """How many error replies starting with ``code`` the node gave (INFO errorstats)."""
    stats = client.info("errorstats").get(f"errorstat_{code}", {})
    return int(stats.get("count", 0)) if isinstance(stats, dict) else 0


async def test_a_slot_moving_away_resubscribes_where_it_lives_now(
    cluster: RedisCluster, node: tuple[RedisClusterBroker, RedisInbox, Got]
) -> None:
    """Redis drops the shard subscriptions of a slot that leaves a node (``sunsubscribe``
    unasked): the broker reports the break, subscribes on the new owner, and delivers."""
    broker, inbox, got = node
    reports: list[bool] = []
    broker.on_continuity(reports.append)
    await broker.subscribe("u:moving")
    live = "tidings:{u:moving}"
    migration = begin_migration(cluster, live)
    with cluster.client(migration.source) as client:
        keys = client.execute_command("CLUSTER", "GETKEYSINSLOT", migration.slot, 100)
        if keys:
            client.execute_command(
                "MIGRATE", "127.0.0.1", migration.target, "", 0, 5000, "KEYS", *keys
            )
    end_migration(cluster, migration)
    await eventually(lambda: False in reports, what="the break reported")
    await eventually(lambda: reports[-1] is True and broker.ready, what="heard again")
    assert owner(cluster, live) == migration.target
    with cluster.client(migration.target) as client:
        assert live.encode() in client.pubsub_shardchannels()
    inbox_id = await inbox.publish(msg("u:moving", "after the move"))
    await eventually(lambda: bool(got.on("u:moving")), what="delivery from the new owner")
    assert split_announcement(got.on("u:moving")[-1])[0] == inbox_id


async def test_the_publisher_stores_on_the_cluster(
    node: tuple[RedisClusterBroker, RedisInbox, Got], cluster: RedisCluster
) -> None:
    broker, inbox, got = node
    await broker.subscribe("u:42")
    async with Publisher.from_url(cluster.url) as publisher:
        ids = await asyncio.gather(*(publisher.to_user("42", {"n": n}) for n in range(20)))
        again = await publisher.to_user("42", {"n": 0}, idempotency_key="once")
        assert await publisher.to_user("42", {"n": 1}, idempotency_key="once") == again
        topic_id = await publisher.to_topic("news", "hello")
    history = await inbox.history("u:42", "0", limit=100)
    assert [stored.message.id for stored in history.messages] == [*ids, again]
    assert (await inbox.history("t:news", "0", limit=10)).messages[0].message.id == topic_id
    await eventually(lambda: len(got.on("u:42")) == 21, what="21 announcements")


def test_cluster_urls() -> None:
    url = "redis+cluster://10.0.0.1:7000,10.0.0.2,[::1]:7002?password=s3cret"
    parsed = parse(url)
    assert parsed.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert (parsed.password, parsed.username, parsed.tls) == ("s3cret", None, False)
    assert parse("redis+cluster://app:pw@h:1/0").username == "app"
    tls = parse("rediss+cluster://h:1?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required")
    assert tls.tls and tls.ssl == {"ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": "required"}
    assert "s3cret" not in redact_url(url)
    assert BrokerUrl().check(url) == url
    assert "redis+cluster" in REDIS_SCHEMES and "rediss+cluster" in REDIS_SCHEMES
    for bad, why in [
        ("redis+cluster://h:1/3", "only db 0"),
        ("redis+cluster://h:1?db=1", "unknown parameter 'db'"),
        ("redis+cluster://h:99999", "host:port"),
        ("redis+cluster://h:1?ssl_ca_certs=x", "rediss"),
        ("redis+cluster://", "host:port"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse(bad)
        with pytest.raises(ValueError, match=why):
            BrokerUrl().check(bad)


async def test_broker_from_url_builds_the_cluster_broker() -> None:
    broker = broker_from_url("redis+cluster://127.0.0.1:1")
    try:
        assert isinstance(broker, RedisClusterBroker)
        assert broker.layout.cluster
    finally:
        await broker.close()


def test_first_key_of_a_packed_evalsha() -> None:
    for keys in (["tidings:inbox:{u:1}"], ["a", "b"], ["x" * 300]):
        command = pack(b"EVALSHA", b"f" * 40, len(keys), *keys, "arg")
        assert first_key(command) == keys[0].encode()


async def test_a_batch_of_publishes_is_one_write_per_master(
    node: tuple[RedisClusterBroker, RedisInbox, Got], cluster: RedisCluster
) -> None:
    """Publishes of one loop turn (an HTTP batch) go to the masters of their slots, each
    master's in one write, and come back in the callers' order of ids per channel."""
    _, inbox, _ = node
    await inbox.publish(msg("u:warm"))  # connects to one master
    before = inbox._publisher.writes
    futures = [inbox.submit(msg(f"u:{n}", str(n))) for n in range(100)]
    ids = await asyncio.gather(*futures)
    assert inbox._publisher.writes - before == 3
    for n in (0, 57, 99):
        (stored,) = (await inbox.history(f"u:{n}", "0", limit=10)).messages
        assert (stored.message.id, stored.message.body) == (ids[n], str(n).encode())
