"""SockJS 0.3 on every STOMP endpoint: the aiohttp edge around :mod:`tidings.sockjs`.

Under each endpoint (``/stomp`` here) it serves::

    GET  /stomp, /stomp/                   "Welcome to SockJS!\\n"
    GET  /stomp/info                       capabilities, for the client's transport choice
    GET  /stomp/iframe.html, iframe-*.html the page the iframe-* transports run in
    GET  /stomp/websocket                  STOMP on a raw WebSocket (Server.websocket)
         /stomp/{server}/{session}/{transport}
         websocket                         SockJS frames on a WebSocket
         xhr, xhr_streaming, eventsource,  receiving requests of an HTTP session
         htmlfile, jsonp
         xhr_send, jsonp_send              sending requests of an HTTP session

An HTTP session (:class:`HttpSession`) outlives the requests that carry it; it is the
``FrameTransport`` of one :class:`StompSession` (an :class:`Application`; the protocol
suite's echo and close services, ``sockjs_test_services``, bring their own), so STOMP runs
exactly as over a raw WebSocket. STOMP frames become SockJS messages, one frame per
message; everything queued in one loop turn leaves in one ``a[...]`` frame. docs/sockjs.md
has the details and the heart-beat mapping.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Protocol, cast

import orjson
from aiohttp import WSMsgType, web

from tidings.errors import BrokerUnavailable
from tidings.outbound import loop_flusher
from tidings.server.admin_access import client_address, forwarded_for_of
from tidings.server.session import FrameTransport, StompSession
from tidings.sockjs.framing import (
    EVENTSOURCE_PRELUDE,
    XHR_STREAMING_PRELUDE,
    SockJSPayloadError,
    decode_form_send,
    decode_send,
    decode_websocket_message,
    eventsource_chunk,
    htmlfile_chunk,
    htmlfile_prelude,
    iframe_page,
    jsonp_chunk,
    valid_callback,
    xhr_chunk,
)
from tidings.sockjs.session import Receiver, Session
from tidings.wsframe import OP_TEXT, encode_close, encode_frame

if TYPE_CHECKING:
    from tidings.node import Node
    from tidings.server.session import SessionContext
    from tidings.server.sockjs_relay import Relay, SessionDirectory

log = logging.getLogger(__name__)

GREETING = b"Welcome to SockJS!\n"
TRANSPORTS = (
    "websocket",
    "xhr-streaming",
    "xhr-polling",
    "eventsource",
    "htmlfile",
    "jsonp-polling",
    "iframe",
)
"""Names ``--sockjs-disable-transport`` takes: sockjs-client's, and ``iframe`` for the
``/iframe*.html`` page (which every ``iframe-*`` transport needs)."""

NOT_CACHED = "no-store, no-cache, must-revalidate, max-age=0"
ONE_YEAR_S = 365 * 24 * 3600
ABORT_AFTER_S = 2.0  # a WebSocket peer that does not answer our close frame is cut off
_SESSION_PART = r"[^/.]+"
_IFRAME_NAME = r"iframe[0-9a-z._-]*\.html"
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,200}")
_CONTENT_LENGTH = re.compile(r"(?m)^content-length:\d+$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def greeting_response() -> web.Response:
    """``GET <endpoint>`` and ``<endpoint>/`` (SockJS 0.3, "Greeting url")."""
    return web.Response(body=GREETING, headers={"Content-Type": "text/plain;charset=UTF-8"})


def frame_text(frame: bytes, opcode: int = OP_TEXT) -> str:
    """A STOMP frame as the text of one SockJS message.

    SockJS carries text only. A frame the hub marked binary (its body is not UTF-8) goes
    with U+FFFD for each undecodable byte, and its content-length counts the new body, so
    STOMP clients still find where the frame ends.
    """
    if opcode == OP_TEXT:
        return frame.decode("utf-8", "replace")
    head, _, rest = frame.partition(b"\n\n")
    body = (rest[:-1] if rest.endswith(b"\0") else rest).decode("utf-8", "replace")
    head_text = _CONTENT_LENGTH.sub(
        f"content-length:{len(body.encode())}", head.decode("utf-8", "replace")
    )
    return f"{head_text}\n\n{body}\0"


class Application(Protocol):
    """What a SockJS session carries: a :class:`StompSession`, or one of the SockJS
    protocol suite's services (``sockjs_test_services``)."""

    closed: bool

    def attach(self, transport: FrameTransport) -> None:
        """The session is open: this is how to reach its client."""

    async def receive(self, data: bytes) -> None:
        """One SockJS message from the client, UTF-8 encoded; never called concurrently."""

    def transport_closed(self) -> None:
        """The client went away, or the session ended."""

    def on_slow_consumer(self, limit: int) -> None:
        """More than ``limit`` bytes wait for the client: end the session."""


