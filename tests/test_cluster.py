"""Scale-out on a real Redis: routing, exactly-once, faults, presence, workers, legacy channel.

Every node here is a real `tidings serve` process; every client a real @stomp/stompjs 7.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from typing import Any

import aiohttp
import orjson

from .conftest import JsClientFactory, StartServer, TidingsServer
from .jsclient import JsClient


async def request(method: str, url: str, payload: object = None) -> tuple[int, object]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, json=payload) as reply,
    ):
        body = (
            await reply.json() if reply.content_type == "application/json" else await reply.text()
        )
        return reply.status, body


async def publish_user(server: TidingsServer, user: str, body: str) -> int:
    status, _ = await request(
        "POST", f"{server.http_url}/api/v1/users/{user}/messages", {"body": body}
    )
    return status


async def publish_topic(server: TidingsServer, topic: str, body: str) -> int:
    status, _ = await request(
        "POST", f"{server.http_url}/api/v1/topics/{topic}/messages", {"body": body}
    )
    return status


def node_of(connected: dict[str, object]) -> str:
    """The node a session landed on, from CONNECTED's `server:Tidings/x (node <id>)`."""
    headers = connected["headers"]
    assert isinstance(headers, dict)
    match = re.search(r"\(node ([^)]+)\)", headers["server"])
    assert match, headers
    return match.group(1)


async def session(
    js_client: JsClientFactory, server: TidingsServer, user: str, *destinations: str
) -> JsClient:
    client = await js_client("stompjs7", server.ws_url("/publicServer"))
    await client.connect(login=user)
    for index, destination in enumerate(destinations):
        await client.subscribe(f"s{index}", destination)
    return client


async def expect_bodies(client: JsClient, bodies: list[str]) -> None:
    """The next messages are exactly ``bodies``, in order: none missing, none twice."""
    for body in bodies:
        message = await client.expect("message")
        assert message["body"] == body, (message, body)


async def cluster(
    start: StartServer, redis_url: str, *names: str, extra: tuple[str, ...] = ()
) -> list[TidingsServer]:
    return list(
        await asyncio.gather(
            *(start("--broker", redis_url, "--node-id", name, *extra) for name in names)
        )
    )


async def test_three_nodes_route_to_the_nodes_that_hold_the_user(
    tidings_server: StartServer, js_client: JsClientFactory, redis_server: Any
) -> None:
    a, b, c = await cluster(tidings_server, redis_server.url, "A", "B", "C")
    on_a = await session(js_client, a, "42", "/user/42/message", "/topic/public")
    on_b = await session(js_client, b, "42", "/user/42/message", "/topic/public")
    other = await session(js_client, b, "43", "/user/43/message", "/topic/public")
    watcher = await session(js_client, c, "7", "/topic/public")

    bodies = [f"m{n}" for n in range(20)]
    for body in bodies:
        assert await publish_user(c, "42", body) == 202
    assert await publish_topic(c, "public", "end") == 202

    for client in (on_a, on_b):
        await expect_bodies(client, [*bodies, "end"])
    # 43's node got 42's messages for on_b, but routed none of them to 43: its next
    # message is the topic message published after all of them.
    await expect_bodies(other, ["end"])
    await expect_bodies(watcher, ["end"])

    c_metrics = await c.metrics()
    assert c_metrics['tidings_broker_messages_received_total{kind="user",node="C"}'] == 0
    assert c_metrics['tidings_broker_messages_received_total{kind="topic",node="C"}'] == 1
    assert c_metrics['tidings_messages_published_total{node="C"}'] == 21
    a_metrics = await a.metrics()
    assert a_metrics['tidings_broker_messages_received_total{kind="user",node="A"}'] == 20
    assert a_metrics['tidings_frames_delivered_total{node="A"}'] == 21


