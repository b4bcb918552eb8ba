"""Frame parser and serializer, driven by literal bytes (STOMP 1.0/1.1/1.2)."""

from __future__ import annotations

import pytest

from tidings.errors import StompLimitExceeded, StompProtocolError
from tidings.stomp.frames import (
    CLIENT_COMMANDS,
    SERVER_COMMANDS,
    Frame,
    FrameParser,
    Limits,
    escape_header,
    serialize,
    unescape_header,
)

SEND = b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello\0"
SEND_FRAME = Frame("SEND", (("destination", "/queue/a"), ("content-type", "text/plain")), b"hello")


def feed_bytewise(parser: FrameParser, data: bytes) -> list[Frame]:
    frames: list[Frame] = []
    for i in range(len(data)):
        frames += parser.feed(data[i : i + 1])
    return frames


def parse_one(
    data: bytes, version: str = "1.0", commands: frozenset[str] = CLIENT_COMMANDS
) -> Frame:
    parser = FrameParser(commands=commands)
    parser.version = version
    frames = parser.feed(data)
    assert len(frames) == 1
    return frames[0]


# -- framing -------------------------------------------------------------------


def test_parses_a_frame() -> None:
    assert FrameParser().feed(SEND) == [SEND_FRAME]


def test_frame_split_byte_by_byte() -> None:
    parser = FrameParser()
    assert feed_bytewise(parser, SEND + SEND) == [SEND_FRAME, SEND_FRAME]


@pytest.mark.parametrize("cut", range(1, len(SEND)))
def test_frame_split_at_every_position(cut: int) -> None:
    parser = FrameParser()
    assert parser.feed(SEND[:cut]) == []
    assert parser.feed(SEND[cut:]) == [SEND_FRAME]


def test_several_frames_in_one_call() -> None:
    assert FrameParser().feed(SEND * 3) == [SEND_FRAME] * 3


def line_by_line_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: FrameParser, what: str) -> bytes | None:
        raise AssertionError(f"parsed line by line ({what})")

    monkeypatch.setattr(FrameParser, "_take_line", refuse)


