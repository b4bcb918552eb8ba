"""STOMP conformance of a real server over raw WebSockets (issue 14, item 5).

Version choice, 1.0 without heart-beats, user-defined SEND headers passed through and
escaped per receiver, ``receipt-id`` on ERRORs, frames before a bad one acted on.
"""

from __future__ import annotations

import pytest

from .conftest import StartServer, TidingsServer
from .stompws import HEARTBEAT, StompWs

PROTOCOL_ERROR = 1002
ROOM = "/topic/chat/room"


@pytest.fixture
async def server(tidings_server: StartServer) -> TidingsServer:
    return await tidings_server("--send-allow", "/topic/chat/**")


async def open_client(server: TidingsServer, version: str, login: str) -> StompWs:
    client = await StompWs.open(server.ws_url())
    connected = await client.connect(login=login, **{"accept-version": version})
    assert connected.get("version") == version
    return client


# -- version choice ---------------------------------------------------------------------


async def test_highest_subprotocol_offered_is_chosen(server: TidingsServer) -> None:
    """webstomp-client 1.2.6 offers v10.stomp first; RabbitMQ answers v12.stomp."""
    client = await StompWs.open(server.ws_url(), protocols=("v10.stomp", "v11.stomp", "v12.stomp"))
    try:
        assert client.ws.protocol == "v12.stomp"
        connected = await client.connect(**{"accept-version": "1.0,1.1,1.2"})
        assert connected.get("version") == "1.2"
    finally:
        await client.close()


async def test_stomp_1_0_session_has_no_heartbeats(tidings_server: StartServer) -> None:
    """A 1.0 CONNECT asking for heart-beats (as webstomp-client sends on v10.stomp) gets
    none, and is not dropped for sending none: 1.0 has no heart-beating."""
    server = await tidings_server("--heartbeat", "100,100", "--heartbeat-grace", "2")
    client = await StompWs.open(server.ws_url(), protocols=("v10.stomp",))
    try:
        connected = await client.connect(**{"accept-version": "1.0", "heart-beat": "100,100"})
        assert connected.get("version") == "1.0"
        assert connected.get("heart-beat") is None
        await client.subscribe("s", "/topic/quiet")
        # Silent for 10x what a 1.1 session may be (0.2 s): no heart-beat, no ERROR, no close.
        with pytest.raises(TimeoutError):
            item = await client.next(timeout=2.0)
            pytest.fail(f"a 1.0 session got {item!r}")
        await client.send_frame("SUBSCRIBE", {"id": "t", "destination": "/topic/x", "receipt": "r"})
        await client.expect("RECEIPT", **{"receipt-id": "r"})
    finally:
        await client.close()


async def test_stomp_1_2_session_still_beats(tidings_server: StartServer) -> None:
    server = await tidings_server("--heartbeat", "100,0")
    client = await StompWs.open(server.ws_url())
    try:
        connected = await client.connect(**{"heart-beat": "0,100"})
        assert connected.get("heart-beat") == "100,0"
        assert await client.next(timeout=2.0) == HEARTBEAT
    finally:
        await client.close()


# -- user-defined SEND headers (STOMP 1.2 §SEND) ------------------------------------------


async def test_user_defined_headers_reach_every_version_escaped_for_it(
    server: TidingsServer,
) -> None:
    sender = await open_client(server, "1.2", "7")
    listeners = {v: await open_client(server, v, f"l{v}") for v in ("1.0", "1.1", "1.2")}
    try:
        for listener in listeners.values():
            await listener.subscribe("s", ROOM)
        await sender.send_raw(
            f"SEND\ndestination:{ROOM}\nx-trace:abc\nx-where:a\\cb\\\\c\nreceipt:s1\n"
            "content-type:text/plain\n\nhi\0".encode()
        )
        await sender.expect("RECEIPT", **{"receipt-id": "s1"})
        for version, listener in listeners.items():
            message = await listener.expect("MESSAGE", destination=ROOM)
            assert message.body == b"hi"
            assert message.get("x-trace") == "abc", version
            # 1.0 has no escaping: the colon and backslash go out as they are.
            assert message.get("x-where") == "a:b\\c", version
            assert message.get("content-type") == "text/plain"
            assert message.get("receipt") is None
    finally:
        for client in (sender, *listeners.values()):
            await client.close()


@pytest.mark.parametrize(
    ("header", "message_part"),
    [
        # A 1.2 value with an escaped LF: unescaped, it would forge a header (and with
        # another LF, a frame) in a 1.0 subscriber's stream, which has no escaping.
        ("content-type:text/plain\\ndestination:/x", "content-type"),
        ("x-a:1\\n\\nMESSAGE", "CR, LF or NUL"),
        ("x-a:1\\r2", "CR, LF or NUL"),
        ("subscription:other", "set by the server"),
        ("message-id:1", "set by the server"),
        ("ack:1", "set by the server"),
        ("tidings-id:1-0", "set by the server"),
        ("Destination:/y", "set by the server"),
        ("bad name:1", "must match"),
    ],
)
async def test_headers_that_cannot_pass_are_refused_and_forge_nothing(
    server: TidingsServer, header: str, message_part: str
) -> None:
    sender = await open_client(server, "1.2", "7")
    old = await open_client(server, "1.0", "8")
    try:
        await old.subscribe("s", ROOM)
        await sender.send_raw(f"SEND\ndestination:{ROOM}\n{header}\nreceipt:r9\n\nx\0".encode())
        error = await sender.expect_error_and_close(message_part, PROTOCOL_ERROR)
        assert error.get("receipt-id") == "r9"
        other = await open_client(server, "1.2", "9")
        try:
            await other.send_frame("SEND", {"destination": ROOM, "x-n": "2"}, b"clean")
        finally:
            await other.close()
        # The 1.0 subscriber's next frame is the clean one: nothing forged came before it.
        message = await old.expect("MESSAGE", destination=ROOM)
        assert message.body == b"clean"
        assert [name for name, _ in message.headers].count("destination") == 1
    finally:
        await sender.close()
        await old.close()


