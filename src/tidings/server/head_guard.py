"""``--head-timeout`` for the requests aiohttp reads after the edge handed a connection over.

aiohttp bounds nothing between a kept-alive connection's requests but its keep-alive
timeout: a client that starts a second request head and then sends it a byte at a time
held the connection ``--keepalive-timeout`` (75 s), not ``--head-timeout`` (issue 14).
``HeadGuard`` sits between the transport and aiohttp's ``RequestHandler`` and forwards
every call. When bytes arrive while aiohttp waits for its next request, they are the
start of a head (a complete one would have ended the wait); if aiohttp is still waiting,
with no new request parsed, ``--head-timeout`` later, the client is answered 408 with a
JSON body and the connection is closed (RFC 9110 §15.5.9), as the edge does for a first
head. A partial head that arrives behind a complete request, then silence, leaves aiohttp
idle: its keep-alive timeout closes the connection, as for any idle one.

Two of aiohttp's private attributes are read, ``_waiter`` (the future its request loop
awaits between requests) and ``_request_count`` (requests parsed). Should a release drop
them, the guard does nothing (connections are served as before, bounded by the keep-alive
timeout) and tests/test_dos.py fails.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from tidings.server.api_edge import refuse


class HeadGuard(asyncio.Protocol):
    """aiohttp's request handler, with a head timeout between requests."""

    __slots__ = ("_count", "_handler", "_timeout", "_timer", "_transport")

    def __init__(self, handler: asyncio.Protocol, head_timeout_s: float) -> None:
        self._handler: Any = handler  # aiohttp's RequestHandler: its private state is read
        self._timeout = head_timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._count = 0

    @property
    def handler(self) -> asyncio.Protocol:
        return cast("asyncio.Protocol", self._handler)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        handler = self._handler
        handler.data_received(data)
        if not self._idle():
            self._cancel()
        elif self._timer is None and data:
            self._count = getattr(handler, "_request_count", 0)
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._timeout, self._timed_out)

    def eof_received(self) -> bool | None:
        return cast("bool | None", self._handler.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def _idle(self) -> bool:
        """aiohttp waits for the next request (its loop awaits ``_waiter``)."""
        waiter = getattr(self._handler, "_waiter", None)
        return isinstance(waiter, asyncio.Future) and not waiter.done()

    def _timed_out(self) -> None:
        self._timer = None
        transport = self._transport
        if transport.is_closing() or not self._idle():
            return
        if getattr(self._handler, "_request_count", 0) != self._count:
            return  # a request came meanwhile; aiohttp is idle after answering it
        message = f"the request head did not arrive within {self._timeout:g} s"
        refuse(transport, 408, "request_head_timeout", message)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
