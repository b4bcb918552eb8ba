"""The delivery path creates no objects for the garbage collector (docs/decisions.md).

Every tracked object alive when a broadcast returns counts toward the next young
collection; objects that outlive it are promoted, and promotions are what schedule the
full (generation 2) passes that stalled S1's loop for 30-160 ms. These tests drive the
real node, hub, STOMP sessions and ``Outbound`` and fake only the socket.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator

import pytest

from tidings.config import Config
from tidings.destinations import route
from tidings.hub import Hub, LocalSubscription
from tidings.message import Message, topic_channel
from tidings.outbound import Outbound
from tidings.server.app import Server
from tidings.server.session import StompSession
from tidings.wsframe import OP_TEXT, encode_frame

SUBSCRIBERS = 500
MESSAGES = 10
PER_MESSAGE_ALLOWANCE = 20  # the stored message, its ids, the payload: not per subscriber


class Sink(asyncio.Transport):
    """A socket that takes everything at once."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        self.bytes += len(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


class SinkTransport:
    """A FrameTransport over ``Outbound``, as server/websocket.py's, on a ``Sink``."""

    def __init__(self) -> None:
        self.sink = Sink()
        self.outbound = Outbound(self.sink, limit=1 << 20, on_overflow=lambda: None)

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
        self.outbound.flush()


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def subscribed_sessions(server: Server, n: int, destination: str) -> list[SinkTransport]:
    transports = []
    for _ in range(n):
        session = StompSession(server.context)
        transport = SinkTransport()
        session.attach(transport)
        await session.receive(
            b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0"
            b"SUBSCRIBE\nid:0\ndestination:" + destination.encode() + b"\n\n\0"
        )
        transports.append(transport)
    await asyncio.sleep(0)  # CONNECTED frames flushed
    return transports


@pytest.mark.usefixtures("collector_off")
async def test_broadcast_leaves_no_tracked_object_per_delivery() -> None:
    server = Server(Config())
    await server.node.start()
    try:
        transports = await subscribed_sessions(server, SUBSCRIBERS, "/topic/news")
        assert server.node.hub.subscription_count == SUBSCRIBERS
        writes_before = sum(t.sink.writes for t in transports)
        growth = []
        for seq in range(MESSAGES):
            message = Message("", topic_channel("news"), "/topic/news", b"x%d" % seq)
            before = len(gc.get_objects())
            await server.node.publish(message)  # the memory broker delivers before returning
            growth.append(len(gc.get_objects()) - before)  # frames are queued, not yet written
            await asyncio.sleep(0)
        # Before the shared Flusher every delivery left a Handle, a bound method and a
        # Context behind until the next loop turn: ~1,500 objects per message here.
        assert max(growth) <= PER_MESSAGE_ALLOWANCE, growth
        # ... and every frame still went out, one write per session and message.
        assert sum(t.sink.writes for t in transports) - writes_before == SUBSCRIBERS * MESSAGES
        assert server.node.counters.delivered == SUBSCRIBERS * MESSAGES
    finally:
        await server.node.stop()


async def test_one_flush_callback_per_loop_turn_for_every_connection() -> None:
    outbounds = [Outbound(Sink(), limit=1 << 20, on_overflow=lambda: None) for _ in range(3)]
    loop = asyncio.get_running_loop()
    ready_before = len(getattr(loop, "_ready", ()))
    for outbound in outbounds:
        outbound.send(b"one")
        outbound.send(b"two")
    if hasattr(loop, "_ready"):  # asyncio's own loop: one callback queued, not three
        assert len(loop._ready) == ready_before + 1
    await asyncio.sleep(0)
    sinks = [outbound._transport for outbound in outbounds]
    assert all(isinstance(s, Sink) and s.writes == 1 for s in sinks)  # both frames, one write
    outbounds[0].send(b"three")
    await asyncio.sleep(0)
    assert isinstance(sinks[0], Sink) and sinks[0].writes == 2


def test_hub_counts_subscriptions_once() -> None:
    class Session:
        id = "s"
        version = "1.2"

    hub = Hub(lambda: "m-1")
    subs = [
        LocalSubscription(Session(), str(i), "/topic/a", route("/topic/a", None)) for i in range(2)
    ]
    assert hub.add(subs[0]) is True
    assert hub.add(subs[1]) is False
    hub.add(subs[1])
    assert hub.subscription_count == 2
    assert hub.remove(subs[0]) is False
    hub.remove(subs[0])
    assert hub.subscription_count == 1
    assert hub.remove(subs[1]) is True
    assert hub.subscription_count == 0


