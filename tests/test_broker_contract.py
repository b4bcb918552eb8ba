"""The broker contract, run unchanged against every broker, then Redis and RabbitMQ faults.

``TestContract`` is what the node relies on from any broker (DESIGN.md §4, as in
centrifuge's per-engine tests). ``TestRedis`` covers what only a networked broker has:
several nodes on one Redis, Redis stopped and restarted, subscriber connections killed
or silently dead, and the legacy raw channel. Every Redis test runs its own redis-server.
``TestAmqp`` (issue 20) does the same on the session's private RabbitMQ node
(tests/rabbit_fixture.py), each test on an exchange of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiormq
import pytest

from tidings.brokers import MemoryBroker, MessageHandler, broker_from_url
from tidings.brokers.amqp import AmqpBroker, routing_key, split_url
from tidings.brokers.redis import SUBSCRIBE_BATCH, RedisBroker
from tidings.errors import BrokerUnavailable

from .ports import free_port
from .rabbit_fixture import RabbitServer
from .redis_fixture import RedisServer
from .sentinel_fixture import one_sentinel

Condition = Callable[[], bool]


async def eventually(condition: Condition, within: float = 5.0, what: str = "") -> float:
    """Poll ``condition`` until true; return the seconds it took, fail after ``within``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        if loop.time() - start > within:
            pytest.fail(f"not true within {within}s: {what or condition}")
        await asyncio.sleep(0.005)
    return loop.time() - start


