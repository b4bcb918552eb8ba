"""The Spring bridge end to end (issue 13, item 4 and acceptance (e); tidings.legacy).

Real ``tidings serve`` nodes with ``--legacy-channel webSocketMsgPush`` on a real Redis,
real nginx from deploy/nginx.conf, and a stand-in Spring instance (tests/spring_standin.py,
the article's code, no Tidings code in it) on the same Redis channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio

from tidings.publisher import Publisher
from tidings.redis_cluster import slot_of
from tidings.redis_keys import KeyLayout

from .cluster_fixture import RedisCluster
from .conftest import StartServer, TidingsServer
from .message_log import MessageLog
from .ports import free_port
from .processes import terminate
from .redis_fixture import RedisServer
from .stompws import StompWs

CHANNEL = "webSocketMsgPush"
LEGACY = ("--legacy-channel", CHANNEL)
STANDIN = Path(__file__).with_name("spring_standin.py")
USERS = 24
PUBLISHES = 600
REPEAT_EVERY = 50  # every 50th Spring-side publish is sent twice, byte for byte, on purpose
DELIVERY_TIMEOUT_S = 30.0
END = "end"


@dataclass
class SpringInstance:
    port: int
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


StartSpring = Callable[[str], Awaitable[SpringInstance]]


@pytest.fixture
async def spring_instance(tmp_path: Path) -> AsyncIterator[StartSpring]:
    """Factory: ``await spring_instance(redis_url)``, running until teardown."""
    started: list[SpringInstance] = []

    async def start(redis_url: str) -> SpringInstance:
        port = free_port()
        log = tmp_path / f"spring-{port}.log"
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(STANDIN),
                "--port",
                str(port),
                "--redis",
                redis_url,
                "--channel",
                CHANNEL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        instance = SpringInstance(port, proc, log)
        started.append(instance)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line.strip() == b"READY", f"{line!r} {log.read_text()}"
        return instance

    yield start
    for instance in started:
        await terminate(instance.proc, 5)


def legacy_outcomes(samples: dict[str, float]) -> dict[str, float]:
    return {
        name.split('outcome="')[1].split('"')[0]: value
        for name, value in samples.items()
        if name.startswith("tidings_legacy_messages_total{")
    }


def spring_json(to: str, content: str) -> bytes:
    """``JSON.toJSONString(message)`` of the article's Message."""
    return orjson.dumps({"code": "1", "content": content, "form": "admin", "to": to})


async def stop_reading(tasks: list[asyncio.Task[None]], logs: list[MessageLog]) -> None:
    """Stop the sessions' readers and close the sessions."""
    for task in tasks:
        task.cancel()
    for log in logs:
        with contextlib.suppress(Exception):
            await log.client.close()


