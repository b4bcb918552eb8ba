"""``POST /api/v1/messages``: a batch publish, on real server processes and in-process.

Every item is checked as its single route checks it before anything is published; then
all are published at once and answered in item order (server/api.py ``publish_batch``).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tidings.config import Config
from tidings.errors import BrokerUnavailable
from tidings.inbox.base import InboxLimits
from tidings.inbox.redis import InboxWriter
from tidings.message import Message
from tidings.publish_rules import MAX_BATCH
from tidings.server.api import finished
from tidings.server.app import SERVER_KEY, create_app

from .conftest import StartServer
from .redis_fixture import RedisServer
from .sockjs_support import Node, node_fixture
from .stompws import StompWs
from .test_api_edge import (
    API_KEY,
    MAX_MESSAGE_BYTES,
    answer,
    both_ways,
    by_aiohttp,
    request,
    user,
)
from .test_websocket_edge import Raw, Response, listener, topic

PATH = "/api/v1/messages"


node = node_fixture("api-batch", "--max-message-bytes", str(MAX_MESSAGE_BYTES))


key_node = node_fixture("api-batch-key", "--api-key", API_KEY)


def batch(*items: object) -> bytes:
    return json.dumps({"messages": list(items)}).encode()


async def user_listener(url: str, name: str, destination: str = "/message") -> StompWs:
    client = await StompWs.open(url.replace("http", "ws", 1) + "/stomp")
    await client.connect()
    await client.subscribe("s", f"/user/{name}{destination}")
    return client


async def inbox(url: str, name: str) -> list[dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/v1/users/{name}/inbox") as r:
        assert r.status == 200, await r.text()
        messages: list[dict[str, object]] = (await r.json())["messages"]
        return messages


def id_order(inbox_id: str) -> tuple[int, int]:
    ms, seq = inbox_id.split("-")
    return int(ms), int(seq)


# -- delivery -------------------------------------------------------------------------------


async def test_a_batch_of_user_and_topic_messages_is_delivered(node: Node) -> None:
    alice, bob = user(), user()
    news = topic()
    on_alice = await user_listener(node.http_url, alice)
    on_bob = await user_listener(node.http_url, bob, "/queue/alerts")
    on_news = await listener(node, news)
    try:
        response = await answer(
            node,
            request(
                PATH,
                batch(
                    {"user": alice, "body": "hi alice"},
                    {"topic": news.removeprefix("/topic/"), "body": {"n": 1}},
                    {
                        "user": bob,
                        "body": "alert",
                        "destination": "/queue/alerts",
                        "headers": {"x-priority": "high"},
                    },
                ),
            ),
        )
        assert (response.status, by_aiohttp(response)) == (202, False), response
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        ids = response.json()["ids"]
        assert isinstance(ids, list) and len(ids) == 3

        to_alice = await on_alice.expect("MESSAGE", destination=f"/user/{alice}/message")
        assert (to_alice.body, to_alice.get("tidings-id")) == (b"hi alice", ids[0])
        assert to_alice.get("content-type") == "text/plain;charset=UTF-8"
        to_news = await on_news.expect("MESSAGE", destination=news)
        assert (json.loads(to_news.body), to_news.get("tidings-id")) == ({"n": 1}, ids[1])
        assert to_news.get("content-type") == "application/json;charset=UTF-8"
        to_bob = await on_bob.expect("MESSAGE", destination=f"/user/{bob}/queue/alerts")
        assert (to_bob.body, to_bob.get("x-priority")) == (b"alert", "high")
        assert to_bob.get("tidings-id") == ids[2]
    finally:
        for client in (on_alice, on_bob, on_news):
            await client.close()


async def test_the_answer_is_the_same_from_aiohttp(node: Node) -> None:
    """The same batch sent chunked (aiohttp's) is answered alike; ids are new, so compare form."""
    name = user()
    body = batch({"user": name, "body": "a"}, {"topic": "public", "body": "b"})
    edge = await answer(node, request(PATH, body))
    other = await answer(node, request(PATH, body, chunked=True))
    assert (by_aiohttp(edge), by_aiohttp(other)) == (False, True)
    assert (edge.status, other.status) == (202, 202)
    assert edge.headers["content-type"] == other.headers["content-type"]
    for response in (edge, other):
        ids = response.json()["ids"]
        assert isinstance(ids, list) and len(ids) == 2 and all(isinstance(i, str) for i in ids)
        assert response.body == json.dumps({"ids": ids}).encode()
    assert [m["body"] for m in await inbox(node.http_url, name)] == ["a", "a"]


# -- refusals -------------------------------------------------------------------------------

TOO_BIG = "x" * (MAX_MESSAGE_BYTES + 1)
T1, T2 = {"topic": "t", "body": 1}, {"topic": "t", "body": 2}
REFUSED = [
    (b"{}", 400, "invalid_field", None),
    (b'{"messages": []}', 400, "invalid_field", None),
    (b'{"messages": {"user": "u", "body": 1}}', 400, "invalid_field", None),
    (b'{"messages": "x"}', 400, "invalid_field", None),
    (batch(*[{"topic": "t", "body": n} for n in range(MAX_BATCH + 1)]), 400, "invalid_field", None),
    (b"[1]", 400, "invalid_json", None),
    (b'{"messages": [{"user": "u", "body": 1}, 7]}', 400, "invalid_field", 1),
    (batch(T1, {"user": "u", "topic": "t", "body": 1}), 400, "invalid_field", 1),
    (batch({"body": 1}), 400, "invalid_field", 0),
    (batch({"user": "u"}), 400, "missing_field", 0),
    (batch({"user": 5, "body": 1}), 400, "invalid_field", 0),
    (batch({"user": "a/b", "body": 1}), 400, "invalid_field", 0),
    (batch({"user": "u", "body": 1, "destination": "x"}), 400, "invalid_field", 0),
    (batch({"topic": "a//b", "body": 1}), 400, "invalid_field", 0),
    (batch(T1, {"topic": "t", "body": 1, "headers": {"ack": "x"}}), 400, "invalid_field", 1),
    (batch({"topic": "t", "body": 1, "id": ""}), 400, "invalid_field", 0),
    (batch(T1, T2, {"topic": "t", "body": TOO_BIG}), 413, "too_large", 2),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "index"),
    REFUSED,
    ids=[
        "no-messages",
        "empty-list",
        "an-object",
        "a-string",
        "too-many",
        "not-an-object",
        "item-not-an-object",
        "user-and-topic",
        "neither",
        "no-body",
        "user-not-a-string",
        "user-with-slash",
        "bad-destination",
        "bad-topic",
        "reserved-header",
        "bad-idempotency-key",
        "too-large",
    ],
)
async def test_refusals_are_the_same_on_both_paths(
    node: Node, body: bytes, status: int, code: str, index: int | None
) -> None:
    edge, _ = await both_ways(node, PATH, body)
    assert (edge.status, by_aiohttp(edge)) == (status, False), edge
    error = edge.json()
    assert error["error"] == code
    assert error.get("index") == index
    if index is not None:
        assert str(error["message"]).startswith(f"messages[{index}]: ")
    else:
        assert set(error) == {"error", "message"}