async def test_redis_outage_gives_503_then_delivery_resumes_without_reconnecting(
    tidings_server: StartServer, js_client: JsClientFactory, redis_server: Any
) -> None:
    a, b = await cluster(tidings_server, redis_server.url, "A", "B")
    client = await session(js_client, a, "42", "/user/42/message")
    assert await publish_user(b, "42", "before") == 202
    await expect_bodies(client, ["before"])

    await redis_server.stop()
    for node in (a, b):
        status, body = await request(
            "POST", f"{node.http_url}/api/v1/users/42/messages", {"body": "lost?"}
        )
        assert status == 503, body
        assert isinstance(body, dict) and body["error"] == "broker_unavailable"
    status, _ = await request("GET", f"{a.http_url}/readyz")
    assert status == 503

    await redis_server.start()
    restarted = time.monotonic()
    # Publish a fresh message every 100 ms until the same session receives one.
    received = None
    attempt = 0
    while received is None:
        assert time.monotonic() - restarted < 2.0, "no delivery within 2 s of Redis restarting"
        status = await publish_user(b, "42", f"after-{attempt}")
        assert status in (202, 503)
        try:
            received = await client.expect("message", timeout=0.1)
        except AssertionError:
            attempt += 1
    assert received["body"].startswith("after-")
    status, _ = await request("GET", f"{a.http_url}/readyz")
    assert status == 200
    assert (await a.metrics())['tidings_broker_reconnects_total{node="A"}'] >= 1


async def test_killed_pubsub_connection_is_noticed_and_delivery_resumes(
    tidings_server: StartServer, js_client: JsClientFactory, redis_server: Any
) -> None:
    (a,) = await cluster(tidings_server, redis_server.url, "A")
    client = await session(js_client, a, "42", "/user/42/message")
    await redis_server.kill_pubsub_clients()
    killed = time.monotonic()
    attempt = 0
    while True:
        assert time.monotonic() - killed < 5.0, "delivery did not resume within 5 s"
        assert await publish_user(a, "42", f"m{attempt}") == 202
        try:
            await client.expect("message", timeout=0.1)
            break
        except AssertionError:
            attempt += 1


async def test_presence_is_cluster_wide_and_a_killed_node_stops_counting(
    tidings_server: StartServer, js_client: JsClientFactory, shared_store: list[str]
) -> None:
    # On Redis, or in PostgreSQL beside RabbitMQ (inbox/pg_presence.py, issue 20).
    ttl = 3.0
    a, b = await asyncio.gather(
        *(
            tidings_server(*shared_store, "--node-id", name, "--presence-ttl", str(ttl))
            for name in "AB"
        )
    )
    await session(js_client, a, "50")
    await session(js_client, a, "51")
    await session(js_client, b, "51")
    status, body = await request("GET", f"{b.http_url}/api/v1/users/51/presence")
    assert (status, body) == (200, {"online": True, "sessions": 2, "nodes": ["A", "B"]})

    users = [str(n) for n in range(1000)]
    status, body = await request("POST", f"{b.http_url}/api/v1/presence/query", {"users": users})
    assert status == 200 and isinstance(body, dict)
    assert {u for u, online in body["users"].items() if online} == {"50", "51"}
    assert len(body["users"]) == 1000

    a.proc.kill()  # SIGKILL: no chance to clean up
    await a.proc.wait()
    killed = time.monotonic()
    expected = {
        "50": {"online": False, "sessions": 0, "nodes": []},
        "51": {"online": True, "sessions": 1, "nodes": ["B"]},
    }
    while True:
        seen = {
            user: (await request("GET", f"{b.http_url}/api/v1/users/{user}/presence"))[1]
            for user in expected
        }
        if seen == expected:
            break
        assert time.monotonic() - killed < ttl + 1.0, f"A's sessions still count: {seen}"
        await asyncio.sleep(0.2)


async def test_seed_json_on_the_legacy_channel_reaches_each_session_once(
    tidings_server: StartServer, js_client: JsClientFactory, redis_server: Any
) -> None:
    a, b = await cluster(
        tidings_server,
        redis_server.url,
        "A",
        "B",
        extra=("--legacy-channel", "webSocketMsgPush"),
    )
    on_a = await session(js_client, a, "42", "/user/42/message")
    on_b = await session(js_client, b, "42", "/user/42/message")
    seed = {"code": "1", "form": "admin", "to": "42", "content": "from spring"}
    await redis_server.publish("webSocketMsgPush", orjson.dumps(seed))
    assert await publish_user(a, "42", "sentinel") == 202
    for client in (on_a, on_b):
        await expect_bodies(client, ["from spring", "sentinel"])


