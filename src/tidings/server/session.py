"""One STOMP session: the thin asyncio edge around the sans-I/O ServerConnection.

The session does not know how bytes travel: a ``FrameTransport`` (a raw WebSocket
today, a SockJS session next) feeds it with ``receive()`` and carries the frames it
sends. Every protocol error ends the session with an ERROR frame and a close
(STOMP 1.2 §ERROR), and never touches another session.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import TYPE_CHECKING, Protocol

from tidings.destinations import route
from tidings.errors import AuthError, BrokerUnavailable, StompProtocolError
from tidings.hub import LocalSubscription
from tidings.message import TEXT_PLAIN, Message
from tidings.stomp.connection import (
    AckReceived,
    ConnectRequested,
    DisconnectRequested,
    NackReceived,
    ReceiptDue,
    SendRequested,
    ServerConnection,
    SubscribeRequested,
    UnsubscribeRequested,
)
from tidings.wsframe import OP_TEXT

if TYPE_CHECKING:
    from tidings.server.app import Server

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY_VIOLATION = 1008


class FrameTransport(Protocol):
    """How a session's frames reach its client (RFC 6455 WebSocket, or SockJS)."""

    @property
    def last_write(self) -> float:
        """Loop time of the last write to the client, for heart-beat scheduling."""

    def send(self, frame: bytes, opcode: int = OP_TEXT) -> bool:
        """Queue one STOMP frame within the outbound bound; False once over it."""

    def send_now(self, frame: bytes) -> None:
        """Send a frame ahead of the bound (ERROR before a close)."""

    def send_heartbeat(self) -> None:
        """Send a STOMP heart-beat EOL (STOMP 1.2 §Heart-beating)."""

    def close(self, code: int, reason: str) -> None:
        """Flush, close with this code and reason; the session is already released."""


