"""The delivery path creates no objects for the garbage collector (docs/decisions.md).

Every tracked object alive when a broadcast returns counts toward the next young
collection; objects that outlive it are promoted, and promotions are what schedule the
full (generation 2) passes that stalled S1's loop for 30-160 ms. These tests drive the
real node, hub, STOMP sessions and ``Outbound`` and fake only the socket.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

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
        session = StompSession(server)
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