async def test_a_batch_with_an_invalid_message_publishes_none(node: Node) -> None:
    name = user()
    watcher = await user_listener(node.http_url, name)
    try:
        refused = await answer(
            node,
            request(
                PATH,
                batch(
                    {"user": name, "body": "one"},
                    {"user": name, "body": "two"},
                    {"user": name, "body": "three", "headers": {"bad name": "x"}},
                ),
            ),
        )
        assert (refused.status, refused.json()["index"]) == (400, 2), refused
        assert "messages[2]: header name 'bad name'" in str(refused.json()["message"])
        assert await inbox(node.http_url, name) == []
        # The next message the subscriber gets is the one published after the refusal.
        after = await answer(node, request(PATH, batch({"user": name, "body": "after"})))
        assert after.status == 202
        assert (await watcher.expect("MESSAGE")).body == b"after"
    finally:
        await watcher.close()


async def test_a_batch_takes_no_idempotency_key_header(node: Node) -> None:
    edge, _ = await both_ways(node, PATH, batch({"topic": "t", "body": 1}), "Idempotency-Key: k")
    assert (edge.status, edge.json()["error"]) == (400, "invalid_field")


async def test_a_wrong_api_key_gets_401_and_the_right_one_publishes(key_node: Node) -> None:
    body = batch({"topic": "public", "body": "x"})
    for fields in ((), ("Authorization: Bearer wrong",)):
        edge, _ = await both_ways(key_node, PATH, body, *fields)
        assert (edge.status, edge.json()["error"]) == (401, "unauthorized")
    edge = await answer(key_node, request(PATH, body, f"Authorization: Bearer {API_KEY}"))
    assert (edge.status, by_aiohttp(edge)) == (202, False)