NewApplication = Callable[[str | None, str], Application]
"""Makes the application of a new session from its ``?access_token=`` and the name of
the transport that opened it (``xhr-polling``, ``websocket``, ...)."""


class Link(Protocol):
    """What carries one receiving request's response: the HTTP connection itself, or the
    relay to the node that holds it (``sockjs_relay``)."""

    def gone(self) -> bool:
        """True once the client is known to have gone away."""

    def in_flight(self) -> int:
        """Bytes written but not yet sent on."""


class HttpLink:
    """A receiving request answered by this node."""

    __slots__ = ("request",)

    def __init__(self, request: web.Request) -> None:
        self.request = request

    def gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    def in_flight(self) -> int:
        transport = self.request.transport
        return transport.get_write_buffer_size() if transport is not None else 0


Write = Callable[[bytes], Awaitable[None]]


async def pump(
    session: HttpSession, receiver: Receiver, link: Link, first: list[bytes], write: Write
) -> bool:
    """Write ``first``, then what the session has for ``receiver``, until it is done.

    Releases the receiver; returns False if the client went away first (``write`` raising
    ConnectionError says so too), which interrupts the session.
    """
    interrupted = True
    try:
        if first:
            await write(b"".join(first))
        while not receiver.done:
            chunks = await session.next_chunks(receiver, link)
            if chunks is None:
                break
            await write(b"".join(chunks))
        else:
            interrupted = False
    except ConnectionError:
        pass
    finally:
        session.release(receiver, interrupted=interrupted)
    return not interrupted


# -- receiving transports, as data ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Receiving:
    """One HTTP receiving transport (SockJS 0.3, "XhrPolling" ... "JsonpPolling")."""

    name: str  # the transport's client-side name, as --sockjs-disable-transport takes it
    method: str
    streaming: bool
    content_type: str
    cors: bool  # XHR and EventSource requests may be cross-origin (CORS); the others are not
    callback: bool  # needs ?c=<JavaScript function>


RECEIVING = {
    "xhr": _Receiving(
        "xhr-polling", "POST", False, "application/javascript;charset=UTF-8", True, False
    ),
    "xhr_streaming": _Receiving(
        "xhr-streaming", "POST", True, "application/javascript;charset=UTF-8", True, False
    ),
    "eventsource": _Receiving(
        "eventsource", "GET", True, "text/event-stream;charset=UTF-8", True, False
    ),
    "htmlfile": _Receiving("htmlfile", "GET", True, "text/html;charset=UTF-8", False, True),
    "jsonp": _Receiving(
        "jsonp-polling", "GET", False, "application/javascript;charset=UTF-8", False, True
    ),
}
# xhr_send is how every transport but jsonp-polling (and websocket) sends.
_XHR_SENDERS = frozenset({"xhr-polling", "xhr-streaming", "eventsource", "htmlfile"})


def wrap_and_prelude(transport: str, callback: str) -> tuple[Callable[[bytes], bytes], bytes]:
    match transport:
        case "xhr":
            return xhr_chunk, b""
        case "xhr_streaming":
            return xhr_chunk, XHR_STREAMING_PRELUDE
        case "eventsource":
            return eventsource_chunk, EVENTSOURCE_PRELUDE
        case "htmlfile":
            return htmlfile_chunk, htmlfile_prelude(callback)
        case _:
            return functools.partial(jsonp_chunk, callback), b""


