"""The durable inbox end to end (issue 4), on the memory broker and on Redis.

Load scenarios drive many sessions with the byte-level aiohttp client (tests/stompws.py);
ack and read-state scenarios use the real @stomp/stompjs client.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from tidings.message import Message, id_key
from tidings.stomp.frames import Frame

from .conftest import JsClientFactory, StartServer, TidingsServer
from .stompws import Closed, StompWs

BROKERS = ["memory", "redis"]


async def start_nodes(
    kind: str, count: int, tidings_server: StartServer, redis_server: Any, *args: str
) -> list[TidingsServer]:
    if kind == "memory":
        return [await tidings_server(*args)]  # one process holds everything
    return list(
        await asyncio.gather(
            *(
                tidings_server("--broker", redis_server.url, "--node-id", f"N{n}", *args)
                for n in range(count)
            )
        )
    )


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:
        yield session


async def publish(http: aiohttp.ClientSession, server: TidingsServer, user: str, body: str) -> str:
    async with http.post(
        f"{server.http_url}/api/v1/users/{user}/messages", json={"body": body}
    ) as reply:
        assert reply.status == 202, await reply.text()
        inbox_id: str = (await reply.json())["id"]
        return inbox_id


@dataclass
class Reader:
    """One user's session that keeps reconnecting with tidings-resume-after."""

    user: str
    node: int
    received: list[tuple[str, bytes]] = field(default_factory=list)
    client: StompWs | None = None
    reconnects: int = 0
    target: set[str] | None = None  # the accepted ids: complete once all arrived
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last_id(self) -> str:
        return self.received[-1][0] if self.received else "0"

    def check_complete(self) -> None:
        if self.target is not None and self.target <= {i for i, _ in self.received}:
            self.complete.set()

    async def run(self, nodes: list[TidingsServer]) -> None:
        while True:
            try:
                client = self.client = await StompWs.open(nodes[self.node].ws_url())
            except aiohttp.ClientError:  # that node is gone: try the other one
                self.node = (self.node + 1) % len(nodes)
                await asyncio.sleep(0.05)
                continue
            try:
                await client.connect(login=self.user)
                await client.subscribe(
                    "s", f"/user/{self.user}/message", **{"tidings-resume-after": self.last_id}
                )
                while True:
                    item = await client.next(timeout=3600)
                    if isinstance(item, Closed):
                        break
                    if isinstance(item, str):
                        continue
                    assert item.command == "MESSAGE", item
                    inbox_id = item.get("tidings-id")
                    assert inbox_id is not None, item
                    self.received.append((inbox_id, item.body))
                    self.check_complete()
            except (AssertionError, aiohttp.ClientError, ConnectionError, TimeoutError):
                if self.client is not client:
                    raise
            finally:
                await client.close()
            self.reconnects += 1
            self.node = (self.node + 1) % len(nodes)  # come back through the other node

    async def drop(self) -> None:
        if self.client is not None:
            await self.client.ws.close()