async def test_a_forwarded_caller_off_loopback_gets_403(node: Node) -> None:
    edge, _ = await both_ways(
        node, PATH, batch({"topic": "public", "body": "x"}), "X-Forwarded-For: 203.0.113.9"
    )
    assert (edge.status, edge.json()["error"]) == (403, "forbidden")


# -- on Redis: order, idempotency, an outage ------------------------------------------------


async def post(port: int, body: bytes, *, chunked: bool = False) -> Response:
    client = Raw(*await asyncio.open_connection("127.0.0.1", port))
    try:
        await client.send(request(PATH, body, chunked=chunked))
        return await client.response()
    finally:
        await client.close()


async def test_on_redis_order_idempotency_and_an_outage(
    tidings_server: StartServer, redis_server: RedisServer
) -> None:
    server = await tidings_server("--broker", redis_server.url)
    name = user()
    watcher = await user_listener(server.http_url, name)
    try:
        # Ten messages to one user: stored, delivered and answered in item order.
        bodies = [f"m{n}" for n in range(10)]
        sent = await post(server.port, batch(*[{"user": name, "body": b} for b in bodies]))
        assert (sent.status, by_aiohttp(sent)) == (202, False), sent
        ids = sent.json()["ids"]
        assert isinstance(ids, list) and len(set(ids)) == 10
        assert sorted(ids, key=id_order) == ids
        for body, inbox_id in zip(bodies, ids, strict=True):
            message = await watcher.expect("MESSAGE")
            assert (message.body.decode(), message.get("tidings-id")) == (body, inbox_id)
        assert [m["id"] for m in await inbox(server.http_url, name)] == ids

        # Keyed items: a retried batch (here via aiohttp) stores nothing twice.
        keyed = batch(
            {"user": name, "body": "k1", "id": "key-1"},
            {"user": name, "body": "k2", "id": "key-2"},
        )
        first = await post(server.port, keyed)
        retry = await post(server.port, keyed, chunked=True)
        assert (first.status, retry.status, by_aiohttp(retry)) == (202, 202, True)
        assert first.body == retry.body
        stored = await inbox(server.http_url, name)
        assert [m["body"] for m in stored] == [*bodies, "k1", "k2"]
        assert [m["id"] for m in stored[-2:]] == first.json()["ids"]

        # Redis gone: 503, and every id null (none stored).
        await redis_server.stop()
        down = await post(server.port, batch({"user": name, "body": "x"}, T1))
        assert down.status == 503, down
        error = down.json()
        assert (error["error"], error["ids"]) == ("broker_unavailable", [None, None])
        assert "2 of 2 messages not stored" in str(error["message"])
    finally:
        await watcher.close()


