"""The STOMP WebSocket edge of a real server process: endpoints, destinations, errors."""

from __future__ import annotations

import aiohttp
import pytest

from .conftest import StartServer, TidingsServer
from .stompws import Closed, StompWs

PROTOCOL_ERROR = 1002


async def publish_user(server: TidingsServer, user: str, body: object, **extra: object) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.http_url}/api/v1/users/{user}/messages", json={"body": body, **extra}
        ) as reply,
    ):
        assert reply.status == 202, await reply.text()
        message_id: str = (await reply.json())["id"]
        return message_id


async def publish_topic(server: TidingsServer, topic: str, body: object) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.http_url}/api/v1/topics/{topic}/messages", json={"body": body}) as r,
    ):
        assert r.status == 202, await r.text()


@pytest.fixture
async def server(tidings_server: StartServer) -> TidingsServer:
    return await tidings_server("--send-allow", "/topic/chat/**", "--max-frame-bytes", "4096")


@pytest.mark.parametrize("protocol", ["v12.stomp", "v11.stomp", "v10.stomp"])
async def test_server_echoes_the_subprotocol_it_chose(server: TidingsServer, protocol: str) -> None:
    client = await StompWs.open(server.ws_url(), protocols=(protocol,))
    try:
        assert client.ws.protocol == protocol
        connected = await client.connect(**{"accept-version": "1.0,1.1,1.2"})
        assert connected.get("version") == "1.2"
    finally:
        await client.close()


async def test_client_offering_no_subprotocol_still_works(server: TidingsServer) -> None:
    client = await StompWs.open(server.ws_url(), protocols=())
    try:
        assert client.ws.protocol is None
        await client.connect()
    finally:
        await client.close()


@pytest.mark.parametrize(
    "path", ["/publicServer", "/privateServer", "/stomp", "/publicServer/websocket"]
)
async def test_every_endpoint_serves_stomp(server: TidingsServer, path: str) -> None:
    client = await StompWs.open(server.ws_url(path))
    try:
        await client.connect(login="42")
        await client.subscribe("s1", "/user/42/message")
        await publish_user(server, "42", "hello")
        message = await client.expect("MESSAGE", destination="/user/42/message")
        assert message.body == b"hello"
    finally:
        await client.close()


async def test_message_frame_headers(server: TidingsServer) -> None:
    client = await StompWs.open(server.ws_url())
    try:
        await client.connect(login="42")
        await client.subscribe("s1", "/user/42/message")
        await publish_user(server, "42", "héllo")
        await publish_user(server, "42", {"n": 1}, headers={"priority": "high:1"})
        first = await client.expect("MESSAGE")
        second = await client.expect("MESSAGE")
        assert first.get("subscription") == "s1"
        assert first.get("content-type") == "text/plain;charset=UTF-8"
        assert first.get("content-length") == str(len("héllo".encode()))
        assert first.body == "héllo".encode()
        assert second.get("content-type") == "application/json;charset=UTF-8"
        assert second.get("priority") == "high:1"  # escaped on the wire, decoded here
        assert second.body == b'{"n":1}'
        assert first.get("message-id") != second.get("message-id")
    finally:
        await client.close()


async def test_principal_style_destinations_resolve_to_the_session_user(
    server: TidingsServer,
) -> None:
    client = await StompWs.open(server.ws_url())
    try:
        await client.connect(login="42")
        await client.subscribe("q", "/user/queue/alerts")
        await client.subscribe("m", "/user/message")
        await publish_user(server, "42", "alert", destination="/queue/alerts")
        await publish_user(server, "42", "plain")
        alert = await client.expect("MESSAGE", destination="/user/queue/alerts", subscription="q")
        plain = await client.expect("MESSAGE", destination="/user/message", subscription="m")
        assert (alert.body, plain.body) == (b"alert", b"plain")
    finally:
        await client.close()


async def test_topic_broadcast_and_split_and_batched_frames(server: TidingsServer) -> None:
    a = await StompWs.open(server.ws_url())
    b = await StompWs.open(server.ws_url())
    try:
        await a.connect()
        # One frame split over three WebSocket messages, then two frames in one message.
        await b.send_raw(b"CONN")
        await b.send_raw(b"ECT\naccept-version:1.2\n")
        await b.send_raw(b"heart-beat:0,0\n\n\0")
        await b.expect("CONNECTED")
        await b.send_raw(
            b"SUBSCRIBE\nid:1\ndestination:/topic/public\n\n\0"
            b"\n\nSUBSCRIBE\nid:2\ndestination:/topic/other\nreceipt:r\n\n\0"
        )
        await b.expect("RECEIPT", **{"receipt-id": "r"})
        await a.subscribe("x", "/topic/public")
        await publish_topic(server, "public", "to all")
        for client in (a, b):
            message = await client.expect("MESSAGE", destination="/topic/public")
            assert message.body == b"to all"
    finally:
        await a.close()
        await b.close()