async def test_workers_share_one_port_and_deliver_across_each_other(
    tidings_server: StartServer, js_client: JsClientFactory, redis_server: Any
) -> None:
    server = await tidings_server("--workers", "2", "--broker", redis_server.url, "--node-id", "W")
    clients_by_node: dict[str, JsClient] = {}
    for attempt in range(40):
        if len(clients_by_node) == 2:
            break
        client = await js_client("stompjs7", server.ws_url())
        connected = await client.connect(login=f"u{attempt}")
        node = node_of(connected)
        if node in clients_by_node:
            await client.disconnect()
        else:
            await client.subscribe("me", f"/user/u{attempt}/message")
            clients_by_node[node] = client
    assert set(clients_by_node) == {"W-w0", "W-w1"}
    # Publish to both users many times: whichever worker takes each POST, it arrives.
    users = {node: client for node, client in clients_by_node.items()}
    for node, client in users.items():
        user = next(e for e in client.history if e["event"] == "connected")["headers"]["user-name"]
        for n in range(10):
            assert await publish_user(server, user, f"{node}-{n}") == 202
        await expect_bodies(client, [f"{node}-{n}" for n in range(10)])


def test_memory_broker_refuses_workers() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--workers", "2"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--workers N needs a shared broker" in result.stderr


async def test_seed_scenario_behind_nginx_round_robin(
    tidings_server: StartServer,
    js_client: JsClientFactory,
    shared_store: list[str],
    nginx_proxy: Any,
) -> None:
    """The seed's diagram: clients and back end both go through nginx to two nodes; on
    Redis, and on RabbitMQ + PostgreSQL (issue 20, acceptance 1). Besides WebSocket
    clients, the article's front end: legacy stompjs over SockJS, no sticky sessions."""
    nodes = await asyncio.gather(
        *(tidings_server(*shared_store, "--node-id", name) for name in "AB")
    )
    proxy = await nginx_proxy([node.port for node in nodes])
    clients = []
    landed = set()
    for _ in range(4):  # round robin puts two sessions of user 42 on each node
        client = await js_client("stompjs7", proxy.ws_url("/publicServer"))
        landed.add(node_of(await client.connect(login="42")))
        await client.subscribe("me", "/user/42/message")
        clients.append(client)
    assert landed == {"A", "B"}
    for transport in ("xhr-streaming", "xhr-polling"):
        url = f"{proxy.http_url}/publicServer"
        client = await js_client("legacy", url, transport=transport)
        assert (await client.connect(login="42", timeout=10.0))["transport"] == transport
        await client.subscribe("me", "/user/42/message")
        clients.append(client)
    bodies = [f"seed-{n}" for n in range(10)]
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            seed = {"code": "1", "form": "admin", "to": "42", "content": body}
            async with http.post(f"{proxy.http_url}/pushToOneTest", json=seed) as reply:
                assert (reply.status, await reply.text()) == (200, "发送成功")
    for client in clients:
        await expect_bodies(client, bodies)
    # The publishes themselves were spread over both nodes too, and so were the SockJS
    # sessions' requests (/publicServer/<server>/<session>/<transport>).
    posts = [r for r in proxy.requests() if r["uri"] == "/pushToOneTest"]
    assert len({r["upstream_addr"] for r in posts}) == 2
    sockjs = [r for r in proxy.requests() if r["uri"].count("/") == 4]
    assert len({r["upstream_addr"] for r in sockjs}) == 2, sockjs
    # And nothing more arrives: a sentinel published last is each session's next message.
    async with aiohttp.ClientSession() as http:
        seed = {"code": "1", "form": "admin", "to": "42", "content": "last"}
        async with http.post(f"{proxy.http_url}/pushToOneTest", json=seed) as reply:
            assert reply.status == 200
    for client in clients:
        await expect_bodies(client, ["last"])
