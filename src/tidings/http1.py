"""HTTP/1.1 requests in and responses out, sans I/O (RFC 9112).

``parse_request_head`` reads one request head (§2-§5). ``RequestReader`` takes a
connection's bytes as they arrive and hands out its complete requests, one after the
other (§9.3.2: pipelined requests come in order), as long as each has no body or one
framed by Content-Length (§6.3). At the first request it does not take - a malformed
head, a head or body over its limit, another framing, or a head its ``route`` refuses -
it stops: ``unread()`` is that request and every byte after it, for a full HTTP server
to answer. ``RequestFraming`` keeps nothing of the requests: it follows where their
heads and bodies (Content-Length or chunked) begin and end, to tell whether a stream
stops inside a head. ``encode_response`` writes a response framed by Content-Length
(§6.2), its Date (RFC 9110 §6.6.1) from a ``DateField``.
"""

from __future__ import annotations

import re
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


# RequestFraming's states: where the next byte of the stream falls.
_BETWEEN, _HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _SWITCH, _LOST = range(9)
_NOT_CR_LF = re.compile(rb"[^\r\n]")
_BLANK_LINE = re.compile(rb"\n\r?\n")  # the end of a head (§2.2: a bare LF ends a line too)
# A field that frames what follows the head: name, value (CR included), to the line's end.
_FRAMING_FIELD = re.compile(
    rb"\n((?i:content-length|transfer-encoding|connection|upgrade)):([^\n]*)"
)
_CHUNK_SIZE_DIGITS = re.compile(rb"[0-9A-Fa-f]{1,16}")  # 16 hex digits: 2**64 - 1 at most
_FRAMING_INITIALS = frozenset(b"cCtTuU")  # Content-Length, Connection, Transfer-Encoding, Upgrade
# What a head said so far, as bits of RequestFraming._facts.
_REQUEST_LINE = 1  # its request line is still to come (read a line at a time)
_CONNECT = 2  # the method is CONNECT
_CODED = 4  # Transfer-Encoding came
_CHUNKED = 8  # ... and its last coding is chunked
_CONNECTION_UPGRADE = 16  # Connection has the "upgrade" option
_UPGRADE = 32  # Upgrade came
_INVALID = 64  # a framing field is not valid
_SWITCH_ASKED = _CONNECTION_UPGRADE | _UPGRADE  # RFC 9110 §7.8