def test_a_plain_whole_frame_is_parsed_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a client sends on connecting: no line-by-line parse (``_take_whole_frame``)."""
    connect = b"CONNECT\naccept-version:1.2\nlogin:42\nhost:h\nheart-beat:0,0\n\n\0"
    subscribe = b"SUBSCRIBE\nid:0\ndestination:/user/42/message\nreceipt:s0\n\n\0"
    line_by_line_refused(monkeypatch)
    parser = FrameParser()
    parser.version = "1.2"
    frames = parser.feed(b"\n" + connect + subscribe + b"\n" + SEND + b"DISCONNECT\n\n\0")
    assert [f.command for f in frames] == ["CONNECT", "SUBSCRIBE", "SEND", "DISCONNECT"]
    assert frames[1].headers == (
        ("id", "0"),
        ("destination", "/user/42/message"),
        ("receipt", "s0"),
    )
    assert frames[2] == SEND_FRAME
    assert parser.heartbeats_received == 2
    assert parser.buffered_bytes == 0


@pytest.mark.parametrize(
    "data",
    [
        b"SEND\r\ndestination:/a\r\n\r\nhi\0",  # CR LF line ends
        b"SEND\ndestination:/a\\cb\n\nhi\0",  # an escape
        b"SEND\ncontent-length:2\n\nhi\0",  # a declared length
        b"SEND\ndestination:/a\n\nno NUL yet",  # not all here
        b"SEND\ndestination\n\n\0",  # not plain: an error, found line by line
    ],
)
def test_other_frames_are_parsed_line_by_line(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    line_by_line_refused(monkeypatch)
    parser = FrameParser()
    parser.version = "1.2"
    with pytest.raises(AssertionError, match="parsed line by line"):
        parser.feed(data)


def test_heartbeats_between_frames_are_skipped_and_counted() -> None:
    parser = FrameParser()
    data = b"\n\r\n" + SEND + b"\n\n" + SEND + b"\r\n"
    assert feed_bytewise(parser, data) == [SEND_FRAME, SEND_FRAME]
    assert parser.heartbeats_received == 5


def test_only_heartbeats() -> None:
    parser = FrameParser()
    assert parser.feed(b"\n" * 10_000) == []
    assert parser.heartbeats_received == 10_000


def test_crlf_line_ends() -> None:
    data = b"SEND\r\ndestination:/queue/a\r\ncontent-type:text/plain\r\n\r\nhello\0"
    assert FrameParser().feed(data) == [SEND_FRAME]
    assert feed_bytewise(FrameParser(), data) == [SEND_FRAME]


def test_cr_without_lf_starts_a_frame_and_is_an_unknown_command() -> None:
    with pytest.raises(StompProtocolError, match="unknown command"):
        FrameParser().feed(b"\rSEND\n\n\0")


def test_empty_body_and_no_headers() -> None:
    assert FrameParser().feed(b"DISCONNECT\n\n\0") == [Frame("DISCONNECT")]


def test_content_length_body_may_hold_nuls() -> None:
    data = b"SEND\ndestination:/a\ncontent-length:5\n\n\0a\0b\0\0"
    expected = Frame("SEND", (("destination", "/a"), ("content-length", "5")), b"\0a\0b\0")
    assert FrameParser().feed(data) == [expected]
    assert feed_bytewise(FrameParser(), data + data) == [expected, expected]


def test_content_length_zero() -> None:
    assert parse_one(b"SEND\ncontent-length:0\n\n\0").body == b""


def test_content_length_body_without_nul_is_an_error() -> None:
    with pytest.raises(StompProtocolError, match="NUL"):
        FrameParser().feed(b"SEND\ncontent-length:2\n\nabc\0")


@pytest.mark.parametrize("value", ["-1", "abc", "", " 3", "3 ", "+3", "0x3", "٣"])
def test_invalid_content_length(value: str) -> None:
    with pytest.raises(StompProtocolError, match="content-length"):
        FrameParser().feed(f"SEND\ncontent-length:{value}\n\nabc\0".encode())


def test_first_content_length_wins() -> None:
    frame = parse_one(b"SEND\ncontent-length:1\ncontent-length:5\n\na\0")
    assert frame.body == b"a"


def test_repeated_header_first_wins_and_all_are_kept() -> None:
    frame = parse_one(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0", commands=SERVER_COMMANDS)
    assert frame.get("foo") == "World"
    assert frame.headers == (("foo", "World"), ("foo", "Hello"))
    assert frame.get("bar") is None
    assert frame.get("bar", "x") == "x"


def test_header_split_at_first_colon() -> None:
    frame = parse_one(b"SEND\ndestination:a:b:c\n\n\0")
    assert frame.get("destination") == "a:b:c"


def test_empty_header_value() -> None:
    assert parse_one(b"SEND\nx:\n\n\0").get("x") == ""


def test_header_spaces_are_kept() -> None:
    assert parse_one(b"SEND\n x : y \n\n\0").headers == ((" x ", " y "),)


def test_header_without_colon() -> None:
    with pytest.raises(StompProtocolError, match="colon"):
        FrameParser().feed(b"SEND\ndestination\n\n\0")


def test_header_with_empty_name() -> None:
    with pytest.raises(StompProtocolError, match="empty name"):
        FrameParser().feed(b"SEND\n:x\n\n\0")


@pytest.mark.parametrize("line", [b"a:b\0c", b"a:b\rc"])
def test_header_with_nul_or_cr_inside(line: bytes) -> None:
    with pytest.raises(StompProtocolError, match="NUL or CR"):
        FrameParser().feed(b"SEND\n" + line + b"\n\n\0")


def test_header_not_utf8() -> None:
    with pytest.raises(StompProtocolError, match="UTF-8"):
        FrameParser().feed(b"SEND\ndestination:\xff\n\n\0")


def test_utf8_headers() -> None:
    frame = parse_one("SEND\ndestination:/café/☃\n\n\0".encode())
    assert frame.get("destination") == "/café/☃"


@pytest.mark.parametrize("command", [b"FOO", b"send", b"MESSAGE", b"CONNECTED", b"SEND "])
def test_unknown_command(command: bytes) -> None:
    with pytest.raises(StompProtocolError, match="unknown command"):
        FrameParser().feed(command + b"\n\n\0")


def test_every_client_command_is_accepted() -> None:
    data = b"".join(c.encode() + b"\n\n\0" for c in sorted(CLIENT_COMMANDS))
    assert [f.command for f in FrameParser().feed(data)] == sorted(CLIENT_COMMANDS)


def test_server_commands_when_asked() -> None:
    parser = FrameParser(commands=SERVER_COMMANDS)
    assert parser.feed(b"RECEIPT\nreceipt-id:1\n\n\0") == [Frame("RECEIPT", (("receipt-id", "1"),))]
    with pytest.raises(StompProtocolError, match="unknown command"):
        parser.feed(b"SEND\n\n\0")


def test_broken_parser_keeps_raising() -> None:
    parser = FrameParser()
    with pytest.raises(StompProtocolError):
        parser.feed(b"BOGUS\n\n\0")
    with pytest.raises(StompProtocolError, match="earlier error"):
        parser.feed(SEND)
    with pytest.raises(StompProtocolError):
        parser.next_frame()


def test_broken_parser_keeps_the_error_class() -> None:
    parser = FrameParser(Limits(max_headers=0))
    with pytest.raises(StompLimitExceeded):
        parser.feed(SEND)
    with pytest.raises(StompLimitExceeded):
        parser.feed(b"")


# -- header escaping (STOMP 1.2 §Value Encoding) --------------------------------

ESCAPED_SEND = b"SEND\ndestination:a\\cb\\nc\\\\d\\re\n\n\0"


def test_unescape_1_2() -> None:
    assert parse_one(ESCAPED_SEND, "1.2").get("destination") == "a:b\nc\\d\re"


def test_unescape_1_1_has_no_cr_escape() -> None:
    with pytest.raises(StompProtocolError, match="invalid escape"):
        parse_one(ESCAPED_SEND, "1.1")
    frame = parse_one(b"SEND\ndestination:a\\cb\\nc\\\\d\n\n\0", "1.1")
    assert frame.get("destination") == "a:b\nc\\d"


def test_no_unescape_in_1_0() -> None:
    assert parse_one(ESCAPED_SEND, "1.0").get("destination") == "a\\cb\\nc\\\\d\\re"


def test_header_names_are_unescaped_too() -> None:
    assert parse_one(b"SEND\na\\cb:c\n\n\0", "1.2").headers == (("a:b", "c"),)


@pytest.mark.parametrize("command", [b"CONNECT", b"STOMP"])
def test_connect_headers_are_not_unescaped(command: bytes) -> None:
    frame = parse_one(command + b"\nlogin:a\\cb\\t\n\n\0", "1.2")
    assert frame.get("login") == "a\\cb\\t"


def test_connected_headers_are_not_unescaped() -> None:
    frame = parse_one(b"CONNECTED\nserver:a\\c\n\n\0", "1.2", commands=SERVER_COMMANDS)
    assert frame.get("server") == "a\\c"


@pytest.mark.parametrize("value", [b"a\\tb", b"a\\", b"\\x", b"\\C"])
def test_bad_escape_is_a_protocol_error(value: bytes) -> None:
    with pytest.raises(StompProtocolError, match="invalid escape"):
        parse_one(b"SEND\ndestination:" + value + b"\n\n\0", "1.2")


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("1.2", "a\\\\b\\nc\\cd\\re"),
        ("1.1", "a\\\\b\\nc\\cd\re"),
        ("1.0", "a\\b\nc:d\re"),
    ],
)
def test_escape_header(version: str, expected: str) -> None:
    assert escape_header("a\\b\nc:d\re", version) == expected


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_escape_round_trip(version: str) -> None:
    value = "\\n:\\c\n\\\\x:"
    assert unescape_header(escape_header(value, version), version) == value


def test_unknown_version_is_rejected() -> None:
    with pytest.raises(ValueError, match="version"):
        escape_header("x", "2.0")
    with pytest.raises(ValueError, match="version"):
        FrameParser().version = "1.3"


# -- limits (STOMP 1.2 §Size Limits) --------------------------------------------


def frame_of_size(size: int) -> bytes:
    """A SEND frame that is exactly ``size`` bytes on the wire, NUL included."""
    head = b"SEND\n\n"
    return head + b"x" * (size - len(head) - 1) + b"\0"


def test_frame_size_limit_just_under_and_at() -> None:
    limits = Limits(max_frame_bytes=100)
    assert len(FrameParser(limits).feed(frame_of_size(100))) == 1
    assert len(feed_bytewise(FrameParser(limits), frame_of_size(100))) == 1


def test_frame_size_limit_just_over() -> None:
    with pytest.raises(StompLimitExceeded, match=r"frame too large \(limit 100 bytes\)"):
        FrameParser(Limits(max_frame_bytes=100)).feed(frame_of_size(101))


def test_frame_size_limit_raises_before_the_nul_arrives() -> None:
    parser = FrameParser(Limits(max_frame_bytes=100))
    data = frame_of_size(101)
    parser.feed(data[:99])  # 99 bytes, no NUL yet: a 100-byte frame is still possible
    with pytest.raises(StompLimitExceeded, match="frame too large"):
        parser.feed(data[99:100])  # 100 bytes without NUL: the frame needs at least 101


def test_frame_size_limit_counts_headers() -> None:
    limits = Limits(max_frame_bytes=50)
    with pytest.raises(StompLimitExceeded, match="frame too large"):
        FrameParser(limits).feed(b"SEND\n" + b"h:v\n" * 20)  # no blank line or NUL yet


def test_frame_size_limit_with_content_length() -> None:
    limits = Limits(max_frame_bytes=100)
    head = b"SEND\ncontent-length:"
    for size, fits in [(100, True), (101, False)]:
        length = size - len(head) - len(b"00\n\n") - 1
        data = head + b"%02d\n\n" % length + b"\0" * length + b"\0"
        assert len(data) == size
        if fits:
            assert len(FrameParser(limits).feed(data)) == 1
        else:
            parser = FrameParser(limits)
            with pytest.raises(StompLimitExceeded, match="frame too large"):
                parser.feed(data[: len(head) + 4])  # raises on the header, before any body


def test_huge_content_length_raises_at_once() -> None:
    with pytest.raises(StompLimitExceeded, match="frame too large"):
        FrameParser().feed(b"SEND\ncontent-length:" + b"9" * 5000 + b"\n\n")


def test_frames_at_the_limit_back_to_back() -> None:
    limits = Limits(max_frame_bytes=100)
    assert len(FrameParser(limits).feed(frame_of_size(100) * 5)) == 5


def test_header_count_limit() -> None:
    limits = Limits(max_headers=3)
    assert len(FrameParser(limits).feed(b"SEND\na:1\nb:2\nc:3\n\n\0")) == 1
    parser = FrameParser(limits)
    with pytest.raises(StompLimitExceeded, match=r"too many headers \(limit 3\)"):
        parser.feed(b"SEND\na:1\nb:2\nc:3\nd:4\n")  # before the frame ends


def test_header_line_limit() -> None:
    limits = Limits(max_header_line=10)
    assert len(FrameParser(limits).feed(b"SEND\nabc:123456\r\n\n\0")) == 1  # 10 bytes + CR LF
    with pytest.raises(StompLimitExceeded, match=r"header line too long \(limit 10 bytes\)"):
        FrameParser(limits).feed(b"SEND\nabc:1234567\n\n\0")


def test_header_line_limit_raises_before_the_eol() -> None:
    parser = FrameParser(Limits(max_header_line=10))
    parser.feed(b"SEND\nabc:123456")  # 10 bytes: may still end here
    parser.feed(b"\r")  # could be the start of CR LF
    with pytest.raises(StompLimitExceeded, match="header line too long"):
        parser.feed(b"x")


def test_header_line_limit_partial_line_bytewise() -> None:
    parser = FrameParser(Limits(max_header_line=10))
    parser.feed(b"SEND\n")
    for byte in b"abc:123456":
        parser.feed(bytes([byte]))
    with pytest.raises(StompLimitExceeded):
        parser.feed(b"7")


def test_command_line_limit() -> None:
    parser = FrameParser(Limits(max_header_line=10))
    with pytest.raises(StompLimitExceeded, match="command line too long"):
        parser.feed(b"S" * 11)


def test_partial_state_does_not_rescan() -> None:
    """A 60 KiB body fed one byte at a time completes quickly (no quadratic rescans)."""
    body = b"x" * 60_000
    parser = FrameParser()
    parser.feed(b"SEND\n\n")
    for i in range(len(body)):
        assert parser.feed(body[i : i + 1]) == []
    assert parser.feed(b"\0")[0].body == body


# -- serializer -------------------------------------------------------------------


def test_serialize_send() -> None:
    assert serialize(SEND_FRAME) == SEND


def test_serialize_adds_content_length_to_message_and_error() -> None:
    message = Frame("MESSAGE", (("destination", "/a"),), b"hi")
    assert serialize(message) == b"MESSAGE\ndestination:/a\ncontent-length:2\n\nhi\0"
    assert serialize(Frame("ERROR")) == b"ERROR\ncontent-length:0\n\n\0"


def test_serialize_keeps_a_matching_content_length() -> None:
    frame = Frame("MESSAGE", (("content-length", "2"),), b"hi")
    assert serialize(frame) == b"MESSAGE\ncontent-length:2\n\nhi\0"


def test_serialize_rejects_a_wrong_content_length() -> None:
    with pytest.raises(ValueError, match="content-length"):
        serialize(Frame("MESSAGE", (("content-length", "3"),), b"hi"))


def test_serialize_adds_content_length_when_the_body_has_a_nul() -> None:
    data = serialize(Frame("SEND", (), b"a\0b"))
    assert data == b"SEND\ncontent-length:3\n\na\0b\0"
    assert FrameParser().feed(data)[0].body == b"a\0b"


def test_serialize_escapes_per_version() -> None:
    frame = Frame("MESSAGE", (("a:b", "c\nd"),))
    assert serialize(frame, "1.2") == b"MESSAGE\na\\cb:c\\nd\ncontent-length:0\n\n\0"
    with pytest.raises(ValueError, match="cannot be represented"):
        serialize(frame, "1.0")


def test_serialize_does_not_escape_connect_and_connected() -> None:
    connected = Frame("CONNECTED", (("server", "a:b\\c"),))
    assert serialize(connected, "1.2") == b"CONNECTED\nserver:a:b\\c\n\n\0"
    connect = Frame("CONNECT", (("passcode", "p:w"),))
    assert serialize(connect, "1.2") == b"CONNECT\npasscode:p:w\n\n\0"


@pytest.mark.parametrize(
    ("headers", "version"),
    [
        ((("a", "x\ry"),), "1.1"),
        ((("a", "x\0y"),), "1.2"),
        ((("", "x"),), "1.2"),
        ((("a:b", "x"),), "1.0"),
    ],
)
def test_serialize_rejects_unrepresentable_headers(
    headers: tuple[tuple[str, str], ...], version: str
) -> None:
    with pytest.raises(ValueError, match="cannot be represented"):
        serialize(Frame("SEND", headers), version)


def test_serialize_rejects_unknown_commands() -> None:
    with pytest.raises(ValueError, match="unknown STOMP command"):
        serialize(Frame("SEND\nx:y"))


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_serialize_then_parse_round_trip(version: str) -> None:
    frame = Frame("SEND", (("destination", "/q/ü"), ("x", "a:b")), b"\x00\xff")
    parser = FrameParser()
    parser.version = version
    expected = Frame("SEND", (*frame.headers, ("content-length", "2")), frame.body)
    assert feed_bytewise(parser, serialize(frame, version)) == [expected]
