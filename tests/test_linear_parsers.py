"""Every parser costs time linear in its input (issue 14; DESIGN.md §5b).

Each test feeds a parser ~1 MB of the input that used to cost it quadratic (or worse)
time and ~1 MB of benign input fed the same way (same size, same number of calls), and
asserts the pathological input costs at most ``MAX_RATIO`` times the benign one. Both
are timed in the same process, best of ``RUNS``, which damps the noise of a shared
machine; a quadratic parser misses the ratio by orders of magnitude, not by a factor.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import hiredis

from tidings.brokers.redis_pubsub import PubSubReader
from tidings.destinations import compile_globs
from tidings.http1 import Request, RequestFraming, RequestHead, RequestReader
from tidings.redis_connect import MORE, reply_error
from tidings.sockjs.framing import decode_send
from tidings.stomp.frames import FrameParser
from tidings.wsframe import OP_BINARY, ClientFrameReader

from .test_wsframe import masked_frame

MAX_RATIO = 10.0
RUNS = 3
MB = 1 << 20


def best_time(run: Callable[[], object]) -> float:
    """The shortest of RUNS wall-clock timings of ``run()``."""
    best = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def assert_linear(pathological: Callable[[], object], benign: Callable[[], object]) -> None:
    bad, good = best_time(pathological), best_time(benign)
    assert bad <= MAX_RATIO * good, (
        f"pathological input took {bad * 1000:.1f} ms, benign {good * 1000:.1f} ms "
        f"({bad / good:.0f}x; at most {MAX_RATIO:.0f}x)"
    )


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# -- STOMP (stomp/frames.py) ---------------------------------------------------------------


def test_stomp_crlf_frames_parse_in_linear_time() -> None:
    """The issue's input: 256 KB WebSocket messages of tiny CR LF frames (6.5 s for 768 KB)
    against the same frames with LF line ends."""
    crlf = b"ACK\r\nid:x\r\n\r\n\0" * (MB // 14)
    lf = b"ACK\nid:wxyz\n\n\0" * (MB // 14)  # the same size and frame count
    assert len(crlf) == len(lf)

    def parse(data: bytes) -> Callable[[], object]:
        def run() -> int:
            parser = FrameParser()
            frames = sum(len(parser.feed(chunk)) for chunk in chunks(data, 256 * 1024))
            assert frames == MB // 14
            return frames

        return run

    assert_linear(parse(crlf), parse(lf))


def test_stomp_frame_split_in_tiny_pieces_parses_in_linear_time() -> None:
    """A frame near the size limit, byte by byte in 16-byte pieces, against tiny frames."""
    big = b"SEND\r\ndestination:/topic/a\r\n\r\n" + b"x" * (60 * 1024) + b"\0"
    pathological = chunks(big * (MB // len(big)), 16)
    benign = chunks(b"ACK\nid:wxyz\n\n\0" * (MB // len(big) * len(big) // 14), 16)

    def parse(pieces: list[bytes]) -> Callable[[], object]:
        def run() -> None:
            parser = FrameParser()
            for piece in pieces:
                parser.feed(piece)

        return run

    assert_linear(parse(pathological), parse(benign))


def test_stomp_heartbeat_flood_parses_in_linear_time() -> None:
    """1 MB of CR LF heart-beats (each skipped by a loop in Python) against LF frames."""
    heartbeats = b"\r\n" * (MB // 2)
    frames = b"ACK\nid:wxyz\n\n\0" * (MB // 14)

    def parse(data: bytes) -> Callable[[], object]:
        def run() -> None:
            parser = FrameParser()
            for chunk in chunks(data, 256 * 1024):
                parser.feed(chunk)

        return run

    assert_linear(parse(heartbeats), parse(frames))


# -- WebSocket (wsframe.py) ----------------------------------------------------------------


def test_websocket_frame_fed_in_tiny_pieces_reads_in_linear_time() -> None:
    """One 1 MB frame in 16-byte pieces (each piece used to copy the whole buffer) against
    16-byte frames one per piece."""
    big = masked_frame(b"x" * (MB - 14), OP_BINARY)
    small = masked_frame(b"x" * 10, OP_BINARY)
    assert len(big) == MB and len(small) == 16
    pathological, benign = chunks(big, 16), [small] * (MB // 16)

    def read(pieces: list[bytes]) -> Callable[[], object]:
        def run() -> None:
            reader = ClientFrameReader(MB)
            payload = sum(len(p) for piece in pieces for _, p in reader.feed(piece))
            assert payload in (MB - 14, 10 * (MB // 16))

        return run

    assert_linear(read(pathological), read(benign))


# -- HTTP/1 (http1.py) ---------------------------------------------------------------------


def _route(head: RequestHead) -> str:
    return head.target


def read_requests(pieces: list[bytes]) -> Callable[[], object]:
    """A run that feeds ``pieces`` to one HTTP/1 reader and takes every request out."""

    def run() -> None:
        reader: RequestReader[str] = RequestReader(
            _route, max_head_bytes=16 * 1024, max_body_bytes=MB
        )
        for piece in pieces:
            reader.feed(piece)
            while isinstance(reader.next_request(), Request):
                pass
        assert reader.buffered == 0

    return run


def test_http_body_fed_in_tiny_pieces_reads_in_linear_time() -> None:
    """A 1 MB POST body in 16-byte pieces against pipelined 64-byte requests, in 16-byte
    pieces too."""
    head = b"POST /a HTTP/1.1\r\nContent-Length: %d\r\n\r\n"
    body = b"x" * (MB - len(head % MB))
    big = head % len(body) + body
    small = b"POST /a HTTP/1.1\r\nContent-Length: 24\r\n\r\n" + b"y" * 24
    assert len(big) == MB and len(small) == 64
    pathological, benign = chunks(big, 16), chunks(small * (MB // 64), 16)

    assert_linear(read_requests(pathological), read_requests(benign))


def test_http_head_fed_in_tiny_pieces_reads_in_linear_time() -> None:
    """Heads near the 16 KB limit, 16 bytes per piece, against short heads, 16 bytes each."""
    field = b"X-Pad: " + b"p" * 500 + b"\r\n"
    long_head = b"POST /a HTTP/1.1\r\n" + field * 30 + b"\r\n"
    short_head = b"POST /a HTTP/1.1\r\nX-Pad: " + b"p" * 35 + b"\r\n\r\n"
    assert len(short_head) == 64
    count = MB // len(long_head)
    pathological = chunks(long_head * count, 16)
    benign = chunks(short_head * (count * len(long_head) // 64), 16)

    assert_linear(read_requests(pathological), read_requests(benign))


def follow_framing(pieces: list[bytes], heads: int) -> Callable[[], object]:
    """A run that feeds ``pieces`` to one ``RequestFraming``, which reads ``heads`` heads."""

    def run() -> None:
        framing = RequestFraming()
        for piece in pieces:
            framing.feed(piece)
        assert framing.heads == heads and not framing.lost

    return run


def test_request_framing_follows_in_linear_time() -> None:
    """What the head guard follows, in 16-byte pieces, against pipelined 64-byte GETs:
    a 1 MB head line that never ends (kept to its 8 KB), 1 MB of 1-byte chunks, and a
    head of 1 MB of short fields."""
    get = b"GET /a HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"p" * 27 + b"\r\n\r\n"
    assert len(get) == 64
    benign = follow_framing(chunks(get * (MB // 64), 16), MB // 64)
    long_line = b"GET /" + b"a" * MB
    chunked = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * (MB // 6)
    fields = b"GET /a HTTP/1.1\r\n" + b"a:\r\n" * (MB // 4) + b"\r\n"
    for pathological, heads in ((long_line, 0), (chunked, 1), (fields, 1)):
        assert_linear(follow_framing(chunks(pathological, 16), heads), benign)


# -- SockJS (sockjs/framing.py) ------------------------------------------------------------


def test_sockjs_send_body_decodes_in_linear_time() -> None:
    """An xhr_send body of ~1 MB of short strings made of escapes, against plain ones."""
    pathological = b"[" + b'"\\u0000\\n",' * (MB // 12) + b'""]'
    benign = b"[" + b'"abcdefgh",' * (MB // 12) + b'""]'
    assert len(benign) == len(pathological)
    assert_linear(lambda: decode_send(pathological), lambda: decode_send(benign))


# -- --send-allow globs (destinations.py) -------------------------------------------------


def test_send_allow_glob_with_three_double_stars_matches_in_linear_time() -> None:
    """Three ``**`` against a long destination that almost matches (28 s at 7.2 KB before),
    against a pattern without them on a destination of the same length."""
    destination = "/topic/" + "a" * 7200
    bad = compile_globs(("/topic/**a**a**b",))
    good = compile_globs(("/topic/*",))
    assert bad is not None and good is not None
    assert not bad.matches(destination)
    assert good.matches(destination)
    assert_linear(
        lambda: [bad.matches(destination) for _ in range(10)],
        lambda: [good.matches(destination) for _ in range(10)],
    )


# -- RESP2 replies (brokers/redis_pubsub.py; inbox/resp.py and redis_connect.py) -----------


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _message(payload: bytes) -> bytes:
    return b"*3\r\n" + _bulk(b"message") + _bulk(b"t:x") + _bulk(payload)


def test_a_pubsub_reply_fed_in_tiny_pieces_reads_in_linear_time() -> None:
    """One 1 MB message reply in 16-byte pieces against 64-byte message replies, in
    16-byte pieces too: the subscriber reader keeps no buffer of its own to re-scan."""
    envelope = len(_message(b""))
    big = _message(b"x" * (MB - envelope - 6))  # "$<7 digits>" is 6 longer than "$0"
    small = _message(b"y" * (64 - envelope - 1))
    assert len(big) == MB and len(small) == 64
    pathological, benign = chunks(big, 16), chunks(small * (MB // 64), 16)

    def read(pieces: list[bytes]) -> Callable[[], object]:
        def run() -> None:
            got: list[int] = []
            reader = PubSubReader(lambda _, p: got.append(len(p)), print, print)
            for piece in pieces:
                reader.receive(piece)
            assert len(got) in (1, MB // 64)

        return run

    assert_linear(read(pathological), read(benign))


def test_a_long_array_reply_fed_in_tiny_pieces_reads_in_linear_time() -> None:
    """The publish script's and the setup's reader (error replies as exceptions): a 1 MB
    array of small integers and error replies in 16-byte pieces against 1 MB of replies
    of the same kinds, one by one."""
    pairs = MB // 12
    items = (b":1\r\n" + b"-ERR x\r\n") * pairs
    header = b"*%d\r\n" % (2 * pairs)
    pathological = chunks(header + items, 16)
    benign = chunks(b"+" + b"x" * (len(header) - 3) + b"\r\n" + items, 16)

    def read(pieces: list[bytes]) -> Callable[[], object]:
        def run() -> None:
            reader = hiredis.Reader(replyError=reply_error, notEnoughData=MORE)
            count = 0
            for piece in pieces:
                reader.feed(piece)
                while reader.gets() is not MORE:
                    count += 1
            assert count in (1, 1 + 2 * pairs)

        return run

    assert_linear(read(pathological), read(benign))
