"""The first reader of every connection: STOMP WebSocket upgrades and publishes here, the
rest to aiohttp.

A request that is a valid WebSocket handshake (RFC 6455 §4.2.1) for a STOMP endpoint is
answered here and the connection becomes a ``StompWebSocket``: no aiohttp object lives
on per session, which is most of an idle session's memory and of a handshake's CPU
(docs/decisions.md). A connection that starts with a POST becomes an ``ApiConnection``
(server/api_edge.py), which serves publishes without aiohttp until a request it does
not serve. Anything else - other requests, malformed or refused handshakes - goes
to aiohttp's request handler once its head is complete (or over 16 KB), which answers it
as before (the same route also upgrades a kept-alive connection, e.g. one nginx reuses).

Limits (docs/security.md): a head still incomplete ``--head-timeout`` after its first
byte is answered 408 and closed (aiohttp would wait for it as long as for an idle
connection; ``HeadGuard`` does the same for the heads aiohttp reads later); a connection
that sends nothing is closed after ``--keepalive-timeout`` (clients that open connections
ahead of need, a back end's pool or a browser's preconnect, get the edge whenever their
first request comes before that); with ``--max-connections-per-ip`` a connection past
the cap is answered 503 and closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qs

from aiohttp import web

from tidings.http1 import parse_request_head
from tidings.server.admin_access import client_address, peer_host
from tidings.server.api import client_max_size
from tidings.server.api_edge import ApiConnection, ApiEdgeRoute, refuse
from tidings.server.head_guard import HeadGuard
from tidings.server.session import StompSession
from tidings.server.websocket import StompWebSocket
from tidings.wshandshake import HandshakeError, accept_handshake, is_websocket_upgrade

if TYPE_CHECKING:
    from tidings.server.api import PublishApi
    from tidings.server.session import SessionContext

MAX_HEAD_BYTES = 16 * 1024  # a longer head is aiohttp's to judge (it answers 4xx)
_GET = b"GET "
_POST = b"POST "
STOMP_SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")  # IANA names, favourite first
ORIGIN_NOT_ALLOWED = "a page of this Origin may not open a WebSocket here (--allowed-origin)"


def _head_complete(head: bytes) -> bool:
    """The blank line that ends a head has come (CR LF, or bare LF for a full server)."""
    return b"\r\n\r\n" in head or b"\n\n" in head


class AddressCap:
    """At most ``limit`` open connections per client address (``--max-connections-per-ip``).

    The connections are tracked by transport: a protocol change (to a WebSocket, to
    aiohttp) does not lose them, and a closed transport stops counting as soon as
    ``is_closing()`` says so. Closed ones are pruned from an address when it is at its
    cap, and from every address once the tracked total doubles (amortized O(1) per
    connection); with no cap nothing is tracked.
    """

    __slots__ = ("_by_address", "_sweep_at", "_tracked", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_address: dict[str, set[asyncio.BaseTransport]] = {}
        self._tracked = 0
        self._sweep_at = 1024

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Track ``transport``; False if its address is at the cap (do not serve it)."""
        if not self.limit:
            return True
        peer = transport.get_extra_info("peername")
        if not isinstance(peer, tuple | list):
            return True  # not an IP connection (a unix socket)
        address = str(peer[0])
        open_ = self._by_address.setdefault(address, set())
        if len(open_) >= self.limit:
            open_.difference_update([t for t in open_ if t.is_closing()])
            if len(open_) >= self.limit:
                return False
        open_.add(transport)
        self._tracked += 1
        if self._tracked >= self._sweep_at:
            self._sweep()
        return True

    def _sweep(self) -> None:
        for address, open_ in list(self._by_address.items()):
            open_.difference_update([t for t in open_ if t.is_closing()])
            if not open_:
                del self._by_address[address]
        self._tracked = sum(len(open_) for open_ in self._by_address.values())
        self._sweep_at = max(2 * self._tracked, 1024)


class Edge:
    """What the edge protocol of every connection shares: the node's sessions' context
    (config, trust, stats), the publish API, and the publish connections open."""

    def __init__(
        self,
        context: SessionContext,
        api: PublishApi,
        api_connections: set[ApiConnection],
        http_protocol: Callable[[], asyncio.Protocol],
    ) -> None:
        self.context = context
        self.api = api
        self.api_connections = api_connections
        self.http_protocol = http_protocol  # aiohttp's RequestHandler factory
        config = context.config
        self.paths = frozenset(
            path for endpoint in config.endpoints for path in (endpoint, f"{endpoint}/websocket")
        )
        # With --access-log every request goes to aiohttp, which logs it.
        self.serves_publishes = not config.access_log
        self.api_route = ApiEdgeRoute(self)
        self.max_body_bytes = client_max_size(config)
        # A head still incomplete this long after its first byte is answered 408.
        self.head_timeout_s = config.head_timeout_s
        self.body_timeout_s = config.body_timeout_s
        self.keepalive_timeout_s = config.keepalive_timeout_s
        self.address_cap = AddressCap(config.max_connections_per_ip)

    def protocol(self) -> EdgeProtocol:
        return EdgeProtocol(self)

    def hand_over(self, transport: asyncio.Transport, data: bytes) -> None:
        """Give the connection, and what was read of it, to aiohttp for good."""
        if transport.is_closing():
            return
        protocol = HeadGuard(self.http_protocol(), self.head_timeout_s)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if data:
            protocol.data_received(data)


