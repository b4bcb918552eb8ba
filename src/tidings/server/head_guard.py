"""``--head-timeout`` for the requests aiohttp reads after the edge handed a connection over.

aiohttp bounds nothing between a kept-alive connection's requests but its keep-alive
timeout: a client that starts a second request head and then stops, or sends it a byte
at a time, held the connection ``--keepalive-timeout`` (75 s), not ``--head-timeout``
(issue 14). ``HeadGuard`` sits between the transport and aiohttp's ``RequestHandler``,
forwards every call, and follows the same bytes with ``http1.RequestFraming``: it knows
when the stream stops inside a head. A head that aiohttp waits for, idle, for
``--head-timeout`` without its end is answered 408 with a JSON body and the connection
is closed (RFC 9110 §15.5.9), as the edge does for a first head.

The clock runs only while aiohttp is idle: a head pipelined behind a request (in the
same write, or while the request is served) is not the client's to finish sooner. While
aiohttp is busy and a head is pending, the guard looks again every quarter of the
timeout; so such a head is answered within 1.25 times ``--head-timeout`` of aiohttp going
idle, one that starts while aiohttp is idle within ``--head-timeout`` of its first byte.
A body is never on this clock (aiohttp is busy until it has read it). After a request
that asks to switch protocols (a WebSocket handshake aiohttp serves), the guard holds
what follows unread: if aiohttp goes idle, it declined and those bytes are requests
again; if it stays busy (it switched), the guard stops following the connection after
four looks, 15 quarters of the timeout. Framing ``RequestFraming`` does not follow
(aiohttp refuses it with 400) stops it too.

Two of aiohttp's private attributes are read, ``_waiter`` (the future its request loop
awaits between requests: its identity tells one idle spell from the next) and
``_request_count`` (requests parsed). Should a release drop ``_waiter``, the guard does
nothing (connections are served as before, bounded by the keep-alive timeout) and
tests/test_dos.py fails. A connection the guard stopped following keeps the simpler rule:
bytes that arrive while aiohttp is idle start a head, and a head not parsed
``--head-timeout`` later is answered 408.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from tidings.http1 import RequestFraming
from tidings.server.api_edge import refuse

_SWITCH_LOOKS = 4  # looks, a quarter of the timeout then doubling, for a switch's outcome


class HeadGuard(asyncio.Protocol):
    """aiohttp's request handler, with a head timeout between requests."""

    __slots__ = (
        "_count",
        "_framing",
        "_handler",
        "_idle_spell",
        "_looks",
        "_timeout",
        "_timer",
        "_transport",
    )

    def __init__(self, handler: asyncio.Protocol, head_timeout_s: float) -> None:
        self._handler: Any = handler  # aiohttp's RequestHandler: its private state is read
        self._timeout = head_timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._count = 0
        # None: the simpler rule (aiohttp without _waiter: the guard never arms).
        self._framing = RequestFraming() if hasattr(handler, "_waiter") else None
        self._idle_spell: asyncio.Future[None] | None = None  # the deadline's, if armed
        self._looks = 0  # at a protocol switch's outcome

    @property
    def handler(self) -> asyncio.Protocol:
        return cast("asyncio.Protocol", self._handler)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)
        framing = self._framing
        if framing is None:
            self._simple_rule(data)
            return
        framing.feed(data)
        self._follow(framing)

    def eof_received(self) -> bool | None:
        return cast("bool | None", self._handler.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._framing = None
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def _follow(self, framing: RequestFraming) -> None:
        """Arm what the stream's state asks for: a deadline, a look later, or nothing."""
        spell = self._idle()
        if framing.switching:
            if spell is None:  # the switch's outcome is not known yet: look later
                if framing.held and self._timer is None:
                    self._look_later(self._timeout / 4 * 2**self._looks)
                return
            # aiohttp answered without switching, and so every switch asked for in what
            # it held, since it waits for a request: what follows is requests.
            while framing.switching:
                framing.resume()
            self._looks = 0
        if framing.lost:
            self._stop_following()
        elif not framing.in_head:
            self._cancel()
        elif spell is None:  # busy: the head is not on the clock yet
            if self._timer is None:
                self._look_later(self._timeout / 4)
        elif spell is not self._idle_spell:  # idle since now at the latest: the clock starts
            self._cancel()
            self._idle_spell = spell
            self._timer = asyncio.get_running_loop().call_later(self._timeout, self._tick)

    def _look_later(self, delay: float) -> None:
        self._idle_spell = None
        self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        transport = self._transport
        framing = self._framing
        if framing is None or transport.is_closing() or transport.get_protocol() is not self:
            return  # closed, or the connection became a WebSocket of the edge's
        spell = self._idle()
        if framing.in_head and spell is not None and spell is self._idle_spell:
            self._head_timed_out()  # idle the whole timeout with the head unfinished
        elif framing.switching and spell is None:
            self._looks += 1
            if self._looks < _SWITCH_LOOKS:
                self._look_later(self._timeout / 4 * 2**self._looks)
            else:  # it switched (aiohttp serves a WebSocket): nothing more to follow
                self._stop_following()
        else:
            self._follow(framing)

    def _stop_following(self) -> None:
        self._cancel()
        self._framing = None
        self._count = getattr(self._handler, "_request_count", 0)

    def _simple_rule(self, data: bytes) -> None:
        """Bytes that come while aiohttp waits for a request start a head."""
        if self._idle() is None:
            self._cancel()
        elif self._timer is None and data:
            self._count = getattr(self._handler, "_request_count", 0)
            self._timer = asyncio.get_running_loop().call_later(self._timeout, self._timed_out)

    def _idle(self) -> asyncio.Future[None] | None:
        """The future aiohttp's request loop awaits while it waits for a request; None
        when it is busy (a request in hand, or a switched protocol)."""
        waiter = getattr(self._handler, "_waiter", None)
        if isinstance(waiter, asyncio.Future) and not waiter.done():
            return waiter
        return None

    def _timed_out(self) -> None:
        self._timer = None
        transport = self._transport
        if transport.is_closing() or self._idle() is None:
            return
        if getattr(self._handler, "_request_count", 0) != self._count:
            return  # a request came meanwhile; aiohttp is idle after answering it
        self._head_timed_out()

    def _head_timed_out(self) -> None:
        message = f"the request head did not arrive within {self._timeout:g} s"
        refuse(self._transport, 408, "request_head_timeout", message)

    def _cancel(self) -> None:
        self._idle_spell = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
