"""Property tests: any bytes, in any chunking, give frames/events or StompProtocolError.

A fixed budget with fixed examples in the suite; ``./run fuzz`` runs more (tests/fuzz_budget.py).

Also: serialize() then parse in random chunks gives the frame back.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import StompProtocolError
from tidings.stomp.connection import ServerConnection, State
from tidings.stomp.frames import (
    CLIENT_COMMANDS,
    SERVER_COMMANDS,
    VERSIONS,
    Frame,
    FrameParser,
    Limits,
    serialize,
)

from .fuzz_budget import fuzz_settings

FUZZ = fuzz_settings(300)

TIGHT = Limits(
    max_frame_bytes=300,
    max_headers=5,
    max_header_line=60,
    max_subscriptions=3,
    max_transactions=2,
    max_transaction_frames=4,
    max_transaction_bytes=40,
)
LIMITS = st.sampled_from([Limits(), TIGHT])


def wire(command: str, *headers: str, body: bytes = b"") -> bytes:
    return "\n".join((command, *headers, "", "")).encode() + body + b"\0"


CONNECTS = st.builds(
    lambda accept, heartbeat: wire("CONNECT", *accept, *heartbeat),
    st.sampled_from(
        [(), ("accept-version:1.0",), ("accept-version:1.1",), ("accept-version:1.1,1.2",)]
    ),
    st.sampled_from([(), ("heart-beat:0,0",), ("heart-beat:5000,10000",)]),
)
SESSION_FRAMES = st.sampled_from(
    [
        wire("SUBSCRIBE", "id:1", "destination:/a", "receipt:r1"),
        wire("SUBSCRIBE", "id:2", "destination:/b\\cc", "ack:client"),
        wire("SUBSCRIBE", "destination:/c"),
        wire("UNSUBSCRIBE", "id:1"),
        wire("UNSUBSCRIBE", "destination:/c"),
        wire(
            "SEND", "destination:/a", "content-type:text/plain", "content-length:5", body=b"hello"
        ),
        wire("SEND", "destination:/a", "content-length:3", body=b"a\0b"),
        wire("ACK", "id:m", "message-id:m", "subscription:1", "receipt:k"),
        wire("BEGIN", "transaction:t", "receipt:b")
        + wire("SEND", "destination:/a", "transaction:t", "content-length:30", body=b"x" * 30)
        + wire("NACK", "id:m", "message-id:m", "subscription:1", "transaction:t")
        + wire("COMMIT", "transaction:t"),
        wire("BEGIN", "transaction:u") + wire("ABORT", "transaction:u", "receipt:a"),
        wire("DISCONNECT", "receipt:77"),
        # over the TIGHT limits: frame size, header count, header line length
        wire("SEND", "destination:/a", "content-length:400", body=b"y" * 400),
        wire("SEND", "destination:/a", "receipt:s", body=b"y" * 400),
        wire("SEND", "destination:/a", *(f"h{i}:{i}" for i in range(6))),
        wire("SEND", "destination:/" + "z" * 70),
        b"\n",
        b"\r\n",
    ]
)


@st.composite
def valid_streams(draw: st.DrawFn) -> bytes:
    """A well-formed CONNECT, then a few session frames (some over TIGHT limits) and EOLs."""
    return draw(CONNECTS) + b"".join(draw(st.lists(SESSION_FRAMES, max_size=8)))


NUMBER_JUNK = [b"-", b"+", b" ", b"x", b"", "\u0663".encode(), b"9" * 30, b"1_0", b"0x1"]


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    """A well-formed stream with bit flips, truncation, duplication, deletion, insertion
    and corrupted digits."""
    blob = bytearray(draw(valid_streams()))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "duplicate", "delete", "insert", "digit"]))
        pos = draw(st.integers(0, len(blob)))
        digits = [i for i, byte in enumerate(blob) if 0x30 <= byte <= 0x39]
        if kind == "digit" and digits:  # numbers matter: content-length, heart-beat, version
            at = digits[pos % len(digits)]
            blob[at : at + 1] = draw(st.sampled_from(NUMBER_JUNK))
        elif kind == "flip" and pos < len(blob):
            blob[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del blob[pos:]
        elif kind == "duplicate":
            end = draw(st.integers(pos, len(blob)))
            blob[pos:pos] = blob[pos:end]
        elif kind == "delete":
            del blob[pos : pos + draw(st.integers(1, 8))]
        elif kind == "insert":
            special = draw(st.sampled_from([b"\0", b"\n", b"\r\n", b":", b"\\", b"\r", b"\xff"]))
            blob[pos:pos] = special * draw(st.integers(1, 3))
    return bytes(blob)


ANY_INPUT = st.one_of(st.binary(max_size=600), valid_streams(), mutated_streams())


def chunked(data: st.DataObject, blob: bytes) -> list[bytes]:
    """Split ``blob`` at random points (empty chunks included)."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=12), label="cuts"))
    bounds = [0, *cuts, len(blob)]
    return [blob[a:b] for a, b in itertools.pairwise(bounds)]