async def test_user_defined_headers_are_capped(tidings_server: StartServer) -> None:
    server = await tidings_server("--send-allow", "/topic/chat/**")
    sender = await open_client(server, "1.2", "7")
    try:
        many = "".join(f"x-{n}:v\n" for n in range(17))
        await sender.send_raw(f"SEND\ndestination:{ROOM}\n{many}receipt:r\n\n\0".encode())
        error = await sender.expect_error_and_close("user-defined headers", PROTOCOL_ERROR)
        assert error.get("receipt-id") == "r"
    finally:
        await sender.close()


# -- ERRORs and receipts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "message_part"),
    [
        (b"SEND\ndestination:/topic/public\nreceipt:r1\n\nspam\0", "not allowed"),
        (b"SUBSCRIBE\nid:1\ndestination:/queue/x\nreceipt:r1\n\n\0", "unknown destination"),
        (b"SEND\nreceipt:r1\n\nx\0", "destination"),
        # a malformed frame whose receipt header came before the fault
        (b"SUBSCRIBE\nid:1\nreceipt:r1\ndestination:/topic/a\\t\n\n\0", "escape"),
        (b"SEND\ndestination:/topic/chat/a\nreceipt:r1\n\n" + b"x" * 70_000 + b"\0", "too large"),
    ],
)
async def test_error_names_the_receipt_of_the_frame_that_caused_it(
    server: TidingsServer, frame: bytes, message_part: str
) -> None:
    client = await open_client(server, "1.2", "7")
    try:
        await client.send_raw(frame)
        error = await client.expect_error_and_close(message_part, PROTOCOL_ERROR)
        assert error.get("receipt-id") == "r1"
    finally:
        await client.close()


async def test_error_for_a_frame_released_by_commit_names_the_commits_receipt(
    server: TidingsServer,
) -> None:
    client = await open_client(server, "1.2", "7")
    try:
        await client.send_raw(
            b"BEGIN\ntransaction:t\n\n\0"
            b"SEND\ndestination:/topic/public\ntransaction:t\n\nspam\0"
            b"COMMIT\ntransaction:t\nreceipt:c1\n\n\0"
        )
        error = await client.expect_error_and_close("not allowed", PROTOCOL_ERROR)
        assert error.get("receipt-id") == "c1"
    finally:
        await client.close()


async def test_frames_before_a_bad_one_are_acted_on(server: TidingsServer) -> None:
    """One WebSocket message: SUBSCRIBE with a receipt, then a malformed frame. As
    RabbitMQ does, the SUBSCRIBE is done and its RECEIPT comes before the ERROR."""
    client = await open_client(server, "1.2", "7")
    try:
        await client.send_raw(
            f"SUBSCRIBE\nid:1\ndestination:{ROOM}\nreceipt:sub\n\n\0".encode()
            + b"SEND\ndestination:/topic/chat/x\nno-colon-here\nreceipt:bad\n\n\0"
        )
        await client.expect("RECEIPT", **{"receipt-id": "sub"})
        error = await client.expect_error_and_close("colon", PROTOCOL_ERROR)
        assert error.get("receipt-id") is None  # the parser could not read the frame's headers
    finally:
        await client.close()


async def test_a_send_before_a_bad_frame_is_delivered(server: TidingsServer) -> None:
    listener = await open_client(server, "1.2", "8")
    sender = await open_client(server, "1.2", "7")
    try:
        await listener.subscribe("s", ROOM)
        await sender.send_raw(
            f"SEND\ndestination:{ROOM}\nreceipt:s1\n\nfirst\0".encode() + b"BOGUS\n\n\0"
        )
        await sender.expect("RECEIPT", **{"receipt-id": "s1"})
        await sender.expect_error_and_close("unknown command", PROTOCOL_ERROR)
        assert (await listener.expect("MESSAGE", destination=ROOM)).body == b"first"
    finally:
        await listener.close()
        await sender.close()


async def test_a_session_error_after_a_good_frame_closes_cleanly(server: TidingsServer) -> None:
    client = await open_client(server, "1.2", "7")
    try:
        await client.send_raw(
            b"SUBSCRIBE\nid:1\ndestination:/topic/a\nreceipt:a\n\n\0"
            b"SUBSCRIBE\nid:1\ndestination:/topic/b\nreceipt:b\n\n\0"
        )
        await client.expect("RECEIPT", **{"receipt-id": "a"})
        error = await client.expect_error_and_close("already in use", PROTOCOL_ERROR)
        assert error.get("receipt-id") == "b"
    finally:
        await client.close()
