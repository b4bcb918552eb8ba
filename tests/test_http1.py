"""HTTP/1.1 without I/O: request heads, the request reader, responses (RFC 9112).

Every test feeds literal bytes and looks at what comes out; no sockets.
"""

from __future__ import annotations

import pytest

from tidings.http1 import (
    DateField,
    Refused,
    Request,
    RequestFraming,
    RequestHead,
    RequestReader,
    encode_response,
    header_tokens,
    parse_request_head,
)

from .test_wsframe import RFC_KEY

MAX_HEAD = 256
MAX_BODY = 100


def post(body: bytes = b"{}", path: str = "/p", *extra: str, length: bool = True) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: h", *extra]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def reader(route: object = "r") -> RequestReader[object]:
    """A reader whose ``route`` is ``route`` for every head, None for paths ending in /no."""

    def routes(head: RequestHead) -> object:
        return None if head.path.endswith("/no") else route

    return RequestReader(routes, max_head_bytes=MAX_HEAD, max_body_bytes=MAX_BODY)


def drain(r: RequestReader[object]) -> list[Request[object] | Refused]:
    """Every request available now, and the refusal that stops them if any."""
    out: list[Request[object] | Refused] = []
    while (event := r.next_request()) is not None:
        out.append(event)
        if isinstance(event, Refused):
            break
    return out


# -- request head -----------------------------------------------------------------------------


def test_parse_request_head() -> None:
    head = parse_request_head(
        b"GET /stomp?access_token=abc&x=1 HTTP/1.1\r\n"
        b"Host: server.example.com\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection:Upgrade\r\n"
        b"Sec-WebSocket-Key:   " + RFC_KEY.encode() + b"  \t\r\n"
        b"Sec-WebSocket-Version: 13"
    )
    assert head is not None
    assert (head.method, head.target, head.version) == (
        "GET",
        "/stomp?access_token=abc&x=1",
        "HTTP/1.1",
    )
    assert (head.path, head.query) == ("/stomp", "access_token=abc&x=1")
    assert head.headers == {
        "host": "server.example.com",
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-key": RFC_KEY,
        "sec-websocket-version": "13",
    }


def test_parse_request_head_joins_repeated_fields() -> None:
    head = parse_request_head(
        b"GET / HTTP/1.0\r\nSec-WebSocket-Protocol: chat\r\nsec-websocket-protocol: v12.stomp"
    )
    assert head is not None
    assert head.version == "HTTP/1.0"
    assert head.headers == {"sec-websocket-protocol": "chat, v12.stomp"}


@pytest.mark.parametrize(
    "head",
    [
        b"GET /stomp",
        b"GET /stomp HTTP/1.1 extra",
        b"GET  /stomp HTTP/1.1",
        b"GET stomp HTTP/1.1",
        b"GET http://example.com/stomp HTTP/1.1",
        b"GET /stomp HTTP/2.0",
        b"GET /stomp http/1.1",
        b"GET /stomp HTTP/1.1\r\nHost example.com",
        b"GET /stomp HTTP/1.1\r\nHost : example.com",
        b"GET /stomp HTTP/1.1\r\n: no-name",
        b"GET /stomp HTTP/1.1\r\nUpgrade: websocket\r\n  folded",
        b"GET /stomp HTTP/1.1\r\nX-Name: caf\xc3\xa9",
        b"GET /st\xc3\xb6mp HTTP/1.1",
        b"GET /stomp HTTP/1.1\r\nHost: a\r\n\r\nX: b",
    ],
    ids=[
        "two-parts",
        "four-parts",
        "double-space",
        "not-origin-form",
        "absolute-form",
        "http2",
        "lower-case-version",
        "no-colon",
        "space-before-colon",
        "empty-name",
        "obs-fold",
        "non-ascii-value",
        "non-ascii-target",
        "empty-line",
    ],
)
def test_parse_request_head_refuses_malformed_heads(head: bytes) -> None:
    assert parse_request_head(head) is None


