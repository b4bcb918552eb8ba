"""The admin API on two nodes sharing a real Redis (issue 17; docs/admin.md).

Every node is a real `tidings serve` process, every client a real @stomp/stompjs 7, and
each route is asked of one node about sessions held by both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from .conftest import JsClientFactory, StartServer, TidingsServer
from .jsclient import JsClient
from .redis_fixture import RedisServer

API_KEY = "admin-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def call(
    server: TidingsServer,
    method: str,
    path: str,
    payload: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            server.http_url + path,
            json=payload,
            headers=AUTH if headers is None else headers,
            timeout=aiohttp.ClientTimeout(total=10),
        ) as reply,
    ):
        assert reply.content_type == "application/json", await reply.text()
        return reply.status, await reply.json()


async def two_nodes(
    start: StartServer, shared: RedisServer | list[str]
) -> tuple[TidingsServer, TidingsServer]:
    """Nodes A and B on one Redis, or on what ``shared_store`` names (conftest.py)."""
    args = ["--broker", shared.url] if isinstance(shared, RedisServer) else shared
    a, b = await asyncio.gather(
        *(start(*args, "--node-id", name, "--api-key", API_KEY) for name in ("A", "B"))
    )
    return a, b


async def session(
    js_client: JsClientFactory, server: TidingsServer, user: str, *destinations: str
) -> JsClient:
    client = await js_client("stompjs7", server.ws_url("/publicServer"))
    await client.connect(login=user)
    for index, destination in enumerate(destinations):
        await client.subscribe(f"s{index}", destination)
    return client


POLL_S = 0.2
"""Between two looks at state another process changes (it sends no event to await)."""


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> None:
    """Return once ``check()`` is true; fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(POLL_S)


async def node_ids(server: TidingsServer) -> list[str]:
    status, body = await call(server, "GET", "/api/v1/admin/nodes")
    assert status == 200, body
    return [node["id"] for node in body["nodes"]]


async def test_nodes_lists_every_node_and_a_killed_one_leaves(
    tidings_server: StartServer, shared_store: list[str], js_client: JsClientFactory
) -> None:
    a, b = await two_nodes(tidings_server, shared_store)
    await session(js_client, b, "42", "/user/42/message", "/topic/news")
    for asked in (a, b):
        assert await node_ids(asked) == ["A", "B"]
    # B's numbers, as A sees them once B's next heartbeat (every 2 s) has counted the session.
    body: dict[str, Any] = {}

    async def b_counts_the_session() -> bool:
        nonlocal body
        _, body = await call(a, "GET", "/api/v1/admin/nodes")
        return bool(next(n for n in body["nodes"] if n["id"] == "B")["sessions"] == 1)

    await eventually(b_counts_the_session, 10)
    record = next(node for node in body["nodes"] if node["id"] == "B")
    assert body["answered_by"] == "A"
    assert record["users_online"] == 1
    assert record["channels"] == 2  # u:42 and t:news
    assert record["subscriptions"] == 2
    kind = shared_store[1].partition(":")[0]
    assert record["broker"] == {"kind": kind, "ready": True}
    assert record["version"] and record["uptime_s"] >= 0
    assert record["pid"] == b.proc.pid
    for rate in ("published_per_s", "messages_in_per_s", "messages_out_per_s"):
        assert record[rate] >= 0

    # SIGKILL: no goodbye. Its record expires (5 s after its last heartbeat).
    b.proc.kill()
    await b.proc.wait()

    async def b_is_gone() -> bool:
        return "B" not in await node_ids(a)

    await eventually(b_is_gone, 10)  # its record lives 5 s after its last heartbeat
    assert await node_ids(a) == ["A"]


async def test_a_clean_stop_leaves_the_list_at_once(
    tidings_server: StartServer, redis_server: RedisServer
) -> None:
    a, b = await two_nodes(tidings_server, redis_server)
    assert await node_ids(a) == ["A", "B"]
    assert await b.stop() == 0
    assert await node_ids(a) == ["A"]