async def run_resume_scenario(
    nodes: list[TidingsServer],
    http: aiohttp.ClientSession,
    *,
    users: int,
    messages: int,
    kill_node: bool = False,
) -> dict[str, Reader]:
    readers = {f"u{n}": Reader(f"u{n}", n % len(nodes)) for n in range(users)}
    tasks = [asyncio.create_task(r.run(nodes)) for r in readers.values()]
    published: dict[str, list[str]] = defaultdict(list)
    rng = random.Random(4)
    alive = list(nodes)
    accepted = 0
    a_third_accepted = asyncio.Event()  # the node is killed mid-stream, from then on

    async def publisher(worker: int) -> None:
        nonlocal accepted
        for n in range(worker, messages, 20):
            user = f"u{rng.randrange(users)}"
            node = alive[n % len(alive)]
            try:
                published[user].append(await publish(http, node, user, f"{user}:{n}"))
            except (AssertionError, aiohttp.ClientError):
                assert node not in alive, "a live node refused a publish"
            else:
                accepted += 1
                if accepted >= messages // 3:
                    a_third_accepted.set()

    async def chaos() -> None:
        while True:
            await asyncio.sleep(0.02)  # the pace of the drops, not synchronisation
            await rng.choice(list(readers.values())).drop()

    async def killer() -> None:
        await a_third_accepted.wait()
        victim = nodes[0]
        alive.remove(victim)
        victim.proc.kill()

    chaos_task = asyncio.create_task(chaos())
    killer_task = asyncio.create_task(killer()) if kill_node else None
    try:
        await asyncio.gather(*(publisher(w) for w in range(20)))
    finally:
        chaos_task.cancel()
        if killer_task is not None:
            await killer_task
    try:
        for user, reader in readers.items():
            # Not a count: a publish cut off with a node may arrive as well (stored, no 2xx).
            reader.target = set(published[user])
            reader.check_complete()
        async with asyncio.timeout(60):
            await asyncio.gather(*(r.complete.wait() for r in readers.values()))
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    for user, reader in readers.items():
        ids = [inbox_id for inbox_id, _ in reader.received]
        keys = [id_key(inbox_id) for inbox_id in ids]
        assert keys == sorted(set(keys)), f"{user}: a duplicate or out of order"
        assert all(body.startswith(f"{user}:".encode()) for _, body in reader.received)
        if kill_node:
            # Every 2xx arrived; a publish cut off with the node may have been stored
            # without its 2xx reaching us, and then arrives too (at least once).
            assert set(published[user]) <= set(ids), f"{user}: an accepted message is missing"
        else:
            assert ids == sorted(published[user], key=id_key), f"{user}: not exactly once"
    assert sum(len(ids) for ids in published.values()) > 0
    return readers


@pytest.mark.parametrize("kind", BROKERS)
async def test_resume_under_load_loses_and_repeats_nothing(
    kind: str, tidings_server: StartServer, redis_server: Any, http: aiohttp.ClientSession
) -> None:
    nodes = await start_nodes(kind, 2, tidings_server, redis_server)
    readers = await run_resume_scenario(nodes, http, users=200, messages=20_000)
    assert sum(r.reconnects for r in readers.values()) >= 50, "the scenario dropped too few"


async def test_killed_node_loses_nothing_that_was_accepted(
    tidings_server: StartServer, redis_server: Any, http: aiohttp.ClientSession
) -> None:
    nodes = await start_nodes("redis", 2, tidings_server, redis_server)
    await run_resume_scenario(nodes, http, users=50, messages=4_000, kill_node=True)


async def test_resume_on_a_redis_cluster_loses_and_repeats_nothing(
    tidings_server: StartServer, cluster: Any, http: aiohttp.ClientSession
) -> None:
    """Two node processes on a Redis Cluster (issue 18): the same scenario as on one Redis,
    users spread over the masters, live delivery on sharded pub/sub."""
    nodes = list(
        await asyncio.gather(
            *(tidings_server("--broker", cluster.url, "--node-id", f"N{n}") for n in range(2))
        )
    )
    readers = await run_resume_scenario(nodes, http, users=60, messages=3_000)
    assert sum(r.reconnects for r in readers.values()) >= 20, "the scenario dropped too few"


async def ack_client(js_client: JsClientFactory, node: TidingsServer, user: str) -> Any:
    client = await js_client("stompjs7", node.ws_url())
    await client.connect(login=user)
    await client.subscribe("inbox", f"/user/{user}/message", ack="client-individual")
    return client


