"""The Redis broker's subscriber connection (tidings/brokers/redis_pubsub.py).

``PubSubReader`` is fed bytes that a real redis-server sent a subscriber, split at every
offset; the broker on its own redis-server is shown taking many messages in one read, a
connection cut in the middle of a reply (``CLIENT KILL`` while a large message is half
sent), and a SUBSCRIBE refused by an ACL, on a connection that authenticates as a user.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import hiredis
import pytest
from redis.asyncio import Redis

from tidings.brokers.redis import RedisBroker
from tidings.brokers.redis_pubsub import PubSubConnection, PubSubReader
from tidings.errors import BrokerUnavailable

from . import test_broker_contract
from .redis_fixture import RedisServer
from .test_broker_contract import Harness, eventually

redis_broker = test_broker_contract.redis_broker  # the fixture, shared

Event = tuple[Any, ...]

PAYLOADS = [
    b"hello",
    b"",
    b"\r\n*3\r\n$7\r\nmessage\r\n",  # RESP inside a payload is payload
    bytes(range(256)),
    b"x" * 70_000,  # more than one read of hiredis' or the loop's buffer
]


class Events:
    """Records what a PubSubReader calls, in order."""

    def __init__(self) -> None:
        self.seen: list[Event] = []

    def reader(self) -> PubSubReader:
        return PubSubReader(self.message, self.subscribed, self.pong)

    def message(self, channel: bytes, payload: bytes) -> None:
        self.seen.append(("message", channel, payload))

    def subscribed(self, channel: bytes) -> None:
        self.seen.append(("subscribed", channel))

    def pong(self) -> None:
        self.seen.append(("pong",))


async def read_replies(reader: asyncio.StreamReader, count: int, raw: bytearray) -> None:
    """Read until ``count`` more complete replies are in ``raw`` (all bytes are kept)."""
    parser = hiredis.Reader()
    parser.feed(bytes(raw))
    have = 0
    while parser.gets() is not False:
        have += 1
    while have < count:
        data = await reader.read(65536)
        assert data, "redis closed the connection"
        raw += data
        parser.feed(data)
        while parser.gets() is not False:
            have += 1


async def redis_session(server: RedisServer) -> tuple[bytes, list[Event]]:
    """What redis-server sends one subscriber (every byte), and the calls it should make:
    SUBSCRIBE a b, the messages of PAYLOADS alternately on a and b, UNSUBSCRIBE b, PING."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    raw = bytearray()
    try:
        writer.write(b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n")
        await read_replies(reader, 2, raw)
        expected: list[Event] = [("subscribed", b"a"), ("subscribed", b"b")]
        for n, payload in enumerate(PAYLOADS):
            channel = b"ab"[n % 2 : n % 2 + 1]
            assert await server.publish(channel.decode(), payload) == 1
            expected.append(("message", channel, payload))
        writer.write(b"*2\r\n$11\r\nUNSUBSCRIBE\r\n$1\r\nb\r\n*1\r\n$4\r\nPING\r\n")
        await read_replies(reader, 2 + len(PAYLOADS) + 2, raw)
        expected.append(("pong",))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return bytes(raw), expected


async def test_replies_split_at_every_offset(redis_server: RedisServer) -> None:
    raw, expected = await redis_session(redis_server)

    events = Events()
    events.reader().receive(raw)  # all in one read
    assert events.seen == expected

    for offset in range(len(raw) + 1):
        events = Events()
        reader = events.reader()
        reader.receive(raw[:offset])
        reader.receive(raw[offset:])
        assert events.seen == expected, f"split at {offset}"

    head = raw[: raw.index(b"x" * 100)]  # everything up to the large payload, byte by byte
    events = Events()
    reader = events.reader()
    for offset in range(len(head)):
        reader.receive(head[offset : offset + 1])
    assert events.seen == expected[: len(PAYLOADS) + 1]


def test_an_error_reply_or_garbage_stops_the_reader() -> None:
    message = b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n"
    events = Events()
    with pytest.raises(BrokerUnavailable, match=r"unexpected reply .*NOPERM"):
        events.reader().receive(message + b"-NOPERM no permission\r\n" + message)
    assert events.seen == [("message", b"a", b"hi")]  # what came before, not after

    events = Events()
    with pytest.raises(BrokerUnavailable, match="bad reply from redis"):
        events.reader().receive(message + b"?garbage\r\n")
    assert events.seen == [("message", b"a", b"hi")]


def subscriber_link(broker: RedisBroker) -> tuple[PubSubConnection, asyncio.Transport]:
    link = broker._link
    assert link is not None and link._transport is not None
    return link, link._transport


async def pubsub_client(admin: Redis) -> dict[str, str]:
    (client,) = await admin.client_list(_type="pubsub")
    return client


async def test_many_messages_in_one_read_are_delivered_in_order(
    redis_server: RedisServer, redis_broker: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, got = await redis_broker()
    await broker.subscribe("u:1")
    await broker.subscribe("u:2")
    link, transport = subscriber_link(broker)
    delivered_per_read: list[int] = []
    data_received = link.data_received

    def counted(data: bytes) -> None:
        before = len(got.messages)
        data_received(data)
        delivered_per_read.append(len(got.messages) - before)

    monkeypatch.setattr(link, "data_received", counted)
    transport.set_protocol(link)  # uvloop keeps the bound method it was given

    sent = [(f"u:{1 + n % 2}", f"m{n}".encode()) for n in range(1000)]
    transport.pause_reading()
    admin = redis_server.client()
    try:
        async with admin.pipeline(transaction=False) as pipe:
            for channel, payload in sent:
                pipe.publish(f"tidings:{channel}", payload)
            assert await pipe.execute() == [1] * len(sent)
        assert (await pubsub_client(admin))["omem"] == "0"  # all of it in the socket buffer
    finally:
        await admin.aclose()
    transport.resume_reading()
    await eventually(lambda: len(got.messages) == len(sent), what="1000 messages")
    assert got.messages == sent
    assert delivered_per_read == [len(sent)]  # one read, every message of it handled in it
    assert broker.received == len(sent)


async def test_connection_cut_in_the_middle_of_a_reply(
    redis_server: RedisServer, redis_broker: Harness
) -> None:
    broker, got = await redis_broker()
    await broker.subscribe("u:1")
    _, transport = subscriber_link(broker)
    transport.pause_reading()
    admin = redis_server.client()
    try:
        assert await admin.publish("tidings:u:1", b"whole") == 1
        assert await admin.publish("tidings:u:1", b"y" * 12_000_000) == 1
        client = await pubsub_client(admin)
        assert int(client["omem"]) > 0  # Redis still holds the rest of the large message
        assert await admin.client_kill_filter(_id=client["id"]) == 1
    finally:
        await admin.aclose()
    transport.resume_reading()  # the first message, part of the second, then the end
    await eventually(lambda: broker.ready and broker.reconnects == 1, what="reconnected")
    await broker.publish("u:1", b"after")
    await eventually(lambda: len(got.messages) == 2, what="the message after")
    assert got.messages == [("u:1", b"whole"), ("u:1", b"after")]
    assert broker.received == 2


async def test_a_subscribe_refused_by_an_acl_fails_and_the_rest_goes_on(
    tmp_path: Path, redis_broker: Harness
) -> None:
    server = RedisServer(tmp_path, ["--requirepass", "adminpw"])
    await server.start()
    admin = Redis(host="127.0.0.1", port=server.port, password="adminpw")
    try:
        await admin.acl_setuser(
            "node",
            enabled=True,
            passwords=["+pw"],
            keys=["*"],
            channels=["tidings:probe:*", "tidings:u:1"],
            commands=["+@all"],
        )
        broker, got = await redis_broker(f"redis://node:pw@127.0.0.1:{server.port}/0")
        assert broker.ready
        names = [c["name"] for c in await admin.client_list(_type="pubsub")]
        assert names == ["tidings-pubsub"]
        await broker.subscribe("u:1")
        with pytest.raises(BrokerUnavailable, match="lost with the connection"):
            await broker.subscribe("u:2")  # NOPERM: this connection is dropped
        await eventually(lambda: broker.ready and broker.reconnects == 1, what="reconnected")
        await broker.publish("u:1", b"still")
        await eventually(lambda: got.messages == [("u:1", b"still")])
    finally:
        await admin.aclose()
        await server.stop()


async def test_a_probe_that_comes_after_the_deaf_deadline_fired_is_ignored() -> None:
    """Seen under load: the deadline's callback ran, the waiting task had not yet, and a
    probe came in: rescheduling a fired Timeout raised out of data_received."""
    broker = RedisBroker("redis://127.0.0.1:9")  # never started: only the reader's hook
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()

    async def wait_for_probes() -> None:
        async with asyncio.timeout_at(loop.time()) as broker._deaf_at:
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(wait_for_probes())
    await entered.wait()
    for _ in range(100):  # until the deadline's callback has run (the task not yet resumed)
        if broker._deaf_at is not None and broker._deaf_at.expired():
            break
        await asyncio.sleep(0)
    assert broker._deaf_at is not None and broker._deaf_at.expired() and not task.done()
    broker._on_message(broker._probe_key, b"")  # raised RuntimeError before
    with pytest.raises(TimeoutError):
        await task
    await broker.redis.aclose()