async def test_sessions_and_disconnect_across_nodes_leave_a_bystander_connected(
    tidings_server: StartServer, shared_store: list[str], js_client: JsClientFactory
) -> None:
    a, b = await two_nodes(tidings_server, shared_store)
    on_a = await session(js_client, a, "42", "/user/42/message")
    on_b = await session(js_client, b, "42", "/user/queue/alerts", "/topic/news")
    bystander = await session(js_client, a, "43", "/user/43/message", "/topic/news")

    status, body = await call(b, "GET", "/api/v1/admin/users/42/sessions")
    assert status == 200, body
    assert body["user"] == "42" and body["unanswered"] == []
    sessions = body["sessions"]
    assert [s["node"] for s in sessions] == ["A", "B"]
    for s in sessions:
        assert s["transport"] == "websocket"
        assert s["remote"] == "127.0.0.1"
        assert 0 < time.time() - s["connected_at"] < 60
    assert sessions[0]["subscriptions"] == [
        {"id": "s0", "destination": "/user/42/message", "ack": "auto"}
    ]
    assert [sub["destination"] for sub in sessions[1]["subscriptions"]] == [
        "/user/queue/alerts",
        "/topic/news",
    ]

    status, body = await call(
        b, "POST", "/api/v1/users/42/disconnect", {"reason": "account banned", "reconnect": False}
    )
    assert status == 200, body
    assert body == {"user": "42", "closed": 2, "nodes": {"A": 1, "B": 1}, "unanswered": []}
    for client in (on_a, on_b):
        error = await client.expect("error", fail_on=("fatal",))
        assert error["headers"]["message"] == "account banned"
        assert error["headers"]["tidings-reconnect"] == "false"
        closed = await client.expect("closed")
        assert closed["code"] == 1008

    # The bystander (same node, same topic) still gets what is published.
    status, _ = await call(a, "POST", "/api/v1/topics/news/messages", {"body": "still here"})
    assert status == 202
    message = await bystander.expect("message", subscription="s1")
    assert message["body"] == "still here"
    status, body = await call(a, "GET", "/api/v1/admin/users/42/sessions")
    assert body["sessions"] == []
    status, body = await call(a, "GET", "/api/v1/users/42/presence")
    assert body["online"] is False
    # A user without sessions: nothing to close, and still an answer from every node.
    status, body = await call(a, "POST", "/api/v1/users/nobody/disconnect")
    assert (status, body["closed"], body["nodes"]) == (200, 0, {"A": 0, "B": 0})
    assert "account banned" in a.log() + b.log()  # the audit line names the reason


async def test_disconnect_may_advise_a_reconnect(
    tidings_server: StartServer, js_client: JsClientFactory
) -> None:
    node = await tidings_server("--api-key", API_KEY)
    client = await session(js_client, node, "9", "/user/9/message")
    status, body = await call(node, "POST", "/api/v1/users/9/disconnect", {})
    assert (status, body["closed"]) == (200, 1)
    error = await client.expect("error", fail_on=("fatal",))
    assert error["headers"]["message"] == "disconnected by an operator"
    assert error["headers"]["tidings-reconnect"] == "true"
    assert (await client.expect("closed"))["code"] == 1001


async def test_inbox_deletion_is_seen_from_the_other_node(
    tidings_server: StartServer, redis_server: RedisServer, js_client: JsClientFactory
) -> None:
    a, b = await two_nodes(tidings_server, redis_server)
    device = await session(js_client, b, "7", "/user/queue/inbox-state")
    first = orjson.loads((await device.expect("message", subscription="s0"))["body"])
    assert first["unread"] == 0  # the state at SUBSCRIBE, then the changes
    ids = []
    for n in range(3):
        status, body = await call(a, "POST", "/api/v1/users/7/messages", {"body": f"n{n}"})
        assert status == 202
        ids.append(body["id"])

    status, body = await call(a, "DELETE", f"/api/v1/users/7/inbox?up_to={ids[1]}")
    assert (status, body) == (200, {"deleted": 2, "unread": 1})
    event = orjson.loads((await device.expect("message", subscription="s0"))["body"])
    assert (event["unread"], event["deleted"], event["deleted_up_to"]) == (1, 2, ids[1])
    status, body = await call(b, "GET", "/api/v1/users/7/inbox")
    assert [m["id"] for m in body["messages"]] == [ids[2]]
    status, body = await call(b, "GET", "/api/v1/users/7/inbox/unread")
    assert body == {"unread": 1}

    status, body = await call(b, "DELETE", "/api/v1/users/7/inbox")
    assert (status, body) == (200, {"deleted": 1, "unread": 0})
    event = orjson.loads((await device.expect("message", subscription="s0"))["body"])
    assert (event["unread"], event["deleted"], event["last"]) == (0, 1, ids[2])
    status, body = await call(a, "GET", "/api/v1/users/7/inbox")
    assert body["messages"] == []


