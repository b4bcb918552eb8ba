"""tidings.catchup on the memory broker and inbox: hold, read, release, gaps.

The memory broker never breaks, so these tests report breaks to the node's catch-up as
the Redis broker does (``on_continuity``); the code path is the one Redis runs
(tests/test_catchup_e2e.py covers Redis end to end).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from tidings import catchup
from tidings.brokers.memory import MemoryBroker
from tidings.destinations import route
from tidings.errors import BrokerUnavailable
from tidings.hub import LocalSubscription
from tidings.inbox.base import InboxLimits
from tidings.inbox.memory import MemoryInbox
from tidings.message import Message, id_key
from tidings.node import Node
from tidings.stomp.frames import SERVER_COMMANDS, Frame, FrameParser
from tidings.wsframe import OP_TEXT


@dataclass(eq=False)
class Client:
    """The hub's view of a session, keeping the MESSAGE frames it is sent, parsed."""

    id: str = "s1"
    version: str = "1.2"
    frames: list[Frame] = field(default_factory=list)
    parser: FrameParser = field(default_factory=lambda: FrameParser(commands=SERVER_COMMANDS))
    count: int = 0
    sub: LocalSubscription | None = None

    def send_frame(self, frame: bytes, opcode: int = OP_TEXT, /) -> bool:
        self.frames.extend(self.parser.feed(frame))
        return True

    def next_message_id(self) -> str:
        self.count += 1
        return f"{self.id}-{self.count}"

    def expect_ack(self, message_id: str, sub: LocalSubscription, message: Message) -> None:
        raise AssertionError("auto subscriptions expect no ACK")

    @property
    def bodies(self) -> list[bytes]:
        return [frame.body for frame in self.frames]


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    broker = MemoryBroker()
    inbox = MemoryInbox(broker, InboxLimits(max_messages=5))
    node = Node(broker, inbox=inbox, catchup_interval_s=0)
    await node.start()
    yield node
    await node.stop()


async def subscribe(node: Node, user: str) -> Client:
    client = Client()
    client.sub = LocalSubscription(
        client, "sub-0", f"/user/{user}/message", route(f"/user/{user}/message", user)
    )
    await node.subscribe(client.sub)
    return client


async def publish(node: Node, user: str, *bodies: str) -> list[str]:
    channel = f"u:{user}"
    return [
        await node.publish(Message(id="", channel=channel, destination="/message", body=b.encode()))
        for b in bodies
    ]


async def baseline(node: Node, channel: str) -> None:
    """Wait until the node knows where ``channel``'s stream stood when it subscribed."""
    for _ in range(10):
        if channel in node.catchup.last:
            return
        await node.catchup.settle()
        await asyncio.sleep(0)  # one loop turn: the last_ids settle() asked for goes out
    raise AssertionError(f"no starting point for {channel}")


async def test_held_messages_wait_for_the_catch_up_and_come_once_in_order(node: Node) -> None:
    await publish(node, "42", "before subscribing")
    client = await subscribe(node, "42")
    await baseline(node, "u:42")
    await publish(node, "42", "m1")
    assert client.bodies == [b"m1"]

    node.catchup.on_continuity(False)  # the broker lost its connection: hold everything
    await publish(node, "42", "m2", "m3")
    assert client.bodies == [b"m1"]  # held, not delivered ahead of what was missed
    # What the broker would have missed: m2 and m3 never announced. Forget them.
    node.catchup.held["u:42"].clear()
    node.catchup.on_continuity(True)
    await node.catchup.settle()
    await publish(node, "42", "m4")
    assert client.bodies == [b"m1", b"m2", b"m3", b"m4"]
    assert node.catchup.counters.messages == 2
    assert [f.get("tidings-gap") for f in client.frames] == [None] * 4


async def test_a_break_before_a_new_channels_starting_point_is_read_is_caught_up(
    node: Node,
) -> None:
    """The starting point is read BASELINE_DELAY_S after the first SUBSCRIBE; a break in
    between catches up from when the channel was subscribed (this node's clock)."""
    client = await subscribe(node, "11")
    assert "u:11" not in node.catchup.last  # not read yet
    node.catchup.on_continuity(False)
    await publish(node, "11", "n1", "n2")
    node.catchup.held["u:11"].clear()  # the broker missed both announcements
    node.catchup.on_continuity(True)
    await node.catchup.settle()
    await publish(node, "11", "n3")
    assert client.bodies == [b"n1", b"n2", b"n3"]
    assert node.catchup.counters.messages == 2


