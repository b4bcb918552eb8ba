"""The Python client SDK (tidings.client) against real nodes, a real Redis, real restarts."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import aiohttp
import jwt
import orjson
import pytest

from tidings.client import (
    Client,
    ClientError,
    Notification,
    Subscription,
    UnreadCount,
    connect,
)
from tidings.publisher import Publisher

from .conftest import StartServer, TidingsServer
from .redis_fixture import RedisServer
from .test_server_jwt import JWT, JWT_ENV, SECRET

WAIT = 10.0  # seconds any single expected event may take


@pytest.fixture
async def pub(redis_server: RedisServer) -> AsyncIterator[Publisher]:
    async with Publisher.from_url(redis_server.url) as publisher:
        yield publisher


async def take(sub: Subscription, count: int) -> list[Notification]:
    async with asyncio.timeout(WAIT):
        return [await anext(sub) for _ in range(count)]


async def restart(server: TidingsServer, start: StartServer, *args: str) -> TidingsServer:
    """Stop ``server`` and start a new node on its port with ``args``."""
    await server.stop()
    return await start(*args, port=server.port)


async def test_a_notification_carries_its_id_body_and_headers(
    tidings_server: StartServer,
) -> None:
    node = await tidings_server()
    async with connect(node.ws_url(), user="42") as client:
        sub = client.notifications("/user/42/message")
        await sub.subscribed(WAIT)
        await published(node, "42", "hello")
        [note] = await take(sub, 1)
    assert note.body == "hello"
    assert note.id is not None and note.id == note.headers["tidings-id"]
    assert note.destination == "/user/42/message"
    assert note.headers["content-type"].startswith("text/plain")
    assert not note.gap


async def test_it_reconnects_and_resumes_after_a_restart_without_loss_or_duplicates(
    redis_server: RedisServer, tidings_server: StartServer, pub: Publisher
) -> None:
    args = ("--broker", redis_server.url)
    node = await tidings_server(*args)
    async with connect(node.ws_url(), user="7", reconnect_delay=(0.05, 0.5)) as client:
        sub = client.notifications("/user/7/message")
        await sub.subscribed(WAIT)
        for i in range(5):
            await pub.to_user("7", f"before {i}")
        first = await take(sub, 5)
        await node.stop()
        for i in range(5):  # published while no node is up: only the inbox has them
            await pub.to_user("7", f"while down {i}")
        node = await restart(node, tidings_server, *args)
        await client.wait_connected(WAIT)
        await pub.to_user("7", "after")
        rest = await take(sub, 6)
        assert client.connects == 2
    bodies = [n.body for n in first + rest]
    assert bodies == [f"before {i}" for i in range(5)] + [
        *(f"while down {i}" for i in range(5)),
        "after",
    ]
    assert len({n.id for n in first + rest}) == 11


async def test_a_subscription_that_got_nothing_yet_resumes_from_when_it_subscribed(
    redis_server: RedisServer, tidings_server: StartServer, pub: Publisher
) -> None:
    args = ("--broker", redis_server.url)
    await pub.to_user("8", "long before the subscription")
    node = await tidings_server(*args)
    async with connect(node.ws_url(), user="8", reconnect_delay=(0.05, 0.5)) as client:
        sub = client.notifications("/user/8/message")
        await sub.subscribed(WAIT)
        await node.stop()
        await pub.to_user("8", "while down")
        node = await restart(node, tidings_server, *args)
        [note] = await take(sub, 1)
    assert note.body == "while down"


async def test_client_individual_acks_unacked_ones_come_back_after_a_reconnect(
    redis_server: RedisServer, tidings_server: StartServer, pub: Publisher
) -> None:
    args = ("--broker", redis_server.url)
    node = await tidings_server(*args)
    async with connect(node.ws_url(), user="9", reconnect_delay=(0.05, 0.5)) as client:
        sub = client.notifications("/user/9/message", ack="client-individual")
        await sub.subscribed(WAIT)
        ids = [await pub.to_user("9", f"m{i}") for i in range(4)]
        notes = await take(sub, 4)
        assert [n.id for n in notes] == ids
        assert await notes[0].ack()
        assert await notes[2].ack()
        node = await restart(node, tidings_server, *args)
        again = await take(sub, 2)
    assert [n.body for n in again] == ["m1", "m3"]


async def test_a_token_source_is_asked_again_when_the_token_expires(
    tidings_server: StartServer,
) -> None:
    node = await tidings_server(*JWT, env=JWT_ENV)
    issued: list[float] = []

    async def fresh_token() -> str:
        issued.append(time.time())
        return jwt.encode({"sub": "5", "exp": int(time.time()) + 2}, SECRET, "HS256")

    async with connect(node.ws_url(), token=fresh_token, reconnect_delay=(0.05, 0.5)) as client:
        sub = client.notifications("/user/5/message")
        await sub.subscribed(WAIT)
        await published(node, "5", "first")
        [first] = await take(sub, 1)
        await client.wait_connects(2, WAIT)  # the node ended the session at exp
        await sub.subscribed(WAIT)
        await published(node, "5", "second")
        [second] = await take(sub, 1)
    assert (first.body, second.body) == ("first", "second")
    assert len(issued) >= 2


async def test_a_refused_token_fails_connect_and_a_forbidden_destination_ends_iteration(
    tidings_server: StartServer,
) -> None:
    node = await tidings_server(*JWT, env=JWT_ENV)
    with pytest.raises(ClientError, match="authentication failed"):
        await connect(node.ws_url(), token="not.a.jwt").start()
    good = jwt.encode({"sub": "5", "exp": int(time.time()) + 300}, SECRET, "HS256")
    async with connect(node.ws_url(), token=good) as client:
        sub = client.notifications("/user/6/message")  # somebody else's messages
        with pytest.raises(ClientError, match="may not subscribe"):
            await take(sub, 1)


async def test_closing_a_subscription_ends_its_iteration(tidings_server: StartServer) -> None:
    node = await tidings_server()
    async with connect(node.ws_url(), user="3") as client:
        async with client.notifications("/topic/news") as sub:
            pass
        with pytest.raises(StopAsyncIteration):
            await anext(sub)


def test_the_unread_count_is_right_whatever_order_states_and_messages_arrive_in() -> None:
    """Issue 16's race: a read's state event may reach a device after a message stored
    later (or an older read's after a newer one). The inbox: 1-0 stored, a read of all
    (state 0, last 1-0), 2-0 and 3-0 stored, a read of 2-0 (state 1, last 3-0): one unread."""
    events: list[dict[str, object] | str] = [
        "1-0",
        {"unread": 0, "last": "1-0", "read": [], "up_to": "1-0"},
        "2-0",
        "3-0",
        {"unread": 1, "last": "3-0", "read": ["2-0"], "up_to": None},
    ]
    for order in itertools.permutations(events):
        count = UnreadCount()
        assert count.value is None
        assert count.state({"unread": 0, "last": None})  # at SUBSCRIBE
        for event in order:
            if isinstance(event, str):
                count.message(event)
            else:
                count.state(event)
        assert count.value == 1, order
    count = UnreadCount()
    assert count.state({"unread": 2, "last": "5-0"})
    assert not count.state({"unread": 4, "last": "4-0"})  # computed before: ignored
    assert not count.state({"unread": 3, "last": "5-0"})  # the same last, more: older
    assert count.state({"unread": 1, "last": "5-0"})
    assert count.message("6-0") and not count.message("6-0") and not count.message("5-0")
    assert count.value == 2
    assert not count.state({"unread": "2"}) and not count.state({"unread": 1, "last": 7})
    count.reset()
    assert count.value is None


async def test_the_unread_count_follows_the_node(tidings_server: StartServer) -> None:
    """The inbox-state events of a real node (the state at SUBSCRIBE, then a read on
    another device) and the user's messages, fed to an UnreadCount."""
    node = await tidings_server()
    count = UnreadCount()
    async with connect(node.ws_url(), user="42") as client:
        states = client.notifications("/user/queue/inbox-state")
        notes = client.notifications("/user/42/message")
        await asyncio.gather(states.subscribed(WAIT), notes.subscribed(WAIT))
        [initial] = await take(states, 1)
        assert count.state(orjson.loads(initial.body))
        ids = [await published(node, "42", f"n{n}") for n in range(3)]
        for note in await take(notes, 3):
            assert note.id is not None and count.message(note.id)
        assert count.value == 3
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{node.http_url}/api/v1/users/42/inbox/read", json={"up_to": ids[1]}
            ) as reply,
        ):
            assert await reply.json() == {"unread": 1}
        [read] = await take(states, 1)
        assert orjson.loads(read.body)["last"] == ids[2]
        assert count.state(orjson.loads(read.body))
        assert count.value == 1


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        Client("ws://x", user="1", token="t")
    with pytest.raises(ValueError, match="ack must be one of"):
        Client("ws://x", user="1").notifications("/topic/a", ack="sometimes")


# -- helpers ---------------------------------------------------------------------------------
async def published(node: TidingsServer, user: str, body: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{node.http_url}/api/v1/users/{user}/messages", json={"body": body}) as reply,
    ):
        assert reply.status == 202, await reply.text()
        return str((await reply.json())["id"])
