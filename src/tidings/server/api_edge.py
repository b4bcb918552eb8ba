"""The publish routes on the edge: a keep-alive HTTP/1.1 connection without aiohttp.

A connection that starts with a POST comes here from server/edge.py. Its requests are
read by ``http1.RequestReader`` and answered one at a time, in order (RFC 9112 §9.3.2),
by the code aiohttp's publish routes run too (``PublishApi.start``). The first request
not served here exactly as aiohttp would serve it (``ApiEdgeRoute``) goes, with every byte
after it, to aiohttp's request handler, which keeps the connection from then on.
aiohttp's request machinery was ~110 µs of a publish's ~133 µs of CPU (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, cast

import orjson

from tidings.http1 import (
    DateField,
    Refused,
    Request,
    RequestHead,
    RequestReader,
    encode_response,
    header_tokens,
)
from tidings.server.api import Answer, Pending, Publish

if TYPE_CHECKING:
    from tidings.server.edge import Edge

log = logging.getLogger(__name__)

# aiohttp's max_line_size and max_field_size: a longer head could hold a line it refuses.
MAX_HEAD_BYTES = 8190
MAX_FIELDS = 128  # aiohttp's max_headers
# Fields that change how aiohttp reads or answers a request: 100-continue, decompression,
# another framing, a protocol switch.
_AIOHTTP_FIELDS = frozenset(("expect", "content-encoding", "transfer-encoding", "upgrade"))
# Origin-form (RFC 9112 §3.2.1) of pchar and query characters of RFC 3986 §3.3-3.4,
# without "%": aiohttp's router decodes escapes, and dot segments, itself.
_PLAIN_TARGET = re.compile(
    r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*)?"
)
_INTERNAL_ERROR = Answer(
    500, b"500 Internal Server Error\n\nServer got itself in trouble", "text/plain"
)

# The publish route's handler, its path parameter, its responses by status (counted for
# /metrics), and whether the request ends the connection (Connection: close, RFC 9112 §9.6).
Route = tuple[Publish, str, dict[int, int], bool]
_CONNECTION_OPTIONS = frozenset(("close", "keep-alive"))
_DATE = DateField()
_CONTENT_TYPES: dict[str, bytes] = {}  # as aiohttp writes them, with the charset


def refuse(transport: asyncio.Transport, status: int, code: str, message: str) -> None:
    """Answer ``status`` with the API's JSON error body and close the connection."""
    body = orjson.dumps({"error": code, "message": message})
    response = encode_response(
        status, b"application/json", body, date=_DATE.at(time.time()), close=True
    )
    transport.write(response)
    transport.close()


def _content_type(media_type: str) -> bytes:
    value = _CONTENT_TYPES.get(media_type)
    if value is None:
        value = _CONTENT_TYPES[media_type] = f"{media_type}; charset=utf-8".encode()
    return value


class ApiEdgeRoute:
    """Which requests the edge serves: a POST to a publish route, plain HTTP/1.1.

    A request is handed to aiohttp if it is not one, if the server is shutting down, or
    if aiohttp could answer it differently: fields it refuses or acts on (``Host``
    missing, §3.2; repeated fields, which aiohttp reads first-value; Expect;
    Content-Encoding; Upgrade; Connection options other than close and keep-alive), no
    Content-Length, or a target with escapes, dot segments or ``//``.
    """

    __slots__ = ("_edge",)

    def __init__(self, edge: Edge) -> None:
        self._edge = edge

    def __call__(self, head: RequestHead) -> Route | None:
        headers = head.headers
        target = head.target
        options = header_tokens(headers.get("connection"))
        if (
            head.method != "POST"
            or head.version != "HTTP/1.1"
            or head.repeated
            or "host" not in headers
            or "content-length" not in headers
            or len(headers) > MAX_FIELDS
            or not _AIOHTTP_FIELDS.isdisjoint(headers)
            or not _CONNECTION_OPTIONS.issuperset(options)
            or "//" in target
            or "/." in target
            or not _PLAIN_TARGET.fullmatch(target)
            or self._edge.context.shutting_down
        ):
            return None
        route = self._edge.api.publish_route(head.path)
        return None if route is None else (*route, "close" in options)