class EdgeProtocol(asyncio.Protocol):
    """Reads a connection's first request head and decides who serves the connection."""

    __slots__ = ("_edge", "_head", "_timer", "_transport")

    def __init__(self, edge: Edge) -> None:
        self._edge = edge
        self._head = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        edge = self._edge
        if not edge.address_cap.admit(transport):
            refuse(
                self._transport,
                503,
                "too_many_connections",
                f"at most {edge.address_cap.limit} connections per client address",
            )
            return
        # Nothing sent yet: closed when idle as long as a kept-alive connection may be.
        self._timer = asyncio.get_running_loop().call_later(
            edge.keepalive_timeout_s, transport.close
        )

    def data_received(self, data: bytes) -> None:
        head = self._head + data if self._head else data
        if head.startswith(_GET):
            self._read_get(head)
        elif head.startswith(_POST) and self._edge.serves_publishes:
            self._serve_publishes(head)
        elif _head_complete(head) or len(head) > MAX_HEAD_BYTES:
            self._hand_over(head)
        else:  # the start of any request: wait for its head (or the head timeout)
            self._keep(head)

    def _read_get(self, head: bytes) -> None:
        end = head.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
        if end < 0:
            if len(head) > MAX_HEAD_BYTES or b"\n\n" in head:  # bare LF: aiohttp's to judge
                self._hand_over(head)
            else:
                self._keep(head)
            return
        if not self._upgrade(head[:end], head[end + 4 :]):
            self._hand_over(head)

    def _keep(self, head: bytes) -> None:
        """Wait for the rest of ``head``: it has head_timeout_s from its first byte."""
        if not self._head:
            self._cancel_timer()
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._edge.head_timeout_s, self._head_timed_out)
        self._head = head

    def _head_timed_out(self) -> None:
        """RFC 9110 §15.5.9: 408, the server closes the connection it will not wait on."""
        self._timer = None
        self._head = b""
        if not self._transport.is_closing():
            refuse(
                self._transport,
                408,
                "request_head_timeout",
                f"the request head did not arrive within {self._edge.head_timeout_s:g} s",
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _serve_publishes(self, data: bytes) -> None:
        self._cancel_timer()
        protocol = ApiConnection(self._edge)
        self._transport.set_protocol(protocol)
        protocol.connection_made(self._transport)
        protocol.data_received(data)

    def _upgrade(self, head: bytes, rest: bytes) -> bool:
        """Become a STOMP WebSocket if ``head`` is a handshake we accept; False if not ours."""
        request = parse_request_head(head)
        edge = self._edge
        context = edge.context
        if (
            request is None
            or request.path not in edge.paths
            or not is_websocket_upgrade(request.headers)
            or context.shutting_down
        ):
            return False
        headers = request.headers
        if not context.trust.origin_allowed(headers.get("origin"), headers.get("host")):
            return False  # aiohttp's route answers 403 with the JSON body
        try:
            handshake = accept_handshake(
                request.method, request.version, request.headers, STOMP_SUBPROTOCOLS
            )
        except HandshakeError:
            return False  # aiohttp's route answers with the reason
        self._cancel_timer()
        query = request.query
        token = parse_qs(query).get("access_token") if query else None
        transport = self._transport
        transport.write(handshake.response)
        context.stats.response(request.path, 101)  # aiohttp's route template: the same path
        peer = peer_host(transport.get_extra_info("peername"))
        remote = client_address(context.trust, peer, request.headers.get("x-forwarded-for"))
        start_websocket(context, transport, token[0] if token else None, rest, remote=remote)
        return True

    def _hand_over(self, data: bytes = b"") -> None:
        """Give the connection, and what was read of it, to aiohttp."""
        self._cancel_timer()
        self._edge.hand_over(self._transport, data or self._head)


def start_websocket(
    context: SessionContext,
    transport: asyncio.Transport,
    access_token: str | None,
    rest: bytes = b"",
    on_lost: Callable[[BaseException | None], None] | None = None,
    *,
    remote: str | None = None,
) -> StompWebSocket:
    """Make ``transport`` (handshake answered) a STOMP session's WebSocket; ``remote`` is
    the client's address (``admin_access.client_address``)."""
    context.stats.connection_opened("websocket")
    session = StompSession(context, access_token)
    session.remote = remote
    protocol = StompWebSocket(
        session, max_payload=4 * context.config.stomp_limits.max_frame_bytes, on_lost=on_lost
    )
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if rest:
        protocol.data_received(rest)
    return protocol


class EdgeSite(web.BaseSite):
    """An aiohttp site whose connections start with the edge protocol."""

    __slots__ = ("_edge", "_host", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.AppRunner,
        make_edge: Callable[[Callable[[], asyncio.Protocol]], Edge],
        host: str,
        port: int,
        *,
        reuse_port: bool,
    ) -> None:
        """``make_edge(http_protocol)``: the node's Edge around aiohttp's handler factory."""
        super().__init__(runner)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        http = runner.server
        assert http is not None, "set the runner up first"
        self._edge = make_edge(http)

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._edge.protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
            reuse_port=self._reuse_port or None,
        )