async def test_held_live_messages_after_the_read_are_delivered_without_duplicates(
    node: Node,
) -> None:
    client = await subscribe(node, "7")
    await baseline(node, "u:7")
    node.catchup.on_continuity(False)
    await publish(node, "7", "a", "b")  # announced, so held too: read once, not twice
    node.catchup.on_continuity(True)
    await node.catchup.settle()
    assert client.bodies == [b"a", b"b"]
    assert node.catchup.held == {}


async def test_an_overflowing_hold_is_read_again_from_the_stream(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catchup, "MAX_HELD", 2)
    client = await subscribe(node, "9")
    await baseline(node, "u:9")
    node.catchup.on_continuity(False)
    await publish(node, "9", "1", "2", "3", "4")
    assert len(node.catchup.held["u:9"]) < 2
    node.catchup.on_continuity(True)
    await node.catchup.settle()
    assert client.bodies == [b"1", b"2", b"3", b"4"]


async def test_trimmed_past_what_was_delivered_flags_the_next_message(node: Node) -> None:
    client = await subscribe(node, "5")
    await baseline(node, "u:5")
    await publish(node, "5", "seen")
    node.catchup.on_continuity(False)
    await publish(node, "5", *(f"missed{n}" for n in range(8)))  # max_messages=5: 3 trimmed
    node.catchup.held["u:5"].clear()
    node.catchup.on_continuity(True)
    await node.catchup.settle()
    assert client.bodies == [b"seen", *(f"missed{n}".encode() for n in range(3, 8))]
    assert [f.get("tidings-gap") for f in client.frames] == [None, "true", None, None, None, None]
    assert node.catchup.counters.gaps == 1
    await publish(node, "5", "later")
    assert client.frames[-1].get("tidings-gap") is None


async def test_the_check_finds_a_channel_behind_its_stream(node: Node) -> None:
    client = await subscribe(node, "3")
    await baseline(node, "u:3")
    ids = await publish(node, "3", "x", "y")
    assert await node.catchup.check() == []  # up to date
    # As if "y" had been missed: the node's memory says it delivered only "x".
    node.catchup.last["u:3"] = id_key(ids[0])
    assert await node.catchup.check() == ["u:3"]
    await node.catchup.settle()
    assert client.bodies == [b"x", b"y"]  # "y" not sent twice: the hub had sent it


async def test_unsubscribed_channels_are_forgotten(node: Node) -> None:
    client = await subscribe(node, "8")
    await baseline(node, "u:8")
    node.unsubscribe_delay_s = 0
    assert client.sub is not None
    node.unsubscribe(client.sub)
    for _ in range(10):  # call_later(0) runs within a turn or two
        if "u:8" not in node.catchup.last:
            break
        await asyncio.sleep(0)
    assert "u:8" not in node.catchup.last
    assert client.bodies == []


async def test_a_failing_read_retries_then_a_bug_does_not_hold_live_messages_forever(
    node: Node, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client = await subscribe(node, "4")
    await baseline(node, "u:4")
    real = node.inbox.histories
    calls: list[str] = []

    async def failing(after: dict[str, str], *, limit: int) -> object:
        calls.append("call")
        if len(calls) == 1:  # an outage: retried
            raise BrokerUnavailable("redis unavailable: test")
        if len(calls) == 2:  # a bug: given up, live delivery goes on
            raise RuntimeError("a bug")
        return await real(after, limit=limit)

    monkeypatch.setattr(node.inbox, "histories", failing)
    node.catchup.on_continuity(False)
    await publish(node, "4", "held")
    node.catchup.on_continuity(True)
    await node.catchup.settle()
    assert len(calls) == 2
    assert client.bodies == [b"held"]  # released as it came
    assert node.catchup.held == {}
    assert "catch-up of 1 channels failed" in caplog.text
