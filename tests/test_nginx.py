"""Tidings behind nginx with deploy/nginx.conf (see tests/nginx_fixture.py).

Every node here has its own in-memory broker, so tests that deliver a message use one
upstream node; the ones that check load balancing only need the nodes to answer.
"""

from __future__ import annotations

import collections

import aiohttp
import pytest

from .conftest import JsClientFactory, StartServer
from .jsclient import JS_LIBS
from .nginx_fixture import StartNginx

API_KEY = "test-key-for-nginx"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def post(url: str, payload: object, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as http, http.post(url, json=payload, headers=headers) as r:
        await r.read()
        return r.status


@pytest.mark.parametrize("lib", JS_LIBS)
async def test_seed_clients_through_nginx(
    tidings_server: StartServer, nginx_proxy: StartNginx, js_client: JsClientFactory, lib: str
) -> None:
    # --api-key, as production behind nginx must: every request arrives from 127.0.0.1.
    node = await tidings_server("--api-key", API_KEY)
    proxy = await nginx_proxy([node.port])
    client = await js_client(lib, proxy.ws_url("/publicServer"))
    connected = await client.connect(login="42")
    assert connected["headers"].get("user-name") == "42"
    await client.subscribe("user-42", "/user/42/message")

    push = {"code": "200", "form": "admin", "to": "42", "content": "via nginx"}
    assert await post(proxy.http_url + "/pushToOneTest", push) == 401  # no key: refused
    assert await post(proxy.http_url + "/pushToOneTest", push, AUTH) == 200
    message = await client.expect("message", subscription="user-42")
    assert message["body"] == "via nginx"
    assert message["destination"] == "/user/42/message"

    requests = await proxy.wait_for_requests(2)  # the WebSocket is logged when it closes
    assert [(r["uri"], r["status"]) for r in requests] == [
        ("/pushToOneTest", "401"),
        ("/pushToOneTest", "200"),
    ]
    assert {r["upstream_addr"] for r in requests} == {f"127.0.0.1:{node.port}"}
    await client.disconnect()
    websocket = (await proxy.wait_for_requests(3))[2]
    assert (websocket["uri"], websocket["status"]) == ("/publicServer", "101")


async def test_round_robin_reaches_every_node(
    tidings_server: StartServer, nginx_proxy: StartNginx
) -> None:
    nodes = [await tidings_server(), await tidings_server()]
    proxy = await nginx_proxy([node.port for node in nodes])
    async with aiohttp.ClientSession() as http:
        for _ in range(20):
            async with http.get(proxy.http_url + "/healthz") as reply:
                assert reply.status == 200
    requests = await proxy.wait_for_requests(20)
    served = collections.Counter(r["upstream_addr"] for r in requests)
    # No stickiness: the same client's requests alternate between the nodes.
    assert served == {f"127.0.0.1:{node.port}": 10 for node in nodes}


async def test_publish_limit_matches_the_node(
    tidings_server: StartServer, nginx_proxy: StartNginx
) -> None:
    node = await tidings_server("--api-key", API_KEY)
    proxy = await nginx_proxy([node.port])
    url = proxy.http_url + "/api/v1/topics/public/messages"
    # The largest body a node takes, escaped into JSON: about 128 KiB on the wire.
    assert await post(url, {"body": '"' * 64 * 1024}, AUTH) == 202
    assert await post(url, {"body": "x" * (64 * 1024 + 1)}, AUTH) == 413  # the node's limit
    assert await post(url, {"body": "x" * 300_000}, AUTH) == 413  # nginx's limit
    statuses = [(r["status"], r["upstream_addr"]) for r in await proxy.wait_for_requests(3)]
    assert statuses == [
        ("202", f"127.0.0.1:{node.port}"),
        ("413", f"127.0.0.1:{node.port}"),
        ("413", ""),  # refused by nginx, never sent to a node
    ]


async def test_metrics_is_refused_on_the_public_listener(
    tidings_server: StartServer, nginx_proxy: StartNginx
) -> None:
    node = await tidings_server()
    proxy = await nginx_proxy([node.port])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{node.port}/metrics") as reply:
            assert reply.status == 200  # the node itself answers its scraper
        for path in ("/metrics", "/metrics?format=x", "//metrics", "/%6Detrics", "/metrics/"):
            async with http.get(proxy.http_url + path) as reply:
                assert reply.status == 403, path
                assert "tidings_" not in await reply.text()
        async with http.get(proxy.http_url + "/healthz") as reply:
            assert reply.status == 200  # the rest still goes through


async def test_the_shipped_log_format_writes_no_token_and_no_sockjs_session(
    tidings_server: StartServer, nginx_proxy: StartNginx
) -> None:
    """deploy/nginx.conf's own log format: no query string (a client may put its token in
    ?access_token=) and no SockJS session id (it lets one read the session; issue 14)."""
    node = await tidings_server()
    proxy = await nginx_proxy([node.port])
    secret = "tok3n-in-the-url"
    session = "s3ssion-id"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.http_url}/stomp?access_token={secret}") as reply:
            assert reply.status == 200  # the SockJS greeting
        url = f"{proxy.http_url}/stomp/000/{session}/xhr?access_token={secret}"
        async with http.post(url) as reply:
            assert reply.status == 200 and (await reply.text()).startswith("o")
        ws_url = proxy.ws_url(f"/stomp/001/{session}x/websocket?access_token={secret}")
        async with http.ws_connect(ws_url) as ws:
            assert (await ws.receive_str(timeout=5)) == "o"
    await proxy.wait_for_requests(3)
    shipped = proxy.shipped_access_log()
    lines = shipped.splitlines()
    assert len(lines) == 3, shipped
    assert '"GET /stomp HTTP/1.1" 200' in lines[0]
    assert '"POST /stomp/-/-/xhr HTTP/1.1" 200' in lines[1]
    assert '"GET /stomp/-/-/websocket HTTP/1.1" 101' in lines[2]
    assert secret not in shipped and session not in shipped and "access_token" not in shipped