@pytest.mark.parametrize("kind", BROKERS)
async def test_offline_messages_wait_for_ack(
    kind: str,
    tidings_server: StartServer,
    redis_server: Any,
    js_client: JsClientFactory,
    http: aiohttp.ClientSession,
) -> None:
    nodes = await start_nodes(kind, 2, tidings_server, redis_server)
    # Published while user 42 has no session at all.
    ids = [await publish(http, nodes[0], "42", f"offline-{n}") for n in range(5)]
    first = await ack_client(js_client, nodes[-1], "42")
    got = [await first.expect("message") for _ in ids]
    assert [m["body"] for m in got] == [f"offline-{n}" for n in range(5)]
    assert [m["headers"]["tidings-id"] for m in got] == ids
    for message in got[:3]:  # acknowledge three of five
        await first.command(
            "ack",
            message=message["headers"]["ack"],
            subscription="inbox",
            headers={"receipt": f"ack-{message['body']}"},
        )
        await first.expect("receipt", id=f"ack-{message['body']}")
    await first.disconnect()

    # Any node, any device: the two unacknowledged ones come again, and only they.
    second = await ack_client(js_client, nodes[0], "42")
    again = [await second.expect("message") for _ in range(2)]
    assert [m["body"] for m in again] == ["offline-3", "offline-4"]
    # Then live: a new message arrives after them, and nothing else came in between.
    await publish(http, nodes[0], "42", "live")
    assert (await second.expect("message"))["body"] == "live"


@pytest.mark.parametrize("kind", BROKERS)
async def test_read_state_is_shared_by_every_device(
    kind: str,
    tidings_server: StartServer,
    redis_server: Any,
    js_client: JsClientFactory,
    http: aiohttp.ClientSession,
) -> None:
    nodes = await start_nodes(kind, 2, tidings_server, redis_server)
    phone = await js_client("stompjs7", nodes[0].ws_url())
    laptop = await js_client("stompjs7", nodes[-1].ws_url())
    for device in (phone, laptop):
        await device.connect(login="42")
        await device.subscribe("state", "/user/queue/inbox-state")
        initial = await device.expect("message", subscription="state")
        state = orjson.loads(initial["body"])
        assert state == {"unread": 0, "read": [], "up_to": None, "last": state["last"]}
    ids = [await publish(http, nodes[0], "42", f"n{n}") for n in range(6)]
    api = nodes[-1].http_url + "/api/v1/users/42/inbox"
    async with http.get(api + "/unread") as reply:
        assert await reply.json() == {"unread": 6}

    # The phone marks two read over STOMP: both devices hear the new count.
    await phone.send("/app/inbox/read", orjson.dumps({"ids": ids[:2]}).decode(), receipt="read")
    await phone.expect("receipt", id="read")
    for device in (phone, laptop):
        event = orjson.loads((await device.expect("message", subscription="state"))["body"])
        assert (event["unread"], event["last"]) == (4, ids[5])  # what the count includes
    # Then everything up to the fourth over HTTP.
    async with http.post(api + "/read", json={"up_to": ids[3]}) as reply:
        assert await reply.json() == {"unread": 2}
    for device in (phone, laptop):
        event = orjson.loads((await device.expect("message", subscription="state"))["body"])
        assert (event["unread"], event["last"]) == (2, ids[5])
    async with http.get(api, params={"after": "0", "limit": "10"}) as reply:
        listing = (await reply.json())["messages"]
    assert [(m["id"], m["read"]) for m in listing] == [
        (inbox_id, n < 4) for n, inbox_id in enumerate(ids)
    ]
    assert [m["body"] for m in listing] == [f"n{n}" for n in range(6)]
    async with http.get(api, params={"after": ids[4]}) as reply:
        assert [m["id"] for m in (await reply.json())["messages"]] == [ids[5]]


