"""RFC 6455 without I/O: the client-frame reader, close frames and the opening handshake.

Vectors are the RFC's own where it has them (§1.3 for the handshake, §5.7 for framing).
Client frames are built by ``masked_frame`` below, which masks with its own XOR rather
than the module's ``unmask``, so the two check each other.
"""

from __future__ import annotations

import struct

import pytest
from multidict import CIMultiDict

from tidings.wsframe import (
    CLOSE_INVALID_DATA,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ClientFrameReader,
    WebSocketError,
    encode_close,
    encode_frame,
    frame_header,
    parse_close,
    unmask,
)
from tidings.wshandshake import HandshakeError, accept_handshake

RFC_MASK = bytes((0x37, 0xFA, 0x21, 0x3D))  # the masking key of every §5.7 example
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # §1.3
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # §1.3
STOMP_PROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")

# §5.7, byte for byte.
RFC_UNMASKED_HELLO = bytes((0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F))
RFC_MASKED_HELLO = bytes((0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58))
RFC_FRAGMENT_HEL = bytes((0x01, 0x03, 0x48, 0x65, 0x6C))  # unmasked, as in the RFC
RFC_FRAGMENT_LO = bytes((0x80, 0x02, 0x6C, 0x6F))
RFC_UNMASKED_PING = bytes((0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F))
RFC_MASKED_PONG = bytes((0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58))
RFC_256_HEADER = bytes((0x82, 0x7E, 0x01, 0x00))
RFC_64K_HEADER = bytes((0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0))


