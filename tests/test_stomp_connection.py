"""Server-side STOMP session: bytes in, events and frame bytes out."""

from __future__ import annotations

import pytest

from tidings.errors import StompLimitExceeded, StompProtocolError
from tidings.stomp.connection import (
    AckReceived,
    ConnectRequested,
    DisconnectRequested,
    NackReceived,
    ReceiptDue,
    SendRequested,
    ServerConnection,
    State,
    SubscribeRequested,
    Subscription,
    UnsubscribeRequested,
    error_receipt,
    negotiate_heartbeat,
)
from tidings.stomp.frames import DEFAULT_LIMITS, SERVER_COMMANDS, Frame, FrameParser, Limits


def wire(command: str, *headers: str, body: bytes = b"") -> bytes:
    """A frame from ``name:value`` strings, written as a client would."""
    return "\n".join((command, *headers, "", "")).encode() + body + b"\0"


def parse_server_frame(data: bytes, version: str = "1.2") -> Frame:
    parser = FrameParser(commands=SERVER_COMMANDS)
    parser.version = version
    (frame,) = parser.feed(data)
    return frame


def connected(version: str = "1.2", limits: Limits = DEFAULT_LIMITS) -> ServerConnection:
    """A session past CONNECT and accept() at ``version``."""
    conn = ServerConnection(limits=limits)
    headers = () if version == "1.0" else (f"accept-version:{version}",)
    (event,) = conn.receive_data(wire("CONNECT", *headers))
    assert isinstance(event, ConnectRequested)
    conn.accept(session_id="s", user_name=None)
    return conn


# -- CONNECT, version and heart-beat negotiation ---------------------------------------


@pytest.mark.parametrize(
    ("headers", "version"),
    [
        ((), "1.0"),
        (("accept-version:1.0",), "1.0"),
        (("accept-version:1.1",), "1.1"),
        (("accept-version:1.1,1.2",), "1.2"),
        (("accept-version:1.0,1.1,2.0",), "1.1"),
        (("accept-version:1.2, 1.0",), "1.2"),
        (("accept-version:1.0,1.2,1.1",), "1.2"),  # the highest common one, in any order
    ],
)
def test_version_negotiation(headers: tuple[str, ...], version: str) -> None:
    conn = ServerConnection()
    (event,) = conn.receive_data(wire("CONNECT", *headers))
    assert isinstance(event, ConnectRequested)
    assert event.version == conn.version == version
    assert conn.state is State.CONNECTING


@pytest.mark.parametrize("accept", ["2.0", "", "1.3,2.1"])
def test_no_common_version_is_an_error(accept: str) -> None:
    conn = ServerConnection()
    with pytest.raises(StompProtocolError, match=r"Supported protocol versions are 1\.0,1\.1,1\.2"):
        conn.receive_data(wire("CONNECT", f"accept-version:{accept}"))
    assert conn.state is State.CLOSED
    error = parse_server_frame(conn.error("Supported protocol versions are 1.0,1.1,1.2"))
    assert error.get("version") == "1.0,1.1,1.2"


def test_connect_event_fields() -> None:
    conn = ServerConnection()
    data = wire(
        "STOMP",
        "accept-version:1.2",
        "host:example.org",
        "login:alice",
        "passcode:secret",
        "heart-beat:5000,0",
        "Authorization:Bearer x.y.z",
    )
    (event,) = conn.receive_data(data)
    assert isinstance(event, ConnectRequested)
    assert (event.login, event.passcode, event.host) == ("alice", "secret", "example.org")
    assert event.client_heartbeat == (5000, 0)
    assert event.frame.get("Authorization") == "Bearer x.y.z"
    assert "secret" not in repr(event)