@pytest.mark.parametrize("kind", BROKERS)
async def test_an_inbox_state_subscriber_gets_the_current_state_at_once(
    kind: str, tidings_server: StartServer, redis_server: Any, http: aiohttp.ClientSession
) -> None:
    (node, *_) = await start_nodes(kind, 1, tidings_server, redis_server)
    ids = [await publish(http, node, "42", f"n{n}") for n in range(3)]
    async with http.post(f"{node.http_url}/api/v1/users/42/inbox/read", json={"ids": ids[:1]}):
        pass
    bell = await StompWs.open(node.ws_url())
    try:
        await bell.connect(login="42")
        await bell.subscribe("state", "/user/queue/inbox-state")
        state = await bell.expect("MESSAGE")
        assert state.get("destination") == "/user/queue/inbox-state"
        assert (state.get("content-type") or "").startswith("application/json")
        assert orjson.loads(state.body) == {"unread": 2, "read": [], "up_to": None, "last": ids[2]}
        # An empty read request marks nothing and ends nothing: a receipt, then the same count.
        await bell.send_frame(
            "SEND", {"destination": "/app/inbox/read", "receipt": "r"}, b'{"ids": []}'
        )
        frames = [await bell.next(), await bell.next()]  # the event may come before the receipt
        assert sorted(f.command for f in frames if isinstance(f, Frame)) == ["MESSAGE", "RECEIPT"]
        [event] = [f for f in frames if isinstance(f, Frame) and f.command == "MESSAGE"]
        assert orjson.loads(event.body)["unread"] == 2
        # The user's literal form gets it too; another user's count is theirs.
        await bell.subscribe("literal", "/user/42/queue/inbox-state")
        assert orjson.loads((await bell.expect("MESSAGE")).body)["unread"] == 2
        await bell.subscribe("other", "/user/7/queue/inbox-state")
        other = await bell.expect("MESSAGE")
        assert other.get("subscription") == "other"
        assert orjson.loads(other.body) == {"unread": 0, "read": [], "up_to": None, "last": None}
    finally:
        await bell.close()


@pytest.mark.parametrize("kind", BROKERS)
async def test_idempotent_publish_stores_once(
    kind: str, tidings_server: StartServer, redis_server: Any, http: aiohttp.ClientSession
) -> None:
    (node, *_) = await start_nodes(kind, 1, tidings_server, redis_server)
    url = f"{node.http_url}/api/v1/users/42/messages"
    answers = []
    for _ in range(3):
        async with http.post(url, json={"body": "once"}, headers={"Idempotency-Key": "k1"}) as r:
            assert r.status == 202
            answers.append((await r.json())["id"])
    async with http.post(url, json={"body": "field", "id": "k2"}) as r:
        answers.append((await r.json())["id"])
    async with http.post(url, json={"body": "field", "id": "k2"}) as r:
        answers.append((await r.json())["id"])
    assert answers[0] == answers[1] == answers[2] and answers[3] == answers[4]
    async with http.get(f"{node.http_url}/api/v1/users/42/inbox") as reply:
        stored = (await reply.json())["messages"]
    assert [m["body"] for m in stored] == ["once", "field"]


IDEMPOTENCY_TTL_S = 1.0


@pytest.fixture(params=[*BROKERS, "postgresql"])
def store_args(request: pytest.FixtureRequest) -> list[str]:
    """Where a node keeps its inboxes: in memory, in Redis, in PostgreSQL (memory broker)."""
    if request.param == "redis":
        return ["--broker", request.getfixturevalue("redis_server").url]
    if request.param == "postgresql":
        return ["--inbox", request.getfixturevalue("postgres_db").url]
    return []


