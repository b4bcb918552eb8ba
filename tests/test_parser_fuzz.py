"""Property tests of the wire parsers besides STOMP's (tests/test_stomp_fuzz.py has that):
WebSocket frames (wsframe.py), HTTP/1 requests and their framing (http1.py), SockJS bodies
(sockjs/framing.py), ``--send-allow`` globs (destinations.py) and the RESP2 readers of
Redis replies (brokers/redis_pubsub.py; inbox/resp.py and redis_connect.py, which read
with the same hiredis reader settings).

Each has a fixed budget and a fixed seed (``derandomize``): the suite runs the same
examples every time; ``./run fuzz`` runs many more, from a seed it prints
(tests/fuzz_budget.py). The chunking properties are the ones the linear-time rewrites must
keep (issue 14): however the bytes are split, the same frames, requests or error come out.
"""

from __future__ import annotations

import asyncio
import itertools
import re

import hiredis
import orjson
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser
from hypothesis import given
from hypothesis import strategies as st

from tidings.brokers.redis_pubsub import PubSubReader
from tidings.destinations import compile_globs
from tidings.errors import BrokerUnavailable
from tidings.http1 import Refused, Request, RequestFraming, RequestHead, RequestReader
from tidings.redis_connect import MORE, reply_error
from tidings.sockjs.framing import SockJSPayloadError, decode_send
from tidings.wsframe import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    ClientFrameReader,
    WebSocketError,
)

from .fuzz_budget import fuzz_settings
from .test_wsframe import masked_frame

FUZZ = fuzz_settings(300)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, sorted)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


CUTS = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=40)


# -- WebSocket frames ----------------------------------------------------------------------

WS_FRAMES = st.lists(
    st.one_of(
        st.builds(
            lambda payload, opcode, fin: masked_frame(payload, opcode, fin=fin),
            st.binary(max_size=150),
            st.sampled_from([OP_TEXT, OP_BINARY, OP_CONTINUATION, OP_PING, OP_CLOSE]),
            st.booleans(),
        ),
        st.builds(lambda text: masked_frame(text.encode(), OP_TEXT), st.text(max_size=40)),
        st.binary(min_size=1, max_size=8),  # garbage
    ),
    max_size=8,
).map(b"".join)


def read_ws(pieces: list[bytes]) -> tuple[list[tuple[int, bytes]], int | None]:
    reader = ClientFrameReader(200)
    frames: list[tuple[int, bytes]] = []
    try:
        for piece in pieces:
            frames.extend(reader.feed(piece))
    except WebSocketError as exc:
        return frames, exc.code
    return frames, None


@FUZZ
@given(WS_FRAMES, CUTS)
def test_websocket_frames_do_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    whole, error = read_ws([data])
    for pieces in (split(data, cuts), [data[i : i + 1] for i in range(len(data))]):
        frames, code = read_ws(pieces)
        assert code == error
        if error is None:
            assert frames == whole
        else:  # frames of the feed that raised are not returned: fewer when fed whole
            assert frames[: len(whole)] == whole


# -- HTTP/1 requests -----------------------------------------------------------------------

HTTP_REQUESTS = st.lists(
    st.one_of(
        st.builds(
            lambda path, body: (
                (
                    f"POST /{path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            ),
            st.text("abc/", max_size=10),
            st.binary(max_size=60),
        ),
        st.builds(lambda path: f"GET /{path} HTTP/1.1\r\n\r\n".encode(), st.text("ab", max_size=5)),
        st.sampled_from(
            [
                b"POST / HTTP/1.1\nContent-Length: 0\n\n",  # bare LF
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n",
                b"POST / HTTP/1.1\r\nX-Big: " + b"b" * 300 + b"\r\n\r\n",
            ]
        ),
        st.binary(max_size=12),
    ),
    max_size=6,
).map(b"".join)


def _route(head: RequestHead) -> str | None:
    return None if head.path == "/refused" else head.target


def read_http(pieces: list[bytes]) -> tuple[list[tuple[str, bytes]], str | None, bytes]:
    reader: RequestReader[str] = RequestReader(_route, max_head_bytes=200, max_body_bytes=100)
    requests: list[tuple[str, bytes]] = []
    refused: str | None = None
    for piece in pieces:
        reader.feed(piece)
        while refused is None:
            request = reader.next_request()
            if isinstance(request, Request):
                requests.append((request.route, request.body))
            elif isinstance(request, Refused):
                refused = request.reason
            else:
                break
    return requests, refused, reader.unread()


@FUZZ
@given(HTTP_REQUESTS, CUTS)
def test_http_requests_do_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    requests, refused, unread = read_http([data])
    chunked = read_http(split(data, cuts))
    # A head over the limit may be seen as such before its end arrives: same requests,
    # refused either way, and the same bytes left for the full server.
    assert chunked[0] == requests
    assert (chunked[1] is None) == (refused is None)
    assert chunked[2] == unread
    assert len(unread) + sum(len(body) for _, body in requests) <= len(data)


# -- HTTP/1 request framing (what the head guard follows) ------------------------------------


def _chunked(chunks: list[bytes], extension: bool, trailer: bool) -> bytes:
    head = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    ext = b";a=b" if extension else b""
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(chunk), ext, chunk) for chunk in chunks if chunk)
    return head + body + b"0\r\n" + (b"T: GET /\r\n" if trailer else b"") + b"\r\n"


