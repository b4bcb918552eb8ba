"""The direct publisher (tidings.publisher) against a private Redis and a real node on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from tidings.errors import BrokerUnavailable, InvalidPublish
from tidings.message import APPLICATION_JSON, TEXT_PLAIN, id_key
from tidings.publisher import Publisher

from .conftest import StartServer, TidingsServer
from .redis_fixture import RedisServer
from .stompws import StompWs

MAX_BYTES = 1024


@pytest.fixture
async def node(redis_server: RedisServer, tidings_server: StartServer) -> TidingsServer:
    return await tidings_server("--broker", redis_server.url, "--max-message-bytes", str(MAX_BYTES))


@pytest.fixture
async def pub(redis_server: RedisServer) -> AsyncIterator[Publisher]:
    async with Publisher.from_url(redis_server.url, max_message_bytes=MAX_BYTES) as publisher:
        yield publisher


async def api(node: TidingsServer, method: str, path: str, **kwargs: Any) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, node.http_url + path, **kwargs) as reply,
    ):
        assert reply.status < 300, await reply.text()
        return await reply.json()


async def subscriber(node: TidingsServer, user: str, destination: str, **headers: str) -> StompWs:
    client = await StompWs.open(node.ws_url())
    try:
        await client.connect(login=user)
        await client.subscribe("s", destination, **headers)
    except BaseException:
        await client.close()
        raise
    return client


async def test_a_user_message_is_delivered_stored_and_counted(
    node: TidingsServer, pub: Publisher
) -> None:
    offline = await pub.to_user("42", "while you were away")
    client = await subscriber(node, "42", "/user/42/message", **{"tidings-resume-after": "0"})
    try:
        replayed = await client.expect("MESSAGE", **{"tidings-id": offline})
        assert (replayed.body, replayed.get("content-type")) == (b"while you were away", TEXT_PLAIN)
        await client.subscribe("alerts", "/user/queue/alerts")

        live = await pub.to_user("42", {"title": "Build done"}, headers={"x-build": "7"})
        message = await client.expect(
            "MESSAGE",
            destination="/user/42/message",
            subscription="s",
            **{"tidings-id": live, "content-type": APPLICATION_JSON, "x-build": "7"},
        )
        assert orjson.loads(message.body) == {"title": "Build done"}

        alert = await pub.to_user("42", "# Disk", destination="/queue/alerts", content_type="md")
        await client.expect(
            "MESSAGE", subscription="alerts", **{"tidings-id": alert, "content-type": "md"}
        )
    finally:
        await client.close()
    assert id_key(offline) < id_key(live) < id_key(alert)

    assert await api(node, "GET", "/api/v1/users/42/inbox/unread") == {"unread": 3}
    listing = await api(node, "GET", "/api/v1/users/42/inbox")
    assert [m["id"] for m in listing["messages"]] == [offline, live, alert]
    assert listing["messages"][1] == {
        "id": live,
        "destination": "/message",
        "content_type": APPLICATION_JSON,
        "headers": {"x-build": "7"},
        "body": {"title": "Build done"},
        "read": False,
    }


async def test_a_topic_message_is_delivered_and_kept_for_resume(
    node: TidingsServer, pub: Publisher
) -> None:
    before = await pub.to_topic("news/eu", "before anyone listened")
    client = await subscriber(node, "7", "/topic/news/eu", **{"tidings-resume-after": "0"})
    try:
        await client.expect("MESSAGE", **{"tidings-id": before, "destination": "/topic/news/eu"})
        live = await pub.to_topic("news/eu", [1, 2], headers={"priority": "high"})
        message = await client.expect(
            "MESSAGE", **{"tidings-id": live, "priority": "high", "content-type": APPLICATION_JSON}
        )
        assert message.body == b"[1,2]"
    finally:
        await client.close()


async def test_an_idempotency_key_stores_once_also_against_the_http_api(
    node: TidingsServer, pub: Publisher
) -> None:
    first = await pub.to_user("7", "charged", idempotency_key="order-1")
    assert await pub.to_user("7", "charged", idempotency_key="order-1") == first
    reply = await api(
        node,
        "POST",
        "/api/v1/users/7/messages",
        json={"body": "charged"},
        headers={"Idempotency-Key": "order-1"},
    )
    assert reply == {"id": first}
    other_user = await pub.to_user("8", "charged", idempotency_key="order-1")
    assert other_user != first  # keys are per user, as in the HTTP API
    listing = await api(node, "GET", "/api/v1/users/7/inbox")
    assert [m["id"] for m in listing["messages"]] == [first]


Call = Callable[[Publisher], Awaitable[str]]
BAD_CALLS: list[tuple[str, Call, str]] = [
    ("empty user", lambda p: p.to_user("", "x"), "invalid_field"),
    ("blank user", lambda p: p.to_user("  ", "x"), "invalid_field"),
    ("user with a slash", lambda p: p.to_user("a/b", "x"), "invalid_field"),
    ("relative destination", lambda p: p.to_user("4", "x", destination="m"), "invalid_field"),
    ("empty path segment", lambda p: p.to_user("4", "x", destination="/a//b"), "invalid_field"),
    (
        "reserved header",
        lambda p: p.to_user("4", "x", headers={"Message-Id": "1"}),
        "invalid_field",
    ),
    ("bad header name", lambda p: p.to_user("4", "x", headers={"a b": "c"}), "invalid_field"),
    ("newline in a value", lambda p: p.to_user("4", "x", headers={"a": "b\nc"}), "invalid_field"),
    ("value not a string", lambda p: p.to_user("4", "x", headers={"a": 1}), "invalid_field"),  # type: ignore[dict-item]
    ("headers not a mapping", lambda p: p.to_user("4", "x", headers=[("a", "b")]), "invalid_field"),  # type: ignore[arg-type]
    ("CRLF content type", lambda p: p.to_user("4", "x", content_type="a\r\nb: c"), "invalid_field"),
    (
        "content type twice",
        lambda p: p.to_user("4", "x", content_type="a", headers={"Content-Type": "b"}),
        "invalid_field",
    ),
    ("body over the limit", lambda p: p.to_user("4", "x" * (MAX_BYTES + 1)), "too_large"),
    ("body not JSON", lambda p: p.to_user("4", {"at": object()}), "invalid_field"),
    ("empty key", lambda p: p.to_user("4", "x", idempotency_key=""), "invalid_field"),
    ("long key", lambda p: p.to_user("4", "x", idempotency_key="k" * 201), "invalid_field"),
    ("unprintable key", lambda p: p.to_user("4", "x", idempotency_key="a\nb"), "invalid_field"),
    ("empty topic", lambda p: p.to_topic("", "x"), "invalid_field"),
    ("topic with //", lambda p: p.to_topic("a//b", "x"), "invalid_field"),
    ("topic ending in /", lambda p: p.to_topic("a/", "x"), "invalid_field"),
    ("topic body over the limit", lambda p: p.to_topic("t", "x" * (MAX_BYTES + 1)), "too_large"),
]


async def test_bad_input_raises_a_clear_error_and_stores_nothing(redis_server: RedisServer) -> None:
    client = redis_server.client()
    try:
        pub = Publisher(client, max_message_bytes=MAX_BYTES)  # the caller's own client
        for what, call, code in BAD_CALLS:
            with pytest.raises(InvalidPublish) as caught:
                await call(pub)
            assert caught.value.code == code, what
            assert isinstance(caught.value, ValueError) and str(caught.value), what
        assert await client.keys("*") == []
        assert await pub.to_user("4", "x", headers={"Content-Type": "b"})  # still usable
    finally:
        await client.aclose()


async def nothing_more(client: StompWs, within: float = 0.3) -> bool:
    try:
        item = await client.next(timeout=within)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected {item!r}")


async def test_concurrent_publishes_arrive_once_in_order_in_few_round_trips(
    node: TidingsServer, pub: Publisher, redis_server: RedisServer
) -> None:
    users = [f"u{n}" for n in range(5)]
    clients = await asyncio.gather(*(subscriber(node, u, f"/user/{u}/message") for u in users))
    try:
        ids = await asyncio.gather(*(pub.to_user(users[n % 5], f"m{n}") for n in range(500)))
        for index, client in enumerate(clients):
            received = [await client.expect("MESSAGE") for _ in range(100)]
            got = [(m.get("tidings-id"), m.body) for m in received]
            sent = [(ids[n], f"m{n}".encode()) for n in range(index, 500, 5)]
            # each once, delivered in id order, with the id its publish returned
            assert got == sorted(sent, key=lambda pair: id_key(pair[0])), users[index]
        assert all(await asyncio.gather(*(nothing_more(client) for client in clients)))
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    # 500 calls in one loop turn: batches of 128, one connection each (not one per call).
    admin = redis_server.client()
    try:
        named = [c for c in await admin.client_list() if c["name"] == "tidings-publisher"]
    finally:
        await admin.aclose()
    assert 1 <= len(named) <= 4, named


async def test_redis_outage_raises_broker_unavailable_then_publishing_resumes(
    redis_server: RedisServer,
) -> None:
    async with Publisher.from_url(redis_server.url) as pub:
        await pub.to_user("1", "before")
        await redis_server.stop()
        with pytest.raises(BrokerUnavailable):
            await pub.to_user("1", "while down")
        await redis_server.start()  # empty: the script is loaded again on first use
        assert await pub.to_user("1", "after")
    with pytest.raises(BrokerUnavailable):
        await pub.to_user("1", "after close")