async def test_a_key_is_remembered_for_the_inbox_idempotency_ttl(
    store_args: list[str], tidings_server: StartServer, http: Any
) -> None:
    """``--inbox-idempotency-ttl 1``: a repeat of a key within the second gets the first
    id and stores nothing; once the second has passed the key stores again (and is
    remembered again). Each repeat is judged by when it was sent and answered, so a slow
    machine blurs no verdict: answered before the first was sent + 1 s, it must be the
    first's; sent after the first was answered + 1 s, it must be new."""
    node = await tidings_server("--inbox-idempotency-ttl", str(IDEMPOTENCY_TTL_S), *store_args)
    url = f"{node.http_url}/api/v1/users/42/messages"
    loop = asyncio.get_running_loop()

    async def keyed() -> tuple[float, str, float]:
        """(sent, id, answered) of one publish with the key."""
        sent = loop.time()
        async with http.post(url, json={"body": "b"}, headers={"Idempotency-Key": "k"}) as r:
            assert r.status == 202, await r.text()
            inbox_id: str = (await r.json())["id"]
        return sent, inbox_id, loop.time()

    start, first, first_answered = await keyed()
    _, repeat, answered = await keyed()
    assert answered - start < IDEMPOTENCY_TTL_S, "two publishes took the whole TTL"
    assert repeat == first
    expired = first_answered + IDEMPOTENCY_TTL_S + 0.05  # + the clocks' grain
    deadline = start + IDEMPOTENCY_TTL_S + 10
    while True:
        sent, inbox_id, answered = await keyed()
        if answered < start + IDEMPOTENCY_TTL_S:
            assert inbox_id == first, "a repeat within the TTL was stored again"
        if sent >= expired:
            assert inbox_id != first, "the key outlived its TTL"
        if inbox_id != first:
            break
        assert answered < deadline, "the key was never forgotten"
        await asyncio.sleep(0.05)  # a poll interval
    assert answered >= start + IDEMPOTENCY_TTL_S, "the key was forgotten before its TTL"
    assert id_key(inbox_id) > id_key(first)
    _, again, _ = await keyed()
    assert again == inbox_id  # remembered anew
    async with http.get(f"{node.http_url}/api/v1/users/42/inbox") as reply:
        stored = (await reply.json())["messages"]
    assert [m["id"] for m in stored] == [first, inbox_id]


@pytest.mark.parametrize("kind", BROKERS)
async def test_retention_trims_and_reports_a_resume_gap(
    kind: str, tidings_server: StartServer, redis_server: Any, http: aiohttp.ClientSession
) -> None:
    (node, *_) = await start_nodes(
        kind, 1, tidings_server, redis_server, "--inbox-max-messages", "5"
    )
    ids = [await publish(http, node, "42", f"m{n}") for n in range(10)]
    async with http.get(f"{node.http_url}/api/v1/users/42/inbox") as reply:
        assert [m["id"] for m in (await reply.json())["messages"]] == ids[5:]
    # Resuming after the second message: the next three were trimmed. The client is told.
    client = await StompWs.open(node.ws_url())
    try:
        await client.connect(login="42")
        await client.send_frame(
            "SUBSCRIBE",
            {
                "id": "s",
                "destination": "/user/42/message",
                "receipt": "r",
                "tidings-resume-after": ids[1],
            },
        )
        receipt = await client.expect("RECEIPT", **{"receipt-id": "r"})
        assert receipt.get("tidings-gap") == "true"
        first = await client.expect("MESSAGE", **{"tidings-id": ids[5]})
        assert first.get("tidings-gap") == "true"
        for inbox_id in ids[6:]:
            message = await client.expect("MESSAGE", **{"tidings-id": inbox_id})
            assert message.get("tidings-gap") is None
        # A resume from a retained id has no gap.
        await client.send_frame(
            "SUBSCRIBE",
            {
                "id": "t",
                "destination": "/user/42/message",
                "receipt": "r2",
                "tidings-resume-after": ids[7],
            },
        )
        receipt = await client.expect("RECEIPT", **{"receipt-id": "r2"})
        assert receipt.get("tidings-gap") is None
        assert (await client.expect("MESSAGE", subscription="t")).get("tidings-id") == ids[8]
    finally:
        await client.close()