async def test_client_send_to_an_allowed_destination_is_delivered(server: TidingsServer) -> None:
    sender = await StompWs.open(server.ws_url())
    listener = await StompWs.open(server.ws_url())
    try:
        await sender.connect(login="7")
        await listener.connect(login="8")
        await listener.subscribe("room", "/topic/chat/room1")
        await sender.send_frame(
            "SEND", {"destination": "/topic/chat/room1", "receipt": "s"}, b"hi all"
        )
        await sender.expect("RECEIPT", **{"receipt-id": "s"})
        message = await listener.expect("MESSAGE", destination="/topic/chat/room1")
        assert message.body == b"hi all"
    finally:
        await sender.close()
        await listener.close()


BAD_INPUTS = [
    pytest.param(b"BOGUS\n\n\0", "unknown command", id="unknown-command"),
    pytest.param(b"SUBSCRIBE\nid:1\nno-colon-here\n\n\0", "", id="header-without-colon"),
    pytest.param(
        b"SEND\ndestination:/topic/x\n\n" + b"x" * 5000 + b"\0", "too large", id="oversized"
    ),
    pytest.param(
        b"SEND\ndestination:/topic/x\n" + b"".join(b"h%d:v\n" % i for i in range(40)) + b"\n\0",
        "headers",
        id="too-many-headers",
    ),
    pytest.param(
        b"SUBSCRIBE\nid:1\ndestination:/queue/x\n\n\0", "unknown destination", id="bad-destination"
    ),
    pytest.param(
        b"SEND\ndestination:/topic/public\n\nspam\0", "not allowed", id="send-not-allowed"
    ),
    pytest.param(b"SUBSCRIBE\ndestination:/topic/x\n\n\0", "id", id="subscribe-without-id"),
    pytest.param(
        b"SEND\ndestination:/topic/x\ncontent-length:9\n\nabc\0", "", id="bad-content-length"
    ),
]


@pytest.mark.parametrize(("data", "message_part"), BAD_INPUTS)
async def test_bad_input_gets_an_error_and_others_keep_being_served(
    server: TidingsServer, data: bytes, message_part: str
) -> None:
    bystander = await StompWs.open(server.ws_url())
    offender = await StompWs.open(server.ws_url())
    try:
        await bystander.connect(login="42")
        await bystander.subscribe("s", "/user/42/message")
        await offender.connect(login="43")
        await offender.send_raw(data)
        if data.endswith(b"abc\0"):  # a content-length promising more than comes: finish it
            await offender.send_raw(b"defghi\0")
        await offender.expect_error_and_close(message_part, PROTOCOL_ERROR)
        await publish_user(server, "42", "still here")
        assert (await bystander.expect("MESSAGE")).body == b"still here"
    finally:
        await bystander.close()
        await offender.close()


async def test_frame_before_connect_is_refused(server: TidingsServer) -> None:
    client = await StompWs.open(server.ws_url())
    try:
        await client.send_raw(b"SUBSCRIBE\nid:1\ndestination:/topic/x\n\n\0")
        await client.expect_error_and_close("CONNECT", PROTOCOL_ERROR)
    finally:
        await client.close()


async def test_unsupported_version_is_refused_with_the_supported_list(
    server: TidingsServer,
) -> None:
    client = await StompWs.open(server.ws_url())
    try:
        await client.send_raw(b"CONNECT\naccept-version:2.0\n\n\0")
        error = await client.expect_error_and_close("", PROTOCOL_ERROR)
        assert "1.0,1.1,1.2" in (error.get("message") or "") + error.body.decode()
    finally:
        await client.close()


async def test_too_many_subscriptions(tidings_server: StartServer) -> None:
    server = await tidings_server("--max-subscriptions", "3")
    client = await StompWs.open(server.ws_url())
    try:
        await client.connect()
        for n in range(3):
            await client.subscribe(str(n), f"/topic/t{n}")
        await client.send_frame("SUBSCRIBE", {"id": "3", "destination": "/topic/t3"})
        await client.expect_error_and_close("subscriptions", PROTOCOL_ERROR)
    finally:
        await client.close()


async def test_disconnect_with_receipt(server: TidingsServer) -> None:
    client = await StompWs.open(server.ws_url())
    try:
        await client.connect()
        await client.send_frame("DISCONNECT", {"receipt": "bye"})
        await client.expect("RECEIPT", **{"receipt-id": "bye"})
        closed = await client.next()
        assert isinstance(closed, Closed) and closed.code == 1000
    finally:
        await client.close()


async def test_connect_and_disconnect_in_one_message(server: TidingsServer) -> None:
    client = await StompWs.open(server.ws_url())
    try:
        await client.send_raw(
            b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0DISCONNECT\nreceipt:bye\n\n\0"
        )
        await client.expect("CONNECTED")
        await client.expect("RECEIPT", **{"receipt-id": "bye"})
        closed = await client.next()
        assert isinstance(closed, Closed) and closed.code == 1000
    finally:
        await client.close()
