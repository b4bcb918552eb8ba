"""HTTP/1.1 requests in and responses out, sans I/O (RFC 9112).

``parse_request_head`` reads one request head (§2-§5). ``RequestReader`` takes a
connection's bytes as they arrive and hands out its complete requests, one after the
other (§9.3.2: pipelined requests come in order), as long as each has no body or one
framed by Content-Length (§6.3). At the first request it does not take - a malformed
head, a head or body over its limit, another framing, or a head its ``route`` refuses -
it stops: ``unread()`` is that request and every byte after it, for a full HTTP server
to answer. ``encode_response`` writes a response framed by Content-Length (§6.2), its
Date (RFC 9110 §6.6.1) from a ``DateField``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Generic, TypeVar

R = TypeVar("R")

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
_CONTROLS = bytes(range(0x20)).replace(b"\t", b"") + b"\x7f"  # CTL but HTAB (RFC 5234 B.1)
_MAX_LENGTH_DIGITS = 18  # a longer Content-Length is over any body limit (or has zeros to spare)
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


@dataclass(slots=True)  # not frozen: a frozen one costs ~1 µs more to make
class RequestHead:
    method: str
    target: str  # origin-form: path and query, as sent
    version: str
    headers: dict[str, str]  # lower-cased names; a repeated field's values joined by ", "
    repeated: frozenset[str] = frozenset()  # names of the fields that came more than once

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


def parse_request_head(head: bytes | bytearray) -> RequestHead | None:
    """The request line (§3) and fields (§5) of ``head`` (without the final CRLF CRLF).

    None when it is not a plain, well-formed HTTP/1.x request head: the caller then lets
    a full HTTP server answer it (with its own errors).
    """
    # RFC 9110 §5.5: no CTL in a field but HTAB; RFC 9112 §2.2: CR and LF only as CRLF.
    if len(head) - len(head.translate(None, _CONTROLS)) != 2 * head.count(b"\r\n"):
        return None
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return None
    request_line, *lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[1].startswith("/") or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    headers: dict[str, str] = {}
    repeated: list[str] = []
    for line in lines:
        name, colon, value = line.partition(":")
        # §5.1: no whitespace before the colon; obs-fold (§5.2) is not taken here. A name is
        # a token (RFC 9110 §5.1); most are letters, digits and "-" (isalnum is ASCII-only
        # here: the head decoded as ASCII), checked without walking the name in Python.
        if not colon or not (
            name.replace("-", "").isalnum() or (name and _TOKEN_CHARS.issuperset(name))
        ):
            return None
        key = name.lower()
        value = value.strip(" \t")
        if key in headers:
            repeated.append(key)
            value = f"{headers[key]}, {value}"
        headers[key] = value
    return RequestHead(parts[0], parts[1], parts[2], headers, frozenset(repeated))


def header_tokens(value: str | None) -> list[str]:
    """The comma-separated tokens of a list-valued field, lower-cased (RFC 9110 §5.6.1)."""
    if not value:
        return []
    return [token.strip(" \t").lower() for token in value.split(",") if token.strip(" \t")]


@dataclass(slots=True)  # not frozen: a frozen one costs ~1 µs more to make
class Request(Generic[R]):
    head: RequestHead
    body: bytes
    route: R  # what the reader's ``route`` said of the head


@dataclass(frozen=True, slots=True)
class Refused:
    """The next request is not one the reader takes; ``unread()`` starts with it."""

    reason: str


class RequestReader(Generic[R]):
    """Complete requests out of a byte stream, each with its ``route(head)``.

    ``route`` is asked once per head, before its body is awaited; None refuses the
    request (so a client awaiting ``100 Continue`` is never kept waiting here).
    """

    __slots__ = (
        "_buffer",
        "_pending",
        "_pos",
        "_refused",
        "_route",
        "_scanned",
        "max_body_bytes",
        "max_head_bytes",
    )

    def __init__(
        self, route: Callable[[RequestHead], R | None], *, max_head_bytes: int, max_body_bytes: int
    ) -> None:
        self._route = route
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        # What was fed and not handed out (from _pos). The data of one feed as it came;
        # a bytearray appended to in place once a request spans feeds, so a request sent
        # a few bytes at a time costs linear time, not a copy of the buffer per piece.
        self._buffer: bytes | bytearray = b""
        self._pos = 0  # where the first request not handed out starts
        self._scanned = 0  # bytes after _pos already searched for the end of the head
        # The head read but its body incomplete: (head, route, body start, end), from _pos.
        self._pending: tuple[RequestHead, R, int, int] | None = None
        self._refused: Refused | None = None

    @property
    def buffered(self) -> int:
        """Bytes fed and not handed out in a request."""
        return len(self._buffer) - self._pos

    @property
    def awaiting_body(self) -> bool:
        """The next request's head is read and its body is not complete yet."""
        return self._pending is not None

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        if self._pos:
            if isinstance(buffer, bytearray):
                del buffer[: self._pos]
            else:
                buffer = self._buffer = buffer[self._pos :]
            self._pos = 0
        if not buffer:
            self._buffer = data
        elif isinstance(buffer, bytearray):
            buffer += data
        else:
            self._buffer = bytearray(buffer) + data

    def unread(self) -> bytes:
        """Every byte fed and not handed out in a request."""
        return bytes(self._buffer[self._pos :])

    def next_request(self) -> Request[R] | Refused | None:
        """The next complete request; None until it is complete; Refused from then on
        if it is one this reader does not take."""
        if self._refused is not None:
            return self._refused
        pending = self._pending
        if pending is None:
            if self._pos == len(self._buffer):
                return None
            read = self._read_head()
            if not isinstance(read, tuple):
                return read
            pending = self._pending = read
        head, route, body_start, end = pending
        start = self._pos
        if len(self._buffer) - start < end:
            return None
        body = self._buffer[start + body_start : start + end]
        if isinstance(body, bytearray):
            body = bytes(body)
        self._pending = None
        self._pos = start + end
        self._scanned = 0
        if self._pos == len(self._buffer):
            self._buffer = b""
            self._pos = 0
        return Request(head, body, route)

    def _read_head(self) -> tuple[RequestHead, R, int, int] | Refused | None:
        buffer, pos, limit = self._buffer, self._pos, self.max_head_bytes
        # Search only what the last call has not: a head sent in small pieces is
        # searched once, not once per piece (issue 14).
        scan_from = pos + self._scanned
        end = buffer.find(b"\r\n\r\n", scan_from, pos + limit + 4)
        if end < 0:
            if len(buffer) - pos > limit:
                return self._refuse(f"head over {limit} bytes")
            # §2.2 allows a bare LF as a line end, but this reader does not take it: a
            # full HTTP server answers such a request rather than it waiting for a CRLF.
            if buffer.find(b"\n\n", scan_from, pos + limit + 2) >= 0:
                return self._refuse("bare LF line ends")
            self._scanned = max(len(buffer) - pos - 3, 0)  # the delimiter may straddle
            return None
        head = parse_request_head(buffer[pos:end])
        if head is None:
            return self._refuse("malformed head")
        headers = head.headers
        # §6.1, §6.3 item 3: Transfer-Encoding (chunked) frames the body, whatever the length.
        if "transfer-encoding" in headers:
            return self._refuse("Transfer-Encoding")
        length = headers.get("content-length", "0")  # §6.3 item 7: no framing, no body
        # §6.3 item 5 (and §8.6 of RFC 9110): 1*DIGIT, one value; anything else is invalid.
        if not length.isdigit():
            return self._refuse("invalid Content-Length")
        size = int(length) if len(length) <= _MAX_LENGTH_DIGITS else self.max_body_bytes + 1
        if size > self.max_body_bytes:
            return self._refuse(f"body over {self.max_body_bytes} bytes")
        route = self._route(head)
        if route is None:
            return self._refuse("not routed")
        body_start = end + 4 - pos
        return head, route, body_start, body_start + size

    def _refuse(self, reason: str) -> Refused:
        self._pending = None
        self._refused = Refused(reason)
        return self._refused


class DateField:
    """The Date field's value (RFC 9110 §6.6.1, IMF-fixdate), formatted once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def at(self, now: float) -> bytes:
        """The value for the Unix time ``now``."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True).encode()
        return self._value


def encode_response(
    status: int, content_type: bytes, body: bytes, *, date: bytes, close: bool = False
) -> bytes:
    """A whole response: status line (§4), Content-Type, Content-Length (§6.2), Date, body.

    ``close`` adds ``Connection: close`` (§9.6): the server closes after this response.
    """
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n%s\r\n%s" % (
        status,
        _REASONS.get(status, b""),
        content_type,
        len(body),
        date,
        b"Connection: close\r\n" if close else b"",
        body,
    )