class StompSession:
    """A connected client; implements the hub's Subscriber protocol."""

    def __init__(self, server: Server, access_token: str | None = None) -> None:
        self.server = server
        self.id = secrets.token_hex(8)
        self.user: str | None = None
        self.version = "1.2"
        self.access_token = access_token
        self.transport: FrameTransport | None = None
        config = server.config
        self.conn = ServerConnection(
            limits=config.stomp_limits,
            server_heartbeat=config.heartbeat,
            server_name=server.server_header,
        )
        self._message_ids = itertools.count(1)
        self._subscriptions: dict[str, LocalSubscription] = {}
        self._beat_timer: asyncio.TimerHandle | None = None
        self._alive_timer: asyncio.TimerHandle | None = None
        self._last_read = asyncio.get_running_loop().time()
        self.closed = False

    # -- Subscriber protocol ------------------------------------------------------------
    def next_message_id(self) -> str:
        return f"{self.id}-{next(self._message_ids)}"

    def send_frame(self, frame: bytes, opcode: int = OP_TEXT) -> bool:
        assert self.transport is not None
        return self.transport.send(frame, opcode)

    # -- reading ------------------------------------------------------------------------
    def attach(self, transport: FrameTransport) -> None:
        """Give the session its way to the client; call before the first ``receive``."""
        self.transport = transport
        self.server.sessions.add(self)

    async def receive(self, data: bytes) -> None:
        """Act on bytes from the client, in order; the transport must not call concurrently."""
        if self.closed:
            return
        self._last_read = asyncio.get_running_loop().time()
        try:
            for event in self.conn.receive_data(data):
                await self._handle(event)
                if self.closed:
                    return
        except StompProtocolError as exc:
            self.fail(exc.message, exc.detail, CLOSE_PROTOCOL_ERROR)
        except AuthError as exc:
            self.fail(f"authentication failed: {exc}", "", CLOSE_POLICY_VIOLATION)
        except BrokerUnavailable as exc:
            self.fail("broker unavailable", str(exc), CLOSE_GOING_AWAY)

    def transport_closed(self) -> None:
        """The client went away (or the transport gave up on it): drop everything."""
        self.closed = True
        self._release()

    async def _handle(self, event: object) -> None:
        match event:
            case ConnectRequested():
                await self._connect(event)
            case SubscribeRequested():
                await self._subscribe(event)
            case UnsubscribeRequested():
                self._unsubscribe(event.subscription_id)
                self._receipt(event.receipt)
            case SendRequested():
                await self._send(event)
            case AckReceived() | NackReceived() | ReceiptDue():
                self._receipt(event.receipt)
            case DisconnectRequested():
                self._receipt(event.receipt)
                self.close(1000, "client disconnected")

    async def _connect(self, event: ConnectRequested) -> None:
        self.user = self.server.identify(event, self.access_token)
        self.version = event.version
        if self.user is not None:
            await self.server.node.presence.add(self.user, self.id)
        self.send_frame(self.conn.accept(session_id=self.id, user_name=self.user))
        self._start_heartbeats()

    async def _subscribe(self, event: SubscribeRequested) -> None:
        target = route(event.destination, self.user)
        self.server.authorize_subscription(self.user, target)
        sub = LocalSubscription(self, event.subscription_id, event.destination, target, event.ack)
        try:
            await self.server.node.subscribe(sub)
        except BrokerUnavailable:
            self.conn.remove_subscription(event.subscription_id)
            raise
        self._subscriptions[sub.id] = sub
        self._receipt(event.receipt)

    def _unsubscribe(self, subscription_id: str) -> None:
        sub = self._subscriptions.pop(subscription_id, None)
        if sub is not None:
            self.server.node.unsubscribe(sub)

    async def _send(self, event: SendRequested) -> None:
        if not self.server.send_allowed(event.destination):
            raise StompProtocolError(
                f"SEND to {event.destination} is not allowed",
                "Clients may SEND only to destinations in the server's --send-allow list.",
            )
        target = route(event.destination, self.user)
        message = Message(
            id=self.server.node.new_message_id(),
            channel=target.channel,
            destination=target.key,
            body=event.body,
            content_type=event.content_type or TEXT_PLAIN,
        )
        await self.server.node.publish(message)
        self._receipt(event.receipt)

    def _receipt(self, receipt: str | None) -> None:
        if receipt is not None:
            self.send_frame(self.conn.receipt(receipt))

    # -- heart-beats (STOMP 1.2 §Heart-beating) -------------------------------------------
    def _start_heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        if self.conn.send_heartbeat_ms:
            self._beat_timer = loop.call_later(self.conn.send_heartbeat_ms / 1000, self._beat)
        if self.conn.expect_heartbeat_ms:
            self._alive_timer = loop.call_later(self._silence_limit_s(), self._check_alive)

    def _silence_limit_s(self) -> float:
        return self.conn.expect_heartbeat_ms / 1000 * self.server.config.heartbeat_grace

    def _beat(self) -> None:
        if self.closed or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        interval = self.conn.send_heartbeat_ms / 1000
        idle = loop.time() - self.transport.last_write
        if idle >= interval * 0.95:
            self.transport.send_heartbeat()
            idle = 0.0
        self._beat_timer = loop.call_later(interval - idle, self._beat)

    def _check_alive(self) -> None:
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        silent = loop.time() - self._last_read
        limit = self._silence_limit_s()
        if silent >= limit:
            self.fail(
                "heart-beat timeout",
                f"no data from the client for {silent:.1f} s "
                f"(expected every {self.conn.expect_heartbeat_ms} ms)",
                CLOSE_POLICY_VIOLATION,
            )
            return
        self._alive_timer = loop.call_later(limit - silent, self._check_alive)

    # -- ending ---------------------------------------------------------------------------
    def fail(self, message: str, detail: str, code: int) -> None:
        """Send an ERROR frame (STOMP 1.2 §ERROR) and close the WebSocket."""
        if self.closed or self.transport is None:
            return
        self.transport.send_now(self.conn.error(message, detail=detail))
        self.close(code, message)

    def close(self, code: int, reason: str) -> None:
        """Release the session, then close its transport with ``code`` and ``reason``."""
        if self.closed:
            return
        self.closed = True
        self._release()
        if self.transport is not None:
            self.transport.close(code, reason)

    def on_slow_consumer(self, limit: int) -> None:
        """The transport's bound was crossed: end the session, telling the client why."""
        self.server.node.counters.slow_consumers += 1
        log.info("session %s: slow consumer, over %d bytes pending", self.id, limit)
        self.fail(
            "slow consumer",
            f"more than {limit} bytes were waiting to be sent to this client",
            CLOSE_POLICY_VIOLATION,
        )

    def _release(self) -> None:
        """Drop every subscription and timer; safe to call more than once."""
        for timer in (self._beat_timer, self._alive_timer):
            if timer is not None:
                timer.cancel()
        for sub in self._subscriptions.values():
            self.server.node.unsubscribe(sub)
        self._subscriptions.clear()
        if self in self.server.sessions:
            self.server.sessions.discard(self)
            if self.user is not None:
                self.server.node.presence.remove(self.user, self.id)