def masked_frame(
    payload: bytes,
    opcode: int = OP_TEXT,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes = RFC_MASK,
) -> bytes:
    """One client frame (§5.2): masked, with the shortest length encoding."""
    first = (0x80 if fin else 0) | rsv | opcode
    length = len(payload)
    if length < 126:
        header = bytes((first, 0x80 | length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def refused(reader: ClientFrameReader, *chunks: bytes) -> WebSocketError:
    """The error the reader raises while being fed ``chunks``; fails if it raises none."""
    with pytest.raises(WebSocketError) as caught:
        for chunk in chunks:
            reader.feed(chunk)
    return caught.value


# -- §5.7 examples ---------------------------------------------------------------------------


def test_rfc_masked_hello() -> None:
    assert masked_frame(b"Hello") == RFC_MASKED_HELLO  # the helper agrees with the RFC
    assert ClientFrameReader(1024).feed(RFC_MASKED_HELLO) == [(OP_TEXT, b"Hello")]


def test_rfc_unmasked_hello_from_a_client_is_a_protocol_error() -> None:
    error = refused(ClientFrameReader(1024), RFC_UNMASKED_HELLO)
    assert error.code == CLOSE_PROTOCOL_ERROR
    assert "masked" in error.reason


def test_server_frames_match_the_rfc_unmasked_examples() -> None:
    assert encode_frame(b"Hello") == RFC_UNMASKED_HELLO
    assert encode_frame(b"Hello", OP_PING) == RFC_UNMASKED_PING
    assert frame_header(256, OP_BINARY) == RFC_256_HEADER
    assert frame_header(65536, OP_BINARY) == RFC_64K_HEADER
    assert frame_header(125) == bytes((0x81, 125))
    assert frame_header(126) == bytes((0x81, 126, 0, 126))
    assert frame_header(65535) == bytes((0x81, 126, 0xFF, 0xFF))


def test_rfc_fragmented_hello_masked() -> None:
    hel = masked_frame(b"Hel", fin=False)
    lo = masked_frame(b"lo", OP_CONTINUATION)
    # The RFC's fragments with the mask bit set: same opcodes, FIN bits and lengths.
    assert hel[:2] == bytes((RFC_FRAGMENT_HEL[0], RFC_FRAGMENT_HEL[1] | 0x80))
    assert lo[:2] == bytes((RFC_FRAGMENT_LO[0], RFC_FRAGMENT_LO[1] | 0x80))
    reader = ClientFrameReader(1024)
    # A continuation is reported with its message's opcode.
    assert reader.feed(hel) == [(OP_TEXT, b"Hel")]
    assert reader.feed(lo) == [(OP_TEXT, b"lo")]
    # The message is over: a new one may start.
    assert reader.feed(RFC_MASKED_HELLO) == [(OP_TEXT, b"Hello")]


def test_rfc_fragmented_hello_unmasked_is_refused() -> None:
    error = refused(ClientFrameReader(1024), RFC_FRAGMENT_HEL + RFC_FRAGMENT_LO)
    assert error.code == CLOSE_PROTOCOL_ERROR


def test_rfc_masked_pong_and_a_masked_ping() -> None:
    reader = ClientFrameReader(1024)
    assert reader.feed(RFC_MASKED_PONG) == [(OP_PONG, b"Hello")]
    assert reader.feed(masked_frame(b"Hello", OP_PING)) == [(OP_PING, b"Hello")]
    assert reader.feed(masked_frame(b"", OP_PING)) == [(OP_PING, b"")]


def test_rfc_256_byte_binary_uses_a_16_bit_length() -> None:
    payload = bytes(range(256))
    frame = masked_frame(payload, OP_BINARY)
    assert frame[:4] == bytes((0x82, 0xFE, 0x01, 0x00))  # RFC header, mask bit set
    assert ClientFrameReader(1024).feed(frame) == [(OP_BINARY, payload)]


def test_rfc_64k_binary_uses_a_64_bit_length() -> None:
    payload = bytes(i % 251 for i in range(65536))
    frame = masked_frame(payload, OP_BINARY)
    assert frame[:10] == bytes((0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0))
    reader = ClientFrameReader(65536)
    # In 1000-byte chunks: nothing until the last byte is in.
    frames = []
    for start in range(0, len(frame), 1000):
        got = reader.feed(frame[start : start + 1000])
        assert got == [] or start + 1000 >= len(frame)
        frames.extend(got)
    assert frames == [(OP_BINARY, payload)]


@pytest.mark.parametrize("length", [125, 126, 127, 65535, 65536, 70000])
def test_lengths_either_side_of_each_encoding(length: int) -> None:
    payload = b"x" * length
    assert ClientFrameReader(70000).feed(masked_frame(payload, OP_BINARY)) == [(OP_BINARY, payload)]


def test_unmask_rfc_vector() -> None:
    assert unmask(bytes((0x7F, 0x9F, 0x4D, 0x51, 0x58)), RFC_MASK) == b"Hello"
    assert unmask(b"", RFC_MASK) == b""
    data = bytes(range(7))  # not a multiple of the key's length
    assert unmask(unmask(data, RFC_MASK), RFC_MASK) == data
    assert unmask(b"\x00\x00\x00\x00\x00", RFC_MASK) == RFC_MASK + RFC_MASK[:1]


def test_byte_by_byte_gives_the_same_frames() -> None:
    stream = b"".join(
        (
            RFC_MASKED_HELLO,
            masked_frame(b"Hel", fin=False),
            masked_frame(b"ping", OP_PING),
            masked_frame(b"lo", OP_CONTINUATION),
            RFC_MASKED_PONG,
            masked_frame(bytes(range(256)), OP_BINARY),
            masked_frame("ünïcode €".encode(), mask=b"\x01\x02\x03\x04"),
            masked_frame(struct.pack("!H", 1000) + b"bye", OP_CLOSE),
        )
    )
    expected = [
        (OP_TEXT, b"Hello"),
        (OP_TEXT, b"Hel"),
        (OP_PING, b"ping"),
        (OP_TEXT, b"lo"),
        (OP_PONG, b"Hello"),
        (OP_BINARY, bytes(range(256))),
        (OP_TEXT, "ünïcode €".encode()),
        (OP_CLOSE, b"\x03\xe8bye"),
    ]
    assert ClientFrameReader(1024).feed(stream) == expected
    reader = ClientFrameReader(1024)
    one_by_one = [frame for i in range(len(stream)) for frame in reader.feed(stream[i : i + 1])]
    assert one_by_one == expected


# -- framing rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
def test_reserved_bits_are_a_protocol_error(rsv: int) -> None:
    error = refused(ClientFrameReader(1024), masked_frame(b"Hello", rsv=rsv))
    assert error.code == CLOSE_PROTOCOL_ERROR


def test_unmasked_header_is_refused_before_its_payload() -> None:
    error = refused(ClientFrameReader(1024), RFC_UNMASKED_HELLO[:2])
    assert error.code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_unknown_opcode_is_a_protocol_error(opcode: int) -> None:
    error = refused(ClientFrameReader(1024), masked_frame(b"x", opcode))
    assert error.code == CLOSE_PROTOCOL_ERROR
    assert "opcode" in error.reason


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_fragmented_control_frame_is_a_protocol_error(opcode: int) -> None:
    error = refused(ClientFrameReader(1024), masked_frame(b"", opcode, fin=False))
    assert error.code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_control_frame_over_125_bytes_is_a_protocol_error(opcode: int) -> None:
    payload = struct.pack("!H", 1000) + b"x" * 124  # 126 bytes
    error = refused(ClientFrameReader(1024), masked_frame(payload, opcode))
    assert error.code == CLOSE_PROTOCOL_ERROR
    # 125 bytes is the most a control frame may carry.
    assert ClientFrameReader(1024).feed(masked_frame(payload[:125], opcode)) == [
        (opcode, payload[:125])
    ]


def test_continuation_without_a_message_is_a_protocol_error() -> None:
    error = refused(ClientFrameReader(1024), masked_frame(b"lo", OP_CONTINUATION))
    assert error.code == CLOSE_PROTOCOL_ERROR
    # ... also right after a message that ended.
    reader = ClientFrameReader(1024)
    reader.feed(masked_frame(b"Hel", fin=False) + masked_frame(b"lo", OP_CONTINUATION))
    assert refused(reader, masked_frame(b"!", OP_CONTINUATION)).code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_new_data_frame_inside_a_fragmented_message_is_a_protocol_error(opcode: int) -> None:
    reader = ClientFrameReader(1024)
    assert reader.feed(masked_frame(b"Hel", fin=False)) == [(OP_TEXT, b"Hel")]
    error = refused(reader, masked_frame(b"lo", opcode))
    assert error.code == CLOSE_PROTOCOL_ERROR


def test_control_frames_between_fragments_are_allowed() -> None:
    reader = ClientFrameReader(1024)
    frames = reader.feed(
        masked_frame(b"\x00\xff", OP_BINARY, fin=False)
        + masked_frame(b"are you there", OP_PING)
        + masked_frame(b"\x01", OP_CONTINUATION, fin=False)
        + masked_frame(b"", OP_PONG)
        + masked_frame(b"\xfe", OP_CONTINUATION)
    )
    assert frames == [
        (OP_BINARY, b"\x00\xff"),
        (OP_PING, b"are you there"),
        (OP_BINARY, b"\x01"),
        (OP_PONG, b""),
        (OP_BINARY, b"\xfe"),
    ]


# -- size limit ------------------------------------------------------------------------------


def test_frame_of_exactly_max_payload_is_accepted() -> None:
    assert ClientFrameReader(100).feed(masked_frame(b"x" * 100)) == [(OP_TEXT, b"x" * 100)]


@pytest.mark.parametrize("announced", [101, 1000, 1 << 40], ids=["7-bit", "16-bit", "64-bit"])
def test_frame_over_max_payload_is_refused_once_its_header_is_in(announced: int) -> None:
    if announced < 126:
        header = bytes((0x81, 0x80 | announced)) + RFC_MASK
    elif announced < 1 << 16:
        header = struct.pack("!BBH", 0x81, 0xFE, announced) + RFC_MASK
    else:
        header = struct.pack("!BBQ", 0x81, 0xFF, announced) + RFC_MASK
    # Fed one byte at a time and no payload byte at all: the reader must refuse anyway.
    reader = ClientFrameReader(100)
    error = refused(reader, *(header[i : i + 1] for i in range(len(header))))
    assert error.code == CLOSE_TOO_BIG
    assert str(announced) in error.reason


# -- UTF-8 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"\xff", b"ab\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"caf\xc3"],
    ids=["ff", "bad-continuation", "surrogate", "overlong", "above-10ffff", "truncated"],
)
def test_invalid_utf8_text_is_1007(payload: bytes) -> None:
    error = refused(ClientFrameReader(1024), masked_frame(payload))
    assert error.code == CLOSE_INVALID_DATA


def test_invalid_utf8_split_across_fragments_is_1007() -> None:
    reader = ClientFrameReader(1024)
    # "ab" and the first byte of a 2-byte sequence: fine so far...
    assert reader.feed(masked_frame(b"ab\xc3", fin=False)) == [(OP_TEXT, b"ab\xc3")]
    # ... but what follows is no continuation byte.
    error = refused(reader, masked_frame(b"\x28", OP_CONTINUATION))
    assert error.code == CLOSE_INVALID_DATA


def test_text_message_ending_inside_a_character_is_1007() -> None:
    reader = ClientFrameReader(1024)
    assert reader.feed(masked_frame(b"\xe2", fin=False)) == [(OP_TEXT, b"\xe2")]
    error = refused(reader, masked_frame(b"\x82", OP_CONTINUATION))
    assert error.code == CLOSE_INVALID_DATA


def test_multibyte_character_split_across_fragments_is_accepted() -> None:
    euro = "€".encode()  # e2 82 ac
    reader = ClientFrameReader(1024)
    frames = reader.feed(
        masked_frame(b"price " + euro[:1], fin=False)
        + masked_frame(euro[1:2], OP_CONTINUATION, fin=False)
        + masked_frame(b"", OP_PING)
        + masked_frame(euro[2:] + b"5", OP_CONTINUATION)
    )
    assert frames == [
        (OP_TEXT, b"price \xe2"),
        (OP_TEXT, b"\x82"),
        (OP_PING, b""),
        (OP_TEXT, b"\xac5"),
    ]
    # The pending tail was cleared with the message: the next one starts clean.
    assert reader.feed(masked_frame("ü".encode())) == [(OP_TEXT, "ü".encode())]


def test_binary_frames_need_not_be_utf8() -> None:
    reader = ClientFrameReader(1024)
    assert reader.feed(masked_frame(b"\xff\xfe\xc3", OP_BINARY, fin=False)) == [
        (OP_BINARY, b"\xff\xfe\xc3")
    ]
    assert reader.feed(masked_frame(b"\x28\xff", OP_CONTINUATION)) == [(OP_BINARY, b"\x28\xff")]


# -- close frames ----------------------------------------------------------------------------


def test_parse_close_empty() -> None:
    assert parse_close(b"") == (None, "")


def test_parse_close_one_byte_is_a_protocol_error() -> None:
    with pytest.raises(WebSocketError) as caught:
        parse_close(b"\x03")
    assert caught.value.code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_parse_close_invalid_codes(code: int) -> None:
    with pytest.raises(WebSocketError) as caught:
        parse_close(struct.pack("!H", code))
    assert caught.value.code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 3000, 4999])