@pytest.mark.parametrize(
    ("name", "taken"),
    [
        ("Content-Length", True),
        ("x9", True),
        ("-", True),
        ("X_Odd!#$%&'*+.^`|~", True),  # every tchar of RFC 9110 §5.6.2 but letters and digits
        ("X(y)", False),
        ("X/y", False),
        ('X"y', False),
        ("X{y}", False),
        ("X@y", False),
        ("X,y", False),
        ("X;y", False),
        ("X\\y", False),
    ],
)
def test_a_field_name_is_a_token(name: str, taken: bool) -> None:
    head = parse_request_head(f"POST / HTTP/1.1\r\n{name}: 1".encode())
    assert (head is not None and head.headers == {name.lower(): "1"}) is taken


def test_parse_request_head_names_repeated_fields() -> None:
    head = parse_request_head(b"POST / HTTP/1.1\r\nA: 1\r\nB: 2\r\na: 3\r\nA: 4")
    assert head is not None
    assert head.headers == {"a": "1, 3, 4", "b": "2"}
    assert head.repeated == {"a"}
    single = parse_request_head(b"POST / HTTP/1.1\r\nA: 1")
    assert single is not None and single.repeated == frozenset()


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nX: a\x00b",
        b"POST / HTTP/1.1\r\nX: a\nb",
        b"POST / HTTP/1.1\r\nX: a\rb",
        b"POST / HTTP/1.1\nX: a",
        b"POST / HTTP/1.1\r\nX: a\x7f",
        b"POST / HTTP/1.1\r\nX: a\x1b[0m",
        b"POST /a\x01b HTTP/1.1",
    ],
    ids=["nul", "bare-lf", "bare-cr", "lf-line-end", "del", "escape", "ctl-in-target"],
)
def test_parse_request_head_refuses_control_characters(head: bytes) -> None:
    """RFC 9110 §5.5: a field value holds no CTL but HTAB; RFC 9112 §2.2: lines end CRLF."""
    assert parse_request_head(head) is None


def test_parse_request_head_takes_tabs_in_values() -> None:
    head = parse_request_head(b"POST / HTTP/1.1\r\nX: a\tb\t")
    assert head is not None and head.headers == {"x": "a\tb"}


def test_header_tokens() -> None:
    assert header_tokens(None) == []
    assert header_tokens(" Keep-Alive ,, close\t,") == ["keep-alive", "close"]


# -- the request reader -----------------------------------------------------------------------


def test_one_request_then_nothing() -> None:
    r = reader()
    r.feed(post(b'{"a": 1}', "/x?q=1", "X-A: b"))
    request = r.next_request()
    assert isinstance(request, Request)
    assert (request.head.method, request.head.target, request.head.version) == (
        "POST",
        "/x?q=1",
        "HTTP/1.1",
    )
    assert request.head.headers == {"host": "h", "x-a": "b", "content-length": "8"}
    assert (request.body, request.route) == (b'{"a": 1}', "r")
    assert r.next_request() is None
    assert (r.buffered, r.unread()) == (0, b"")