@dataclass
class Recorder:
    """A message handler that keeps what it was given."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def __call__(self, channel: str, payload: bytes) -> None:
        self.messages.append((channel, payload))

    def on(self, channel: str) -> list[bytes]:
        return [payload for name, payload in self.messages if name == channel]


@dataclass
class Subject:
    """A broker under test (not started) and the recorder to start it with."""

    broker: MemoryBroker | RedisBroker | AmqpBroker
    got: Recorder

    async def start(self) -> None:
        await self.broker.start(self.got)

    async def barrier(self, channel: str) -> None:
        """Publish a marker on ``channel`` (subscribed) and wait for it: what was
        published before it has arrived too, since each channel keeps its order."""
        marker = b"barrier-" + os.urandom(4).hex().encode()
        await self.broker.publish(channel, marker)
        await eventually(lambda: marker in self.got.on(channel), what=f"barrier on {channel}")


@pytest.fixture(params=["memory", "redis", "sentinel", "amqp"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    server: RedisServer | None = None
    broker: MemoryBroker | RedisBroker | AmqpBroker
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "memory":
            broker = MemoryBroker()
        elif request.param == "amqp":  # the session's RabbitMQ node, an exchange of its own
            rabbit: RabbitServer = request.getfixturevalue("rabbit_server")
            broker = AmqpBroker(rabbit.url())
        elif request.param == "sentinel":  # redis+sentinel://: the master found by asking
            sentinels = await stack.enter_async_context(one_sentinel(tmp_path))
            broker = RedisBroker(sentinels.url)
        else:
            server = RedisServer(tmp_path)
            await server.start()
            stack.push_async_callback(server.stop)
            broker = RedisBroker(server.url)
        stack.push_async_callback(broker.close)
        yield Subject(broker, Recorder())


class TestContract:
    async def test_start_makes_ready(self, subject: Subject) -> None:
        assert not subject.broker.ready
        await subject.start()
        assert subject.broker.ready

    async def test_delivers_exactly_once_with_bytes_intact(self, subject: Subject) -> None:
        await subject.start()
        await subject.broker.subscribe("u:42")
        payloads = [
            b"hello",
            b"",
            bytes(range(256)),
            b"\xff\xfe\x00\r\n\x80 not utf-8",
            os.urandom(100 * 1024),
        ]
        for payload in payloads:
            await subject.broker.publish("u:42", payload)
        await subject.barrier("u:42")
        assert subject.got.messages[:-1] == [("u:42", p) for p in payloads]

    async def test_unsubscribed_channel_gets_nothing(self, subject: Subject) -> None:
        await subject.start()
        await subject.broker.subscribe("t:public")
        await subject.broker.publish("u:7", b"nobody listens")
        await subject.barrier("t:public")
        assert subject.got.on("u:7") == []
        assert len(subject.got.messages) == 1

    async def test_unsubscribe_stops_delivery(self, subject: Subject) -> None:
        await subject.start()
        await subject.broker.subscribe("u:1")
        await subject.broker.subscribe("u:2")
        await subject.broker.publish("u:1", b"before")
        await subject.barrier("u:1")
        await subject.broker.unsubscribe("u:1")
        await subject.broker.unsubscribe("u:1")  # idempotent
        await subject.broker.unsubscribe("never-subscribed")
        await subject.broker.publish("u:1", b"after")
        await subject.barrier("u:2")
        assert subject.got.on("u:1")[0] == b"before"
        assert b"after" not in subject.got.on("u:1")

    async def test_subscribe_twice_delivers_once(self, subject: Subject) -> None:
        await subject.start()
        await subject.broker.subscribe("t:news")
        await subject.broker.subscribe("t:news")
        await asyncio.gather(*(subject.broker.subscribe("t:news") for _ in range(5)))
        await subject.broker.publish("t:news", b"once")
        await subject.barrier("t:news")
        assert subject.got.on("t:news")[:-1] == [b"once"]

    async def test_resubscribe_after_unsubscribe(self, subject: Subject) -> None:
        await subject.start()
        await subject.broker.subscribe("u:3")
        await subject.broker.unsubscribe("u:3")
        await subject.broker.subscribe("u:3")
        await subject.broker.publish("u:3", b"back")
        await subject.barrier("u:3")
        assert subject.got.on("u:3")[:-1] == [b"back"]

    async def test_order_preserved_for_1000_messages(self, subject: Subject) -> None:
        await subject.start()
        await subject.broker.subscribe("u:9")
        sent = [f"m{i}".encode() for i in range(1000)]
        for payload in sent:
            await subject.broker.publish("u:9", payload)
        await eventually(lambda: len(subject.got.messages) >= 1000, what="1000 messages")
        await subject.barrier("u:9")
        assert subject.got.on("u:9")[:-1] == sent

    async def test_no_break_reported_while_delivery_is_whole(self, subject: Subject) -> None:
        reports: list[bool] = []
        subject.broker.on_continuity(reports.append)
        await subject.start()
        await subject.broker.subscribe("u:6")
        await subject.broker.publish("u:6", b"whole")
        await subject.barrier("u:6")
        assert subject.got.on("u:6")[0] == b"whole"
        assert False not in reports  # (Redis, RabbitMQ report True when first hearing)
        await subject.broker.close()
        assert False not in reports  # closing is not a break

    async def test_publish_after_close_is_refused(self, subject: Subject) -> None:
        await subject.start()
        await subject.broker.subscribe("u:5")
        await subject.broker.close()
        assert not subject.broker.ready
        with pytest.raises(BrokerUnavailable):
            await subject.broker.publish("u:5", b"too late")
        await subject.broker.close()  # idempotent
        assert subject.got.messages == []


# -- Redis only ----------------------------------------------------------------------

Harness = Callable[..., Awaitable[tuple[RedisBroker, Recorder]]]


@pytest.fixture
async def redis_broker(redis_server: RedisServer) -> AsyncIterator[Harness]:
    """Factory: ``broker, got = await redis_broker(url="", handler=None, **kwargs)``,
    started on ``redis_server`` (or ``url``) with a Recorder (or ``handler``); every
    broker is closed at teardown."""
    brokers: list[RedisBroker] = []

    async def make(
        url: str = "", handler: MessageHandler | None = None, **kwargs: Any
    ) -> tuple[RedisBroker, Recorder]:
        broker = RedisBroker(url or redis_server.url, **kwargs)
        brokers.append(broker)
        got = Recorder()
        await broker.start(handler or got)
        return broker, got

    yield make
    for broker in brokers:
        await broker.close()


class FreezingProxy:
    """TCP proxy to Redis whose open connections can be frozen: bytes stop flowing both
    ways but the sockets stay open, like a peer behind a dead NAT entry. Connections
    made after ``freeze()`` work normally; ``thaw()`` lets the held bytes (and closes) go
    on, and ``held`` keeps every byte that was held."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.held = bytearray()
        self._server: asyncio.Server | None = None
        self._frozen: list[asyncio.Event] = []  # one "flowing" flag per connection
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        for flowing in self._frozen:
            flowing.clear()

    def thaw(self) -> None:
        for flowing in self._frozen:
            flowing.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        flowing = asyncio.Event()
        flowing.set()
        self._frozen.append(flowing)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst, flowing, self.held))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        flowing: asyncio.Event,
        held: bytearray,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if not flowing.is_set():
                    held += data
                await flowing.wait()
                dst.write(data)
                await dst.drain()
        await flowing.wait()  # a frozen link does not pass the close on either
        dst.close()