async def test_e_mixed_cluster_behind_round_robin_loses_nothing_and_shows_nothing_twice(
    tidings_server: StartServer,
    redis_server: RedisServer,
    nginx_proxy: Any,
    spring_instance: StartSpring,
) -> None:
    node = await tidings_server("--broker", redis_server.url, "--node-id", "T", *LEGACY)
    spring = await spring_instance(redis_server.url)
    proxy = await nginx_proxy([node.port, spring.port])
    users = [f"m{n}" for n in range(USERS)]
    readers = []
    for user in users:  # round robin: every other session lands on the Spring instance
        client = await StompWs.open(proxy.ws_url("/publicServer"))
        connected = await client.connect(login=user)
        side = "spring" if "SpringStandIn" in (connected.get("server") or "") else "tidings"
        await client.subscribe("sub-0", f"/user/{user}/message")
        readers.append(MessageLog(user, client, END, side))
    sides = Counter(reader.side for reader in readers)
    assert sides == {"tidings": USERS // 2, "spring": USERS // 2}, sides
    tasks = [asyncio.create_task(reader.run()) for reader in readers]
    accepted: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    redis = redis_server.client()
    try:
        async with aiohttp.ClientSession() as http:

            async def push(base: str, user: str, content: str) -> None:
                seed = {"code": "1", "form": "admin", "to": user, "content": content}
                async with http.post(f"{base}/pushToOneTest", json=seed) as reply:
                    assert (reply.status, await reply.text()) == (200, "发送成功")

            async def raw(user: str, content: str) -> None:
                # Spring's side: stringRedisTemplate.convertAndSend(channel, json).
                receivers = await redis.publish(CHANNEL, spring_json(user, content))
                assert receivers == 2  # the Tidings node and the Spring instance

            for n in range(PUBLISHES):
                user, body = users[n % USERS], f"p{n}"
                kind = ("tidings", "raw", "nginx")[n % 3]
                if kind == "tidings":  # /pushToOneTest to the Tidings node
                    await push(node.http_url, user, body)
                elif kind == "raw":
                    await raw(user, body)
                    if n % REPEAT_EVERY == 1:  # the very same JSON again, on purpose
                        await raw(user, body)
                        accepted[body] += 1
                        kinds["raw repeated"] += 1
                else:  # /pushToOneTest through nginx: either side takes it
                    await push(proxy.http_url, user, body)
                accepted[body] += 1
                kinds[kind] += 1
                readers[n % USERS].expected[body] += 1
            for user in users:
                await push(node.http_url, user, END)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DELIVERY_TIMEOUT_S):
                await asyncio.gather(*(reader.done.wait() for reader in readers))
    finally:
        await redis.aclose()
        await stop_reading(tasks, readers)

    received = Counter(itertools.chain.from_iterable(r.bodies for r in readers))
    lost = sum((accepted - received).values())
    duplicated = sum((received - accepted).values())
    misrouted = [
        (reader.user, body)
        for reader in readers
        for body in reader.bodies
        if body not in reader.expected
    ]
    outcomes = legacy_outcomes(await node.metrics())
    via_nginx = Counter(
        r["upstream_addr"].rpartition(":")[2]
        for r in proxy.requests()
        if r["uri"] == "/pushToOneTest"
    )
    report = (
        f"(e) Spring bridge, 1 Tidings node + 1 Spring instance behind nginx, {USERS} users "
        f"({sides['tidings']} on Tidings, {sides['spring']} on Spring): accepted "
        f"{sum(accepted.values())} ({dict(kinds)}; via nginx to ports {dict(via_nginx)}), "
        f"delivered {sum(received.values())}, lost {lost}, duplicated {duplicated}; "
        f"Tidings node's legacy channel: {outcomes}"
    )
    print(f"\n{report}")
    assert sum(accepted.values()) >= 500
    assert len(via_nginx) == 2, via_nginx  # publishes through nginx reached both sides
    assert [reader.ended for reader in readers] == [""] * USERS
    assert (lost, duplicated, misrouted) == (0, 0, []), report
    # Every Spring-side publish was stored once by the Tidings node, every Tidings one
    # came back marked and was skipped.
    assert outcomes["stored"] == kinds["raw"] + kinds["raw repeated"] + via_nginx[str(spring.port)]
    assert outcomes["own"] == kinds["tidings"] + via_nginx[str(node.port)] + USERS
    assert outcomes["malformed"] == outcomes["failed"] == 0


async def two_nodes(tidings_server: StartServer, redis: RedisServer) -> list[TidingsServer]:
    # One after the other: two interpreters starting at once on a busy 2-core machine
    # can miss the fixture's 15 s health deadline.
    return [
        await tidings_server("--broker", redis.url, "--node-id", name, *LEGACY)
        for name in ("A", "B")
    ]


async def reader_of(node: TidingsServer, user: str, **headers: str) -> StompWs:
    client = await StompWs.open(node.ws_url("/publicServer"))
    await client.connect(login=user)
    await client.subscribe("sub-0", f"/user/{user}/message", **headers)
    return client


async def bodies(client: StompWs, count: int) -> list[str]:
    return [(await client.expect("MESSAGE")).body.decode() for _ in range(count)]


# One of each reason: the warning is rate-limited per reason (one line per 10 s, then a
# count of those left out; tests/test_legacy.py), so each of these gets its own line.
MALFORMED = [
    (b"not json at all", "not JSON"),
    (b'["an", "array"]', "not a JSON object but an array"),
    (orjson.dumps({"code": "1", "content": "x"}), "no 'to' field"),
    (orjson.dumps({"to": "a/b", "content": "x"}), "'to' is not a user id"),
    (orjson.dumps({"to": "42", "content": {"an": "object"}}), "'content' is an object"),
    (orjson.dumps({"to": "42"}), "no 'content' field"),
]


