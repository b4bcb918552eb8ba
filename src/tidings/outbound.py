"""The outbound path of one connection (DESIGN.md §3).

Frames are appended to a bounded buffer and flushed with one ``write`` per event-loop
turn, so a burst of deliveries costs one system call, not one per frame. One callback per
loop turn flushes every connection that has frames queued (``Flusher``): a callback per
connection cost three garbage-collected objects per delivery (docs/decisions.md). The bound
counts what we hold plus what the transport holds unsent; crossing it means the
client does not read fast enough, and the connection's ``on_overflow`` is called once
(the policy: disconnect it as a slow consumer, DESIGN.md §1).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from tidings.wsframe import HEADER_CACHE, OP_TEXT, frame_header


class Flushable(Protocol):
    def flush(self) -> None:
        """Write what is queued."""


class Flusher:
    """Calls ``flush()`` of every object queued with ``add`` in one callback, next loop turn.

    ``loop.call_soon(obj.flush)`` allocates a bound method, a Handle and a Context, all
    tracked by the garbage collector; a broadcast to 1,000 connections made thousands of
    them per message, which kept the young generations full and promoted transient
    objects into the old one. Appending to a list allocates nothing.

    Write-through: queuing a whole fan-out before the first write made the first of
    1,000 subscribers wait for the other 999 frames to be queued (~3 ms at 20 msg/s, when
    nothing is there to coalesce). So a fan-out between ``begin_burst`` and ``end_burst``
    writes each connection's frame at once (``write_through``) when the connections have
    been quiet at least as long as they were last busy writing: below half load there is
    no second message to share a write with. Busier than that, frames queue and coalesce
    as above (docs/decisions.md).
    """

    __slots__ = (
        "_clock",
        "_dirty",
        "_loop",
        "_quiet_from",
        "after_flush",
        "flush_pending",
        "write_through",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._loop = loop
        self._clock = clock  # uvloop's loop.time() stands still within a loop turn
        self._dirty: list[Flushable] = []
        self.flush_pending = False
        """True while frames wait for this loop turn's flush."""
        self._quiet_from = 0.0  # write through from then on
        self.write_through = False
        """True within a burst that writes frames at once rather than queuing them."""
        self.after_flush: list[Callable[[], None]] = []
        """Called after each flush of queued frames (a node's delivery-lag count)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def add(self, item: Flushable) -> None:
        """Flush ``item`` next loop turn; the caller adds it once per turn."""
        self._dirty.append(item)
        if not self.flush_pending:
            self.flush_pending = True
            self._loop.call_soon(self._flush_all)

    def begin_burst(self) -> float:
        """A fan-out starts: set ``write_through``; returns the time to give ``end_burst``."""
        now = self._clock()
        self.write_through = not self.flush_pending and now >= self._quiet_from
        return now

    def end_burst(self, started: float) -> None:
        if self.write_through:
            self.write_through = False
            self._was_busy(started)

    def _was_busy(self, started: float) -> None:
        """Writing took from ``started`` until now: stay quiet as long before writing through."""
        ended = self._clock()
        self._quiet_from = max(self._quiet_from, 2 * ended - started)

    def _flush_all(self) -> None:
        started = self._clock()
        dirty = self._dirty
        done = 0
        try:
            while done < len(dirty):  # what a flush adds is flushed in this turn too
                done += 1
                dirty[done - 1].flush()
        finally:
            del dirty[:done]
            if dirty:  # a flush raised: the rest still go, next turn
                self._loop.call_soon(self._flush_all)
            else:
                self.flush_pending = False
            self._was_busy(started)
        for callback in self.after_flush:
            callback()


_flusher: Flusher | None = None


def loop_flusher() -> Flusher:
    """The running loop's ``Flusher``."""
    global _flusher  # noqa: PLW0603 - one per loop; a process runs one loop at a time
    loop = asyncio.get_running_loop()
    if _flusher is None or _flusher.loop is not loop:
        _flusher = Flusher(loop)
    return _flusher


class Outbound:
    """Per-connection bounded, coalescing writer of WebSocket frames."""

    __slots__ = (
        "_buffer",
        "_buffered",
        "_flusher",
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
        self._flusher = loop_flusher()
        self._loop = self._flusher.loop
        self._buffer: list[bytes] = []
        self._buffered = 0  # payload bytes in _buffer
        self._held = 0  # bytes the transport held unsent when this loop turn's first frame came
        self._on_overflow = on_overflow
        self.limit = limit
        self.overflowed = False
        self.last_write = self._loop.time()

    def send(self, payload: bytes, opcode: int = OP_TEXT) -> bool:
        """Queue one STOMP frame as one WebSocket message (in a write-through burst with
        nothing queued, write it at once); False once the bound was crossed.

        ``opcode`` is OP_TEXT unless the frame is not valid UTF-8 (RFC 6455 §5.6). The
        transport's backlog is read once per loop turn, at the turn's first frame.
        """
        buffer = self._buffer
        size = len(payload)
        header = HEADER_CACHE.get(opcode << 16 | size) or frame_header(size, opcode)
        if not buffer:
            if self.overflowed or self._transport.is_closing():
                return False
            held = self._held = self._transport.get_write_buffer_size()
            if self._flusher.write_through and not held and size <= self.limit:
                self._transport.write(header + payload)
                self.last_write = self._loop.time()
                return True
            self._flusher.add(self)  # an empty buffer is not queued for this turn yet
        buffered = self._buffered + size
        if self._held + buffered > self.limit:
            self.overflowed = True
            buffer.clear()
            self._buffered = 0
            self._on_overflow()
            return False
        buffer.append(header)
        buffer.append(payload)
        self._buffered = buffered
        return True

    def send_raw(self, data: bytes) -> None:
        """Write already-framed bytes now, ahead of the bound (ERROR, close, heart-beat).

        Only for frames whose number the server bounds itself: one ERROR and one close
        per connection, a heart-beat per interval. Anything a client can make us send
        at will (a PONG per PING) goes through ``send`` and its bound (issue 14).
        """
        self.flush()
        if not self._transport.is_closing():
            self._transport.write(data)
            self.last_write = self._loop.time()

    def close(self) -> None:
        """The connection is gone: drop what is queued and the overflow callback (a cycle)."""
        self._buffer.clear()
        self._buffered = 0
        self.overflowed = True  # takes nothing more
        self._on_overflow = _nothing

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


def _nothing() -> None:
    pass