def test_parse_close_valid_codes(code: int) -> None:
    assert parse_close(struct.pack("!H", code)) == (code, "")


def test_parse_close_reason() -> None:
    assert parse_close(struct.pack("!H", 1000) + "bye €".encode()) == (1000, "bye €")


def test_parse_close_non_utf8_reason_is_1007() -> None:
    with pytest.raises(WebSocketError) as caught:
        parse_close(struct.pack("!H", 1000) + b"\xff")
    assert caught.value.code == CLOSE_INVALID_DATA


def test_encode_close() -> None:
    assert encode_close(1000, "bye") == b"\x88\x05\x03\xe8bye"
    assert encode_close(1002, "x" * 200) == b"\x88\x7d\x03\xea" + b"x" * 123


def test_encode_close_cuts_a_long_reason_to_valid_utf8() -> None:
    """§5.5.1: the reason is UTF-8; a cut must not split a character."""
    frame = encode_close(1008, "é" * 200)  # 400 bytes of reason, 2 bytes per character
    assert frame[0] == 0x88
    assert frame[1] <= 125  # fits a control frame
    assert len(frame) == 2 + frame[1]
    code, reason = parse_close(frame[2:])  # raises 1007 if the cut split a character
    assert code == 1008
    assert reason and set(reason) == {"é"}