# Requests aiohttp takes (CR LF line ends, Host, one framing), bodies full of CR LF.
VALID_REQUESTS = st.one_of(
    st.builds(
        lambda path, pad: f"GET /{path} HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n".encode(),
        st.text("ab/", max_size=5),
        st.text("pq :", max_size=8).map(str.strip),
    ),
    st.builds(
        lambda body, name: (
            f"POST /l HTTP/1.1\r\n{name}: {len(body)}\r\nHost: x\r\n\r\n".encode() + body
        ),
        st.binary(max_size=40) | st.sampled_from([b"\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"]),
        st.sampled_from(["Content-Length", "content-length", "CONTENT-LENGTH"]),
    ),
    st.builds(
        _chunked,
        st.lists(st.binary(max_size=20) | st.just(b"\r\n\r\n"), max_size=4),
        st.booleans(),
        st.booleans(),
    ),
).flatmap(lambda request: st.sampled_from([request, b"\r\n" + request]))

# Anything a client may send: valid requests, bare LF, switches, refused framing, garbage.
ANY_REQUESTS = st.lists(
    st.one_of(
        VALID_REQUESTS,
        st.sampled_from(
            [
                b"GET / HTTP/1.1\nHost: x\n\n",
                b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                b"CONNECT x:1 HTTP/1.1\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
                b"GET / HTTP/1.1\r\nX: " + b"x" * 300 + b"\r\nContent-Length: 3\r\n\r\n",
                b"GET / HTTP/1.1\r\n folded\r\n\r\n",
            ]
        ),
        st.binary(max_size=12),
    ),
    max_size=6,
).map(b"".join)


def framing_after(pieces: list[bytes]) -> tuple[bool, bool, bool, int, int]:
    framing = RequestFraming(max_line_bytes=100, max_held_bytes=64)
    for piece in pieces:
        framing.feed(piece)
    return framing.in_head, framing.switching, framing.lost, framing.heads, framing.held


@FUZZ
@given(ANY_REQUESTS, CUTS)
def test_request_framing_does_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    whole = framing_after([data])
    assert framing_after(split(data, cuts)) == whole
    assert framing_after([data[i : i + 1] for i in range(len(data))]) == whole


