"""A minimal STOMP-over-WebSocket client for tests that need byte-level control.

It speaks through aiohttp's WebSocket client (a real client) and parses what the server
sends with the project's own parser in server-frame mode. Real npm clients are driven
through tests/jsclient.py; this one exists to send malformed input and to watch
heart-beats, close codes and errors precisely.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from tidings.stomp.frames import SERVER_COMMANDS, Frame, FrameParser, Limits

HEARTBEAT = "heartbeat"


@dataclass
class Closed:
    code: int | None
    reason: str


@dataclass
class StompWs:
    session: aiohttp.ClientSession
    ws: aiohttp.ClientWebSocketResponse
    parser: FrameParser = field(
        default_factory=lambda: FrameParser(
            Limits(max_frame_bytes=1 << 24, max_headers=1000), commands=SERVER_COMMANDS
        )
    )
    frames: list[Frame | str] = field(default_factory=list)

    @classmethod
    async def open(
        cls, url: str, protocols: Sequence[str] = ("v12.stomp", "v11.stomp", "v10.stomp")
    ) -> StompWs:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url, protocols=protocols, autoclose=False)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    async def connect(self, **headers: str) -> Frame:
        headers.setdefault("accept-version", "1.2")
        headers.setdefault("heart-beat", "0,0")
        await self.send_frame("CONNECT", headers)
        connected = await self.expect("CONNECTED")
        self.parser.version = connected.get("version") or "1.0"
        return connected

    async def send_frame(self, command: str, headers: dict[str, str], body: bytes = b"") -> None:
        head = "".join(f"{name}:{value}\n" for name, value in headers.items())
        await self.send_raw(f"{command}\n{head}\n".encode() + body + b"\0")

    async def send_raw(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def subscribe(self, sub_id: str, destination: str, **headers: str) -> None:
        """SUBSCRIBE and wait for its RECEIPT, so the subscription is live on return."""
        receipt = f"sub-{sub_id}"
        await self.send_frame(
            "SUBSCRIBE", {"id": sub_id, "destination": destination, "receipt": receipt, **headers}
        )
        await self.expect("RECEIPT", **{"receipt-id": receipt})

    async def next(self, timeout: float = 5.0) -> Frame | str | Closed:  # noqa: ASYNC109
        """The next frame, HEARTBEAT for a heart-beat EOL, or Closed when the socket closes."""
        if self.frames:
            return self.frames.pop(0)
        async with asyncio.timeout(timeout):
            while not self.frames:
                msg = await self.ws.receive()
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    data = msg.data.encode() if isinstance(msg.data, str) else msg.data
                    if data.strip(b"\r\n") == b"":
                        self.frames.append(HEARTBEAT)
                        continue
                    self.frames.extend(self.parser.feed(data))
                elif msg.type == aiohttp.WSMsgType.CLOSE:
                    return Closed(msg.data, msg.extra or "")
                else:
                    return Closed(self.ws.close_code, str(msg.data))
        return self.frames.pop(0)

    async def expect(
        self,
        command: str,
        timeout: float = 5.0,  # noqa: ASYNC109
        **headers: str,
    ) -> Frame:
        """The next non-heart-beat frame; it must be ``command`` with these header values."""
        item = await self.next(timeout)
        while item == HEARTBEAT:
            item = await self.next(timeout)
        assert isinstance(item, Frame), f"expected {command}, got {item!r}"
        assert item.command == command, f"expected {command}, got {item!r}"
        for name, value in headers.items():
            assert item.get(name) == value, f"{name}: expected {value!r} in {item!r}"
        return item

    async def expect_error_and_close(self, message_part: str, code: int) -> Frame:
        """An ERROR whose message contains ``message_part``, then a close with ``code``."""
        error = await self.expect("ERROR")
        assert message_part in (error.get("message") or ""), error
        closed = await self.next()
        assert isinstance(closed, Closed), f"expected the socket to close, got {closed!r}"
        assert closed.code == code, closed
        return error

    async def close(self) -> None:
        try:
            await self.ws.close()
        finally:  # also when cancelled meanwhile: an unclosed session warns, and warnings fail
            await self.session.close()