# -- opening handshake -----------------------------------------------------------------------


def handshake_headers(**changes: str | None) -> dict[str, str]:
    """The §1.3 client handshake's fields (lower-case), with ``changes`` (None: removed)."""
    headers = {
        "host": "server.example.com",
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-key": RFC_KEY,
        "sec-websocket-version": "13",
        "sec-websocket-protocol": "chat, superchat",
    }
    for name, value in changes.items():
        key = name.replace("_", "-")
        if value is None:
            headers.pop(key, None)
        else:
            headers[key] = value
    return headers


def response_fields(response: bytes) -> dict[str, str]:
    status, *lines = response.decode("ascii").split("\r\n")
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert response.endswith(b"\r\n\r\n")
    fields = {}
    for line in lines:
        if line:
            name, _, value = line.partition(": ")
            assert name.lower() not in fields, f"{name} twice in {response!r}"
            fields[name.lower()] = value
    return fields


def test_accept_handshake_rfc_example() -> None:
    handshake = accept_handshake(
        "GET", "HTTP/1.1", handshake_headers(sec_websocket_protocol="chat"), ["chat"]
    )
    assert handshake.protocol == "chat"
    assert response_fields(handshake.response) == {
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-accept": RFC_ACCEPT,
        "sec-websocket-protocol": "chat",
    }


