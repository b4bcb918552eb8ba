"""The Spring bridge's scripts on a real Redis: one store per copy, forwarding with the mark.

``LegacyStore`` instances with their own ``Occurrences`` stand for nodes (each node has
exactly that state); the writer is the one nodes and the direct publisher use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio

from tidings.inbox.base import InboxLimits
from tidings.inbox.redis import InboxWriter
from tidings.inbox.redis_legacy import LegacyStore
from tidings.legacy import Occurrences, digest, parse
from tidings.message import Message, topic_channel, user_channel
from tidings.publisher import Publisher

from .redis_fixture import RedisServer

CHANNEL = "webSocketMsgPush"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    plain = redis_server.client()
    try:
        yield plain
    finally:
        await plain.aclose()


@pytest.fixture
async def writer(client: redis.asyncio.Redis) -> AsyncIterator[InboxWriter]:
    inbox = InboxWriter(client, InboxLimits(), legacy_channel=CHANNEL)
    try:
        yield inbox
    finally:
        await inbox.close()


class FakeNode:
    """What one node holds for the bridge: its counts and its store connection."""

    def __init__(self, client: redis.asyncio.Redis, writer: InboxWriter, window_s: float) -> None:
        self.seen = Occurrences(window_s, margin_s=0.05)
        self.store = LegacyStore(client, writer, window_s=window_s)

    async def receive(self, payload: bytes) -> str | None:
        name = digest(payload)
        message = parse(payload, max_bytes=1000)
        return await self.store.submit(message, name, self.seen.count(name))


@pytest.fixture
async def make_node(client: redis.asyncio.Redis, writer: InboxWriter) -> AsyncIterator[Any]:
    made: list[FakeNode] = []

    def make(window_s: float = 30.0) -> FakeNode:
        made.append(FakeNode(client, writer, window_s))
        return made[-1]

    yield make
    for node in made:
        await node.store.close()


async def subscribed(pubsub: Any, *channels: str, pattern: bool = False) -> None:
    """(P)SUBSCRIBE and wait until Redis confirmed each: publishes after this reach it."""
    await (pubsub.psubscribe if pattern else pubsub.subscribe)(*channels)
    kind = "psubscribe" if pattern else "subscribe"
    async with asyncio.timeout(5):
        confirmed = 0
        while confirmed < len(channels):
            message = await pubsub.get_message(timeout=1.0)
            confirmed += message is not None and message["type"] == kind


async def next_message(pubsub: Any, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
    """The next published message within ``timeout`` s, subscribe confirmations skipped
    (redis-py answers None for an ignored one, which is not "nothing came")."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        message = await pubsub.get_message(timeout=left)
        if message is not None and message["type"] in ("message", "pmessage"):
            return dict(message)
    return None


def spring(to: str, content: str) -> bytes:
    return orjson.dumps({"code": "1", "form": "admin", "to": to, "content": content})


async def stored_bodies(client: redis.asyncio.Redis, user: str) -> list[str]:
    entries = await client.xrange(f"tidings:inbox:u:{user}")
    return [orjson.loads(fields[b"m"])[3] for _, fields in entries]


async def test_three_nodes_store_each_copy_once_identical_copies_included(
    client: redis.asyncio.Redis, make_node: Any
) -> None:
    nodes = [make_node() for _ in range(3)]
    hello, other = spring("42", "hello"), spring("42", "other")
    sent = [hello, other, hello]  # the same JSON published twice on purpose
    # Every node receives every copy in the channel's order; they interleave as they may.
    results = await asyncio.gather(
        *(node.receive(payload) for payload in sent for node in nodes[:2]),
    )
    results += [await nodes[2].receive(payload) for payload in sent]
    assert sum(result is not None for result in results) == 3
    assert await stored_bodies(client, "42") == ["hello", "other", "hello"]


async def test_a_node_that_missed_a_copy_leaves_it_to_the_node_that_did_not(
    client: redis.asyncio.Redis, make_node: Any
) -> None:
    full, deaf = make_node(), make_node()
    payload = spring("7", "same")
    # `deaf` missed the first copy: its first sighting is the second copy. Whichever runs
    # first, two copies are stored, not one and not three.
    assert await deaf.receive(payload) is not None  # its count 1: stores copy one early
    assert await full.receive(payload) is None
    assert await full.receive(payload) is not None
    assert await stored_bodies(client, "7") == ["same", "same"]