class TestRedis:
    async def test_only_the_subscribed_node_receives(self, redis_broker: Harness) -> None:
        node_a, got_a = await redis_broker()
        node_b, got_b = await redis_broker()
        await node_a.subscribe("u:1")
        await node_b.subscribe("u:2")
        await node_b.publish("u:1", b"for a")
        await eventually(lambda: got_a.on("u:1") == [b"for a"])
        await node_a.publish("u:2", b"for b")
        await eventually(lambda: got_b.on("u:2") == [b"for b"])
        assert got_b.on("u:1") == []
        assert got_a.on("u:2") == []
        assert (node_a.received, node_b.received) == (1, 1)

    async def test_prefix_on_redis_and_stripped_for_handler(
        self, redis_server: RedisServer, redis_broker: Harness
    ) -> None:
        broker, got = await redis_broker(prefix="app1:")
        await broker.subscribe("u:42")
        assert await redis_server.publish("app1:u:42", b"hi") == 1
        assert await redis_server.publish("u:42", b"unprefixed") == 0
        await eventually(lambda: got.messages == [("u:42", b"hi")])

    async def test_handler_exception_does_not_stop_delivery(self, redis_broker: Harness) -> None:
        delivered: list[bytes] = []

        def flaky(channel: str, payload: bytes) -> None:
            if payload == b"boom":
                raise RuntimeError("handler bug")
            delivered.append(payload)

        broker, _ = await redis_broker(handler=flaky)
        await broker.subscribe("u:1")
        await broker.publish("u:1", b"boom")
        await broker.publish("u:1", b"fine")
        await eventually(lambda: delivered == [b"fine"])
        assert broker.ready

    async def test_redis_stop_and_restart(
        self, redis_server: RedisServer, redis_broker: Harness
    ) -> None:
        broker, got = await redis_broker(raw_channels=("webSocketMsgPush",))
        await broker.subscribe("u:42")
        await broker.publish("u:42", b"before")
        await eventually(lambda: got.on("u:42") == [b"before"])

        await redis_server.stop()
        await eventually(lambda: not broker.ready, within=2, what="not ready after stop")
        with pytest.raises(BrokerUnavailable, match="redis unavailable"):
            await broker.publish("u:42", b"lost")
        with pytest.raises(BrokerUnavailable):
            await broker.subscribe("u:43")
        await broker.unsubscribe("u:44")  # never raises for a lost connection
        await asyncio.sleep(2)  # the outage's length, long enough for the backoff to hit its cap

        await redis_server.start()
        took = await eventually(lambda: broker.ready, within=2, what="ready after restart")
        print(f"\nredis restart -> ready: {took:.3f}s")
        assert broker.reconnects == 1
        await broker.publish("u:42", b"after")  # subscribed before the outage only
        await redis_server.publish("webSocketMsgPush", b"raw after")
        await eventually(lambda: got.on("u:42") == [b"before", b"after"])
        await eventually(lambda: got.on("webSocketMsgPush") == [b"raw after"])
        assert got.on("u:43") == []

    async def test_start_while_redis_down_then_up(
        self, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("tidings.brokers.redis.START_TIMEOUT_S", 0.2)
        await redis_server.stop()
        broker = RedisBroker(redis_server.url)
        try:
            await broker.start(Recorder())
            assert not broker.ready
            with pytest.raises(BrokerUnavailable):
                await broker.subscribe("u:1")
            await redis_server.start()
            await eventually(lambda: broker.ready, within=2)
            assert broker.reconnects == 0  # the first connection is not a reconnect
        finally:
            await broker.close()

    async def test_pubsub_kill_resumes_delivery(
        self, redis_server: RedisServer, redis_broker: Harness
    ) -> None:
        broker, got = await redis_broker(raw_channels=("webSocketMsgPush",))
        await broker.subscribe("u:42")
        await broker.subscribe("t:public")

        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        assert await redis_server.kill_pubsub_clients() == 1
        await eventually(lambda: broker.reconnects == 1 and broker.ready, within=5)
        ready_after = loop.time() - killed_at
        await broker.publish("u:42", b"after kill")
        await eventually(lambda: got.on("u:42") == [b"after kill"], within=5)
        delivered_after = loop.time() - killed_at
        print(f"\npubsub kill -> ready {ready_after:.3f}s, -> delivered {delivered_after:.3f}s")
        assert delivered_after < 5
        await broker.publish("t:public", b"topic")
        await redis_server.publish("webSocketMsgPush", b"raw")
        await eventually(lambda: got.on("t:public") == [b"topic"])
        await eventually(lambda: got.on("webSocketMsgPush") == [b"raw"])

    async def test_breaks_are_reported_and_then_the_channels_are_heard(
        self, redis_server: RedisServer
    ) -> None:
        """The node's catch-up (tidings.catchup) relies on both reports: False from the
        loss on, True only once every channel's SUBSCRIBE is confirmed again."""
        got = Recorder()
        broker = RedisBroker(redis_server.url)
        reports: list[bool] = []
        heard_at_report: list[bool] = []

        async def publish_at_report() -> None:
            await redis_server.publish("tidings:u:42", b"right after")

        def on_continuity(hearing: bool) -> None:
            reports.append(hearing)
            if hearing and reports[:-1]:  # hearing again: a publish now must arrive
                heard_at_report.append(broker.ready)
                asyncio.get_running_loop().create_task(publish_at_report())

        broker.on_continuity(on_continuity)
        try:
            await broker.start(got)
            await broker.subscribe("u:42")
            assert reports == [True]
            assert await redis_server.kill_pubsub_clients() == 1
            await eventually(lambda: len(reports) == 3, what="lost, then heard again")
            assert reports == [True, False, True] and heard_at_report == [True]
            await eventually(lambda: got.on("u:42") == [b"right after"])
            await redis_server.stop()
            await eventually(lambda: reports[-1] is False, within=2, what="lost on stop")
            await redis_server.start()
            await eventually(lambda: reports[-1] is True, within=3, what="heard on restart")
            assert reports == [True, False, True, False, True]
        finally:
            await broker.close()
        assert reports[-1] is True  # closing is not a break

    async def test_probe_detects_a_silently_dead_subscriber(
        self, redis_server: RedisServer, redis_broker: Harness
    ) -> None:
        proxy = FreezingProxy(redis_server.port)
        await proxy.start()
        broker, got = await redis_broker(proxy.url, probe_interval_s=0.1, probe_timeout_s=0.5)
        try:
            await broker.subscribe("u:42")
            assert await redis_server.publish("tidings:u:42", b"before") == 1
            await eventually(lambda: got.on("u:42") == [b"before"])

            loop = asyncio.get_running_loop()
            frozen_at = loop.time()
            proxy.freeze()  # Redis still counts the old subscriber; it just never hears back
            await eventually(lambda: not broker.ready, within=3, what="deaf noticed")
            noticed = loop.time() - frozen_at
            await eventually(lambda: broker.ready and broker.reconnects >= 1, within=5)
            # The frozen connection is still subscribed on Redis, so count the new one.
            assert await redis_server.publish("tidings:u:42", b"after") == 2
            await eventually(lambda: got.on("u:42") == [b"before", b"after"], within=5)
            resumed = loop.time() - frozen_at
            print(f"\nfrozen subscriber -> not ready {noticed:.3f}s, delivering {resumed:.3f}s")
        finally:
            await broker.close()
            await proxy.close()

    async def test_raw_channel_delivered_verbatim(
        self, redis_server: RedisServer, redis_broker: Harness
    ) -> None:
        broker, got = await redis_broker(raw_channels=("webSocketMsgPush",))
        body = b'{"code":1,"form":"a","to":"42","content":"\xc3\xa9t\xc3\xa9"}'
        assert await redis_server.publish("webSocketMsgPush", body) == 1
        await eventually(lambda: got.messages == [("webSocketMsgPush", body)])
        await broker.unsubscribe("webSocketMsgPush")  # logical name: the raw one stays
        await redis_server.publish("webSocketMsgPush", b"still")
        await eventually(lambda: got.on("webSocketMsgPush")[-1:] == [b"still"])
        probes = [name for name, _ in got.messages if "probe" in name]
        assert probes == []

    async def test_subscribe_not_confirmed_raises(
        self, redis_broker: Harness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("tidings.brokers.redis.SUBSCRIBE_TIMEOUT_S", 0.2)
        broker, got = await redis_broker()
        link = broker._link
        assert link is not None
        await broker.subscribe("u:0")

        def swallow(*args: Any, **kwargs: Any) -> None:
            """Pretend to send: Redis never sees the SUBSCRIBE, so never confirms."""

        monkeypatch.setattr(link, "send", swallow)
        results = await asyncio.gather(
            broker.subscribe("u:1"),
            broker.subscribe("u:1"),
            broker.subscribe("u:3"),
            return_exceptions=True,
        )
        assert [str(r) for r in results] == [
            "redis unavailable: subscription to 'u:1' not confirmed within 0.2s",
            "redis unavailable: subscription to 'u:1' not confirmed within 0.2s",
            "redis unavailable: subscription to 'u:3' not confirmed within 0.2s",
        ]
        assert all(isinstance(r, BrokerUnavailable) for r in results)
        monkeypatch.undo()
        await broker.subscribe("u:2")
        for channel in ("u:0", "u:1", "u:2", "u:3"):
            await broker.publish(channel, b"to " + channel.encode())
        await broker.publish("u:2", b"end")
        await eventually(lambda: got.on("u:2") == [b"to u:2", b"end"])
        assert got.messages == [("u:0", b"to u:0"), ("u:2", b"to u:2"), ("u:2", b"end")]

    async def test_subscribes_of_one_loop_turn_share_one_command(
        self, redis_server: RedisServer, redis_broker: Harness
    ) -> None:
        broker, got = await redis_broker()
        names = [f"u:{i}" for i in range(SUBSCRIBE_BATCH + 1)]

        async def subscribe_then_publish(name: str) -> None:
            await broker.subscribe(name)
            await broker.publish(name, name.encode())  # received only if already live

        client = redis_server.client()
        try:
            calls_before = await subscribe_calls(client)
            await asyncio.gather(  # every first step runs in the same loop turn
                *(subscribe_then_publish(name) for name in names),
                *(broker.subscribe(name) for name in names[:10]),  # callers of one channel
            )
            calls = await subscribe_calls(client) - calls_before
        finally:
            await client.aclose()
        assert calls == math.ceil(len(names) / SUBSCRIBE_BATCH) == 2
        await eventually(lambda: len(got.messages) == len(names), what="one message each")
        assert sorted(got.messages) == sorted((name, name.encode()) for name in names)

    async def test_unsubscribe_racing_a_queued_subscribe(
        self, redis_server: RedisServer, redis_broker: Harness
    ) -> None:
        broker, got = await redis_broker()
        # One loop turn: Redis gets SUBSCRIBE u:1, UNSUBSCRIBE u:1, SUBSCRIBE u:2 in this
        # order, so the first subscribe is confirmed and u:1 ends up not subscribed.
        await asyncio.gather(
            broker.subscribe("u:1"), broker.unsubscribe("u:1"), broker.subscribe("u:2")
        )
        assert await numsub(redis_server, "tidings:u:1", "tidings:u:2") == [0, 1]
        await broker.subscribe("u:1")
        assert await numsub(redis_server, "tidings:u:1") == [1]
        await broker.publish("u:1", b"back")
        await eventually(lambda: got.messages == [("u:1", b"back")])

    async def test_pubsub_kill_fails_a_written_unconfirmed_batch(
        self, redis_server: RedisServer, redis_broker: Harness
    ) -> None:
        proxy = FreezingProxy(redis_server.port)
        await proxy.start()
        broker, got = await redis_broker(proxy.url)
        try:
            await broker.subscribe("u:before")
            proxy.freeze()  # the batch below reaches the proxy, not Redis
            names = [f"u:pending-{i:02}" for i in range(20)]
            batch = asyncio.gather(
                *(broker.subscribe(name) for name in names), return_exceptions=True
            )
            await eventually(
                lambda: all(name.encode() in proxy.held for name in names), what="batch sent"
            )
            assert await redis_server.kill_pubsub_clients() == 1
            proxy.thaw()  # passes the close on
            results = await batch
            assert all(isinstance(r, BrokerUnavailable) for r in results), results
            assert "lost with the connection" in str(results[0])
            await eventually(lambda: broker.ready and broker.reconnects == 1)
            # Resubscribed what was confirmed, not the failed batch.
            keys = [f"tidings:{name}" for name in ["u:before", *names]]
            assert await numsub(redis_server, *keys) == [1] + [0] * len(names)
            await broker.subscribe(names[0])
            await broker.publish(names[0], b"after")
            await broker.publish("u:before", b"kept")
            await eventually(lambda: len(got.messages) == 2)
            assert sorted(got.messages) == [("u:before", b"kept"), (names[0], b"after")]
        finally:
            await broker.close()
            await proxy.close()


async def subscribe_calls(client: Any) -> int:
    """SUBSCRIBE commands Redis has run (``INFO commandstats``), whatever their channels."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_subscribe", {}).get("calls", 0))


async def numsub(server: RedisServer, *keys: str) -> list[int]:
    """Subscribers of each Redis channel (``PUBSUB NUMSUB``)."""
    client = server.client()
    try:
        return [count for _, count in await client.pubsub_numsub(*keys)]
    finally:
        await client.aclose()


def test_broker_from_url_schemes() -> None:
    assert isinstance(broker_from_url("memory://"), MemoryBroker)
    for url in ("redis://127.0.0.1:1/0", "rediss://:pw@127.0.0.1:1/2"):
        assert isinstance(broker_from_url(url), RedisBroker)  # no connection made yet
    amqp = broker_from_url("amqp://u:p@127.0.0.1:1/vhost")
    assert isinstance(amqp, AmqpBroker) and amqp.exchange == "tidings"
    amqps = broker_from_url("amqps://u:p@127.0.0.1:1/?exchange=app.events&heartbeat=2")
    assert isinstance(amqps, AmqpBroker) and amqps.exchange == "app.events"
    with pytest.raises(ValueError, match=r"memory://, redis://, rediss://.*amqp://, amqps://"):
        broker_from_url("nats://localhost")
    with pytest.raises(ValueError, match=r"\?exchange= must name an exchange"):
        broker_from_url("amqp://127.0.0.1:1/?exchange=")


def test_amqp_url_and_routing_keys() -> None:
    """What aiormq is given: the URL less ``exchange``, a heartbeat unless one is set;
    names too long for a routing key are hashed (the module docstring)."""
    assert split_url("amqp://u:p@h:5/v?exchange=x&name=n") == (
        "amqp://u:p@h:5/v?name=n&heartbeat=2",
        "x",
    )
    assert split_url("amqps://h/?heartbeat=2")[0] == "amqps://h/?heartbeat=2"
    assert routing_key("t:a.*.#") == "t:a.*.#"
    assert routing_key("u:" + "é" * 126) == "u:" + "é" * 126  # 254 bytes
    long = routing_key("u:" + "é" * 127)
    assert long.startswith("#sha256:") and len(long) == 72


# -- RabbitMQ only -------------------------------------------------------------------

AmqpHarness = Callable[..., Awaitable[tuple[AmqpBroker, Recorder]]]


@pytest.fixture
async def amqp_broker(rabbit_server: RabbitServer) -> AsyncIterator[AmqpHarness]:
    """Factory: ``broker, got = await amqp_broker(url="", **kwargs)``, started with a
    Recorder on ``url`` (default: a new exchange of the session's node); every broker is
    closed at teardown."""
    brokers: list[AmqpBroker] = []

    async def make(url: str = "", **kwargs: Any) -> tuple[AmqpBroker, Recorder]:
        broker = AmqpBroker(url or rabbit_server.url(), **kwargs)
        brokers.append(broker)
        got = Recorder()
        await broker.start(got)
        assert broker.ready
        return broker, got

    yield make
    for broker in brokers:
        await broker.close()


class TestAmqp:
    async def test_a_node_receives_only_the_channels_it_bound(
        self, rabbit_server: RabbitServer, amqp_broker: AmqpHarness
    ) -> None:
        url = rabbit_server.url()
        node_a, got_a = await amqp_broker(url)
        node_b, got_b = await amqp_broker(url)
        await node_a.subscribe("u:1")
        await node_b.subscribe("u:2")
        await node_b.subscribe("t:news")
        await node_a.subscribe("t:news")
        await node_a.unsubscribe("t:news")
        # RabbitMQ's own view: each queue bound to its node's channels, nothing else.
        assert await rabbit_server.bindings(node_a.exchange) == sorted(
            [(node_a.queue, "u:1"), (node_b.queue, "u:2"), (node_b.queue, "t:news")]
        )
        await node_b.publish("u:1", b"for a")
        await node_a.publish("u:2", b"for b")
        await node_a.publish("t:news", b"news")
        await eventually(lambda: got_a.messages == [("u:1", b"for a")])
        await eventually(lambda: got_b.messages == [("u:2", b"for b"), ("t:news", b"news")])
        await node_a.publish("u:1", b"a's own")  # node a's barrier: anything else came before
        await eventually(lambda: got_a.on("u:1") == [b"for a", b"a's own"])
        assert got_a.messages == [("u:1", b"for a"), ("u:1", b"a's own")]
        assert (node_a.received, node_b.received) == (2, 2)

    async def test_routing_characters_and_long_names_route_exactly(
        self, amqp_broker: AmqpHarness
    ) -> None:
        """'.', '*' and '#' would be separators and wildcards on a topic exchange."""
        long_name = "t:" + "x" * 300
        names = ["t:a.b", "t:a.*", "t:#", "t:a.#", "*", "#", "t:a", long_name]
        broker, got = await amqp_broker()
        for name in names:
            await broker.subscribe(name)
        for name in names:
            await broker.publish(name, name.encode())
        await broker.publish("t:a.c", b"bound by no one")  # t:a.* and t:a.# would match it
        await broker.publish("t:a", b"end")
        await eventually(lambda: got.on("t:a")[-1:] == [b"end"])
        assert got.messages == [(name, name.encode()) for name in names] + [("t:a", b"end")]

    async def test_unsubscribe_racing_a_subscribe_keeps_call_order(
        self, rabbit_server: RabbitServer, amqp_broker: AmqpHarness
    ) -> None:
        broker, got = await amqp_broker()
        # One loop turn: bind u:1, unbind u:1, bind u:2, bind u:1 again, unbind u:3.
        await asyncio.gather(
            broker.subscribe("u:1"),
            broker.unsubscribe("u:1"),
            broker.subscribe("u:2"),
            broker.subscribe("u:3"),
            broker.unsubscribe("u:3"),
        )
        assert await rabbit_server.bindings(broker.exchange) == [(broker.queue, "u:2")]
        await broker.subscribe("u:1")
        for channel in ("u:1", "u:3", "u:2"):
            await broker.publish(channel, channel.encode())
        await eventually(lambda: len(got.on("u:2")) == 1)
        assert got.messages == [("u:1", b"u:1"), ("u:2", b"u:2")]

    async def test_a_storm_of_subscribes_is_bound_in_batches(
        self, rabbit_server: RabbitServer, amqp_broker: AmqpHarness
    ) -> None:
        """The binds of one loop turn go out as one batch (S4's connection storm): all of
        them bound, none timed out, each channel delivered once."""
        broker, got = await amqp_broker()
        names = [f"u:{i}" for i in range(2000)]
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(
            *(broker.subscribe(name) for name in names),
            *(broker.subscribe(name) for name in names[:10]),  # callers of one channel
        )
        print(f"\n2,000 subscribes bound in {loop.time() - start:.2f}s")
        for name in names:
            await broker.publish(name, name.encode())
        await eventually(lambda: len(got.messages) == len(names), what="one message each")
        assert sorted(got.messages) == sorted((name, name.encode()) for name in names)
        assert len(await rabbit_server.bindings(broker.exchange)) == len(names)

    async def test_restart_breaks_continuity_refuses_publishes_then_rebinds_all(
        self, rabbit_server: RabbitServer
    ) -> None:
        """Issue 20: a RabbitMQ restart: False, publishes refused (not dropped) while it is
        down, True once every channel is bound to the new queue, delivery resumes."""
        names = [f"u:{i}" for i in range(50)] + ["t:a.b", "t:#"]
        broker = AmqpBroker(rabbit_server.url("restart"), backoff_max_s=0.5)
        got = Recorder()
        reports: list[bool] = []
        broker.on_continuity(reports.append)
        try:
            await broker.start(got)
            await asyncio.gather(*(broker.subscribe(name) for name in names))
            await broker.publish("u:0", b"before")
            await eventually(lambda: got.on("u:0") == [b"before"])
            assert reports == [True]
            old_queue = broker.queue

            await rabbit_server.stop()
            await eventually(lambda: reports == [True, False], within=5, what="break reported")
            assert not broker.ready
            with pytest.raises(BrokerUnavailable, match="amqp unavailable"):
                await broker.publish("u:1", b"during the outage")
            with pytest.raises(BrokerUnavailable):
                await broker.subscribe("u:new")
            await broker.unsubscribe("u:49")  # never raises; not rebound after the restart

            loop = asyncio.get_running_loop()
            starting = loop.time()
            await rabbit_server.start()  # returns once the node serves (rabbitmqctl wait)
            booted = loop.time() - starting
            await eventually(lambda: broker.ready, within=10, what="ready after restart")
            ready = loop.time() - starting
            print(f"\nrabbitmq restart: node booted {booted:.2f}s, broker ready {ready:.2f}s")
            assert reports == [True, False, True]
            assert broker.reconnects == 1 and broker.queue != old_queue
            wanted = sorted((broker.queue, name) for name in names if name != "u:49")
            assert await rabbit_server.bindings("restart") == wanted
            for name in names:
                await broker.publish(name, b"after")
            await eventually(lambda: len(got.messages) == len(names), what="every channel")
            assert sorted(got.messages) == sorted(
                [("u:0", b"before")] + [(name, b"after") for name in names if name != "u:49"]
            )
        finally:
            await broker.close()
            await rabbit_server.start()  # for the tests after this one, whatever happened
        assert reports == [True, False, True]  # closing is not a break

    async def test_start_while_rabbitmq_is_unreachable(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("tidings.brokers.amqp.START_TIMEOUT_S", 0.3)
        port = free_port()  # nothing listens there
        broker = AmqpBroker(f"amqp://guest:guest@127.0.0.1:{port}/")
        try:
            await broker.start(Recorder())
            assert not broker.ready
            with pytest.raises(BrokerUnavailable, match="not connected"):
                await broker.publish("u:1", b"x")
            with pytest.raises(BrokerUnavailable, match="not connected"):
                await broker.subscribe("u:1")
        finally:
            await broker.close()

    async def test_a_deleted_queue_is_a_break_then_a_new_queue(
        self, rabbit_server: RabbitServer, amqp_broker: AmqpHarness
    ) -> None:
        """RabbitMQ cancels the consumer of a deleted queue: the node must not go deaf."""
        reports: list[bool] = []
        broker, got = await amqp_broker()
        broker.on_continuity(reports.append)
        await broker.subscribe("u:42")
        old_queue = broker.queue
        await rabbit_server.ctl("delete_queue", old_queue)
        await eventually(lambda: reports == [False, True], within=10, what="break, then heard")
        assert broker.queue != old_queue and broker.ready
        await broker.publish("u:42", b"after")
        await eventually(lambda: got.messages == [("u:42", b"after")])

    async def test_a_nacked_publish_raises(
        self, rabbit_server: RabbitServer, amqp_broker: AmqpHarness
    ) -> None:
        """A queue that refuses more than one message (``x-overflow: reject-publish``)
        makes RabbitMQ nack the publish: never accepted and dropped."""
        broker, got = await amqp_broker()
        connection = aiormq.Connection(f"amqp://guest:guest@127.0.0.1:{rabbit_server.port}/")
        await connection.connect()
        try:
            channel = await connection.channel()
            arguments = {"x-max-length": 1, "x-overflow": "reject-publish"}
            declared = await channel.queue_declare("", exclusive=True, arguments=arguments)
            assert declared.queue
            await channel.queue_bind(declared.queue, broker.exchange, routing_key="u:full")
            await broker.publish("u:full", b"fits")
            with pytest.raises(BrokerUnavailable, match="refused the message"):
                await broker.publish("u:full", b"refused")
            await broker.subscribe("u:fine")
            await broker.publish("u:fine", b"still publishing")
            await eventually(lambda: got.messages == [("u:fine", b"still publishing")])
        finally:
            await connection.close()

    async def test_a_frozen_connection_times_out_and_is_replaced(
        self, rabbit_server: RabbitServer, amqp_broker: AmqpHarness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Bytes stop flowing, the socket stays open: the publish's confirm never comes
        (BrokerUnavailable after CONFIRM_TIMEOUT_S), and the missed AMQP heartbeats end
        the connection; a new one is bound again."""
        monkeypatch.setattr("tidings.brokers.amqp.CONFIRM_TIMEOUT_S", 0.3)
        proxy = FreezingProxy(rabbit_server.port)
        await proxy.start()
        try:
            url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?exchange=frozen&heartbeat=1"
            broker, got = await amqp_broker(url)
            reports: list[bool] = []
            broker.on_continuity(reports.append)
            await broker.subscribe("u:42")
            proxy.freeze()
            with pytest.raises(BrokerUnavailable, match="not confirmed"):
                await broker.publish("u:42", b"unconfirmed")
            loop = asyncio.get_running_loop()
            frozen_at = loop.time()
            await eventually(lambda: reports == [False, True], within=15, what="replaced")
            print(f"\nfrozen amqp connection -> replaced in {loop.time() - frozen_at:.2f}s")
            await broker.publish("u:42", b"after")
            await eventually(lambda: got.on("u:42")[-1:] == [b"after"])
        finally:
            proxy.thaw()
            await proxy.close()
