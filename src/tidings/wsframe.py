"""Server-to-client WebSocket frames, encoded without a framework (RFC 6455 §5.2).

Server frames are never masked (§5.1), so a frame is a 2-10 byte header and the payload.
The hot path writes these straight to the transport (DESIGN.md §3).
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
_FIN = 0x80


def frame_header(length: int, opcode: int = OP_TEXT) -> bytes:
    """Header of one final, unmasked frame carrying ``length`` payload bytes (§5.2)."""
    first = _FIN | opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def encode_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    return frame_header(len(payload), opcode) + payload


def encode_close(code: int, reason: str = "") -> bytes:
    """A close frame (§5.5.1); the reason is cut to fit the 125-byte control-frame limit."""
    body = struct.pack("!H", code) + reason.encode("utf-8")[:123]
    return encode_frame(body, OP_CLOSE)
