"""STOMP over a WebSocket this process reads and writes itself (RFC 6455).

``StompWebSocket`` is the asyncio protocol of a connection once its opening handshake
is done: the sans-I/O ``ClientFrameReader`` takes the client's frames apart, a session
task feeds the data to the ``StompSession`` in order, and ``Outbound`` writes the
session's frames, coalesced, straight to the transport (DESIGN.md §3). No framework
object stays behind per connection (docs/decisions.md: the edge).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from tidings.outbound import Outbound
from tidings.server.session import StompSession
from tidings.wsframe import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ClientFrameReader,
    WebSocketError,
    encode_close,
    encode_frame,
    parse_close,
)

log = logging.getLogger(__name__)

ABORT_AFTER_S = 2.0  # a peer that does not answer our close frame is cut off after this
CLOSE_INTERNAL_ERROR = 1011


class StompWebSocket(asyncio.Protocol):
    """The transport of one StompSession on a raw WebSocket (a FrameTransport)."""

    __slots__ = (
        "_backlog",
        "_backlog_bytes",
        "_close_received",
        "_on_lost",
        "_paused",
        "_reader",
        "_session",
        "_task",
        "_transport",
        "outbound",
        "send",
    )

    def __init__(
        self,
        session: StompSession,
        *,
        max_payload: int,
        on_lost: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        self._session = session
        self._reader = ClientFrameReader(max_payload)
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self._backlog: list[bytes] = []
        self._backlog_bytes = 0
        self._paused = False
        # (code, reason) of the client's close frame, answered once its data is handled.
        self._close_received: tuple[int | None, str] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self.outbound = Outbound(
            self._transport,
            limit=self._session.server.config.max_outbound_bytes,
            on_overflow=self._on_overflow,
        )
        self.send = self.outbound.send  # FrameTransport.send: the hub's one call per delivery
        self._session.attach(self)

    def data_received(self, data: bytes) -> None:
        if self._close_received is not None or self._session.closed:
            return  # §5.5.1: nothing after a close frame counts
        try:
            frames = self._reader.feed(data)
            chunks = []
            for opcode, payload in frames:
                if opcode in (OP_TEXT, OP_BINARY):
                    chunks.append(payload)
                elif opcode == OP_PING:  # §5.5.2: answer with the same payload
                    # Within the outbound bound like any frame: a client that pings and
                    # never reads is a slow consumer, not a way to grow our memory.
                    self.outbound.send(payload, OP_PONG)
                elif opcode == OP_CLOSE:
                    self._close_received = parse_close(payload)
                    break
        except WebSocketError as exc:
            self._session.transport_closed()
            self.close(exc.code, exc.reason)
            return
        if chunks:
            self._enqueue(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if self._close_received is not None and self._task is None:
            self._answer_close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._session.transport_closed()
        self.outbound.close()
        if self._on_lost is not None:
            on_lost, self._on_lost = self._on_lost, None
            on_lost(exc)

    # -- reading: one task at a time feeds the session, in order ---------------------------
    def _enqueue(self, data: bytes) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump(data))
            return
        self._backlog.append(data)
        self._backlog_bytes += len(data)
        if not self._paused and self._backlog_bytes > self._reader.max_payload:
            self._paused = True  # let TCP push back while the session catches up
            self._transport.pause_reading()

    async def _pump(self, data: bytes) -> None:
        session = self._session
        try:
            while True:
                await session.receive(data)
                if not self._backlog or session.closed:
                    break
                data = b"".join(self._backlog)
                self._backlog.clear()
                self._backlog_bytes = 0
                if self._paused:
                    self._paused = False
                    self._transport.resume_reading()
        except Exception:
            log.exception("session %s: unexpected error", session.id)
            session.fail("internal server error", "see the server log", CLOSE_INTERNAL_ERROR)
        finally:
            self._task = None
        if self._close_received is not None:
            self._answer_close()

    def _answer_close(self) -> None:
        """Echo the client's close frame (§5.5.1) and end the session."""
        code, _ = self._close_received or (None, "")
        self._session.transport_closed()
        if not self._transport.is_closing():
            self.outbound.send_raw(encode_close(code) if code else encode_frame(b"", OP_CLOSE))
            self._transport.close()

    # -- FrameTransport -------------------------------------------------------------------
    @property
    def last_write(self) -> float:
        return self.outbound.last_write

    def send_now(self, frame: bytes) -> None:
        self.outbound.send_raw(encode_frame(frame))

    def send_heartbeat(self) -> None:
        self.outbound.send_raw(encode_frame(b"\n"))

    def close(self, code: int, reason: str) -> None:
        """Send a close frame (RFC 6455 §5.5.1) and cut the connection if the peer lingers."""
        if self._transport.is_closing():
            return
        self.outbound.send_raw(encode_close(code, reason))
        self._transport.close()
        asyncio.get_running_loop().call_later(ABORT_AFTER_S, self._transport.abort)

    def _on_overflow(self) -> None:
        # Called from inside a delivery loop: end the session on the next loop turn.
        loop = asyncio.get_running_loop()
        loop.call_soon(self._session.on_slow_consumer, self.outbound.limit)