async def test_malformed_legacy_messages_are_logged_with_their_reason_and_dropped(
    tidings_server: StartServer, redis_server: RedisServer
) -> None:
    nodes = await two_nodes(tidings_server, redis_server)
    on_a, on_b = await reader_of(nodes[0], "42"), await reader_of(nodes[1], "43")
    try:
        for n, (payload, _) in enumerate(MALFORMED):
            await redis_server.publish(CHANNEL, payload)
            await redis_server.publish(CHANNEL, spring_json("42" if n % 2 else "43", f"ok{n}"))
        assert await bodies(on_a, 3) == ["ok1", "ok3", "ok5"]
        assert await bodies(on_b, 3) == ["ok0", "ok2", "ok4"]
        for node in nodes:
            outcomes = legacy_outcomes(await node.metrics())
            assert outcomes["malformed"] == len(MALFORMED), outcomes
            log = node.log()
            for _, reason in MALFORMED:
                lines = [line for line in log.splitlines() if reason in line]
                assert len(lines) == 1, (reason, lines)
                assert "dropped a message on the legacy channel webSocketMsgPush" in lines[0]
        # Both still serve: a publish to Tidings afterwards arrives.
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{nodes[1].http_url}/pushToOneTest", json={"to": "42", "content": "after"}
            ) as reply,
        ):
            assert reply.status == 200
        assert await bodies(on_a, 1) == ["after"]
    finally:
        await on_a.close()
        await on_b.close()


async def test_legacy_messages_are_stored_once_for_offline_users_resume_and_unread(
    tidings_server: StartServer, redis_server: RedisServer
) -> None:
    nodes = await two_nodes(tidings_server, redis_server)
    # User 77 is offline; Spring publishes to them, twice the same JSON, then another.
    for content in ("same", "same", "other"):
        await redis_server.publish(CHANNEL, spring_json("77", content))
    inbox = f"{nodes[0].http_url}/api/v1/users/77/inbox"
    async with aiohttp.ClientSession() as http:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:  # both nodes store asynchronously; poll the inbox until it holds 3
            async with http.get(f"{inbox}/unread") as reply:
                unread = (await reply.json())["unread"]
            if unread >= 3 or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert unread == 3
        async with http.get(inbox) as reply:
            listing = await reply.json()
    assert [m["body"] for m in listing["messages"]] == [
        "same",
        "same",
        "other",
    ]
    outcomes = [legacy_outcomes(await node.metrics()) for node in nodes]
    assert sum(o["stored"] for o in outcomes) == 3
    assert sum(o["stored_elsewhere"] for o in outcomes) == 3
    # Offline delivery: a session resuming from the start gets all three, each once, then
    # live ones.
    client = await reader_of(nodes[1], "77", **{"tidings-resume-after": "0"})
    try:
        assert await bodies(client, 3) == ["same", "same", "other"]
        await redis_server.publish(CHANNEL, spring_json("77", "live"))
        frame = await client.expect("MESSAGE")
        assert frame.body == b"live" and frame.get("tidings-id")
    finally:
        await client.close()


CLUSTER_USERS = 6  # their channels fall on all three masters (asserted)


