"""STOMP frames: the frame model, an incremental parser and a serializer.

Sans-I/O: bytes go in, :class:`Frame` objects come out, and back. Nothing here
reads a socket or knows about a session; :mod:`tidings.stomp.connection` adds the
session rules on top.

Wire format (STOMP 1.2 §STOMP Frames, §Augmented BNF)::

    frame = command EOL *( header EOL ) EOL *OCTET NULL *( EOL )
    EOL   = [CR] LF

Lenient where common peers are lenient (CR LF line ends in every version, as
Spring's decoder accepts them); strict where leniency would be unsafe (limits,
escapes, NUL or CR inside a header line).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import overload

from tidings.errors import StompLimitExceeded, StompProtocolError

__all__ = [
    "CLIENT_COMMANDS",
    "DEFAULT_LIMITS",
    "HEARTBEAT",
    "SERVER_COMMANDS",
    "VERSIONS",
    "Frame",
    "FrameParser",
    "Limits",
    "escape_header",
    "serialize",
    "unescape_header",
]

VERSIONS = ("1.0", "1.1", "1.2")
"""Protocol versions this module speaks, lowest first."""

CLIENT_COMMANDS = frozenset(
    {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
    }
)
"""Commands a client may send (STOMP 1.2 §Augmented BNF, ``client-command``)."""

SERVER_COMMANDS = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})
"""Commands a server may send (STOMP 1.2 §Augmented BNF, ``server-command``)."""

_COMMANDS = CLIENT_COMMANDS | SERVER_COMMANDS  # what serialize() writes

HEARTBEAT = b"\n"
"""A heart-beat is a bare EOL sent between frames (STOMP 1.2 §Heart-beating)."""

# Headers of these frames are never escaped, for STOMP 1.0 compatibility
# (STOMP 1.2 §Value Encoding; STOMP is handled like CONNECT, §CONNECT or STOMP Frame).
_UNESCAPED_COMMANDS = frozenset({"CONNECT", "STOMP", "CONNECTED"})

# Escape sequences per version (STOMP 1.1 and 1.2 §Value Encoding).
_DECODE_ESCAPES = {
    "1.1": {"n": "\n", "c": ":", "\\": "\\"},
    "1.2": {"n": "\n", "c": ":", "\\": "\\", "r": "\r"},
}
_ESCAPE_SEQUENCE = re.compile(r"\\(.?)", re.DOTALL)
_UNSAFE = re.compile("[\r\n\0]")  # left in a header after escaping: not representable
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class Frame:
    """One STOMP frame: a command, headers in wire order (repeats kept), a body."""

    command: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    @overload
    def get(self, name: str, default: None) -> str | None: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        """Value of header ``name``; the first occurrence wins.

        STOMP 1.2 §Repeated Header Entries: "only the first header entry SHOULD be
        used as the value of header entry".
        """
        for key, value in self.headers:
            if key == name:
                return value
        return default


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep one peer from exhausting server memory (STOMP 1.2 §Size Limits)."""

    max_frame_bytes: int = 64 * 1024
    """Whole frame on the wire, from the command's first byte through the NUL."""
    max_headers: int = 32
    """Header lines in one frame."""
    max_header_line: int = 8 * 1024
    """Bytes of one command or header line, EOL excluded."""
    max_subscriptions: int = 100
    """Open subscriptions per session (used by the connection)."""
    max_transactions: int = 16
    """Open transactions per session (used by the connection)."""
    max_transaction_frames: int = 1000
    """Frames held back across all open transactions of a session."""
    max_transaction_bytes: int = 1024 * 1024
    """Body bytes held back across all open transactions of a session."""
    max_user_headers: int = 16
    """User-defined headers a SEND passes through to its MESSAGE (STOMP 1.2 §SEND)."""
    max_user_header_bytes: int = 4096
    """UTF-8 bytes of those headers' names and values together (stored with the message)."""


DEFAULT_LIMITS = Limits()


def _check_version(version: str) -> None:
    if version not in VERSIONS:
        raise ValueError(f"unknown STOMP version {version!r}; expected one of {VERSIONS}")


