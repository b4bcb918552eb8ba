"""Outbound and Flusher: when frames are written at once and when they queue and coalesce.

A ``Sink`` stands in for the socket (it counts writes); the Flusher's clock is a list the
test moves by hand, so "quiet" and "busy" are exact rather than timed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tidings import outbound as outbound_module
from tidings.config import Config
from tidings.message import Message, topic_channel
from tidings.outbound import Flusher, Outbound
from tidings.server.app import Server

from .test_gc_pressure import Sink, subscribed_sessions


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Backlogged(Sink):
    """A socket whose kernel buffer is full: the transport holds bytes unsent."""

    def get_write_buffer_size(self) -> int:
        return 10


@pytest.fixture
async def clock() -> AsyncIterator[Clock]:
    """The running loop's Flusher, on a clock the test moves."""
    clock = Clock()
    saved = outbound_module._flusher
    outbound_module._flusher = Flusher(asyncio.get_running_loop(), clock)
    try:
        yield clock
    finally:
        outbound_module._flusher = saved


def sinks_and_outbounds(n: int, limit: int = 1 << 20) -> list[tuple[Sink, Outbound]]:
    out = []
    for _ in range(n):
        sink = Sink()
        out.append((sink, Outbound(sink, limit=limit, on_overflow=lambda: None)))
    return out


def flusher() -> Flusher:
    flusher = outbound_module._flusher
    assert flusher is not None
    return flusher


async def test_a_burst_on_a_quiet_loop_writes_each_frame_at_once(clock: Clock) -> None:
    pairs = sinks_and_outbounds(3)
    started = flusher().begin_burst()
    assert flusher().write_through
    for index, (_, outbound) in enumerate(pairs):
        assert outbound.send(b"MESSAGE\n\n\0")
        # written before the next one is even queued, not at the end of the loop turn
        assert [s.writes for s, _ in pairs] == [1] * (index + 1) + [0] * (len(pairs) - index - 1)
    flusher().end_burst(started)
    assert not flusher().write_through


async def test_a_burst_soon_after_a_busy_one_queues_and_coalesces(clock: Clock) -> None:
    pairs = sinks_and_outbounds(3)
    started = flusher().begin_burst()
    clock.now += 0.010  # the burst took 10 ms of writing
    flusher().end_burst(started)
    clock.now += 0.005  # 5 ms later: busier than half the time
    started = flusher().begin_burst()
    assert not flusher().write_through
    for _, outbound in pairs:
        outbound.send(b"one")
        outbound.send(b"two")
    flusher().end_burst(started)
    assert [sink.writes for sink, _ in pairs] == [0, 0, 0]  # queued
    await asyncio.sleep(0)
    assert [sink.writes for sink, _ in pairs] == [1, 1, 1]  # both frames in one write each
    clock.now += 0.020  # quiet as long as it was busy: write through again
    started = flusher().begin_burst()
    assert flusher().write_through
    flusher().end_burst(started)


async def test_a_burst_while_frames_wait_for_their_flush_queues(clock: Clock) -> None:
    [(sink, outbound)] = sinks_and_outbounds(1)
    outbound.send(b"queued")  # outside a burst: waits for the loop turn's flush
    started = flusher().begin_burst()
    assert not flusher().write_through  # a flush is due: the burst joins it, in order
    outbound.send(b"next")
    flusher().end_burst(started)
    await asyncio.sleep(0)
    assert sink.writes == 1


async def test_write_through_respects_the_backlog_and_the_bound(clock: Clock) -> None:
    backlogged = Backlogged()
    behind = Outbound(backlogged, limit=1 << 20, on_overflow=lambda: None)
    overflowed: list[bool] = []
    small = Sink()
    bounded = Outbound(small, limit=8, on_overflow=lambda: overflowed.append(True))
    started = flusher().begin_burst()
    assert flusher().write_through
    assert behind.send(b"after the backlog")
    assert backlogged.writes == 0  # the transport holds bytes: queue behind them
    assert not bounded.send(b"more than eight bytes")  # the bound holds as before
    assert overflowed == [True] and small.writes == 0
    flusher().end_burst(started)
    await asyncio.sleep(0)
    assert backlogged.writes == 1


async def test_a_node_on_a_quiet_loop_writes_a_broadcast_before_publish_returns() -> None:
    server = Server(Config())
    await server.node.start()
    try:
        transports = await subscribed_sessions(server, 50, "/topic/quiet")
        # The subscribes' flush made the loop busy for a while: it writes through again
        # once it has been quiet as long (the rule under test), so wait that out.
        flusher = outbound_module.loop_flusher()
        await asyncio.sleep(max(0.0, flusher._quiet_from - time.monotonic()))
        writes = [t.sink.writes for t in transports]
        message = Message("", topic_channel("quiet"), "/topic/quiet", b"now")
        await server.node.publish(message)  # the memory broker delivers before returning
        assert [t.sink.writes - w for t, w in zip(transports, writes, strict=True)] == [1] * 50
    finally:
        await server.node.stop()