async def test_the_bridge_on_a_redis_cluster_stores_once_and_reaches_both_sides(
    tidings_server: StartServer, cluster: RedisCluster, spring_instance: StartSpring
) -> None:
    """``--legacy-channel`` with ``--broker redis+cluster://``: two Tidings nodes and a
    Spring instance on the cluster (Spring on another master than the one its legacy
    PUBLISHes go to: a cluster forwards PUBLISH to every node). A legacy ``{code, form,
    to, content}`` PUBLISH, a repeated one included, is stored once in the user's inbox
    (on the master of its slot, the claim beside it) and delivered once to each of the
    user's sessions, on both nodes and on Spring; a Tidings publish reaches the Spring
    instance through the bridge and the Tidings sessions once, from a node or from the
    direct publisher given ``legacy_channel``."""
    nodes = [
        await tidings_server("--broker", cluster.url, "--node-id", name, *LEGACY)
        for name in ("A", "B")
    ]
    spring = await spring_instance(f"redis://127.0.0.1:{cluster.masters()[2]}/0")
    users = [f"c{n}" for n in range(CLUSTER_USERS)]
    layout = KeyLayout(cluster=True)
    masters = {cluster.owner(slot_of(layout.stream(f"u:{user}"))) for user in users}
    assert len(masters) == 3, masters  # the users' slots are spread over every master
    logs: list[MessageLog] = []
    for user in users:
        for side, url in (
            ("A", nodes[0].ws_url("/publicServer")),
            ("B", nodes[1].ws_url("/publicServer")),
            ("spring", spring.http_url.replace("http", "ws") + "/publicServer"),
        ):
            client = await StompWs.open(url)
            connected = await client.connect(login=user)
            assert ("SpringStandIn" in (connected.get("server") or "")) == (side == "spring")
            await client.subscribe("sub-0", f"/user/{user}/message")  # live once it returns
            logs.append(MessageLog(user, client, END, side))
    tasks = [asyncio.create_task(log.run()) for log in logs]
    expected: dict[str, Counter[str]] = {user: Counter() for user in users}
    raw_count = tidings_count = 0
    legacy = redis.asyncio.Redis(port=cluster.masters()[0])  # Spring's side, on another master
    try:
        async with (
            aiohttp.ClientSession() as http,
            Publisher.from_url(cluster.url, legacy_channel=CHANNEL) as direct,
        ):
            for n in range(3):
                for i, user in enumerate(users):
                    body = f"raw{n}-{user}"
                    await legacy.publish(CHANNEL, spring_json(user, body))
                    expected[user][body] += 1
                    raw_count += 1
                    if n == 1:  # the very same JSON again: a second message, as on Spring
                        await legacy.publish(CHANNEL, spring_json(user, body))
                        expected[user][body] += 1
                        raw_count += 1
                    body = f"tidings{n}-{user}"
                    push = {"code": "1", "form": "admin", "to": user, "content": body}
                    node = nodes[(n + i) % 2]
                    async with http.post(f"{node.http_url}/pushToOneTest", json=push) as reply:
                        assert (reply.status, await reply.text()) == (200, "发送成功")
                    expected[user][body] += 1
                    tidings_count += 1
                    body = f"direct{n}-{user}"  # the direct publisher, bridged as well
                    await direct.to_user(user, body)
                    expected[user][body] += 1
                    tidings_count += 1
            for user in users:
                push = {"code": "1", "form": "admin", "to": user, "content": END}
                async with http.post(f"{nodes[1].http_url}/pushToOneTest", json=push) as reply:
                    assert reply.status == 200
                tidings_count += 1
            for log in logs:
                log.expected = expected[log.user]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DELIVERY_TIMEOUT_S):
                    await asyncio.gather(*(log.done.wait() for log in logs))
            stored = {}
            for user in users:
                async with http.get(f"{nodes[0].http_url}/api/v1/users/{user}/inbox") as reply:
                    stored[user] = Counter(m["body"] for m in (await reply.json())["messages"])
    finally:
        await legacy.aclose()
        await stop_reading(tasks, logs)

    seen = {(log.user, log.side): Counter(log.bodies) for log in logs}
    assert [log.ended for log in logs] == [""] * len(logs)
    assert [(log.user, log.side) for log in logs if not log.end_seen] == []
    for (user, side), bodies_seen in seen.items():
        assert bodies_seen == expected[user], (user, side)  # each once, none lost
    for user in users:
        assert stored[user] == expected[user] + Counter([END]), user  # stored once
    outcomes = [legacy_outcomes(await node.metrics()) for node in nodes]
    # Each node sees every message of the channel: one of them stores a legacy one, the
    # other finds it stored; the Tidings ones come back to both, marked as their own.
    assert sum(o.get("stored", 0) for o in outcomes) == raw_count, outcomes
    assert sum(o.get("stored_elsewhere", 0) for o in outcomes) == raw_count, outcomes
    assert sum(o.get("own", 0) for o in outcomes) == 2 * tidings_count, outcomes
    assert sum(o.get("malformed", 0) + o.get("failed", 0) for o in outcomes) == 0, outcomes
