"""The services the SockJS protocol test suite talks to (``--sockjs-test-services``).

The suite (sockjs/sockjs-protocol, ``sockjs-protocol-0.3.3.py``, "Base URL") needs, beside
the server's own endpoints::

    /echo                      every message comes back as it was sent
    /close                     every session is closed at once with c[3000,"Go away!"]
    /cookie_needed_echo        echo, with "cookie_needed": true in /info and JSESSIONID set
    /disabled_websocket_echo   echo, with the websocket transport off

Each is a :class:`SockJSService` like the STOMP endpoints' (same transports, framing,
sessions and limits), carrying an :class:`Echo` or :class:`GoAway` instead of a STOMP
session; streaming responses end after 4 KiB, as the suite asks of a test server
("XhrStreaming.test_response_limit"). ``<base>/websocket`` is the raw WebSocket
("Raw WebSocket url"): echo without SockJS framing, or closed at once.

Off by default and refused with ``--auth jwt``: the services answer anyone, with no
STOMP in between, so they belong on a test node only (docs/security.md).
"""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType, web

from tidings.server.session import FrameTransport, SessionContext
from tidings.server.sockjs import SockJSService, greeting_response

ECHO = "/echo"
CLOSE = "/close"
COOKIE_NEEDED_ECHO = "/cookie_needed_echo"
DISABLED_WEBSOCKET_ECHO = "/disabled_websocket_echo"
PATHS = (ECHO, CLOSE, COOKIE_NEEDED_ECHO, DISABLED_WEBSOCKET_ECHO)

STREAM_LIMIT = 4096
"""Bytes a streaming response carries here: "The test server should have this limit
decreased to 4096B" (sockjs-protocol 0.3.3, XhrStreaming.test_response_limit)."""
GO_AWAY = (3000, "Go away!")
SLOW_CONSUMER = (3001, "slow consumer")


class Echo:
    """Sends every message back to its sender (the suite's ``echo`` service)."""

    __slots__ = ("_transport", "closed")

    def __init__(self) -> None:
        self._transport: FrameTransport | None = None
        self.closed = False

    def attach(self, transport: FrameTransport) -> None:
        self._transport = transport

    async def receive(self, data: bytes) -> None:
        if self._transport is not None and not self.closed:
            # Within the session's outbound bound; past it on_slow_consumer ends the session.
            self._transport.send(data)

    def transport_closed(self) -> None:
        self.closed = True
        self._transport = None

    def on_slow_consumer(self, limit: int) -> None:
        if self._transport is not None and not self.closed:
            self.closed = True
            self._transport.close(*SLOW_CONSUMER)


class GoAway(Echo):
    """Closes its session as soon as it is open (the suite's ``close`` service).

    The close waits for the next loop turn: an HTTP session is made before its first
    receiving request takes the open frame, and "o" must come before "c[...]".
    """

    __slots__ = ()

    def attach(self, transport: FrameTransport) -> None:
        super().attach(transport)
        asyncio.get_running_loop().call_soon(self._go_away)

    def _go_away(self) -> None:
        if self._transport is not None and not self.closed:
            self.closed = True
            self._transport.close(*GO_AWAY)


def _echo(access_token: str | None, transport: str) -> Echo:
    return Echo()


def _go_away(access_token: str | None, transport: str) -> GoAway:
    return GoAway()


class RawWebSocket:
    """``<base>/websocket``: WebSocket messages without SockJS framing (SockJS 0.3, "Raw
    WebSocket url"); every message echoed, or the connection closed at once."""

    def __init__(self, server: SessionContext, *, go_away: bool) -> None:
        self.server = server
        self.go_away = go_away

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        limits = self.server.config.stomp_limits
        ws = web.WebSocketResponse(
            compress=False, autoping=True, max_msg_size=limits.max_frame_bytes
        )
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text='Can "Upgrade" only to "WebSocket".')
        await ws.prepare(request)
        if self.go_away:
            await ws.close(code=GO_AWAY[0], message=GO_AWAY[1].encode())
            return ws
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)  # waits while the client does not read
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            else:
                break
        return ws


def add_sockjs_test_services(app: web.Application, server: SessionContext) -> list[SockJSService]:
    """Serve the four test services beside the server's own routes."""
    echo_services = {
        ECHO: SockJSService(server, _echo, stream_limit=STREAM_LIMIT, cookie_needed=False),
        CLOSE: SockJSService(server, _go_away, stream_limit=STREAM_LIMIT, cookie_needed=False),
        COOKIE_NEEDED_ECHO: SockJSService(
            server, _echo, stream_limit=STREAM_LIMIT, cookie_needed=True
        ),
        DISABLED_WEBSOCKET_ECHO: SockJSService(
            server,
            _echo,
            stream_limit=STREAM_LIMIT,
            cookie_needed=False,
            disabled=frozenset({"websocket"}),
        ),
    }
    for path, service in echo_services.items():
        app.router.add_get(path, _greeting)
        if "websocket" not in service.disabled:
            raw = RawWebSocket(server, go_away=path == CLOSE)
            app.router.add_get(f"{path}/websocket", raw)
        app.router.add_routes(service.routes(path))
        app.on_shutdown.append(service.on_shutdown)
    return list(echo_services.values())


async def _greeting(request: web.Request) -> web.Response:
    return greeting_response()