def test_accept_handshake_takes_case_insensitive_headers_and_tokens() -> None:
    headers = CIMultiDict(
        {
            "Upgrade": "WebSocket",
            "Connection": "keep-alive, UPGRADE",
            "Sec-WebSocket-Key": RFC_KEY,
            "Sec-WebSocket-Version": "13",
        }
    )
    handshake = accept_handshake("GET", "HTTP/1.1", headers, STOMP_PROTOCOLS)
    assert response_fields(handshake.response)["sec-websocket-accept"] == RFC_ACCEPT


@pytest.mark.parametrize("version", ["8", "12", "14"])
def test_other_websocket_versions_get_426_naming_13(version: str) -> None:
    with pytest.raises(HandshakeError) as caught:
        accept_handshake(
            "GET", "HTTP/1.1", handshake_headers(sec_websocket_version=version), STOMP_PROTOCOLS
        )
    assert caught.value.status == 426
    assert caught.value.headers == {"Sec-WebSocket-Version": "13"}
    assert "13" in caught.value.message


def test_a_missing_websocket_version_is_a_bad_request() -> None:
    with pytest.raises(HandshakeError) as caught:
        accept_handshake(
            "GET", "HTTP/1.1", handshake_headers(sec_websocket_version=None), STOMP_PROTOCOLS
        )
    assert caught.value.status == 400
    assert "Sec-WebSocket-Version" in caught.value.message


@pytest.mark.parametrize(
    "key",
    [
        None,
        "",
        "AAAA",
        "AAAAAAAAAAAAAAAAAAAAAAAA",
        "not a base64 key, no!!",
        "dGhlIHNhbXBsZSBub25jZQ",
    ],
    ids=["missing", "empty", "3-bytes", "18-bytes", "not-base64", "unpadded"],
)
def test_bad_key_gets_400(key: str | None) -> None:
    with pytest.raises(HandshakeError) as caught:
        accept_handshake(
            "GET", "HTTP/1.1", handshake_headers(sec_websocket_key=key), STOMP_PROTOCOLS
        )
    assert caught.value.status == 400
    assert "Sec-WebSocket-Key" in caught.value.message


@pytest.mark.parametrize(
    ("method", "version"), [("POST", "HTTP/1.1"), ("HEAD", "HTTP/1.1"), ("GET", "HTTP/1.0")]
)
def test_handshake_must_be_a_get_over_http_1_1(method: str, version: str) -> None:
    with pytest.raises(HandshakeError) as caught:
        accept_handshake(method, version, handshake_headers(), STOMP_PROTOCOLS)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "changes",
    [
        {"connection": None},
        {"connection": "keep-alive"},
        {"connection": "upgrades"},
        {"upgrade": None},
        {"upgrade": "h2c"},
    ],
    ids=["no-connection", "keep-alive", "not-the-token", "no-upgrade", "h2c"],
)
def test_handshake_needs_connection_upgrade_and_upgrade_websocket(
    changes: dict[str, str | None],
) -> None:
    with pytest.raises(HandshakeError) as caught:
        accept_handshake("GET", "HTTP/1.1", handshake_headers(**changes), STOMP_PROTOCOLS)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        # The server's order (highest STOMP version first), not the client's: RabbitMQ's
        # choice, and webstomp-client 1.2.6 offers v10.stomp first (issue 14).
        ("chat, v11.stomp, v12.stomp", "v12.stomp"),
        ("v10.stomp,v12.stomp", "v12.stomp"),
        ("v10.stomp, v11.stomp, v12.stomp", "v12.stomp"),
        ("v10.stomp, v11.stomp", "v11.stomp"),
        ("chat, v10.stomp", "v10.stomp"),
        ("chat,  v12.stomp ", "v12.stomp"),
        ("V12.STOMP, v12.Stomp", None),  # names are compared exactly (§11.3.4)
        ("chat, superchat", None),
        ("", None),
        (None, None),
    ],
)
def test_subprotocol_is_the_servers_favourite_among_the_offers(
    offered: str | None, chosen: str | None
) -> None:
    handshake = accept_handshake(
        "GET", "HTTP/1.1", handshake_headers(sec_websocket_protocol=offered), STOMP_PROTOCOLS
    )
    assert handshake.protocol == chosen
    fields = response_fields(handshake.response)
    assert fields.get("sec-websocket-protocol") == chosen  # no header when none was chosen
    assert fields["sec-websocket-accept"] == RFC_ACCEPT