class RequestFraming:
    """Where a connection's stream of requests stands, fed its bytes as they arrive:
    between requests, in a head, in a body, or past a protocol switch (RFC 9112).

    It keeps no request. A head is read (at once when it ends in the same piece, else a
    line at a time) for the fields that frame what follows it: Content-Length and
    Transfer-Encoding (§6.3), Connection and Upgrade (a protocol switch, RFC 9110 §7.8;
    CONNECT, §9.3.6); a body is skipped by its length or by its chunks, trailers included
    (§7.1). Empty lines before a request are skipped, and
    a line may end in a bare LF (§2.2). Time is linear in the input and memory bounded:
    at most ``max_line_bytes`` of a line are kept (a field's name is in them; a framing
    field longer than that is not valid), and ``max_held_bytes`` after a switch.

    After a request that asks to switch protocols, what follows may not be HTTP: it is
    held, not read, until ``resume()`` says the switch did not happen (the server
    answered that request and went on with HTTP). Framing it does not follow - an invalid
    or repeated Content-Length, a coding that does not end in chunked, Content-Length
    with Transfer-Encoding, a bad chunk size, more held bytes than allowed - makes it
    ``lost`` for good: a server answers such a request 400 and closes (§6.3 items 3-5),
    and nothing is known of the stream after it. Other faults of a head (a folded line,
    a malformed request line) are not looked for: the server refuses them and closes.
    """

    __slots__ = (
        "_facts",
        "_held",
        "_length",
        "_line",
        "_over",
        "_remaining",
        "_state",
        "heads",
        "max_held_bytes",
        "max_line_bytes",
    )

    def __init__(self, *, max_line_bytes: int = 8192, max_held_bytes: int = 64 * 1024) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_held_bytes = max_held_bytes
        self.heads = 0  # request heads read to their end
        self._state = _BETWEEN
        self._line = bytearray()  # the start of a line not ended yet (at most max_line_bytes)
        self._over = False  # that line is longer than what is kept of it
        self._remaining = 0  # bytes left of a body or a chunk
        self._held = bytearray()  # what came after a switch, until resume()
        # What the head read so far said (_start_head resets it for the next one).
        self._facts = _REQUEST_LINE
        self._length: int | None = None  # Content-Length

    @property
    def in_head(self) -> bool:
        """Bytes of a request head have come, and not its end (the blank line)."""
        return self._state == _HEAD

    @property
    def switching(self) -> bool:
        """A request asked to switch protocols: what follows is held, not read."""
        return self._state == _SWITCH

    @property
    def held(self) -> int:
        """Bytes held after a protocol switch."""
        return len(self._held)

    @property
    def lost(self) -> bool:
        """The stream has framing this reader does not follow: nothing more is known."""
        return self._state == _LOST

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state in (_BODY, _CHUNK_DATA):
                take = min(self._remaining, end - pos)
                self._remaining -= take
                pos += take
                if not self._remaining:
                    self._state = _CHUNK_END if state == _CHUNK_DATA else self._after_message()
            elif state == _BETWEEN:
                if data[pos] in b"\r\n":  # §2.2: empty lines before a request
                    start = _NOT_CR_LF.search(data, pos)
                    if start is None:
                        return
                    pos = start.start()
                end_of_head = _BLANK_LINE.search(data, pos)
                if end_of_head is None:  # the head goes on in the next piece: line by line
                    self._state = _HEAD
                else:
                    self._whole_head(data, pos, end_of_head.end())
                    pos = end_of_head.end()
            elif state == _SWITCH:
                if len(self._held) + end - pos > self.max_held_bytes:
                    self._lose()
                else:
                    self._held += data[pos:] if pos else data
                return
            elif state == _LOST:
                return
            else:
                newline = data.find(b"\n", pos)
                if newline < 0:
                    self._keep(data, pos, end)
                    return
                line = self._take_line(data, pos, newline)
                pos = newline + 1
                if line[-1:] == b"\r":
                    line = line[:-1]
                self._line_ended(line)

    def resume(self) -> None:
        """The switch did not happen: read what was held as requests."""
        if self._state == _SWITCH:
            held, self._held = bytes(self._held), bytearray()
            self._state = _BETWEEN
            self.feed(held)

    def _keep(self, data: bytes, pos: int, end: int) -> None:
        room = self.max_line_bytes - len(self._line)
        if end - pos > room:
            self._over = True
            end = pos + room
        if end > pos:
            self._line += data[pos:end]

    def _take_line(self, data: bytes, pos: int, newline: int) -> bytes:
        """The line that ends at ``newline`` (its first max_line_bytes), the kept start first."""
        if not self._line and not self._over:
            if newline - pos <= self.max_line_bytes:
                return data[pos:newline]
            self._over = True
            return data[pos : pos + self.max_line_bytes]
        self._keep(data, pos, newline)
        line = bytes(self._line)
        self._line.clear()
        return line

    def _line_ended(self, line: bytes) -> None:
        over, self._over = self._over, False
        state = self._state
        if state == _HEAD:
            self._head_line(line, over)
        elif state == _CHUNK_SIZE:
            size = line.partition(b";")[0].strip(b" \t")  # §7.1.1: extensions are ignored
            if not _CHUNK_SIZE_DIGITS.fullmatch(size):
                self._lose()
            elif size.strip(b"0"):
                self._remaining = int(size, 16)
                self._state = _CHUNK_DATA
            else:  # the last chunk: trailers (§7.1.2) up to a blank line
                self._state = _TRAILERS
        elif state == _CHUNK_END:  # the CRLF after a chunk's data
            if line or over:
                self._lose()
            else:
                self._state = _CHUNK_SIZE
        elif state == _TRAILERS and not line and not over:  # the end of the trailer section
            self._state = self._after_message()

    def _whole_head(self, data: bytes, start: int, end: int) -> None:
        """The head in ``data[start:end]``, its blank line included, read at once: what
        reading it a line at a time finds, in one search for its framing fields."""
        self._facts = _CONNECT if data.startswith(b"CONNECT ", start) else 0
        for name, value in _FRAMING_FIELD.findall(data, start, end):
            over = len(name) + 1 + len(value) > self.max_line_bytes
            self._field(name.lower(), value[:-1] if value[-1:] == b"\r" else value, over)
        self.heads += 1
        if self._facts or self._length is not None:
            self._head_ended()
        else:  # no body, no switch (most heads): the next request may start
            self._facts = _REQUEST_LINE

    def _head_line(self, line: bytes, over: bool) -> None:
        if self._facts & _REQUEST_LINE:
            self._facts = _CONNECT if line.startswith(b"CONNECT ") else 0
            return
        if not line and not over:
            self.heads += 1
            self._head_ended()
            return
        if line[0] in _FRAMING_INITIALS:
            name, _, value = line.partition(b":")
            self._field(name.lower(), value, over)

    def _field(self, name: bytes, value: bytes, over: bool) -> None:
        """A field of the head (``name`` lower-cased); ``over``: its line was too long."""
        if name == b"content-length":
            value = value.strip(b" \t")
            # §6.3 item 5: one value, 1*DIGIT (a longer one is over any limit there is)
            if over or self._length is not None or not value.isdigit() or len(value) > 18:
                self._facts |= _INVALID
            else:
                self._length = int(value)
        elif name == b"transfer-encoding":
            # §6.3 item 4: chunked frames the body if it is the last coding, or none does
            last = value.rpartition(b",")[2].strip(b" \t").lower()
            if last == b"chunked" and not over:
                self._facts |= _CODED | _CHUNKED
            else:
                self._facts = (self._facts | _CODED) & ~_CHUNKED
        elif name == b"connection":
            tokens = [token.strip(b" \t").lower() for token in value.split(b",")]
            if b"upgrade" in tokens or over:
                self._facts |= _CONNECTION_UPGRADE
        elif name == b"upgrade":
            self._facts |= _UPGRADE

    def _head_ended(self) -> None:
        facts = self._facts
        if facts & _CONNECT:  # RFC 9110 §9.3.6: no content; the tunnel follows the head
            self._start_head()
            self._state = _SWITCH
        elif facts & _INVALID or (
            facts & _CODED and (self._length is not None or not facts & _CHUNKED)
        ):
            self._lose()  # §6.3 items 3-5: the server refuses the request and closes
        elif facts & _CODED:
            self._state = _CHUNK_SIZE
        elif self._length:
            self._remaining = self._length
            self._state = _BODY
        else:
            self._state = self._after_message()

    def _after_message(self) -> int:
        """The state after the request ends: a protocol switch it asked for, or the next."""
        switch = self._facts & _SWITCH_ASKED == _SWITCH_ASKED
        self._start_head()
        return _SWITCH if switch else _BETWEEN

    def _start_head(self) -> None:
        self._facts = _REQUEST_LINE
        self._length = None

    def _lose(self) -> None:
        self._state = _LOST
        self._held = bytearray()
        self._line = bytearray()


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
