"""WebSocket framing without a framework (RFC 6455 §5).

Server frames are never masked (§5.1), so writing one is a 2-10 byte header and the
payload; the hot path writes these straight to the transport (DESIGN.md §3).
``ClientFrameReader`` is the other direction: a sans-I/O reader of client frames that
unmasks them and enforces the framing rules, raising ``WebSocketError`` with the close
code the connection must end with.
"""

from __future__ import annotations

import codecs
import struct

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_FIN = 0x80
_RSV = 0x70
_MASKED = 0x80

# Close codes (§7.4.1).
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009


class WebSocketError(Exception):
    """The peer broke RFC 6455; close the connection with ``code`` (§7.4.1)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# Frame headers by opcode << 16 | length, for lengths below 64 KiB: built once each.
HEADER_CACHE: dict[int, bytes] = {}


def frame_header(length: int, opcode: int = OP_TEXT) -> bytes:
    """Header of one final, unmasked frame carrying ``length`` payload bytes (§5.2)."""
    if length < 1 << 16:
        header = HEADER_CACHE.get(opcode << 16 | length)
        if header is None:
            first = _FIN | opcode
            header = (
                bytes((first, length)) if length < 126 else struct.pack("!BBH", first, 126, length)
            )
            HEADER_CACHE[opcode << 16 | length] = header
        return header
    return struct.pack("!BBQ", _FIN | opcode, 127, length)


def encode_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    return frame_header(len(payload), opcode) + payload


def encode_close(code: int, reason: str = "") -> bytes:
    """A close frame (§5.5.1); the reason is cut to fit the 125-byte control-frame limit."""
    cut = reason.encode("utf-8")[:123].decode("utf-8", "ignore")  # whole characters only
    body = struct.pack("!H", code) + cut.encode("utf-8")
    return encode_frame(body, OP_CLOSE)


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte masking key (§5.3)."""
    length = len(payload)
    if not length:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """Status code and reason of a received close frame (§5.5.1, §7.4)."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    # §7.4.1-2: 1004-1006 and 1015 must not be sent; below 1000 and 1016-2999 are unassigned.
    if code < 1000 or code in (1004, 1005, 1006) or 1015 <= code < 3000 or code >= 5000:
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason


class ClientFrameReader:
    """Reads the frames a client sends (RFC 6455 §5.2-§5.6), in any chunking.

    ``feed`` returns ``(opcode, payload)`` per complete frame, payload unmasked. A
    continuation frame is reported with its message's opcode, so a consumer that
    streams message data (STOMP does: frames may span messages) never reassembles.
    """

    __slots__ = ("_buffer", "_message", "_need", "_utf8_tail", "max_payload")

    def __init__(self, max_payload: int) -> None:
        # The start of a frame not complete yet; an idle connection shares the empty b"".
        self._buffer: bytes | bytearray = b""
        self._need = 0  # bytes _buffer must hold before that frame can be read further
        self._message = 0  # opcode of the fragmented data message in progress; 0: none
        self._utf8_tail = b""  # an incomplete UTF-8 sequence ending a text fragment
        self.max_payload = max_payload

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Frames completed by ``data``; raises WebSocketError when a rule is broken.

        Time is linear in the bytes fed however they are split: an incomplete frame is
        appended to until it has the bytes it needs (joining the buffer to every piece
        made a frame sent a few bytes at a time cost quadratic time; issue 14).
        """
        buffer = self._buffer
        if buffer:
            buffer += data  # a bytearray: appended in place
            if len(buffer) < self._need:
                return []
            data = bytes(buffer)
            self._buffer = b""
        frames: list[tuple[int, bytes]] = []
        end = len(data)
        pos = 0
        need = 2
        while end - pos >= 2:
            first, second = data[pos], data[pos + 1]
            length = second & 0x7F
            start = pos + 6  # header + masking key, for a 7-bit length
            if length == 126:
                start = pos + 8
                if end < start:
                    need = 8
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                start = pos + 14
                if end < start:
                    need = 14
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            self._check_header(first, second, length)
            if end < start + length:
                need = start + length - pos
                break
            payload = unmask(data[start : start + length], data[start - 4 : start])
            pos = start + length
            frames.append(self._frame(first, payload))
        if pos < end:
            self._buffer = bytearray(data[pos:])
            self._need = need
        return frames

    def _check_header(self, first: int, second: int, length: int) -> None:
        if first & _RSV:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR, "reserved bits set, no extension agreed")
        if not second & _MASKED:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR, "client frames must be masked (§5.1)")
        opcode = first & 0x0F
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            if not first & _FIN or length > 125:
                raise WebSocketError(
                    CLOSE_PROTOCOL_ERROR, "control frame fragmented or over 125 bytes"
                )
        elif opcode > OP_BINARY:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if length > self.max_payload:
            raise WebSocketError(
                CLOSE_TOO_BIG, f"frame of {length} bytes; at most {self.max_payload}"
            )

    def _frame(self, first: int, payload: bytes) -> tuple[int, bytes]:
        opcode = first & 0x0F
        fin = first & _FIN
        if opcode >= OP_CLOSE:
            return opcode, payload
        if opcode == OP_CONTINUATION:
            if not self._message:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "continuation frame with no message")
            opcode = self._message
        elif self._message:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
        self._message = 0 if fin else opcode
        if opcode == OP_TEXT:
            self._check_utf8(payload, final=bool(fin))
        return opcode, payload

    def _check_utf8(self, payload: bytes, *, final: bool) -> None:
        """Text messages must be UTF-8 (§5.6, §8.1), checked across fragments."""
        data = self._utf8_tail + payload if self._utf8_tail else payload
        try:
            _, consumed = codecs.utf_8_decode(data, "strict", final)
        except UnicodeDecodeError:
            raise WebSocketError(CLOSE_INVALID_DATA, "text message is not UTF-8") from None
        self._utf8_tail = data[consumed:] if consumed < len(data) else b""