def test_a_request_without_content_length_has_no_body() -> None:
    """RFC 9112 §6.3 item 7: neither Transfer-Encoding nor Content-Length, no body."""
    r = reader()
    r.feed(post(b"", length=False) + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    first, second = drain(r)
    assert isinstance(first, Request) and first.body == b""
    assert isinstance(second, Request) and second.head.method == "GET"


def test_pipelined_requests_come_out_in_order() -> None:
    r = reader()
    r.feed(post(b"1", "/a") + post(b"22", "/b") + post(b"333", "/c"))
    requests = drain(r)
    assert [(q.head.path, q.body) for q in requests if isinstance(q, Request)] == [
        ("/a", b"1"),
        ("/b", b"22"),
        ("/c", b"333"),
    ]


STREAM = post(b'{"x": "first"}', "/a") + post(b"", "/b") + post(b'{"y": 2}', "/c")


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_a_split_anywhere_gives_the_same_requests(cut: int) -> None:
    r = reader()
    r.feed(STREAM[:cut])
    got = drain(r)
    r.feed(STREAM[cut:])
    got += drain(r)
    assert [(q.head.path, q.body) for q in got if isinstance(q, Request)] == [
        ("/a", b'{"x": "first"}'),
        ("/b", b""),
        ("/c", b'{"y": 2}'),
    ]


def test_byte_by_byte_asks_route_once_per_head() -> None:
    heads: list[str] = []

    def route(head: RequestHead) -> str:
        heads.append(head.path)
        return head.path

    r = RequestReader(route, max_head_bytes=MAX_HEAD, max_body_bytes=MAX_BODY)
    got = []
    for byte in STREAM:
        r.feed(bytes([byte]))
        got += drain(r)
    assert [q.route for q in got if isinstance(q, Request)] == ["/a", "/b", "/c"]
    assert heads == ["/a", "/b", "/c"]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (["Content-Length: 5", "Content-Length: 5"], "invalid Content-Length"),
        (["Content-Length: 5", "Content-Length: 6"], "invalid Content-Length"),
        (["Content-Length: 5, 5"], "invalid Content-Length"),
        (["Content-Length: +5"], "invalid Content-Length"),
        (["Content-Length: -5"], "invalid Content-Length"),
        (["Content-Length: 0x5"], "invalid Content-Length"),
        (["Content-Length: 5.0"], "invalid Content-Length"),
        (["Content-Length:"], "invalid Content-Length"),
        (["Content-Length: 1e3"], "invalid Content-Length"),
        (["Content-Length: \u0665"], "malformed head"),  # an Arabic-Indic 5: not ASCII
        (["Transfer-Encoding: chunked"], "Transfer-Encoding"),
        (["Transfer-Encoding: chunked", "Content-Length: 5"], "Transfer-Encoding"),
        (["Transfer-Encoding: identity", "Content-Length: 5"], "Transfer-Encoding"),
        ([f"Content-Length: {MAX_BODY + 1}"], f"body over {MAX_BODY} bytes"),
        (["Content-Length: 99999999999999999999999"], f"body over {MAX_BODY} bytes"),
    ],
    ids=str,
)
def test_framing_the_reader_does_not_take_is_refused(fields: list[str], reason: str) -> None:
    """RFC 9112 §6.1, §6.3 items 3 and 5: such a request goes to a full HTTP server."""
    before = post(b"ok", "/a")
    refused = post(b"hello", "/b", *fields, length=False)
    r = reader()
    r.feed(before + refused)
    first, second = drain(r)
    assert isinstance(first, Request) and first.body == b"ok"
    assert second == Refused(reason)
    assert r.unread() == refused
    assert r.next_request() == Refused(reason)  # and stays so


def test_leading_zeros_and_whitespace_are_one_length() -> None:
    r = reader()
    r.feed(post(b"abc", "/a", "Content-Length:  003 ", length=False))
    request = r.next_request()
    assert isinstance(request, Request) and request.body == b"abc"


def test_a_body_of_the_largest_size_is_taken() -> None:
    r = reader()
    r.feed(post(b"x" * MAX_BODY))
    request = r.next_request()
    assert isinstance(request, Request) and len(request.body) == MAX_BODY


def test_an_oversized_body_is_refused_before_it_arrives() -> None:
    r = reader()
    head = post(b"x" * (MAX_BODY + 1))[: -(MAX_BODY + 1)]
    r.feed(head)
    assert r.next_request() == Refused(f"body over {MAX_BODY} bytes")
    assert r.unread() == head


def test_a_refused_route_leaves_its_request_and_everything_after() -> None:
    """The route is asked at the head: a client awaiting 100 Continue is not kept waiting."""
    r = reader()
    served = post(b"1", "/a")
    head_only = post(b"x" * 50, "/no")[:-50]
    r.feed(served + head_only)
    first, refused = drain(r)
    assert isinstance(first, Request)
    assert refused == Refused("not routed")
    r.feed(b"x" * 50 + b"more")
    assert r.unread() == head_only + b"x" * 50 + b"more"