# -- one HTTP session -------------------------------------------------------------------------
class HttpSession:
    """The FrameTransport of a StompSession carried by SockJS HTTP requests.

    STOMP frames are queued as SockJS messages in the sans-I/O :class:`Session`; the one
    receiving request, when there is one, is woken to write them.
    """

    def __init__(
        self, service: SockJSService, session_id: str, access_token: str | None, transport: str
    ):
        self.service = service
        self.id = session_id
        self._loop = asyncio.get_running_loop()
        self.state = Session(max_pending_bytes=service.server.config.max_outbound_bytes)
        self.last_write = self._loop.time()
        self.app = service.new_application(access_token, transport)
        self.app.attach(self)
        self._lock = asyncio.Lock()  # STOMP input is handled in arrival order, one at a time
        self._wakeup = asyncio.Event()
        self._link: Link | None = None  # the receiving request's
        self._last_chunk_at = 0.0
        self._expiry: asyncio.TimerHandle | None = None
        self._overflow_reported = False

    # -- FrameTransport ---------------------------------------------------------------------
    def send(self, frame: bytes, opcode: int = OP_TEXT) -> bool:
        if not self.state.send(frame_text(frame, opcode), in_flight=self._in_flight()):
            if self.state.overflowed and not self._overflow_reported:
                self._overflow_reported = True
                limit = self.state.max_pending_bytes
                self._loop.call_soon(self.app.on_slow_consumer, limit)
            return False
        self.last_write = self._loop.time()
        self._wakeup.set()
        return True

    def send_now(self, frame: bytes) -> None:
        self.state.send(frame_text(frame), force=True)
        self._wakeup.set()

    def send_heartbeat(self) -> None:
        # STOMP heart-beats travel as the message "\n" (a["\n"]), not as SockJS "h":
        # sockjs-client swallows "h", so STOMP clients would never see it.
        self.state.send("\n", force=True)
        self.last_write = self._loop.time()
        self._wakeup.set()

    def close(self, code: int, reason: str) -> None:
        self.state.close(code, reason)
        self._wakeup.set()

    def _in_flight(self) -> int:
        return self._link.in_flight() if self._link is not None else 0

    # -- sending requests -------------------------------------------------------------------
    async def deliver(self, messages: list[str]) -> None:
        """Hand what an xhr_send/jsonp_send carried to the STOMP session, in order."""
        async with self._lock:
            for message in messages:
                await self.app.receive(message.encode())

    # -- receiving requests -----------------------------------------------------------------
    def attach(self, receiver: Receiver, link: Link) -> list[bytes]:
        current = self._link
        if current is not None and current.gone():
            # The last receiving request's client is gone though its handler has not
            # noticed yet: that interrupts the session (SockJS 0.3, "Handling close").
            self._interrupt()
        chunks = self.state.attach(receiver, self._loop.time())
        if self.state.receiver is receiver:
            self._link = link
            self._last_chunk_at = self._loop.time()
            if self._expiry is not None:
                self._expiry.cancel()
                self._expiry = None
        else:
            self._after_detach()
        return chunks

    async def next_chunks(self, receiver: Receiver, link: Link) -> list[bytes] | None:
        """Wait for what is due to ``receiver``: messages, the close frame or a heartbeat.

        None when the request lost its place (its client went away, or it was interrupted).
        """
        heartbeat = self.service.heartbeat_s
        while True:
            if self.state.receiver is not receiver:
                return None
            if link.gone():
                self.release(receiver, interrupted=True)
                return None
            chunks = self.state.take(receiver)
            now = self._loop.time()
            if chunks:
                self._last_chunk_at = now
                return chunks
            idle = now - self._last_chunk_at
            if idle >= heartbeat:
                self._last_chunk_at = now
                return [self.state.heartbeat(receiver)]
            self._wakeup.clear()
            try:
                async with asyncio.timeout(heartbeat - idle):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    def release(self, receiver: Receiver, *, interrupted: bool = False) -> None:
        """The receiving request ended (``interrupted``: its client went away first)."""
        if self.state.receiver is not receiver:
            return
        if interrupted:
            self._interrupt()
            return
        self.state.detach(receiver, self._loop.time())
        self._link = None
        self._after_detach()

    def _interrupt(self) -> None:
        receiver = self.state.receiver
        if receiver is None:
            return
        self.state.detach(receiver, self._loop.time(), interrupted=True)
        self._link = None
        self._wakeup.set()  # its handler, if still waiting, sees it lost its place
        self.app.transport_closed()
        self._after_detach()

    # -- expiry -----------------------------------------------------------------------------
    def _after_detach(self) -> None:
        deadline = self.state.deadline(self.service.session_timeout_s)
        if deadline is not None and self._expiry is None:
            self._expiry = self._loop.call_at(deadline, self._check_expiry)

    def _check_expiry(self) -> None:
        self._expiry = None
        timeout = self.service.session_timeout_s
        if self.state.expire(self._loop.time(), timeout):
            self.app.transport_closed()
            self.service.forget(self)
        else:
            self._after_detach()

    def wake(self) -> None:
        """Make the waiting receiver look again (its client may be gone)."""
        self._wakeup.set()

    def shut_down(self) -> None:
        """The server stops: end the session now (STOMP was told already)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.state.close(1001, "server shutting down")
        self._wakeup.set()
        self.app.transport_closed()


# -- SockJS frames on a WebSocket -----------------------------------------------------------
class WebSocketSession:
    """The FrameTransport of a StompSession on ``/{server}/{session}/websocket``.

    Frames go straight to the transport, one WebSocket message per loop turn holding every
    STOMP frame queued in it (as ``outbound.py`` does for raw WebSockets, and with its
    ``Flusher``: no callback object per delivery).
    """

    def __init__(self, service: SockJSService, request: web.Request, app: Application):
        transport = request.transport
        assert transport is not None, "prepare() gave a WebSocket without a transport"
        self._transport = transport
        self._flusher = loop_flusher()
        self._loop = self._flusher.loop
        self._app = app
        self._heartbeat_s = service.heartbeat_s
        self.state = Session(max_pending_bytes=service.server.config.max_outbound_bytes)
        self._receiver = Receiver(lambda frame: frame, streaming=True)
        self.last_write = self._loop.time()
        self._last_sent = self.last_write
        self._flush_scheduled = False
        self._overflow_reported = False
        self._write(self.state.attach(self._receiver, self.last_write))
        self._beat = self._loop.call_later(self._heartbeat_s, self._heartbeat)

    def send(self, frame: bytes, opcode: int = OP_TEXT) -> bool:
        in_flight = self._transport.get_write_buffer_size()
        if not self.state.send(frame_text(frame, opcode), in_flight=in_flight):
            if self.state.overflowed and not self._overflow_reported:
                self._overflow_reported = True
                limit = self.state.max_pending_bytes
                self._loop.call_soon(self._app.on_slow_consumer, limit)
            return False
        self.last_write = self._loop.time()
        self._schedule_flush()
        return True

    def send_now(self, frame: bytes) -> None:
        self.state.send(frame_text(frame), force=True)
        self.flush()

    def send_heartbeat(self) -> None:
        self.state.send("\n", force=True)  # a["\n"]: see HttpSession.send_heartbeat
        self.last_write = self._loop.time()
        self.flush()

    def close(self, code: int, reason: str) -> None:
        """Queued messages, ``c[code,"reason"]``, then a WebSocket close frame."""
        self.state.close(code, reason)
        self.flush()
        self._beat.cancel()
        if not self._transport.is_closing():
            self._transport.write(encode_close(code, reason))
            self._transport.close()
            self._loop.call_later(ABORT_AFTER_S, self._transport.abort)

    def abort(self) -> None:
        """Cut the connection at once (the client broke SockJS framing)."""
        self._beat.cancel()
        self._transport.abort()

    def connection_lost(self) -> None:
        self._beat.cancel()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._flusher.add(self)

    def flush(self) -> None:
        self._flush_scheduled = False
        self._write(self.state.take(self._receiver))

    def _write(self, chunks: list[bytes]) -> None:
        if chunks and not self._transport.is_closing():
            self._transport.write(b"".join(encode_frame(chunk) for chunk in chunks))
            self._last_sent = self._loop.time()

    def _heartbeat(self) -> None:
        idle = self._loop.time() - self._last_sent
        if idle >= self._heartbeat_s:
            self._write([self.state.heartbeat(self._receiver)])
            idle = 0.0
        self._beat = self._loop.call_later(self._heartbeat_s - idle, self._heartbeat)


# -- the service ----------------------------------------------------------------------------
class SockJSService:
    """The SockJS endpoints of one node and the HTTP sessions it holds.

    ``server`` is the node's ``SessionContext`` (config, node, trust policy, stats); a test
    service (``sockjs_test_services``) brings its own application and overrides.
    """

    def __init__(
        self,
        server: SessionContext,
        new_application: NewApplication | None = None,
        *,
        stream_limit: int | None = None,
        cookie_needed: bool | None = None,
        disabled: frozenset[str] | None = None,
    ) -> None:
        config = server.config
        self.server = server
        self.new_application = new_application or functools.partial(_stomp_session, server)
        self.sessions: dict[str, HttpSession] = {}
        # With a shared broker, requests for a session another node holds go there.
        self.relay: Relay | None = None
        self.heartbeat_s = config.sockjs_heartbeat_s
        self.session_timeout_s = config.sockjs_session_timeout_s
        self.stream_limit = stream_limit or config.sockjs_stream_limit
        self.cookie_needed = config.sockjs_cookie_needed if cookie_needed is None else cookie_needed
        self.disabled = (
            frozenset(config.sockjs_disabled_transports) if disabled is None else disabled
        )
        unknown = self.disabled - set(TRANSPORTS)
        if unknown:
            raise ValueError(
                f"unknown SockJS transport(s) {sorted(unknown)}; expected some of {TRANSPORTS}"
            )
        # The iframe page cannot check who frames it, so a restricted origin list turns it
        # off (and with it the iframe-* transports), as Spring's SockJS service does.
        self.iframe_enabled = "iframe" not in self.disabled and server.trust.any_origin
        self._iframe = iframe_page(config.sockjs_client_url)
        self._etag = '"' + hashlib.sha256(self._iframe).hexdigest()[:32] + '"'

    def _client_address(self, request: web.Request) -> str | None:
        """The client's address for the admin API's session listing (tidings.trust)."""
        forwarded_for = forwarded_for_of(request.headers)
        return client_address(self.server.trust, request.remote, forwarded_for)

    def routes(self, endpoint: str) -> list[web.RouteDef]:
        session_path = f"{endpoint}/{{server:{_SESSION_PART}}}/{{session:{_SESSION_PART}}}"
        return [
            web.get(f"{endpoint}/", self.greeting),
            web.route("*", f"{endpoint}/info", self.info),
            web.get(f"{endpoint}/{{name:{_IFRAME_NAME}}}", self.iframe),
            web.route("*", f"{session_path}/{{transport}}", self.session_request),
        ]

    def forget(self, session: HttpSession) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
            if self.relay is not None:
                self.relay.release(session.id)

    async def on_shutdown(self, app: web.Application) -> None:
        if self.relay is not None:
            await self.relay.shut_down()
        for session in list(self.sessions.values()):
            session.shut_down()

    # -- static resources -------------------------------------------------------------------
    async def greeting(self, request: web.Request) -> web.Response:
        return greeting_response()

    async def info(self, request: web.Request) -> web.Response:
        """What the client needs to pick a transport (SockJS 0.3, "Info test")."""
        if not self._origin_allowed(request):
            return _forbidden()
        if request.method == "OPTIONS":
            return self._preflight(request, "OPTIONS, GET")
        if request.method not in ("GET", "HEAD"):
            return _method_not_allowed("OPTIONS, GET")
        body = orjson.dumps(
            {
                "websocket": "websocket" not in self.disabled,
                "cookie_needed": self.cookie_needed,
                "origins": ["*:*"],
                "entropy": secrets.randbits(32),
            }
        )
        headers = {"Content-Type": "application/json;charset=UTF-8", "Cache-Control": NOT_CACHED}
        headers.update(_cors(request))
        return web.Response(body=body, headers=headers)

    async def iframe(self, request: web.Request) -> web.Response:
        """The page the iframe-* transports run in: strongly cached, with an ETag."""
        if not self.iframe_enabled:
            raise web.HTTPNotFound()
        headers = {
            "Cache-Control": f"public, max-age={ONE_YEAR_S}",
            "Expires": formatdate(time.time() + ONE_YEAR_S, usegmt=True),
            "ETag": self._etag,
        }
        if self._etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = "text/html;charset=UTF-8"
        return web.Response(body=self._iframe, headers=headers)

    # -- session requests -------------------------------------------------------------------
    async def session_request(self, request: web.Request) -> web.StreamResponse:
        transport = request.match_info["transport"]
        if transport == "websocket":
            return await self.websocket(request)
        if transport in ("xhr_send", "jsonp_send"):
            return await self.sending(request, transport)
        if transport in RECEIVING:
            return await self.receiving(request, transport)
        raise web.HTTPNotFound()

    async def receiving(self, request: web.Request, transport: str) -> web.StreamResponse:
        kind = RECEIVING[transport]
        if kind.name in self.disabled:
            raise web.HTTPNotFound()
        if not self._origin_allowed(request):
            return _forbidden()
        preflight = kind.cors and kind.method == "POST"
        if preflight and request.method == "OPTIONS":
            return self._preflight(request, "OPTIONS, POST")
        if request.method != kind.method:
            return _method_not_allowed(f"OPTIONS, {kind.method}" if preflight else kind.method)
        callback = ""
        if kind.callback:
            callback = request.query.get("c", "")
            if not callback:
                return _error(500, '"callback" parameter required')
            if not valid_callback(callback):
                return _error(500, 'invalid "callback" parameter')
        if self.server.shutting_down:
            return _error(503, "the server is shutting down")
        headers = {"Content-Type": kind.content_type, "Cache-Control": NOT_CACHED}
        if kind.cors:
            headers.update(_cors(request))
        self._cookie(request, headers)

        session_id = request.match_info["session"]

        async def here(write: Write) -> bool:
            session = self.sessions.get(session_id) or self._open(request, kind.name)
            wrap, _ = wrap_and_prelude(transport, callback)
            limit = self.stream_limit if kind.streaming else None
            receiver = Receiver(wrap, streaming=kind.streaming, limit=limit)
            link = HttpLink(request)
            return await pump(session, receiver, link, session.attach(receiver, link), write)

        if session_id not in self.sessions and self.relay is not None:
            try:
                owner = await self.relay.owner(session_id)  # claims it if nobody holds it
            except BrokerUnavailable as exc:
                return _error(503, f"broker unavailable: {exc}")
            if owner != self.relay.node_id and session_id not in self.sessions:
                # Another node holds the session: it answers this request through us.
                relayed = self.relay.receive(
                    owner,
                    session_id,
                    transport=transport,
                    callback=callback,
                    client=HttpLink(request),
                    here=here,
                )
                return await self._respond(request, transport, callback, headers, relayed)
        return await self._respond(request, transport, callback, headers, here)

    async def _respond(
        self,
        request: web.Request,
        transport: str,
        callback: str,
        headers: dict[str, str],
        chunks: Callable[[Write], Awaitable[bool]],
    ) -> web.StreamResponse:
        """Answer a receiving request with what ``chunks`` writes: one body for polling,
        a prelude and then every chunk as it comes for streaming."""
        if not RECEIVING[transport].streaming:
            body: list[bytes] = []

            async def collect(data: bytes) -> None:
                body.append(data)

            await chunks(collect)
            return web.Response(body=b"".join(body), headers=headers)
        response = web.StreamResponse(headers=headers)
        if request.version < (1, 1):
            response.force_close()  # HTTP/1.0 has no chunking: the body ends with the connection
        write: Write = response.write
        try:
            await response.prepare(request)
            await response.write(wrap_and_prelude(transport, callback)[1])
        except ConnectionError:
            write = _client_gone  # still run ``chunks``: it must release what it holds
        if await chunks(write):
            await response.write_eof()
        return response

    async def sending(self, request: web.Request, transport: str) -> web.Response:
        jsonp = transport == "jsonp_send"
        if jsonp and "jsonp-polling" in self.disabled:
            raise web.HTTPNotFound()
        if not jsonp and self.disabled >= _XHR_SENDERS:
            raise web.HTTPNotFound()
        if not self._origin_allowed(request):
            return _forbidden()
        if not jsonp and request.method == "OPTIONS":
            return self._preflight(request, "OPTIONS, POST")
        if request.method != "POST":
            return _method_not_allowed("OPTIONS, POST" if not jsonp else "POST")
        body = await request.read()
        try:
            messages = decode_form_send(body, request.content_type) if jsonp else decode_send(body)
        except SockJSPayloadError as exc:
            return _error(500, str(exc))
        session_id = request.match_info["session"]
        session = self.sessions.get(session_id)
        if session is not None:
            await session.deliver(messages)
        elif self.relay is None:
            raise web.HTTPNotFound()
        else:
            try:  # another node may hold the session: it takes the messages through us
                found = await self.relay.send(session_id, messages)
            except BrokerUnavailable as exc:
                return _error(503, f"broker unavailable: {exc}")
            if not found:
                raise web.HTTPNotFound()
        headers = {"Content-Type": "text/plain;charset=UTF-8", "Cache-Control": NOT_CACHED}
        self._cookie(request, headers)
        if jsonp:
            # "Konqueror does weird things on 204": jsonp_send answers 200 "ok".
            return web.Response(body=b"ok", headers=headers)
        headers.update(_cors(request))
        return web.Response(status=204, headers=headers)

    def _open(self, request: web.Request, transport: str) -> HttpSession:
        """A new session, opened by a receiving request of ``transport`` (its client name)."""
        session_id = request.match_info["session"]
        token = request.query.get("access_token")
        session = HttpSession(self, session_id, token, transport)
        if isinstance(session.app, StompSession):
            session.app.transport_name = f"sockjs-{transport}"
            session.app.remote = self._client_address(request)
        self.sessions[session_id] = session
        return session

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """SockJS frames over a WebSocket: the session lives as long as the connection."""
        if "websocket" in self.disabled:
            raise web.HTTPNotFound()
        if request.method != "GET":
            return _method_not_allowed("GET")
        if not self._origin_allowed(request):
            return _forbidden()
        if self.server.shutting_down:
            return _error(503, "the server is shutting down")
        limits = self.server.config.stomp_limits
        ws = web.WebSocketResponse(
            compress=False, autoping=True, max_msg_size=4 * limits.max_frame_bytes
        )
        if not ws.can_prepare(request).ok:
            return _error(400, 'Can "Upgrade" only to "WebSocket".')
        await ws.prepare(request)
        app = self.new_application(request.query.get("access_token"), "websocket")
        if isinstance(app, StompSession):
            app.transport_name = "sockjs-websocket"
            app.remote = self._client_address(request)
        transport = WebSocketSession(self, request, app)
        app.attach(transport)
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                try:
                    messages = decode_websocket_message(msg.data)
                except SockJSPayloadError:
                    # "The server must abruptly terminate the ws connection."
                    transport.abort()
                    break
                for message in messages:
                    await app.receive(message.encode())
                if app.closed:
                    break
        finally:
            app.transport_closed()
            transport.connection_lost()
        return ws

    # -- HTTP details -----------------------------------------------------------------------
    def _preflight(self, request: web.Request, methods: str) -> web.Response:
        """A CORS preflight answer, cacheable for a year (SockJS 0.3, ``verify_options``)."""
        headers = {
            "Cache-Control": f"public, max-age={ONE_YEAR_S}",
            "Expires": formatdate(time.time() + ONE_YEAR_S, usegmt=True),
            "Access-Control-Max-Age": str(ONE_YEAR_S),
            "Access-Control-Allow-Methods": methods,
        }
        requested = request.headers.get("Access-Control-Request-Headers")
        if requested:
            headers["Access-Control-Allow-Headers"] = requested
        headers.update(_cors(request))
        self._cookie(request, headers)
        return web.Response(status=204, headers=headers)

    def _origin_allowed(self, request: web.Request) -> bool:
        """Requests without an Origin (not from a browser page) and same-origin ones always
        pass; others must match ``--allowed-origin`` (tidings.trust, ``origin_allowed``)."""
        return self.server.trust.origin_allowed(request.headers.get("Origin"), request.host)

    def _cookie(self, request: web.Request, headers: dict[str, str]) -> None:
        """``JSESSIONID``, echoed or ``dummy``, for load balancers that stick on it."""
        if not self.cookie_needed:
            return
        value = request.cookies.get("JSESSIONID", "dummy")
        if _COOKIE_VALUE.fullmatch(value) is None:
            value = "dummy"
        headers["Set-Cookie"] = f"JSESSIONID={value}; path=/"


def _stomp_session(
    server: SessionContext, access_token: str | None, transport: str
) -> StompSession:
    server.stats.connection_opened(f"sockjs-{transport}")
    return StompSession(server, access_token)


def _cors(request: web.Request) -> dict[str, str]:
    """CORS for XHR transports: echo the Origin and allow credentials (cookies), or ``*``
    for requests without one and for the ``null`` origin of file:// pages."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return {"Access-Control-Allow-Origin": "*"}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