class ClosableSink(Sink):
    """A ``Sink`` that, like uvloop's transports, forgets its protocol once closed."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: asyncio.BaseProtocol | None = None
        self.closing = False
        self.data = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(data)
        self.data += data

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def is_closing(self) -> bool:
        return self.closing

    def lose(self) -> None:
        """The peer went away: connection_lost, then the protocol is dropped."""
        self.closing = True
        protocol, self.protocol = self.protocol, None
        assert protocol is not None
        protocol.connection_lost(None)


def masked(payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload  # all-zero mask


def alive(*types: type) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, types))


async def turns_until(condition: Callable[[], bool], turns: int = 1000) -> None:
    """Let the loop run until ``condition`` holds, at most ``turns`` turns (no timers here)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    assert condition()


def open_session(server: Server, sink: ClosableSink, sub_id: int) -> None:
    from tidings.server.edge import start_websocket  # noqa: PLC0415

    start_websocket(server.context, sink, None)
    assert sink.protocol is not None
    sink.protocol.data_received(  # type: ignore[attr-defined]
        masked(b"CONNECT\naccept-version:1.2\nheart-beat:10000,10000\n\n\0")
        + masked(b"SUBSCRIBE\nid:%d\ndestination:/topic/news\nreceipt:r\n\n\0" % sub_id)
    )


@pytest.mark.usefixtures("collector_off")
async def test_closed_sessions_are_freed_without_the_collector() -> None:
    """A WebSocket session that ends leaves no reference cycle: with the collector off,
    its session, protocol and buffer are gone once the last outside reference is."""
    from tidings.server.websocket import StompWebSocket  # noqa: PLC0415

    server = Server(Config(heartbeat=(10_000, 10_000)))  # heart-beat timers exist, too
    await server.node.start()
    try:
        before = alive(StompSession, StompWebSocket, Outbound)
        sinks = [ClosableSink() for _ in range(50)]
        for index, sink in enumerate(sinks):
            open_session(server, sink, index)
        await turns_until(lambda: all(b"RECEIPT" in sink.data for sink in sinks))
        assert alive(StompSession, StompWebSocket, Outbound) == before + 3 * len(sinks)
        await server.node.publish(Message("", topic_channel("news"), "/topic/news", b"hi"))
        for sink in sinks:
            sink.lose()
        del sink
        await asyncio.sleep(0)  # the flush queued by the publish runs
        assert server.node.hub.subscription_count == 0
        assert alive(StompSession, StompWebSocket, Outbound) == before
    finally:
        await server.node.stop()


async def test_a_client_gone_while_its_subscribe_awaits_the_broker_leaves_nothing() -> None:
    server = Server(Config())
    await server.node.start()
    try:
        sink = ClosableSink()
        open_session(server, sink, 1)
        # The hub has the subscription; the session still awaits the broker's confirmation.
        await turns_until(lambda: server.node.hub.subscription_count == 1)
        assert b"RECEIPT" not in sink.data
        sink.lose()
        await turns_until(lambda: server.node.hub.subscription_count == 0)
        assert b"RECEIPT" not in sink.data
    finally:
        await server.node.stop()


IDLE_SESSION_BUDGET = 27  # tracked objects; 25 when written, 29 with a finished Task per channel


@pytest.mark.usefixtures("collector_off")
async def test_an_idle_subscribed_session_holds_few_tracked_objects() -> None:
    """Each tracked object of an idle session is rescanned by every full collection, the
    longest pauses of a node with many connections (docs/decisions.md)."""
    server = Server(Config(heartbeat=(10_000, 10_000)))
    await server.node.start()
    try:
        sinks = [ClosableSink() for _ in range(100)]
        before = len(gc.get_objects())
        for index, sink in enumerate(sinks):
            from tidings.server.edge import start_websocket  # noqa: PLC0415

            start_websocket(server.context, sink, None)
            assert sink.protocol is not None
            sink.protocol.data_received(  # type: ignore[attr-defined]
                masked(
                    b"CONNECT\naccept-version:1.2\nheart-beat:10000,10000\nlogin:u%d\n\n\0" % index
                )
                + masked(b"SUBSCRIBE\nid:sub-0\ndestination:/user/queue/x\nreceipt:r\n\n\0")
            )
        await turns_until(lambda: all(b"RECEIPT" in sink.data for sink in sinks))
        for sink in sinks:
            sink.data = b""
        per_session = (len(gc.get_objects()) - before) / len(sinks)
        assert per_session <= IDLE_SESSION_BUDGET, per_session
    finally:
        await server.node.stop()