def test_head_limits() -> None:
    """A head of max_head_bytes is read; a longer one, whole or not, is refused."""
    # Each field line adds its length and a CRLF to the head.
    fill = "X: " + "a" * (MAX_HEAD - (len(post(b"")) - 4) - len("X: \r\n"))
    at_limit = post(b"", "/p", fill)
    assert len(at_limit) - 4 == MAX_HEAD  # the head without its final CRLF CRLF
    r = reader()
    r.feed(at_limit)
    assert isinstance(r.next_request(), Request)

    over = post(b"", "/p", fill + "a")
    r = reader()
    r.feed(over)
    assert r.next_request() == Refused(f"head over {MAX_HEAD} bytes")
    assert r.unread() == over

    r = reader()
    r.feed(over[:MAX_HEAD])
    assert r.next_request() is None  # could still end in time
    r.feed(over[MAX_HEAD : MAX_HEAD + 2])
    assert r.next_request() == Refused(f"head over {MAX_HEAD} bytes")


@pytest.mark.parametrize(
    "data",
    [
        b"GET /\r\n\r\n",
        b"\r\nPOST / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST / HTTP/1.1\r\nA : b\r\n\r\n",
    ],
    ids=["http-0.9", "leading-crlf", "space-before-colon"],
)
def test_malformed_heads_are_refused(data: bytes) -> None:
    r = reader()
    r.feed(data)
    assert r.next_request() == Refused("malformed head")
    assert r.unread() == data


def test_buffered_counts_what_is_not_handed_out() -> None:
    r = reader()
    first, second = post(b"1"), post(b"22")
    r.feed(first + second[:10])
    assert r.buffered == len(first) + 10
    assert isinstance(r.next_request(), Request)
    assert r.buffered == 10
    assert r.next_request() is None
    r.feed(second[10:])
    assert isinstance(r.next_request(), Request)
    assert r.buffered == 0


# -- request framing --------------------------------------------------------------------------

GET = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
CHUNKED = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
)


def framing_state(framing: RequestFraming) -> tuple[str, int, int]:
    """Where ``framing`` stands: its state's name, heads read, bytes held."""
    if framing.in_head:
        name = "head"
    elif framing.switching:
        name = "switching"
    elif framing.lost:
        name = "lost"
    else:
        name = "other"  # between requests, or in a body
    return name, framing.heads, framing.held


def framed(data: bytes, **limits: int) -> tuple[str, int, int]:
    """The state after ``data`` in one piece; the same after it a byte at a time."""
    whole, bytewise = RequestFraming(**limits), RequestFraming(**limits)
    whole.feed(data)
    for i in range(len(data)):
        bytewise.feed(data[i : i + 1])
    assert framing_state(bytewise) == framing_state(whole)
    return framing_state(whole)