async def test_after_the_window_the_same_json_is_a_new_message(
    client: redis.asyncio.Redis, make_node: Any
) -> None:
    a, b = make_node(window_s=0.2), make_node(window_s=0.2)
    payload = spring("9", "again")
    assert await a.receive(payload) is not None
    assert await b.receive(payload) is None
    ttl = await client.pttl(f"tidings:legacy:3:u:9:{digest(payload)}")
    assert 0 < ttl <= 200
    # The clock is the subject: past the 0.2 s window (Redis' PX on the claim) and the
    # nodes' 0.25 s (window plus margin) for their counts; a lower bound, robust to load.
    await asyncio.sleep(0.35)
    assert await b.receive(payload) is not None
    assert await a.receive(payload) is None
    assert await stored_bodies(client, "9") == ["again", "again"]


async def test_a_stored_legacy_message_is_announced_with_its_id_and_not_forwarded(
    redis_server: RedisServer, make_node: Any
) -> None:
    listener = redis_server.client()
    pubsub = listener.pubsub()
    try:
        await subscribed(pubsub, "tidings:u:42", CHANNEL)
        inbox_id = await make_node().receive(spring("42", "from spring"))
        announced = await next_message(pubsub, 2.0)
        assert announced is not None and announced["channel"] == b"tidings:u:42"
        head, _, encoded = announced["data"].partition(b" ")
        assert head.decode() == inbox_id
        assert Message.decode(encoded).body == b"from spring"
        # Not written back to the legacy channel: Spring instances had it already.
        assert await next_message(pubsub, 0.3) is None
    finally:
        await pubsub.aclose()
        await listener.aclose()


async def forwarded(pubsub: Any, timeout: float = 2.0) -> dict[str, Any]:  # noqa: ASYNC109
    message = await next_message(pubsub, timeout)
    assert message is not None, "nothing on the legacy channel"
    assert message["data"].startswith(b'{"tidingsId":"')
    data: dict[str, Any] = orjson.loads(message["data"])
    return data


def user_message(user: str, body: bytes, destination: str = "/message") -> Message:
    return Message(id="", channel=user_channel(user), destination=destination, body=body)


async def test_user_messages_to_message_are_forwarded_once_with_their_id(
    redis_server: RedisServer, client: redis.asyncio.Redis, writer: InboxWriter
) -> None:
    listener = redis_server.client()
    pubsub = listener.pubsub()
    try:
        await subscribed(pubsub, CHANNEL)
        # Not forwarded: another destination, a topic, a repeated idempotency key.
        await writer.publish(user_message("42", b"alert", "/queue/alerts"))
        topic = Message(id="", channel=topic_channel("news"), destination="/message", body=b"t")
        await writer.publish(topic)
        first = await writer.publish(user_message("42", b"once"), idempotency_key="k")
        again = await writer.publish(user_message("42", b"once"), idempotency_key="k")
        assert again == first
        last = await writer.publish(user_message("42", '{"a": "é"}'.encode()))
        # Redis keeps the order: what comes first is the first one forwarded.
        assert await forwarded(pubsub) == {
            "tidingsId": first,
            "code": "",
            "form": "",
            "to": "42",
            "content": "once",
        }
        assert (await forwarded(pubsub))["content"] == '{"a": "é"}'
        assert await next_message(pubsub, 0.2) is None
        assert last != first
    finally:
        await pubsub.aclose()
        await listener.aclose()


async def test_without_a_legacy_channel_nothing_is_forwarded(
    redis_server: RedisServer, client: redis.asyncio.Redis
) -> None:
    plain = InboxWriter(client, InboxLimits())
    listener = redis_server.client()
    pubsub = listener.pubsub()
    try:
        await subscribed(pubsub, "*", pattern=True)
        await plain.publish(user_message("42", b"x"))
        got = await next_message(pubsub, 2.0)
        assert got is not None and got["channel"] == b"tidings:u:42"
        assert await next_message(pubsub, 0.3) is None
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await plain.close()


async def test_the_direct_publisher_forwards_as_a_node_does(redis_server: RedisServer) -> None:
    listener = redis_server.client()
    pubsub = listener.pubsub()
    try:
        await subscribed(pubsub, CHANNEL)
        async with Publisher.from_url(redis_server.url, legacy_channel=CHANNEL) as pub:
            inbox_id = await pub.to_user("42", {"title": "Build done"})
        data = await forwarded(pubsub)
        assert (data["tidingsId"], data["to"]) == (inbox_id, "42")
        assert orjson.loads(data["content"]) == {"title": "Build done"}
    finally:
        await pubsub.aclose()
        await listener.aclose()
