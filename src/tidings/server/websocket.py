"""STOMP over a raw WebSocket (RFC 6455): aiohttp reads, ``Outbound`` writes.

Writes bypass aiohttp's awaited send path: frames are pre-encoded and written to the
transport once per loop turn (DESIGN.md §3, docs/decisions.md).
"""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType, web

from tidings.outbound import Outbound
from tidings.server.session import StompSession
from tidings.wsframe import OP_TEXT, encode_close, encode_frame

ABORT_AFTER_S = 2.0  # a peer that does not answer our close frame is cut off after this


class WebSocketTransport:
    """The FrameTransport of a session on a raw WebSocket."""

    def __init__(self, request: web.Request, session: StompSession, *, limit: int) -> None:
        transport = request.transport
        assert transport is not None, "prepare() gave a WebSocket without a transport"
        self._transport = transport
        self._session = session
        self.outbound = Outbound(transport, limit=limit, on_overflow=self._on_overflow)

    @property
    def last_write(self) -> float:
        return self.outbound.last_write

    def send(self, frame: bytes, opcode: int = OP_TEXT) -> bool:
        return self.outbound.send(frame, opcode)

    def send_now(self, frame: bytes) -> None:
        self.outbound.send_raw(encode_frame(frame))

    def send_heartbeat(self) -> None:
        self.outbound.send_raw(encode_frame(b"\n"))

    def close(self, code: int, reason: str) -> None:
        """Send a close frame (RFC 6455 §5.5.1) and cut the connection if the peer lingers."""
        self.outbound.send_raw(encode_close(code, reason))
        self._transport.close()
        asyncio.get_running_loop().call_later(ABORT_AFTER_S, self._transport.abort)

    def _on_overflow(self) -> None:
        # Called from inside a delivery loop: end the session on the next loop turn.
        loop = asyncio.get_running_loop()
        loop.call_soon(self._session.on_slow_consumer, self.outbound.limit)


async def serve_websocket(
    ws: web.WebSocketResponse, request: web.Request, session: StompSession, *, limit: int
) -> None:
    """Feed the session every WebSocket message until either side ends it."""
    session.attach(WebSocketTransport(request, session, limit=limit))
    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            await session.receive(msg.data)
            if session.closed:
                break
    finally:
        session.transport_closed()