class ApiConnection(asyncio.Protocol):
    """One connection's publishes: read, answered in order, handed to aiohttp at the end.

    A request is started at once (``PublishApi.start``) and answered from its publish's
    done callback: no task or coroutine per request. While one is under way the reader
    buffers at most one more request of the largest size, then reading pauses. A request
    under way runs to its end even if the client goes away (as aiohttp's handlers do): a
    publish is stored or not, never cut.

    Timeouts (docs/security.md): a request head incomplete ``--head-timeout`` after its
    first byte is answered 408 and the connection closed; with no publish under way, a
    connection is closed ``--keepalive-timeout`` after its last answer (or its start),
    whether it sent nothing more or a request never finished.
    """

    __slots__ = (
        "_answered",
        "_closing",
        "_edge",
        "_head_since",
        "_idle_since",
        "_latency",
        "_loop",
        "_paused",
        "_peer",
        "_pending",
        "_reader",
        "_timer",
        "_transport",
    )

    def __init__(self, edge: Edge) -> None:
        self._edge = edge
        self._latency = edge.context.stats.publish_latency
        self._reader = RequestReader(
            edge.api_route, max_head_bytes=MAX_HEAD_BYTES, max_body_bytes=edge.max_body_bytes
        )
        # The request under way, its publish, and when it started (perf_counter).
        self._pending: tuple[Request[Route], Pending, float] | None = None
        self._answered: asyncio.Future[None] | None = None  # for shut_down, once asked
        self._timer: asyncio.TimerHandle | None = None
        self._head_since: float | None = None  # when the incomplete head buffered began
        self._paused = False
        self._closing = False  # Connection: close asked, or the server shutting down

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple | list) else None  # as aiohttp
        self._edge.api_connections.add(self)
        loop = self._loop = asyncio.get_running_loop()  # each call costs a getpid(2)
        self._idle_since = loop.time()
        self._timer = loop.call_at(
            self._idle_since + self._edge.keepalive_timeout_s, self._check_idle
        )

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        if self._pending is None:
            self._next()
        elif not self._paused and reader.buffered > reader.max_head_bytes + reader.max_body_bytes:
            self._paused = True  # let TCP push back until the answer under way is written
            self._transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._release()

    # -- serving ----------------------------------------------------------------------------
    def _next(self) -> None:
        """Answer the complete requests in order, until one's publish is under way, the
        connection is to close, or a request not served here hands the connection over."""
        while True:
            request = self._reader.next_request()
            if request is None:
                if self._paused:
                    self._paused = False
                    self._transport.resume_reading()
                if self._reader.buffered and self._head_since is None:
                    self._head_started()
                return
            if isinstance(request, Refused):
                self._hand_over()
                return
            started = time.perf_counter()
            outcome = self._start(request)
            if isinstance(outcome, Pending):
                if not outcome.outcome.done():
                    self._pending = request, outcome, started
                    outcome.outcome.add_done_callback(self._settled)
                    return
                # Done already (the memory broker's): answer now, not after this loop
                # turn's other callbacks (a fan-out's flush can take milliseconds).
                outcome = self._settle(request, outcome, started)
            if not self._answer(request, outcome):
                return

    def _start(self, request: Request[Route]) -> Answer | Pending:
        head = request.head
        publish, param, _, close = request.route
        if close:
            self._closing = True
        try:
            return self._edge.api.start(publish, param, head.headers, self._peer, request.body)
        except Exception:
            log.exception("publish request %s %s failed", head.method, head.path)
            self._closing = True
            return _INTERNAL_ERROR

    def _settled(self, _: asyncio.Future[object]) -> None:
        """The publish under way has ended: its answer, then the next request."""
        assert self._pending is not None
        (request, pending, started), self._pending = self._pending, None
        if self._answer(request, self._settle(request, pending, started)):
            self._next()
        if self._answered is not None:
            self._answered.set_result(None)
            self._answered = None

    def _settle(self, request: Request[Route], pending: Pending, started: float) -> Answer:
        """The answer of a publish that has ended (started at ``started``, perf_counter)."""
        try:
            answer = pending.settled()
        except Exception:
            log.exception("publish request %s %s failed", request.head.method, request.head.path)
            self._closing = True
            return _INTERNAL_ERROR
        if answer.status < 300:
            elapsed = time.perf_counter() - started
            latency = self._latency  # Histogram.observe, inlined (a call: ~1k instructions)
            latency.counts[bisect_left(latency.bounds, elapsed)] += 1
            latency.sum += elapsed
        return answer

    def _answer(self, request: Request[Route], answer: Answer) -> bool:
        """Write ``answer``; False if the connection closes after it."""
        counts, status = request.route[2], answer.status
        counts[status] = counts.get(status, 0) + 1
        transport = self._transport
        if not transport.is_closing():
            transport.write(
                encode_response(
                    answer.status,
                    _content_type(answer.content_type),
                    answer.body,
                    date=_DATE.at(time.time()),
                    close=self._closing,
                )
            )
        self._idle_since = self._loop.time()
        self._head_since = None
        if self._closing:
            transport.close()
            return False
        return True

    def shut_down(self) -> asyncio.Future[None] | None:
        """Close now if idle, else after the answer under way; returns what is done then."""
        self._closing = True
        if self._pending is None:
            self._transport.close()
            return None
        if self._answered is None:
            self._answered = self._loop.create_future()
        return self._answered

    # -- ending -----------------------------------------------------------------------------
    def _head_started(self) -> None:
        """Part of a request is buffered: if of its head, the head timeout runs from now."""
        if self._reader.awaiting_body:
            return
        self._head_since = self._loop.time()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(
            self._head_since + self._edge.head_timeout_s, self._check_idle
        )

    def _check_idle(self) -> None:
        """408 for a head incomplete after the head timeout; close once idle after the
        keep-alive timeout (aiohttp's rule, with our timeout)."""
        self._timer = None
        now = self._loop.time()
        keepalive, head_timeout = self._edge.keepalive_timeout_s, self._edge.head_timeout_s
        if self._pending is not None:
            self._timer = self._loop.call_at(now + keepalive, self._check_idle)
            return
        head_since = self._head_since
        if head_since is not None and now >= head_since + head_timeout:
            self._release()
            message = f"the request head did not arrive within {head_timeout:g} s"
            refuse(self._transport, 408, "request_head_timeout", message)
            return
        if now >= self._idle_since + keepalive:
            self._transport.close()
            return
        deadline = self._idle_since + keepalive
        if head_since is not None:
            deadline = min(deadline, head_since + head_timeout)
        self._timer = self._loop.call_at(deadline, self._check_idle)

    def _hand_over(self) -> None:
        self._release()
        if self._paused:
            self._paused = False
            self._transport.resume_reading()  # aiohttp's handler pauses and resumes its own way
        self._edge.hand_over(self._transport, self._reader.unread())

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._edge.api_connections.discard(self)