async def _client_gone(data: bytes) -> None:
    raise ConnectionResetError("the client went away")


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",")}


def _error(status: int, text: str) -> web.Response:
    return web.Response(
        status=status,
        body=text.encode(),
        headers={"Content-Type": "text/plain;charset=UTF-8", "Cache-Control": NOT_CACHED},
    )


def _forbidden() -> web.Response:
    return _error(403, "Origin not allowed")


def _method_not_allowed(allow: str) -> web.Response:
    return web.Response(status=405, headers={"Allow": allow})


def add_sockjs_routes(app: web.Application, server: SessionContext) -> SockJSService:
    """Serve SockJS under every endpoint of ``server.config`` (the bare endpoint and its
    ``/websocket`` stay ``Server.websocket``'s).

    Register it after the server's own startup and shutdown handlers: with a Redis broker
    the relay between nodes starts once the node has, and lets go of its sessions after
    they were closed.
    """
    service = SockJSService(server)
    for endpoint in server.config.endpoints:
        app.router.add_routes(service.routes(endpoint))
    directory = session_directory(server.node)
    if directory is not None:  # a shared broker: several nodes, no sticky sessions needed
        from tidings.server.sockjs_relay import Relay  # noqa: PLC0415 - needs redis

        relay = service.relay = Relay(service, server.node, directory)
        app.on_startup.append(lambda _app: relay.start())
        app.on_cleanup.append(lambda _app: relay.stop())
    app.on_shutdown.append(service.on_shutdown)
    return service


def session_directory(node: Node) -> SessionDirectory | None:
    """Where the nodes sharing ``node``'s broker record who holds which SockJS session:
    the Redis broker's Redis, or the PostgreSQL inbox's database (its presence knows it);
    None on one node (the memory broker)."""
    redis = getattr(node.broker, "redis", None)
    if redis is not None:
        from tidings.server.sockjs_relay import redis_directory  # noqa: PLC0415

        return redis_directory(redis)
    in_database = getattr(node.presence, "session_directory", None)  # PostgresPresence
    return None if in_database is None else cast("SessionDirectory", in_database())