def escape_header(value: str, version: str) -> str:
    """Escape a header name or value for ``version`` (STOMP 1.2 §Value Encoding).

    1.2 escapes backslash, CR, LF and colon; 1.1 the same but CR; 1.0 nothing.
    """
    _check_version(version)
    if version == "1.0":
        return value
    value = value.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c")
    if version == "1.2":
        value = value.replace("\r", "\\r")
    return value


def unescape_header(text: str, version: str) -> str:
    """Undo :func:`escape_header`; an undefined escape is a protocol error.

    STOMP 1.2 §Value Encoding: "Undefined escape sequences such as \\t ... MUST be
    treated as a fatal protocol error." 1.1 knows ``\\n``, ``\\c``, ``\\\\``; 1.2 adds
    ``\\r``; 1.0 has no escaping.
    """
    _check_version(version)
    if version == "1.0" or "\\" not in text:
        return text
    table = _DECODE_ESCAPES[version]

    def decode(match: re.Match[str]) -> str:
        try:
            return table[match.group(1)]
        except KeyError:
            raise StompProtocolError(
                f"invalid escape sequence {match.group(0)!r} in header (STOMP {version})"
            ) from None

    return _ESCAPE_SEQUENCE.sub(decode, text)


def serialize(frame: Frame, version: str = "1.2") -> bytes:
    """Encode ``frame`` for the wire (STOMP 1.2 §STOMP Frames).

    Line ends are LF; headers are UTF-8 and escaped for ``version`` except in
    CONNECT, STOMP and CONNECTED frames (§Value Encoding). MESSAGE and ERROR frames,
    and any frame whose body holds a NUL, get a ``content-length`` header appended
    if the caller gave none (§Header content-length).

    Raises :class:`ValueError` for an unknown command, a ``content-length`` that
    does not match the body, or if a header cannot be represented in ``version`` (a CR, LF or NUL
    left after escaping, an empty name, or a colon in a name).
    """
    _check_version(version)
    if frame.command not in _COMMANDS:
        raise ValueError(f"unknown STOMP command {frame.command!r}")
    headers = frame.headers
    declared = frame.get("content-length")
    if declared is None:
        if frame.command in ("MESSAGE", "ERROR") or b"\0" in frame.body:
            headers = (*headers, ("content-length", str(len(frame.body))))
    elif declared != str(len(frame.body)):
        raise ValueError(
            f"content-length {declared!r} does not match a {len(frame.body)}-byte body"
        )
    escaped = frame.command not in _UNESCAPED_COMMANDS
    lines = [frame.command]
    for raw_name, raw_value in headers:
        name, value = raw_name, raw_value
        if escaped:
            name, value = escape_header(name, version), escape_header(value, version)
        if not name or ":" in name or _UNSAFE.search(name) or _UNSAFE.search(value):
            raise ValueError(f"header {name!r} cannot be represented in STOMP {version}")
        lines.append(f"{name}:{value}")
    head = "\n".join(lines) + "\n\n"  # the blank line ends the headers
    return head.encode() + frame.body + b"\0"


class _Phase(enum.Enum):
    """Where the parser stands in the frame grammar (STOMP 1.2 §Augmented BNF)."""

    BETWEEN_FRAMES = "between frames"  # skipping heart-beat EOLs
    COMMAND = "command"
    HEADERS = "headers"
    BODY = "body"