async def test_on_redis_a_batch_partly_stored_answers_503_and_a_retry_stores_the_rest(
    tidings_server: StartServer, redis_server: RedisServer
) -> None:
    """One item's idempotency key is a hash in Redis, so the publish script's GET of it
    fails (WRONGTYPE) for that item alone: the others are stored and delivered."""
    server = await tidings_server("--broker", redis_server.url)
    alice, bob = user(), user()
    channel = f"u:{bob}"
    poisoned = f"tidings:idem:{len(channel)}:{channel}:kb"
    admin = redis_server.client()
    await admin.hset(poisoned, "not", "an id")
    on_alice = await user_listener(server.http_url, alice)
    on_bob = await user_listener(server.http_url, bob)
    body = batch(
        {"user": alice, "body": "a", "id": "ka"},
        {"user": bob, "body": "b", "id": "kb"},
        {"user": alice, "body": "c", "id": "kc"},
    )
    try:
        # The edge's answer, then aiohttp's (chunked): the same, the stored ids by their keys.
        edge = await post(server.port, body)
        other = await post(server.port, body, chunked=True)
        assert (edge.status, by_aiohttp(edge)) == (503, False), edge
        assert (other.status, by_aiohttp(other), other.body) == (503, True, edge.body), other
        error = edge.json()
        assert error["error"] == "broker_unavailable"
        text = str(error["message"])
        assert text.startswith("broker unavailable: redis unavailable: WRONGTYPE "), text
        assert text.endswith(" (1 of 3 messages not stored: their ids are null)"), text
        ids = error["ids"]
        assert isinstance(ids, list) and len(ids) == 3 and ids[1] is None, ids
        first, third = ids[0], ids[2]
        assert isinstance(first, str) and isinstance(third, str) and first != third, ids
        for inbox_id, sent in ((first, b"a"), (third, b"c")):
            delivered = await on_alice.expect("MESSAGE")
            assert (delivered.body, delivered.get("tidings-id")) == (sent, inbox_id)
        assert [(m["id"], m["body"]) for m in await inbox(server.http_url, alice)] == [
            (first, "a"),
            (third, "c"),
        ]
        assert await inbox(server.http_url, bob) == []
        # The poisoned key is as it was: nothing wrote to it.
        assert await admin.type(poisoned) == b"hash"
        assert await admin.hgetall(poisoned) == {b"not": b"an id"}
        assert await admin.ttl(poisoned) == -1

        # The key gone, the same batch again: only bob's is stored, the others keep their ids.
        await admin.delete(poisoned)
        retry = await post(server.port, body)
        assert (retry.status, by_aiohttp(retry)) == (202, False), retry
        second = retry.json()["ids"]
        assert isinstance(second, list) and isinstance(second[1], str), second
        assert second == [first, second[1], third]
        delivered = await on_bob.expect("MESSAGE")
        assert (delivered.body, delivered.get("tidings-id")) == (b"b", second[1])
        assert [(m["id"], m["body"]) for m in await inbox(server.http_url, bob)] == [
            (second[1], "b")
        ]
        assert [m["id"] for m in await inbox(server.http_url, alice)] == [first, third]
        # Nothing more for alice: her next message is the one published after the retry.
        after = await post(server.port, batch({"user": alice, "body": "after"}))
        assert after.status == 202, after
        assert (await on_alice.expect("MESSAGE")).body == b"after"
    finally:
        for client in (on_alice, on_bob):
            await client.close()
        await admin.aclose()


# -- in-process ---------------------------------------------------------------------------


async def test_a_batch_goes_to_redis_in_one_write_in_item_order(
    redis_server: RedisServer,
) -> None:
    """The node's publish replaced by an InboxWriter on a real Redis: one write a batch."""
    server = create_app(Config())[SERVER_KEY]
    client = redis_server.client()
    writer = InboxWriter(client, InboxLimits())
    server.node.submit = writer.submit  # type: ignore[method-assign]
    api = server.api
    try:
        warm = await finished(api.start(api.publish_batch, "", {}, "127.0.0.1", batch(T1)))
        assert warm.status == 202, warm
        writes = writer._publisher.writes
        items = [{"user": "u1", "body": n} for n in range(50)] + [T1, T2]
        sent = await finished(api.start(api.publish_batch, "", {}, "127.0.0.1", batch(*items)))
        assert sent.status == 202, sent
        assert writer._publisher.writes == writes + 1
        ids = json.loads(sent.body)["ids"]
        assert sorted(ids[:50], key=id_order) == ids[:50]
        assert id_order(ids[-2]) < id_order(ids[-1])
        stored = await client.xrange("tidings:inbox:u:u1")
        assert [i.decode() for i, _ in stored] == ids[:50]
    finally:
        await writer.close()
        await client.aclose()


# -- in-process: a batch partly stored --------------------------------------------------------


async def test_a_batch_partly_stored_answers_503_with_the_ids_stored() -> None:
    server = create_app(Config())[SERVER_KEY]
    started: list[bytes] = []

    async def stored(message: Message, idempotency_key: str | None) -> str:
        await asyncio.sleep(0)  # all are started before any finishes
        if message.body == b"lost":
            raise BrokerUnavailable("connection lost")
        return f"{len(started)}-{idempotency_key}"

    def submit(message: Message, *, idempotency_key: str | None = None) -> asyncio.Task[str]:
        started.append(message.body)
        return asyncio.ensure_future(stored(message, idempotency_key))

    server.node.submit = submit  # type: ignore[method-assign]
    api = server.api
    body = batch(
        {"user": "u", "body": "a", "id": "ka"},
        {"topic": "t", "body": "lost"},
        {"user": "v", "body": "c", "id": "kc"},
    )
    answer_ = await finished(api.start(api.publish_batch, "", {}, "127.0.0.1", body))
    assert started == [b"a", b"lost", b"c"]
    assert answer_.status == 503
    assert json.loads(answer_.body) == {
        "error": "broker_unavailable",
        "message": "broker unavailable: connection lost (1 of 3 messages not stored:"
        " their ids are null)",
        "ids": ["3-ka", None, "3-kc"],
    }