async def test_channels_and_users_online_cluster_wide(
    tidings_server: StartServer, shared_store: list[str], js_client: JsClientFactory
) -> None:
    a, b = await two_nodes(tidings_server, shared_store)
    await session(js_client, a, "1", "/topic/news")
    await session(js_client, a, "2", "/topic/news")
    await session(js_client, b, "1", "/topic/news", "/topic/sports", "/user/1/message")

    status, body = await call(a, "GET", "/api/v1/admin/channels?prefix=t:")
    assert status == 200, body
    assert body == {
        "channels": [
            {"channel": "t:news", "subscribers": 3, "nodes": 2},
            {"channel": "t:sports", "subscribers": 1, "nodes": 1},
        ],
        "complete": True,
        "unanswered": [],
    }
    status, body = await call(b, "GET", "/api/v1/admin/channels?limit=1")
    assert body["channels"] == [{"channel": "t:news", "subscribers": 3, "nodes": 2}]
    assert body["complete"] is False  # B had 3 channels and sent only its first
    status, body = await call(b, "GET", "/api/v1/admin/channels?prefix=u:")
    assert [c["channel"] for c in body["channels"]] == ["u:1"]

    status, body = await call(b, "GET", "/api/v1/admin/users")
    assert status == 200, body
    assert body["users"] == [
        {"user": "1", "sessions": 2, "nodes": ["A", "B"]},
        {"user": "2", "sessions": 1, "nodes": ["A"]},
    ]
    assert body["complete"] is True


async def test_admin_routes_want_the_key_and_every_call_is_audited(
    tidings_server: StartServer,
) -> None:
    node = await tidings_server("--api-key", API_KEY, "--node-id", "solo")
    routes = [
        ("GET", "/api/v1/admin/nodes"),
        ("GET", "/api/v1/admin/users"),
        ("GET", "/api/v1/admin/users/42/sessions"),
        ("GET", "/api/v1/admin/channels"),
        ("POST", "/api/v1/users/42/disconnect"),
        ("DELETE", "/api/v1/users/42/inbox"),
    ]
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            status, body = await call(node, method, path, headers=headers)
            assert (status, body["error"]) == (401, "unauthorized"), (method, path)
        status, body = await call(node, method, path)
        assert status == 200, (method, path, body)
    assert await node_ids(node) == ["solo"]
    log = node.log()
    assert API_KEY not in log  # the key is named by its id, never written
    audit = [line for line in log.splitlines() if "tidings.audit" in line]
    assert len(audit) == len(routes) + 1
    assert all("key " in line and "from 127.0.0.1" in line for line in audit)
    assert any("disconnect user 42" in line for line in audit)
    assert any("delete inbox user 42" in line for line in audit)


async def test_bad_admin_requests_get_a_400_that_says_why(
    tidings_server: StartServer,
) -> None:
    node = await tidings_server("--api-key", API_KEY)
    cases = [
        ("GET", "/api/v1/admin/channels?limit=0", None, "'limit'"),
        ("GET", "/api/v1/admin/users?limit=abc", None, "'limit'"),
        ("DELETE", "/api/v1/users/42/inbox?up_to=yesterday", None, "'up_to'"),
        ("POST", "/api/v1/users/42/disconnect", {"reason": ""}, "'reason'"),
        ("POST", "/api/v1/users/42/disconnect", {"reason": "x" * 201}, "'reason'"),
        ("POST", "/api/v1/users/42/disconnect", {"reconnect": "no"}, "'reconnect'"),
        ("POST", "/api/v1/users/42/disconnect", [1], "JSON object"),
    ]
    for method, path, payload, says in cases:
        status, body = await call(node, method, path, payload)
        assert status == 400 and says in body["message"], (path, payload, body)