@pytest.mark.parametrize(
    ("data", "state"),
    [
        (b"", ("other", 0, 0)),
        (GET, ("other", 1, 0)),
        (GET + b"G", ("head", 1, 0)),
        (GET + b"GET /a HTTP/1.1\r\nHost: h\r\n\r", ("head", 1, 0)),
        (b"\r\n\n\r\n", ("other", 0, 0)),  # §2.2: empty lines before a request
        (GET + b"\r\n" + GET + b"\r\n", ("other", 2, 0)),
        (b"GET /a HTTP/1.1\nHost: h\n\nGET /a HTTP/1.1\r\nHost: h\n\r\n", ("other", 2, 0)),
        (post(b"12345") + b"P", ("head", 1, 0)),
        (post(b"GET /\r\n\r\n")[:-1], ("other", 1, 0)),  # in the body: a body is no head
        (post(b"12345", "/p", "Content-length: 5", length=False), ("other", 1, 0)),
        (CHUNKED + b'5;ext="x"\r\nGET /\r\n0\r\nT: GET\r\n\r\nG', ("head", 1, 0)),
        (CHUNKED + b"A \r\n0123456789\r\n0\r\n\r\n", ("other", 1, 0)),
        (CHUNKED + b"5\r\nGET /\r\n0\r\nT: GET", ("other", 1, 0)),  # in the trailers
        (CHUNKED + b"0\n\n", ("other", 1, 0)),
        (UPGRADE + b"\x81\x85", ("switching", 1, 2)),
        (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n\x16\x03", ("switching", 1, 2)),
        (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\nG", ("head", 1, 0)),  # no option
        (post(b"1", "/p", "Connection: upgrade", "Upgrade: x") + b"G", ("switching", 1, 1)),
        # Framing a server refuses (RFC 9112 §6.3, §5.2, §7.1): nothing more is known.
        (post(b"1", "/p", "Content-Length: 1") + GET, ("lost", 1, 0)),
        (
            post(b"1", "/p", length=False).replace(b"\r\n\r\n", b"\r\nContent-Length: +1\r\n\r\n"),
            ("lost", 1, 0),
        ),
        (post(b"", "/p", "Transfer-Encoding: chunked") + b"0\r\n\r\n", ("lost", 1, 0)),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", ("lost", 1, 0)),
        (CHUNKED + b"x\r\n", ("lost", 1, 0)),
        (CHUNKED + b"1\r\nab\r\n", ("lost", 1, 0)),
        (b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n", ("head", 0, 0)),  # not looked for
    ],
)
def test_framing_follows_heads_and_bodies(data: bytes, state: tuple[str, int, int]) -> None:
    assert framed(data) == state


def test_what_follows_a_switch_is_read_as_requests_once_resumed() -> None:
    framing = RequestFraming()
    framing.feed(UPGRADE + GET + GET[:5])
    assert framing_state(framing) == ("switching", 1, len(GET) + 5)
    framing.resume()  # the server answered without switching
    assert framing_state(framing) == ("head", 2, 0)
    framing.feed(GET[5:])
    assert framing_state(framing) == ("other", 3, 0)
    framing.resume()  # nothing held: no change
    assert framing_state(framing) == ("other", 3, 0)


def test_more_held_than_allowed_is_lost() -> None:
    assert framed(UPGRADE + b"x" * 10, max_held_bytes=10) == ("switching", 1, 10)
    assert framed(UPGRADE + b"x" * 11, max_held_bytes=10) == ("lost", 1, 0)


def test_a_line_is_kept_to_its_limit_only() -> None:
    """A long field is skipped, still in the head; a framing field that long is invalid."""
    long_field = b"GET / HTTP/1.1\r\nX-Pad: " + b"p" * 100 + b"\r\n"
    assert framed(long_field, max_line_bytes=16) == ("head", 0, 0)
    assert framed(long_field + b"\r\n", max_line_bytes=16) == ("other", 1, 0)
    long_length = b"POST / HTTP/1.1\r\nContent-Length: " + b"0" * 100 + b"1\r\n\r\n"
    assert framed(long_length, max_line_bytes=16) == ("lost", 1, 0)
    assert framed(long_length) == ("lost", 1, 0)  # over 18 digits


# -- responses --------------------------------------------------------------------------------


def test_encode_response() -> None:
    date = b"Fri, 27 Nov 2026 04:58:45 GMT"
    body = '{"id": "é"}'.encode()
    assert encode_response(202, b"application/json; charset=utf-8", body, date=date) == (
        b"HTTP/1.1 202 Accepted\r\n"
        b"Content-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: 12\r\n"
        b"Date: Fri, 27 Nov 2026 04:58:45 GMT\r\n"
        b"\r\n" + body
    )
    closing = encode_response(400, b"text/plain", b"", date=date, close=True)
    assert closing.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert closing.endswith(b"\r\nConnection: close\r\n\r\n")


def test_date_field_is_imf_fixdate_once_per_second() -> None:
    """RFC 9110 §5.6.7: IMF-fixdate, always GMT."""
    dates = DateField()
    first = dates.at(1_795_755_525.1)
    assert first == b"Fri, 27 Nov 2026 04:58:45 GMT"
    assert dates.at(1_795_755_525.9) is first
    assert dates.at(1_795_755_526.0) == b"Fri, 27 Nov 2026 04:58:46 GMT"