def aiohttp_heads(pieces: list[bytes]) -> int:
    """How many request heads aiohttp's own parser (llhttp) reads in ``pieces``."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16)
        return sum(len(parser.feed_data(piece)[0]) for piece in pieces)
    finally:
        loop.close()


@FUZZ
@given(st.lists(VALID_REQUESTS, max_size=4), VALID_REQUESTS, st.integers(min_value=0), CUTS)
def test_request_framing_agrees_with_aiohttp(
    requests: list[bytes], last: bytes, cut: int, cuts: list[int]
) -> None:
    """Complete requests, then the start of one more: the framing reads as many heads as
    aiohttp does, and is in a head exactly when the stream stops inside one."""
    cut %= len(last) + 1
    data = b"".join(requests) + last[:cut]
    pieces = split(data, cuts)
    in_head, switching, lost, heads, _ = framing_after(pieces)
    start = len(last) - len(last.lstrip(b"\r\n"))
    end_of_head = last.index(b"\r\n\r\n", start) + 4
    assert heads == aiohttp_heads(pieces) == len(requests) + (cut >= end_of_head)
    assert in_head == (start < cut < end_of_head)
    assert not switching and not lost


# -- SockJS send bodies --------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_sockjs_send_body_is_messages_or_a_payload_error(body: bytes) -> None:
    try:
        messages = decode_send(body)
    except SockJSPayloadError as exc:
        assert str(exc) in ("Payload expected.", "Broken JSON encoding.")
    else:
        assert all(isinstance(message, str) for message in messages)


@FUZZ
@given(st.lists(st.text(st.characters(exclude_categories=["Cs"]), max_size=20), max_size=10))
def test_sockjs_send_body_round_trips(messages: list[str]) -> None:
    assert decode_send(orjson.dumps(messages)) == messages


# -- --send-allow globs --------------------------------------------------------------------


def reference_globs(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """The backtracking regex the globs used to compile to: the meaning to keep."""
    parts = []
    for pattern in patterns:
        escaped = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        parts.append(f"(?:{escaped})")
    return re.compile("|".join(parts))


@fuzz_settings(2000)
@given(
    st.lists(st.text("ab/*\n.", max_size=8), min_size=1, max_size=3).map(tuple),
    st.text("ab/\n.", max_size=12),
)
def test_globs_match_as_the_regex_did(patterns: tuple[str, ...], destination: str) -> None:
    globs = compile_globs(patterns)
    assert globs is not None
    expected = reference_globs(patterns).fullmatch(destination) is not None
    assert globs.matches(destination) == expected
    assert globs.matches(destination) == expected  # the memoized answer too


# -- RESP2 replies (brokers/redis_pubsub.py, inbox/resp.py, redis_connect.py) --------------


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


RESP_SCALARS = st.one_of(
    st.builds(
        lambda text: b"+" + text + b"\r\n",
        st.binary(max_size=10).filter(lambda text: b"\r" not in text and b"\n" not in text),
    ),
    st.sampled_from([b"-ERR wrong\r\n", b"-NOSCRIPT No matching script\r\n", b"$-1\r\n"]),
    st.builds(lambda n: b":%d\r\n" % n, st.integers(-(1 << 63), (1 << 63) - 1)),
    st.builds(bulk, st.binary(max_size=40)),
)
RESP_REPLIES = st.recursive(
    RESP_SCALARS,
    lambda inner: st.lists(inner, max_size=4).map(
        lambda items: b"*%d\r\n" % len(items) + b"".join(items)
    ),
    max_leaves=12,
)
PUBSUB_REPLIES = st.one_of(
    st.builds(
        lambda channel, payload: b"*3\r\n" + bulk(b"message") + bulk(channel) + bulk(payload),
        st.binary(max_size=12),
        st.binary(max_size=40),
    ),
    st.builds(
        lambda channel: b"*3\r\n" + bulk(b"subscribe") + bulk(channel) + b":1\r\n",
        st.binary(max_size=12),
    ),
    st.just(b"*2\r\n" + bulk(b"pong") + bulk(b"")),
    RESP_REPLIES,
    st.binary(min_size=1, max_size=8),  # garbage
)
RESP_STREAM = st.lists(st.one_of(RESP_REPLIES, st.binary(max_size=6)), max_size=8).map(b"".join)


def read_pubsub(pieces: list[bytes]) -> tuple[list[tuple[object, ...]], str | None]:
    """What a subscriber's reader does with ``pieces``: the calls it made, in order, and
    the BrokerUnavailable that stopped it (None if none did)."""
    calls: list[tuple[object, ...]] = []
    reader = PubSubReader(
        lambda channel, payload: calls.append(("message", channel, payload)),
        lambda channel: calls.append(("subscribed", channel)),
        lambda: calls.append(("pong",)),
    )
    try:
        for piece in pieces:
            reader.receive(piece)
    except BrokerUnavailable as exc:
        return calls, type(exc).__name__
    return calls, None


@FUZZ
@given(st.lists(PUBSUB_REPLIES, max_size=8).map(b"".join), CUTS)
def test_pubsub_replies_do_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    """Any bytes: the subscriber's reader acts on replies, or stops with BrokerUnavailable
    (never another exception), the same however the bytes are split."""
    whole = read_pubsub([data])
    for pieces in (split(data, cuts), [data[i : i + 1] for i in range(len(data))]):
        calls, error = read_pubsub(pieces)
        assert error == whole[1]
        assert calls == whole[0]


def read_resp(pieces: list[bytes]) -> tuple[list[object], bool]:
    """Replies as the publish script's and the setup's connections read them (error
    replies as ResponseError objects), and whether the bytes were not RESP."""
    reader = hiredis.Reader(replyError=reply_error, notEnoughData=MORE)
    replies: list[object] = []
    try:
        for piece in pieces:
            reader.feed(piece)
            while (reply := reader.gets()) is not MORE:
                replies.append(reply)
    except hiredis.ProtocolError:
        return [_comparable(reply) for reply in replies], True
    return [_comparable(reply) for reply in replies], False


def _comparable(reply: object) -> object:
    if isinstance(reply, Exception):
        return (type(reply).__name__, str(reply))
    if isinstance(reply, list):
        return [_comparable(item) for item in reply]
    return reply


@FUZZ
@given(RESP_STREAM, CUTS)
def test_resp_replies_do_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    """The reader of inbox/resp.py and redis_connect.py: replies (error replies become
    the ResponseError subclass redis-py would raise) or ProtocolError, never another
    exception, the same however the bytes are split."""
    whole = read_resp([data])
    for pieces in (split(data, cuts), [data[i : i + 1] for i in range(len(data))]):
        replies, garbled = read_resp(pieces)
        assert garbled == whole[1]
        assert replies == whole[0]