@FUZZ
@given(blob=ANY_INPUT, limits=LIMITS, server=st.booleans(), data=st.data())
def test_parser_yields_frames_or_protocol_errors(
    blob: bytes, limits: Limits, server: bool, data: st.DataObject
) -> None:
    parser = FrameParser(limits, commands=SERVER_COMMANDS if server else CLIENT_COMMANDS)
    parser.version = data.draw(st.sampled_from(VERSIONS), label="version")
    try:
        for chunk in chunked(data, blob):
            for frame in parser.feed(chunk):
                assert isinstance(frame, Frame)
            assert parser.buffered_bytes < limits.max_frame_bytes
    except StompProtocolError:
        pass


def parse_all(parser: FrameParser, chunks: list[bytes]) -> tuple[list[Frame], str | None, int]:
    """Frames, then the error message if one was raised, and the heart-beats counted."""
    frames: list[Frame] = []
    try:
        for chunk in chunks:
            parser.receive_data(chunk)
            while (frame := parser.next_frame()) is not None:
                frames.append(frame)
    except StompProtocolError as exc:
        return frames, f"{type(exc).__name__}: {exc.message}", parser.heartbeats_received
    return frames, None, parser.heartbeats_received


@FUZZ
@given(blob=ANY_INPUT, limits=LIMITS, server=st.booleans(), version=st.sampled_from(VERSIONS))
def test_one_pass_and_line_by_line_parses_agree(
    blob: bytes, limits: Limits, server: bool, version: str
) -> None:
    """In one chunk, a plain whole frame is parsed in one pass; fed byte by byte, no frame
    is ever whole at its start, so every frame goes line by line: same frames, same error."""
    commands = SERVER_COMMANDS if server else CLIENT_COMMANDS
    parsers = [FrameParser(limits, commands=commands) for _ in range(2)]
    for parser in parsers:
        parser.version = version
    whole = parse_all(parsers[0], [blob])
    bytewise = parse_all(parsers[1], [blob[i : i + 1] for i in range(len(blob))])
    assert whole == bytewise
    if whole[1] is None:
        assert parsers[0].buffered_bytes == parsers[1].buffered_bytes


@FUZZ
@given(blob=ANY_INPUT, limits=LIMITS, data=st.data())
def test_connection_yields_events_or_protocol_errors(
    blob: bytes, limits: Limits, data: st.DataObject
) -> None:
    conn = ServerConnection(limits=limits)
    try:
        for chunk in chunked(data, blob):
            for event in conn.receive_data(chunk):
                receipt = getattr(event, "receipt", None)
                if receipt is not None:
                    conn.receipt(receipt)  # every surfaced receipt can be answered
            if conn.state is State.CONNECTING:
                conn.accept(session_id="s", user_name="u")
                conn.receive_data(b"")  # the frames that waited behind the CONNECT
            assert len(conn.subscriptions) <= limits.max_subscriptions
    except StompProtocolError as exc:
        assert conn.state is State.CLOSED
        error = conn.error(exc.message, detail=exc.detail)
        client = FrameParser(commands=SERVER_COMMANDS)
        client.version = conn.version or "1.0"
        (frame,) = client.feed(error)
        assert frame.command == "ERROR"


# -- round trip -------------------------------------------------------------------------

RAW_COMMANDS = {"CONNECT", "STOMP", "CONNECTED"}


def header_text(forbidden: str, min_size: int) -> st.SearchStrategy[str]:
    return st.text(
        st.characters(codec="utf-8", exclude_characters=forbidden),
        min_size=min_size,
        max_size=20,
    )


@st.composite
def frames_for(draw: st.DrawFn, version: str) -> Frame:
    """A frame that ``version`` can represent, with or without its own content-length."""
    command = draw(st.sampled_from(sorted(CLIENT_COMMANDS | SERVER_COMMANDS)))
    if version == "1.0" or command in RAW_COMMANDS:
        name_forbidden, value_forbidden = "\r\n\0:", "\r\n\0"
    elif version == "1.1":
        name_forbidden = value_forbidden = "\r\0"
    else:
        name_forbidden = value_forbidden = "\0"
    headers = draw(
        st.lists(
            st.tuples(
                header_text(name_forbidden, 1).filter(lambda n: n != "content-length"),
                header_text(value_forbidden, 0),
            ),
            max_size=6,
        )
    )
    body = draw(st.binary(max_size=200))
    if draw(st.booleans()):
        headers.insert(draw(st.integers(0, len(headers))), ("content-length", str(len(body))))
    return Frame(command, tuple(headers), body)


def as_parsed(frame: Frame) -> Frame:
    """``frame`` as a parser sees it after serialize() added any content-length."""
    needs_length = frame.command in ("MESSAGE", "ERROR") or b"\0" in frame.body
    if frame.get("content-length") is None and needs_length:
        return Frame(
            frame.command, (*frame.headers, ("content-length", str(len(frame.body)))), frame.body
        )
    return frame


@FUZZ
@given(data=st.data(), version=st.sampled_from(VERSIONS))
def test_serialize_then_parse_round_trip(data: st.DataObject, version: str) -> None:
    frames = data.draw(st.lists(frames_for(version), min_size=1, max_size=3), label="frames")
    separators = st.sampled_from([b"", b"\n", b"\r\n", b"\n\r\n"])
    blob = b"".join(data.draw(separators) + serialize(f, version) for f in frames)
    parser = FrameParser(commands=CLIENT_COMMANDS | SERVER_COMMANDS)
    parser.version = version
    parsed = [f for chunk in chunked(data, blob) for f in parser.feed(chunk)]
    assert parsed == [as_parsed(f) for f in frames]
    assert parser.buffered_bytes == 0
