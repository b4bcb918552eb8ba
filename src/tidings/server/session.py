"""One STOMP session over one WebSocket: the thin asyncio edge around ServerConnection.

Reading goes through aiohttp; writing goes through Outbound (raw frames, one write per
loop turn). Every protocol error ends the session with an ERROR frame and a close
(STOMP 1.2 §ERROR), and never touches another session.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from tidings.destinations import route
from tidings.errors import AuthError, BrokerUnavailable, StompProtocolError
from tidings.hub import LocalSubscription
from tidings.message import TEXT_PLAIN, Message
from tidings.outbound import Outbound
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
from tidings.wsframe import OP_TEXT, encode_close, encode_frame

if TYPE_CHECKING:
    from tidings.server.app import Server

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY_VIOLATION = 1008
ABORT_AFTER_S = 2.0  # a peer that does not answer our close frame is cut off after this


class StompSession:
    """A connected client; implements the hub's Subscriber protocol."""

    def __init__(self, server: Server, ws: web.WebSocketResponse, request: web.Request) -> None:
        transport = request.transport
        assert transport is not None, "prepare() gave a WebSocket without a transport"
        self.server = server
        self.ws = ws
        self.id = secrets.token_hex(8)
        self.user: str | None = None
        self.version = "1.2"
        self.access_token = request.query.get("access_token")
        config = server.config
        self.conn = ServerConnection(
            limits=config.stomp_limits,
            server_heartbeat=config.heartbeat,
            server_name=server.server_header,
        )
        self.outbound = Outbound(
            transport, limit=config.max_outbound_bytes, on_overflow=self._on_slow_consumer
        )
        self._transport = transport
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
        return self.outbound.send(frame, opcode)

    # -- reading ------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the session until the client leaves or breaks a rule."""
        try:
            async for msg in self.ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                self._last_read = asyncio.get_running_loop().time()
                events = self.conn.receive_data(msg.data)
                for event in events:
                    await self._handle(event)
                    if self.closed:
                        return
        except StompProtocolError as exc:
            self.fail(exc.message, exc.detail, CLOSE_PROTOCOL_ERROR)
        except AuthError as exc:
            self.fail(f"authentication failed: {exc}", "", CLOSE_POLICY_VIOLATION)
        except BrokerUnavailable as exc:
            self.fail("broker unavailable", str(exc), CLOSE_GOING_AWAY)
        finally:
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
        self.outbound.send(self.conn.accept(session_id=self.id, user_name=self.user))
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
            self.outbound.send(self.conn.receipt(receipt))

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
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        interval = self.conn.send_heartbeat_ms / 1000
        idle = loop.time() - self.outbound.last_write
        if idle >= interval * 0.95:
            self.outbound.send_raw(encode_frame(b"\n"))
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
        if self.closed:
            return
        frame = self.conn.error(message, detail=detail)
        self.outbound.send_raw(encode_frame(frame))
        self.close(code, message)

    def close(self, code: int, reason: str) -> None:
        """Close the WebSocket with ``code``; cut the TCP connection if the peer stays silent."""
        if self.closed:
            return
        self.closed = True
        self._release()
        self.outbound.send_raw(encode_close(code, reason))
        self._transport.close()
        loop = asyncio.get_running_loop()
        loop.call_later(ABORT_AFTER_S, self._transport.abort)

    def _on_slow_consumer(self) -> None:
        self.server.node.counters.slow_consumers += 1
        limit = self.outbound.limit
        log.info("session %s: slow consumer, over %d bytes pending", self.id, limit)
        # Called from inside a delivery loop: end the session on the next loop turn.
        asyncio.get_running_loop().call_soon(
            self.fail,
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
