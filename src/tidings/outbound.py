"""The outbound path of one connection (DESIGN.md §3).

Frames are appended to a bounded buffer and flushed with one ``write`` per event-loop
turn, so a burst of deliveries costs one system call, not one per frame. The bound
counts what we hold plus what the transport holds unsent; crossing it means the
client does not read fast enough, and the connection's ``on_overflow`` is called once
(the policy: disconnect it as a slow consumer, DESIGN.md §1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tidings.wsframe import HEADER_CACHE, OP_TEXT, frame_header


class Outbound:
    """Per-connection bounded, coalescing writer of WebSocket frames."""

    __slots__ = (
        "_buffer",
        "_buffered",
        "_held",
        "_loop",
        "_on_overflow",
        "_transport",
        "last_write",
        "limit",
        "overflowed",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        limit: int,
        on_overflow: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._buffer: list[bytes] = []
        self._buffered = 0  # payload bytes in _buffer
        self._held = 0  # bytes the transport held unsent when this loop turn's first frame came
        self._on_overflow = on_overflow
        self.limit = limit
        self.overflowed = False
        self.last_write = self._loop.time()

    @property
    def pending_bytes(self) -> int:
        """Bytes accepted but not yet handed to the kernel."""
        return self._buffered + self._transport.get_write_buffer_size()

    def send(self, payload: bytes, opcode: int = OP_TEXT) -> bool:
        """Queue one STOMP frame as one WebSocket message; False once the bound was crossed.

        ``opcode`` is OP_TEXT unless the frame is not valid UTF-8 (RFC 6455 §5.6). The
        transport's backlog is read once per loop turn, at the turn's first frame.
        """
        buffer = self._buffer
        if not buffer:
            if self.overflowed or self._transport.is_closing():
                return False
            self._held = self._transport.get_write_buffer_size()
            self._loop.call_soon(self.flush)
        size = len(payload)
        buffered = self._buffered + size
        if self._held + buffered > self.limit:
            self.overflowed = True
            buffer.clear()
            self._buffered = 0
            self._on_overflow()
            return False
        buffer.append(HEADER_CACHE.get(opcode << 16 | size) or frame_header(size, opcode))
        buffer.append(payload)
        self._buffered = buffered
        return True

    def send_raw(self, data: bytes) -> None:
        """Write already-framed bytes now, ahead of the bound (ERROR, close, heart-beat)."""
        self.flush()
        if not self._transport.is_closing():
            self._transport.write(data)
            self.last_write = self._loop.time()

    def flush(self) -> None:
        buffer = self._buffer
        if not buffer:
            return
        data = b"".join(buffer)
        buffer.clear()
        self._buffered = 0
        if not self._transport.is_closing():
            self._transport.write(data)
            self.last_write = self._loop.time()