def test_connect_headers_are_not_unescaped() -> None:
    conn = ServerConnection()
    (event,) = conn.receive_data(wire("CONNECT", "accept-version:1.2", "passcode:a\\cb"))
    assert isinstance(event, ConnectRequested)
    assert event.passcode == "a\\cb"


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [
        ((0, 0), (10000, 10000), (0, 0)),
        ((10000, 10000), (10000, 10000), (10000, 10000)),
        ((5000, 20000), (10000, 10000), (20000, 10000)),
        ((20000, 5000), (10000, 10000), (10000, 20000)),
        ((5000, 0), (10000, 10000), (0, 10000)),
        ((0, 5000), (10000, 10000), (10000, 0)),
        ((5000, 5000), (0, 0), (0, 0)),
        ((5000, 5000), (0, 1000), (0, 5000)),
    ],
)
def test_heartbeat_negotiation(
    client: tuple[int, int], server: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert negotiate_heartbeat(client, server) == expected
    conn = ServerConnection(server_heartbeat=server)
    conn.receive_data(wire("CONNECT", "accept-version:1.2", f"heart-beat:{client[0]},{client[1]}"))
    assert (conn.send_heartbeat_ms, conn.expect_heartbeat_ms) == expected


def test_heartbeat_absent_means_zero() -> None:
    conn = ServerConnection()
    (event,) = conn.receive_data(wire("CONNECT", "accept-version:1.2"))
    assert isinstance(event, ConnectRequested)
    assert event.client_heartbeat == (0, 0)
    assert (conn.send_heartbeat_ms, conn.expect_heartbeat_ms) == (0, 0)


@pytest.mark.parametrize("value", ["", "1000", "a,b", "-1,0", "1,2,3", "1000;1000", "1e3,0"])
def test_malformed_heartbeat(value: str) -> None:
    with pytest.raises(StompProtocolError, match="heart-beat"):
        ServerConnection().receive_data(wire("CONNECT", f"heart-beat:{value}"))


def test_connected_frame_like_spring() -> None:
    conn = ServerConnection(server_heartbeat=(10000, 10000))
    conn.receive_data(wire("CONNECT", "accept-version:1.1,1.2", "heart-beat:10000,10000"))
    data = conn.accept(session_id="sess-1", user_name="42")
    assert conn.state is State.CONNECTED
    frame = parse_server_frame(data)
    assert frame.command == "CONNECTED"
    assert frame.headers[:2] == (("version", "1.2"), ("heart-beat", "10000,10000"))
    assert frame.get("user-name") == "42"
    assert frame.get("session") == "sess-1"
    assert frame.get("server") == "Tidings/0.1"
    assert frame.body == b""
    assert data.startswith(b"CONNECTED\nversion:1.2\nheart-beat:10000,10000\n")


def test_connected_without_user_name_for_1_0() -> None:
    conn = ServerConnection(server_heartbeat=(0, 0))
    conn.receive_data(wire("CONNECT"))
    frame = parse_server_frame(conn.accept(session_id="s", user_name=None), "1.0")
    assert frame.headers == (
        ("version", "1.0"),
        ("server", "Tidings/0.1"),
        ("session", "s"),
    )


def test_stomp_1_0_has_no_heartbeats() -> None:
    """STOMP 1.0 has no heart-beating: a 1.0 session neither sends nor expects any, and its
    CONNECTED names none, whatever the client's CONNECT said (webstomp-client 1.2.6 sends
    ``heart-beat:10000,10000`` with ``accept-version:1.0``; issue 14)."""
    conn = ServerConnection(server_heartbeat=(10000, 10000))
    conn.receive_data(wire("CONNECT", "accept-version:1.0", "heart-beat:10000,10000"))
    assert conn.version == "1.0"
    assert (conn.send_heartbeat_ms, conn.expect_heartbeat_ms) == (0, 0)
    frame = parse_server_frame(conn.accept(session_id="s", user_name=None), "1.0")
    assert frame.get("heart-beat") is None


def test_accept_needs_a_pending_connect() -> None:
    with pytest.raises(RuntimeError):
        ServerConnection().accept(session_id="s", user_name=None)
    with pytest.raises(RuntimeError):
        connected().accept(session_id="s", user_name=None)


@pytest.mark.parametrize("command", ["SEND", "SUBSCRIBE", "DISCONNECT", "ACK", "BEGIN"])
def test_frame_before_connect(command: str) -> None:
    conn = ServerConnection()
    with pytest.raises(StompProtocolError, match="expected CONNECT"):
        conn.receive_data(wire(command, "destination:/a"))
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("command", ["CONNECT", "STOMP"])
def test_second_connect(command: str) -> None:
    conn = connected()
    with pytest.raises(StompProtocolError, match="already connected"):
        conn.receive_data(wire(command, "accept-version:1.2"))


def test_frames_pipelined_after_connect_wait_for_accept_then_use_the_version() -> None:
    conn = ServerConnection()
    data = wire("CONNECT", "accept-version:1.2") + wire(
        "SUBSCRIBE", "id:0", "destination:/topic/a\\cb"
    )
    (connect,) = conn.receive_data(data)  # the SUBSCRIBE waits: the CONNECT may be refused
    assert isinstance(connect, ConnectRequested)
    assert conn.state is State.CONNECTING
    assert conn.receive_data(b"") == []
    conn.accept(session_id="s", user_name=None)
    (subscribe,) = conn.receive_data(b"")
    assert isinstance(subscribe, SubscribeRequested)
    assert subscribe.destination == "/topic/a:b"  # unescaped as 1.2


def test_connect_then_disconnect_in_one_chunk() -> None:
    conn = ServerConnection()
    data = wire("CONNECT", "accept-version:1.2") + wire("DISCONNECT", "receipt:bye")
    (connect,) = conn.receive_data(data)
    assert isinstance(connect, ConnectRequested)
    conn.accept(session_id="s", user_name=None)
    (disconnect,) = conn.receive_data(b"")
    assert isinstance(disconnect, DisconnectRequested) and disconnect.receipt == "bye"


def test_heartbeats_are_counted() -> None:
    conn = connected()
    assert conn.receive_data(b"\n\r\n\n") == []
    assert conn.heartbeats_received == 3


def test_split_input() -> None:
    conn = ServerConnection()
    data = wire("CONNECT", "accept-version:1.2") + wire("SEND", "destination:/a", body=b"hi")
    events = []
    for i in range(len(data)):
        events += conn.receive_data(data[i : i + 1])
        if conn.state is State.CONNECTING:
            conn.accept(session_id="s", user_name=None)
    assert [type(e) for e in events] == [ConnectRequested, SendRequested]


# -- SUBSCRIBE / UNSUBSCRIBE ----------------------------------------------------------


def test_subscribe() -> None:
    conn = connected()
    (event,) = conn.receive_data(
        wire("SUBSCRIBE", "id:7", "destination:/user/queue/n", "ack:client-individual")
    )
    assert isinstance(event, SubscribeRequested)
    assert (event.subscription_id, event.destination, event.ack) == (
        "7",
        "/user/queue/n",
        "client-individual",
    )
    assert event.receipt is None
    assert event.frame.command == "SUBSCRIBE"
    assert conn.subscriptions == {"7": Subscription("7", "/user/queue/n", "client-individual")}


def test_subscribe_ack_defaults_to_auto() -> None:
    conn = connected()
    (event,) = conn.receive_data(wire("SUBSCRIBE", "id:1", "destination:/a"))
    assert isinstance(event, SubscribeRequested)
    assert event.ack == "auto"


def test_subscribe_invalid_ack() -> None:
    with pytest.raises(StompProtocolError, match="ack mode"):
        connected().receive_data(wire("SUBSCRIBE", "id:1", "destination:/a", "ack:maybe"))


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_subscribe_needs_an_id_in_1_1_and_1_2(version: str) -> None:
    with pytest.raises(StompProtocolError, match="'id'"):
        connected(version).receive_data(wire("SUBSCRIBE", "destination:/a"))


def test_subscribe_id_defaults_to_destination_in_1_0() -> None:
    conn = connected("1.0")
    (event,) = conn.receive_data(wire("SUBSCRIBE", "destination:/a"))
    assert isinstance(event, SubscribeRequested)
    assert event.subscription_id == "/a"
    assert "/a" in conn.subscriptions


def test_subscribe_needs_a_destination() -> None:
    with pytest.raises(StompProtocolError, match="'destination'"):
        connected().receive_data(wire("SUBSCRIBE", "id:1"))


def test_duplicate_subscription_id() -> None:
    conn = connected()
    conn.receive_data(wire("SUBSCRIBE", "id:1", "destination:/a"))
    with pytest.raises(StompProtocolError, match="already in use"):
        conn.receive_data(wire("SUBSCRIBE", "id:1", "destination:/b"))


def test_too_many_subscriptions() -> None:
    conn = connected(limits=Limits(max_subscriptions=2))
    conn.receive_data(wire("SUBSCRIBE", "id:1", "destination:/a"))
    conn.receive_data(wire("SUBSCRIBE", "id:2", "destination:/a"))
    with pytest.raises(StompLimitExceeded, match=r"too many subscriptions \(limit 2\)"):
        conn.receive_data(wire("SUBSCRIBE", "id:3", "destination:/a"))


def test_unsubscribe_frees_a_slot() -> None:
    conn = connected(limits=Limits(max_subscriptions=1))
    conn.receive_data(wire("SUBSCRIBE", "id:1", "destination:/a"))
    (event,) = conn.receive_data(wire("UNSUBSCRIBE", "id:1", "receipt:r"))
    assert event == UnsubscribeRequested("1", "/a", "r")
    assert conn.subscriptions == {}
    conn.receive_data(wire("SUBSCRIBE", "id:2", "destination:/b"))


def test_unsubscribe_unknown_id() -> None:
    with pytest.raises(StompProtocolError, match="no subscription with id '9'"):
        connected().receive_data(wire("UNSUBSCRIBE", "id:9"))


def test_unsubscribe_needs_an_id_in_1_2() -> None:
    conn = connected()
    conn.receive_data(wire("SUBSCRIBE", "id:1", "destination:/a"))
    with pytest.raises(StompProtocolError, match="'id'"):
        conn.receive_data(wire("UNSUBSCRIBE", "destination:/a"))


def test_unsubscribe_by_destination_in_1_0() -> None:
    conn = connected("1.0")
    conn.receive_data(wire("SUBSCRIBE", "id:x", "destination:/a"))
    (event,) = conn.receive_data(wire("UNSUBSCRIBE", "destination:/a"))
    assert event == UnsubscribeRequested("x", "/a", None)
    with pytest.raises(StompProtocolError, match="no subscription to destination"):
        conn.receive_data(wire("UNSUBSCRIBE", "destination:/a"))


def test_remove_subscription_rolls_back() -> None:
    conn = connected()
    conn.receive_data(wire("SUBSCRIBE", "id:1", "destination:/a"))
    assert conn.remove_subscription("1") == Subscription("1", "/a", "auto")
    assert conn.remove_subscription("1") is None
    conn.receive_data(wire("SUBSCRIBE", "id:1", "destination:/a"))  # id free again


def test_subscriptions_view_is_read_only() -> None:
    conn = connected()
    with pytest.raises(TypeError):
        conn.subscriptions["x"] = Subscription("x", "/a", "auto")  # type: ignore[index]


# -- SEND, ACK, NACK ------------------------------------------------------------------


def test_send() -> None:
    conn = connected()
    (event,) = conn.receive_data(
        wire("SEND", "destination:/a", "content-type:text/plain", "x-custom:1", body=b"hi")
    )
    assert isinstance(event, SendRequested)
    assert (event.destination, event.body, event.content_type) == ("/a", b"hi", "text/plain")
    assert event.frame.get("x-custom") == "1"
    assert event.headers == (("x-custom", "1"),)


def test_send_passes_user_defined_headers_on() -> None:
    """STOMP 1.2 §SEND: user-defined headers are passed through to the MESSAGE; SEND's own
    headers are not, and of a repeated header only the first entry counts (§Repeated
    Header Entries)."""
    conn = connected()
    (event,) = conn.receive_data(
        wire(
            "SEND",
            "destination:/a",
            "x-trace:abc",
            "receipt:r",
            "content-type:text/plain",
            "content-length:2",
            "transaction-ish:a\\cb",
            "x-trace:second",
            "destination:/b",
            body=b"hi",
        )
    )
    assert isinstance(event, SendRequested)
    assert event.destination == "/a"
    assert event.headers == (("x-trace", "abc"), ("transaction-ish", "a:b"))


def test_user_defined_headers_are_capped() -> None:
    conn = connected(limits=Limits(max_user_headers=2))
    conn.receive_data(wire("SEND", "destination:/a", "a:1", "b:2"))
    with pytest.raises(StompLimitExceeded, match=r"user-defined headers \(limit 2\)"):
        conn.receive_data(wire("SEND", "destination:/a", "a:1", "b:2", "c:3"))
    conn = connected(limits=Limits(max_user_header_bytes=10))
    conn.receive_data(wire("SEND", "destination:/a", "abcd:123456"))  # 10 bytes
    with pytest.raises(StompLimitExceeded, match=r"\(limit 10 bytes\)"):
        conn.receive_data(wire("SEND", "destination:/a", "abcd:1234567"))


def test_send_needs_a_destination() -> None:
    with pytest.raises(StompProtocolError, match="SEND frame needs a 'destination' header"):
        connected().receive_data(wire("SEND", body=b"hi"))


@pytest.mark.parametrize(
    ("version", "headers", "expected"),
    [
        ("1.2", ("id:m1",), ("m1", None)),
        ("1.2", ("id:m1", "subscription:s"), ("m1", "s")),
        ("1.1", ("message-id:m1", "subscription:s"), ("m1", "s")),
        ("1.0", ("message-id:m1",), ("m1", None)),
    ],
)
def test_ack_and_nack_headers_per_version(
    version: str, headers: tuple[str, ...], expected: tuple[str, str | None]
) -> None:
    conn = connected(version)
    ack, nack = conn.receive_data(wire("ACK", *headers) + wire("NACK", *headers))
    assert ack == AckReceived(*expected, receipt=None)
    assert nack == NackReceived(*expected, receipt=None)


@pytest.mark.parametrize(
    ("version", "headers", "missing"),
    [
        ("1.2", ("message-id:m1",), "'id'"),
        ("1.1", ("message-id:m1",), "'subscription'"),
        ("1.1", ("id:m1", "subscription:s"), "'message-id'"),
        ("1.0", ("id:m1",), "'message-id'"),
    ],
)
def test_ack_missing_header_per_version(
    version: str, headers: tuple[str, ...], missing: str
) -> None:
    with pytest.raises(StompProtocolError, match=missing):
        connected(version).receive_data(wire("ACK", *headers))


# -- transactions ----------------------------------------------------------------------


def test_commit_releases_held_frames_in_order() -> None:
    conn = connected()
    held = conn.receive_data(
        wire("BEGIN", "transaction:t")
        + wire("SEND", "destination:/a", "transaction:t", body=b"1")
        + wire("ACK", "id:m", "transaction:t")
        + wire("SEND", "destination:/b", body=b"now")
        + wire("SEND", "destination:/a", "transaction:t", body=b"2")
    )
    assert len(held) == 1
    assert isinstance(held[0], SendRequested)
    assert held[0].body == b"now"
    released = conn.receive_data(wire("COMMIT", "transaction:t"))
    assert [type(e) for e in released] == [SendRequested, AckReceived, SendRequested]
    assert [e.body for e in released if isinstance(e, SendRequested)] == [b"1", b"2"]
    with pytest.raises(StompProtocolError, match="no transaction"):
        conn.receive_data(wire("COMMIT", "transaction:t"))


def test_abort_drops_held_frames() -> None:
    conn = connected()
    conn.receive_data(wire("BEGIN", "transaction:t"))
    assert conn.receive_data(wire("SEND", "destination:/a", "transaction:t")) == []
    assert conn.receive_data(wire("ABORT", "transaction:t")) == []
    with pytest.raises(StompProtocolError, match="no transaction with id 't'"):
        conn.receive_data(wire("ABORT", "transaction:t"))


def test_transaction_ids_can_be_reused_after_commit() -> None:
    conn = connected()
    conn.receive_data(wire("BEGIN", "transaction:t") + wire("COMMIT", "transaction:t"))
    conn.receive_data(wire("BEGIN", "transaction:t"))


def test_duplicate_begin() -> None:
    conn = connected()
    conn.receive_data(wire("BEGIN", "transaction:t"))
    with pytest.raises(StompProtocolError, match="already begun"):
        conn.receive_data(wire("BEGIN", "transaction:t"))


@pytest.mark.parametrize("command", ["SEND", "ACK", "NACK", "COMMIT", "ABORT"])
def test_unknown_transaction(command: str) -> None:
    with pytest.raises(StompProtocolError, match="no transaction with id 'nope'"):
        connected().receive_data(wire(command, "destination:/a", "id:m", "transaction:nope"))


@pytest.mark.parametrize("command", ["BEGIN", "COMMIT", "ABORT"])
def test_transaction_header_required(command: str) -> None:
    with pytest.raises(StompProtocolError, match="'transaction'"):
        connected().receive_data(wire(command))


def test_too_many_open_transactions() -> None:
    conn = connected(limits=Limits(max_transactions=2))
    conn.receive_data(wire("BEGIN", "transaction:1") + wire("BEGIN", "transaction:2"))
    with pytest.raises(StompLimitExceeded, match=r"too many open transactions \(limit 2\)"):
        conn.receive_data(wire("BEGIN", "transaction:3"))


def test_too_many_held_frames() -> None:
    conn = connected(limits=Limits(max_transaction_frames=2))
    conn.receive_data(wire("BEGIN", "transaction:t"))
    conn.receive_data(wire("ACK", "id:1", "transaction:t") * 2)
    with pytest.raises(StompLimitExceeded, match=r"\(limit 2\)"):
        conn.receive_data(wire("ACK", "id:1", "transaction:t"))


def test_held_frames_are_released_from_the_bound_on_commit() -> None:
    conn = connected(limits=Limits(max_transaction_frames=2, max_transaction_bytes=4))
    for _ in range(3):
        conn.receive_data(wire("BEGIN", "transaction:t"))
        conn.receive_data(wire("SEND", "destination:/a", "transaction:t", body=b"ab") * 2)
        conn.receive_data(wire("COMMIT", "transaction:t"))


def test_too_many_held_bytes() -> None:
    conn = connected(limits=Limits(max_transaction_bytes=4))
    conn.receive_data(wire("BEGIN", "transaction:t"))
    conn.receive_data(wire("SEND", "destination:/a", "transaction:t", body=b"abcd"))
    with pytest.raises(StompLimitExceeded, match=r"\(limit 4 bytes\)"):
        conn.receive_data(wire("SEND", "destination:/a", "transaction:t", body=b"e"))


# -- receipts -------------------------------------------------------------------------


def test_receipts_ride_on_work_events() -> None:
    conn = connected()
    events = conn.receive_data(
        wire("SUBSCRIBE", "id:1", "destination:/a", "receipt:r1")
        + wire("SEND", "destination:/a", "receipt:r2")
        + wire("ACK", "id:m", "receipt:r3")
        + wire("NACK", "id:m", "receipt:r4")
        + wire("UNSUBSCRIBE", "id:1", "receipt:r5")
    )
    assert [getattr(e, "receipt", None) for e in events] == ["r1", "r2", "r3", "r4", "r5"]
    assert [error_receipt(e) for e in events] == ["r1", "r2", "r3", "r4", "r5"]


def test_receipts_for_transaction_frames_are_due_at_once() -> None:
    conn = connected()
    events = conn.receive_data(
        wire("BEGIN", "transaction:t", "receipt:b")
        + wire("SEND", "destination:/a", "transaction:t", "receipt:s")
        + wire("ACK", "id:m", "transaction:t", "receipt:a")
    )
    assert events == [ReceiptDue("b"), ReceiptDue("s"), ReceiptDue("a")]
    events = conn.receive_data(wire("COMMIT", "transaction:t", "receipt:c"))
    assert [type(e) for e in events] == [SendRequested, AckReceived, ReceiptDue]
    assert [getattr(e, "receipt", None) for e in events] == [None, None, "c"]
    # An ERROR a released frame causes answers the COMMIT, which asked for a receipt.
    assert [error_receipt(e) for e in events] == ["c", "c", "c"]
    conn.receive_data(wire("BEGIN", "transaction:u"))
    assert conn.receive_data(wire("ABORT", "transaction:u", "receipt:x")) == [ReceiptDue("x")]


def test_receipt_frame() -> None:
    conn = connected()
    data = conn.receipt("a:b")
    assert data == b"RECEIPT\nreceipt-id:a\\cb\n\n\0"
    assert parse_server_frame(data).get("receipt-id") == "a:b"


# -- DISCONNECT and CLOSED --------------------------------------------------------------


def test_disconnect_with_receipt() -> None:
    conn = connected()
    conn.receive_data(wire("BEGIN", "transaction:t"))
    conn.receive_data(wire("SEND", "destination:/a", "transaction:t"))
    events = conn.receive_data(wire("DISCONNECT", "receipt:77") + wire("SEND", "destination:/a"))
    assert events == [DisconnectRequested("77")]  # the open transaction is aborted
    assert conn.state is State.CLOSED
    assert conn.receipt("77") == b"RECEIPT\nreceipt-id:77\n\n\0"
    assert conn.receive_data(wire("SEND", "destination:/a")) == []  # ignored once closed


def test_data_after_an_error_is_ignored() -> None:
    conn = connected()
    with pytest.raises(StompProtocolError):
        conn.receive_data(wire("SEND"))
    assert conn.state is State.CLOSED
    assert conn.receive_data(wire("SEND", "destination:/a")) == []


def test_events_before_an_error_in_the_same_data_come_first() -> None:
    """Frames before a bad one are acted on, as RabbitMQ does (issue 14): their events come
    back, and the next call (``receive_data(b"")`` will do) raises the error."""
    conn = connected()
    events = conn.receive_data(
        wire("SUBSCRIBE", "id:1", "destination:/a", "receipt:r1") + b"BOGUS\n\n\0"
    )
    assert [type(e) for e in events] == [SubscribeRequested]
    assert conn.state is State.CLOSED  # nothing after the bad frame is parsed
    with pytest.raises(StompProtocolError, match="unknown command"):
        conn.receive_data(b"")
    assert conn.receive_data(wire("SEND", "destination:/a")) == []  # raised once, then closed


def test_events_before_a_session_rule_error_come_first() -> None:
    conn = connected()
    events = conn.receive_data(
        wire("SEND", "destination:/a", "receipt:ok") + wire("SEND", "receipt:bad")
    )
    assert [type(e) for e in events] == [SendRequested]
    with pytest.raises(StompProtocolError, match="'destination'"):
        conn.receive_data(b"")
    assert parse_server_frame(conn.error("bad")).get("receipt-id") == "bad"


# -- ERROR frames -----------------------------------------------------------------------


def test_error_frame_shape() -> None:
    conn = connected()
    data = conn.error("malformed frame: no destination", detail="Did not contain a destination")
    assert conn.state is State.CLOSED
    frame = parse_server_frame(data)
    assert frame.command == "ERROR"
    assert frame.get("message") == "malformed frame: no destination"
    assert frame.get("content-type") == "text/plain"
    assert frame.get("content-length") == str(len(frame.body))
    assert frame.body == b"Did not contain a destination"
    assert frame.get("receipt-id") is None
    assert frame.get("version") is None


def test_error_carries_the_offending_frames_receipt() -> None:
    conn = connected()
    with pytest.raises(StompProtocolError) as excinfo:
        conn.receive_data(wire("SEND", "receipt:message-12345", body=b"x"))
    frame = parse_server_frame(conn.error(excinfo.value.message, detail=excinfo.value.detail))
    assert frame.get("receipt-id") == "message-12345"
    assert frame.get("message") == "SEND frame needs a 'destination' header"


@pytest.mark.parametrize(
    "data",
    [
        b"SUBSCRIBE\nid:1\nreceipt:r7\ndestination:/a\\t\n\n\0",  # undefined escape
        b"SEND\nreceipt:r7\ndestination:/a\ncontent-length:x\n\n\0",
        b"SEND\nreceipt:r7\ndestination:/a\r\nbad\n\n\0",  # header line without colon
    ],
)
def test_error_about_a_malformed_frame_names_its_receipt_if_read(data: bytes) -> None:
    conn = connected()
    with pytest.raises(StompProtocolError):
        conn.receive_data(data)
    assert parse_server_frame(conn.error("bad")).get("receipt-id") == "r7"


def test_error_receipt_is_not_taken_from_an_earlier_good_frame() -> None:
    conn = connected()
    conn.receive_data(wire("SEND", "destination:/a", "receipt:ok") + b"BOGUS\n\n\0")
    with pytest.raises(StompProtocolError):
        conn.receive_data(b"")
    assert parse_server_frame(conn.error("bad")).get("receipt-id") is None


def test_error_with_explicit_receipt_and_multiline_message() -> None:
    conn = ServerConnection()
    data = conn.error("bad\r\nthing", receipt="r1")
    frame = parse_server_frame(data, "1.0")
    assert frame.get("message") == "bad thing"
    assert frame.get("receipt-id") == "r1"
    assert frame.get("version") == "1.0,1.1,1.2"
