"""Real SockJS clients in Node: sockjs-client 1.6 under @stomp/stompjs 7 and stompjs 2.3.3.

Each client is restricted to one SockJS transport (tests/js/agent.mjs --transport), so
every transport sockjs-client can use outside a browser is exercised end to end: the
seed's scenario (a user destination and a topic, published by the back end) plus a SEND
from the client, heart-beats, and a clean DISCONNECT.
"""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from .conftest import JsClientFactory
from .jsclient import JS_LIBS, JsClient
from .sockjs_support import Node, node_fixture

NODE_TRANSPORTS = ("websocket", "xhr-streaming", "xhr-polling", "eventsource")
"""What sockjs-client can use in Node; the iframe and JSONP ones need a browser."""


node = node_fixture(
    "sockjs-clients",
    *("--send-allow", "/topic/chat/**"),
    *("--heartbeat", "300,300"),
    # Small streaming responses, so xhr-streaming and eventsource also reconnect.
    *("--sockjs-stream-limit", "8192"),
)


async def post_json(node: Node, path: str, payload: object) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(node.url(path), json=payload) as reply,
    ):
        return reply.status


async def connect(
    js_client: JsClientFactory, lib: str, node: Node, transport: str, user: str, **kwargs: object
) -> JsClient:
    client = await js_client(lib, node.url("/publicServer"), transport=transport)
    connected = await client.connect(login=user, timeout=10.0, **kwargs)  # type: ignore[arg-type]
    assert connected["transport"] == transport
    assert connected["headers"]["user-name"] == user
    await client.subscribe(f"user-{user}", f"/user/{user}/message")
    await client.subscribe("public", "/topic/public")
    return client


@pytest.mark.parametrize("lib", JS_LIBS)
@pytest.mark.parametrize("transport", NODE_TRANSPORTS)
async def test_stomp_over_every_sockjs_transport(
    node: Node, js_client: JsClientFactory, lib: str, transport: str
) -> None:
    user = uuid.uuid4().hex[:12]
    client = await connect(js_client, lib, node, transport, user)
    mark = uuid.uuid4().hex

    seed = {"code": "200", "form": "admin", "to": user, "content": f"seed {mark}"}
    assert await post_json(node, "/pushToOneTest", seed) == 200
    assert await post_json(node, f"/api/v1/users/{user}/messages", {"body": f"v1 {mark}"}) == 202
    assert await post_json(node, "/api/v1/topics/public/messages", {"body": f"all {mark}"}) == 202
    for body in (f"seed {mark}", f"v1 {mark}"):
        message = await client.expect("message", body=body)
        assert message["destination"] == f"/user/{user}/message"
        assert message["subscription"] == f"user-{user}"
    public = await client.expect("message", body=f"all {mark}")
    assert public["destination"] == "/topic/public"

    # Sending goes through xhr_send (or the WebSocket), large frames included.
    await client.subscribe("chat", f"/topic/chat/{user}")
    big = "é" * 20_000  # 40 KB: legacy stompjs splits it over several SockJS messages
    await client.send(f"/topic/chat/{user}", big, receipt="sent")
    await client.expect("receipt", id="sent")
    assert (await client.expect("message", subscription="chat"))["body"] == big

    closed = await client.disconnect(timeout=10.0)
    assert closed["event"] == "closed"


@pytest.mark.parametrize("transport", ["xhr-polling", "xhr-streaming"])
async def test_stomp_heartbeats_over_sockjs(
    node: Node, js_client: JsClientFactory, transport: str
) -> None:
    """With 300 ms heart-beats both ways, @stomp/stompjs would close the connection after
    600 ms without server data; SockJS "h" frames never reach it, so the server's STOMP
    heart-beats must travel as messages."""
    user = uuid.uuid4().hex[:12]
    client = await connect(js_client, "stompjs7", node, transport, user, heartbeat=(300, 300))
    # The clock is the subject: over four times the client's 600 ms limit with no close.
    await asyncio.sleep(2.5)
    assert client.events_of("closed") == []
    assert await post_json(node, f"/api/v1/users/{user}/messages", {"body": "still here"}) == 202
    await client.expect("message", body="still here")


async def test_a_stream_that_reached_its_limit_is_replaced_without_loss(
    node: Node, js_client: JsClientFactory
) -> None:
    """xhr-streaming responses end every 8 KiB here; the client reopens and loses nothing."""
    user = uuid.uuid4().hex[:12]
    client = await connect(js_client, "stompjs7", node, "xhr-streaming", user)
    bodies = [f"{index:03d} " + "x" * 500 for index in range(60)]  # ~30 KB: 3+ responses
    for body in bodies:
        assert await post_json(node, f"/api/v1/users/{user}/messages", {"body": body}) == 202
    for body in bodies:
        await client.expect("message", body=body)