async def test_a_resumed_subscription_never_gets_what_it_resumed_after(
    tidings_server: StartServer, redis_server: Any, http: aiohttp.ClientSession
) -> None:
    # An announcement can come late or twice (a PostgreSQL inbox announces after its
    # commit, and again for a publisher that died before announcing): one of a message at
    # or before the resume id must not reach the subscription, whose client has it. The
    # repeat is injected on Redis right after the SUBSCRIBE's receipt, before the node's
    # own catch-up start is read (50 ms after the subscribe), so only the subscription's
    # de-duplication stands in its way.
    (node,) = await start_nodes("redis", 1, tidings_server, redis_server)
    old = [await publish(http, node, "43", f"m{n}") for n in range(2)]
    client = await StompWs.open(node.ws_url())
    try:
        await client.connect(login="43")
        await client.subscribe("s", "/user/43/message", **{"tidings-resume-after": old[1]})
        repeat = Message("", "u:43", "/message", b"m0, announced again")
        assert await redis_server.publish("tidings:u:43", f"{old[0]} ".encode() + repeat.encode())
        new = await publish(http, node, "43", "m2")
        message = await client.expect("MESSAGE")
        assert (message.get("tidings-id"), message.body) == (new, b"m2")
    finally:
        await client.close()


@pytest.mark.parametrize("value", ["abc", "1-x", "99999999999999999999999-0", " 1-0"])
async def test_a_malformed_resume_id_is_refused(tidings_server: StartServer, value: str) -> None:
    node = await tidings_server()
    client = await StompWs.open(node.ws_url())
    try:
        await client.connect(login="42")
        await client.send_frame(
            "SUBSCRIBE",
            {"id": "s", "destination": "/user/42/message", "tidings-resume-after": value},
        )
        await client.expect_error_and_close("bad tidings-resume-after header", 1002)
    finally:
        await client.close()


@pytest.mark.parametrize("kind", BROKERS)
async def test_nack_redelivers_and_client_ack_is_cumulative(
    kind: str, tidings_server: StartServer, redis_server: Any, http: aiohttp.ClientSession
) -> None:
    (node, *_) = await start_nodes(kind, 1, tidings_server, redis_server)
    for n in range(4):
        await publish(http, node, "42", f"m{n}")
    client = await StompWs.open(node.ws_url())
    try:
        await client.connect(login="42")
        await client.subscribe("s", "/user/42/message", ack="client")
        got = [await client.expect("MESSAGE") for _ in range(4)]
        assert [m.body for m in got] == [b"m0", b"m1", b"m2", b"m3"]
        # NACK m1: it comes again at once, under a new ack id.
        await client.send_frame("NACK", {"id": got[1].get("ack") or "", "receipt": "n"})
        again = await client.expect("MESSAGE")
        await client.expect("RECEIPT", **{"receipt-id": "n"})
        assert again.body == b"m1" and again.get("ack") != got[1].get("ack")
        # ACK m2 in client mode: m0 and m2 (sent before it on this subscription) are acked;
        # m3 was not, and the redelivered m1 was sent after m2, so it is not either.
        await client.send_frame("ACK", {"id": got[2].get("ack") or "", "receipt": "a"})
        await client.expect("RECEIPT", **{"receipt-id": "a"})
    finally:
        await client.close()
    # A new session gets exactly what is still unacknowledged.
    client = await StompWs.open(node.ws_url())
    try:
        await client.connect(login="42")
        await client.subscribe("s", "/user/42/message", ack="client-individual")
        bodies = [(await client.expect("MESSAGE")).body for _ in range(2)]
        assert bodies == [b"m1", b"m3"]
        await publish(http, node, "42", "end")  # and nothing else came before it
        assert (await client.expect("MESSAGE")).body == b"end"
    finally:
        await client.close()


async def test_listing_shows_a_mislabelled_json_body_as_text(
    tidings_server: StartServer, http: aiohttp.ClientSession
) -> None:
    node = await tidings_server("--send-allow", "/user/*/message")
    client = await StompWs.open(node.ws_url())
    try:
        await client.connect(login="7")
        await client.send_frame(
            "SEND",
            {"destination": "/user/42/message", "content-type": "application/json", "receipt": "r"},
            b"{not json",
        )
        await client.expect("RECEIPT", **{"receipt-id": "r"})
    finally:
        await client.close()
    async with http.get(f"{node.http_url}/api/v1/users/42/inbox") as reply:
        assert reply.status == 200
        (stored,) = (await reply.json())["messages"]
    assert stored["body"] == "{not json" and stored["content_type"] == "application/json"
