"""The seed's scenario with the real npm clients, unchanged: @stomp/stompjs 7 and stompjs 2.3.3;
webstomp-client 1.2.6 over a raw WebSocket."""

from __future__ import annotations

import aiohttp
import pytest

from .conftest import JsClientFactory, StartServer, TidingsServer
from .jsclient import JS_LIBS, JsClient


async def post_json(server: TidingsServer, path: str, payload: object) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.http_url + path, json=payload) as reply,
    ):
        return reply.status


async def user_session(js_client: JsClientFactory, lib: str, url: str, user: str) -> JsClient:
    client = await js_client(lib, url)
    connected = await client.connect(login=user)
    assert connected["headers"].get("user-name") == user
    await client.subscribe(f"user-{user}", f"/user/{user}/message")
    await client.subscribe("public", "/topic/public")
    return client


@pytest.mark.parametrize("lib", JS_LIBS)
async def test_seed_front_end_and_back_end_work_unchanged(
    tidings_server: StartServer, js_client: JsClientFactory, lib: str
) -> None:
    server = await tidings_server()
    url = server.ws_url("/publicServer")
    tab1 = await user_session(js_client, lib, url, "42")
    tab2 = await user_session(js_client, lib, url, "42")
    other = await user_session(js_client, lib, url, "43")

    seed = {"code": "200", "form": "admin", "to": "42", "content": "from pushToOneTest"}
    assert await post_json(server, "/pushToOneTest", seed) == 200
    assert await post_json(server, "/api/v1/users/42/messages", {"body": "from v1"}) == 202
    assert await post_json(server, "/api/v1/topics/public/messages", {"body": "to all"}) == 202

    for tab in (tab1, tab2):
        for body in ("from pushToOneTest", "from v1"):
            message = await tab.expect("message", body=body)
            assert message["destination"] == "/user/42/message"
            assert message["subscription"] == "user-42"
            assert message["headers"]["content-type"] == "text/plain;charset=UTF-8"
            assert message["headers"]["message-id"]
        public = await tab.expect("message", body="to all")
        assert public["destination"] == "/topic/public"
    # User 43 got the broadcast; everything for 42 was published before it, on the same
    # node and in order, so had any of it been routed to 43 it would be queued already.
    await other.expect("message", body="to all")
    leaked = [e for e in other.events_of("message") if e["destination"].startswith("/user/42")]
    assert leaked == []
    # Each of 42's sessions got each message exactly once.
    for tab in (tab1, tab2):
        assert tab.events_of("message") == []
    # message-id identifies the message within a session (STOMP 1.2 §MESSAGE): three apart.
    for tab in (tab1, tab2):
        message_ids = [e["headers"]["message-id"] for e in tab.history if e["event"] == "message"]
        assert len(message_ids) == 3
        assert len(set(message_ids)) == 3


@pytest.mark.parametrize("lib", JS_LIBS)
async def test_large_messages_and_disconnect(
    tidings_server: StartServer, js_client: JsClientFactory, lib: str
) -> None:
    server = await tidings_server("--max-message-bytes", "200000", "--send-allow", "/topic/**")
    client = await user_session(js_client, lib, server.ws_url("/privateServer"), "7")
    big = "é" * 40_000  # 80 KB in UTF-8: over legacy stompjs's 16 KiB split on send
    assert await post_json(server, "/api/v1/users/7/messages", {"body": big}) == 202
    assert (await client.expect("message", subscription="user-7"))["body"] == big
    await client.send("/topic/public", "x" * 30_000, receipt="sent")
    await client.expect("receipt", id="sent")
    assert (await client.expect("message", subscription="public"))["body"] == "x" * 30_000
    closed = await client.disconnect()
    assert closed["event"] == "closed"


async def test_webstomp_client_holds_a_raw_websocket_session_for_a_minute(
    tidings_server: StartServer, js_client: JsClientFactory
) -> None:
    """webstomp-client 1.2.6 offers v10.stomp first and speaks the version of the chosen
    subprotocol; it was dropped after 30 s (issue 14). Offered v12.stomp, it heart-beats
    both ways: it closes after 20 s without a server beat, the server after 30 s without
    one of its beats, so a minute of silence proves both directions."""
    server = await tidings_server("--send-allow", "/topic/chat/**")
    client = await js_client("webstomp", server.ws_url())
    connected = await client.connect(login="42", heartbeat=(10000, 10000))
    assert (connected["protocol"], connected["version"]) == ("v12.stomp", "1.2")
    assert connected["headers"]["heart-beat"] == "10000,10000"
    await client.subscribe("inbox", "/user/42/message")
    await client.subscribe("chat", "/topic/chat/room")
    # A user-defined header passes through to the MESSAGE (STOMP 1.2 §SEND).
    await client.send("/topic/chat/room", "hi", {"x-trace": "abc", "receipt": "sent"})
    await client.expect("receipt", id="sent")
    echoed = await client.expect("message", subscription="chat")
    assert (echoed["body"], echoed["headers"]["x-trace"]) == ("hi", "abc")
    await client.expect_none("closed", within=60.0)
    assert client.events_of("error") == []
    assert await post_json(server, "/api/v1/users/42/messages", {"body": "after a minute"}) == 202
    message = await client.expect("message", subscription="inbox")
    assert message["body"] == "after a minute"