class FrameParser:
    """Incremental STOMP frame parser.

    Feed it bytes as they arrive, split anywhere; it returns each frame once its
    NUL has arrived. EOLs between frames are heart-beats (STOMP 1.2 §Heart-beating)
    and are counted in :attr:`heartbeats_received`. Every limit in :class:`Limits`
    is checked as soon as it is crossed, so no more than about ``max_frame_bytes``
    is ever buffered.

    After a :class:`StompProtocolError` the parser is broken: every later call
    raises again. The usual use is :meth:`feed`; a session that changes
    :attr:`version` between frames uses :meth:`receive_data` then
    :meth:`next_frame` so that each frame is decoded with the version in force.
    """

    def __init__(
        self, limits: Limits = DEFAULT_LIMITS, *, commands: frozenset[str] = CLIENT_COMMANDS
    ) -> None:
        self.limits = limits
        self.commands = commands
        self.heartbeats_received = 0
        self._version = "1.0"
        self._error: StompProtocolError | None = None
        self._buffer = bytearray()
        self._pos = 0  # start of the unconsumed data in _buffer
        self._scanned = 0  # bytes after _pos already searched for the current delimiter
        self._phase = _Phase.BETWEEN_FRAMES
        self._frame_bytes = 0  # bytes of the current frame consumed so far
        self._command = ""
        self._headers: list[tuple[str, str]] = []
        self._content_length: int | None = None

    @property
    def version(self) -> str:
        """Protocol version whose header escaping applies; "1.0" until negotiated."""
        return self._version

    @version.setter
    def version(self, version: str) -> None:
        _check_version(version)
        self._version = version

    @property
    def receipt_so_far(self) -> str | None:
        """``receipt`` of the frame being read, if that header came before a failure, so that
        an ERROR about a malformed frame can still name it (STOMP 1.2 §ERROR)."""
        for name, value in self._headers:  # emptied at each frame's start and end
            if name == "receipt":
                return value
        return None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned in a frame; kept under ``max_frame_bytes``."""
        return len(self._buffer) - self._pos

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data`` and return every frame it completes, in order."""
        self.receive_data(data)
        frames = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    def receive_data(self, data: bytes) -> None:
        """Buffer ``data`` without parsing it; call :meth:`next_frame` next."""
        self._raise_if_broken()
        if self._pos:
            del self._buffer[: self._pos]  # cheap: bytearray trims its head in place
            self._pos = 0
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """Parse and return the next complete frame, or None if more data is needed."""
        self._raise_if_broken()
        try:
            return self._parse()
        except StompProtocolError as exc:
            self._error = exc
            self._buffer.clear()
            raise

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise type(self._error)(
                f"stream unusable after an earlier error: {self._error.message}"
            )

    def _parse(self) -> Frame | None:
        while True:
            if self._phase is _Phase.BETWEEN_FRAMES:
                if not self._skip_heartbeats():
                    return None
                frame = self._take_whole_frame()
                if frame is not None:
                    return frame
                self._phase = _Phase.COMMAND
            elif self._phase is _Phase.COMMAND:
                line = self._take_line("command line")
                if line is None:
                    return None
                self._start_frame(line)
                self._phase = _Phase.HEADERS
            elif self._phase is _Phase.HEADERS:
                line = self._take_line("header line")
                if line is None:
                    return None
                if line:
                    self._add_header(line)
                else:
                    self._end_headers()
                    self._phase = _Phase.BODY
            else:
                return self._take_body()

    def _take_whole_frame(self) -> Frame | None:
        """The frame at ``_pos`` in one pass, if it is all buffered and plain; else None.

        Plain: LF line ends, no escape, no ``content-length``, within every limit, valid
        UTF-8, a known command. What is not plain (or not complete) goes line by line,
        which yields the same frame or raises the error the grammar calls for; this pass
        only takes the common case (a CONNECT or SUBSCRIBE in one WebSocket message) at
        a third of the cost. Both searches stop at the frame's first NUL (or the frame
        limit), so a frame costs this pass time in its own length, never the buffer's.
        """
        buf, start, limits = self._buffer, self._pos, self.limits
        # No content-length: the body ends at the frame's first NUL, and so does the search
        # for the blank line. Searching the whole buffer for it instead made a message of
        # tiny CR LF frames (which have no "\n\n") cost quadratic time (issue 14).
        end = buf.find(b"\0", start, start + limits.max_frame_bytes)
        if end == -1:
            return None
        head_end = buf.find(b"\n\n", start, end)  # the first blank line ends the headers
        if head_end == -1:
            return None
        head = bytes(buf[start:head_end])
        if b"\r" in head or b"\0" in head or b"\\" in head:
            return None
        lines = head.split(b"\n")
        if len(lines) > limits.max_headers + 1:
            return None
        max_line = limits.max_header_line
        headers: list[tuple[str, str]] = []
        try:
            command = lines[0].decode()
            for line in lines[1:]:
                name, colon, value = line.partition(b":")
                if not name or not colon or len(line) > max_line or name == b"content-length":
                    return None
                headers.append((name.decode(), value.decode()))
        except UnicodeDecodeError:
            return None
        if command not in self.commands or len(lines[0]) > max_line:
            return None
        self._pos, self._scanned, self._frame_bytes = end + 1, 0, 0
        return Frame(command, tuple(headers), bytes(buf[head_end + 2 : end]))

    def _skip_heartbeats(self) -> bool:
        """Skip EOLs; True once a frame's first byte is at ``_pos``."""
        buf = self._buffer
        while self._pos < len(buf):
            if buf[self._pos] == 0x0A:  # LF
                self._pos += 1
            elif buf[self._pos] == 0x0D:  # CR: an EOL only if LF follows
                if self._pos + 1 == len(buf):
                    return False
                if buf[self._pos + 1] != 0x0A:
                    return True
                self._pos += 2
            else:
                return True
            self.heartbeats_received += 1
        return False

    def _take_line(self, what: str) -> bytes | None:
        """The next line without its EOL, or None if its LF has not arrived."""
        buf, limit = self._buffer, self.limits.max_header_line
        end = buf.find(b"\n", self._pos + self._scanned)
        if end == -1:
            pending = len(buf) - self._pos
            self._scanned = pending
            if pending > limit + (1 if buf.endswith(b"\r") else 0):
                raise StompLimitExceeded(f"{what} too long (limit {limit} bytes)")
            self._check_frame_size(pending)
            return None
        line = bytes(buf[self._pos : end])
        self._frame_bytes += end + 1 - self._pos
        self._pos, self._scanned = end + 1, 0
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > limit:
            raise StompLimitExceeded(f"{what} too long (limit {limit} bytes)")
        self._check_frame_size(0)
        return line

    def _check_frame_size(self, pending: int) -> None:
        """Raise if the frame, with ``pending`` more bytes and its NUL, is too big."""
        limit = self.limits.max_frame_bytes
        if self._frame_bytes + pending + 1 > limit:
            raise StompLimitExceeded(f"frame too large (limit {limit} bytes)")

    def _start_frame(self, line: bytes) -> None:
        command = line.decode("utf-8", "replace")
        if command not in self.commands:
            raise StompProtocolError(f"unknown command {command[:40]!r}")
        self._command = command
        self._headers.clear()
        self._content_length = None

    def _add_header(self, line: bytes) -> None:
        """Parse ``name:value``, split at the first colon (STOMP 1.2 §STOMP Frames)."""
        if len(self._headers) == self.limits.max_headers:
            raise StompLimitExceeded(f"too many headers (limit {self.limits.max_headers})")
        if b"\0" in line or b"\r" in line:
            raise StompProtocolError("header line contains NUL or CR")
        name, colon, value = line.partition(b":")
        if not colon:
            raise StompProtocolError("header line without a colon")
        if not name:
            raise StompProtocolError("header line with an empty name")
        try:
            text_name, text_value = name.decode(), value.decode()
        except UnicodeDecodeError:
            raise StompProtocolError("header is not valid UTF-8") from None
        if self._command not in _UNESCAPED_COMMANDS:
            text_name = unescape_header(text_name, self._version)
            text_value = unescape_header(text_value, self._version)
        self._headers.append((text_name, text_value))

    def _end_headers(self) -> None:
        """Read ``content-length`` (first occurrence) and bound the body it declares."""
        for name, value in self._headers:
            if name == "content-length":
                if not _DIGITS.fullmatch(value):
                    raise StompProtocolError(f"invalid content-length {value[:40]!r}")
                digits = value.lstrip("0") or "0"
                # Bound the digits before int(): a huge number only needs to fail the check.
                length = int(digits) if len(digits) <= 18 else 10**18
                self._check_frame_size(length)
                self._content_length = length
                return

    def _take_body(self) -> Frame | None:
        """The body: content-length bytes, else up to the first NUL (§Header content-length)."""
        buf, start = self._buffer, self._pos
        if self._content_length is not None:
            end = start + self._content_length
            if len(buf) <= end:
                return None
            if buf[end] != 0:
                raise StompProtocolError("frame body not followed by NUL (check content-length)")
        else:
            end = buf.find(b"\0", start + self._scanned)
            if end == -1:
                self._scanned = len(buf) - start
                self._check_frame_size(self._scanned)
                return None
            self._check_frame_size(end - start)
        frame = Frame(self._command, tuple(self._headers), bytes(buf[start:end]))
        self._headers.clear()  # an idle session's parser holds no header tuples
        self._pos, self._scanned, self._frame_bytes = end + 1, 0, 0
        self._phase = _Phase.BETWEEN_FRAMES
        return frame
