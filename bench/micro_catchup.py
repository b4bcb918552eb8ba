"""Micro-benchmark of the node's catch-up and safety net (issue 13, tidings.catchup).

    .venv/bin/python -m bench.micro_catchup [--channels 1000,10000] [--missed 5] [--no-write]

A private redis-server, and in this process (uvloop) a node on it (``RedisBroker``,
``RedisInbox``, ``Node``) with one auto-ack subscription per channel ``u:b<i>`` (a
session that only counts its frames). For each channel count:

* **safety-net pass**: every channel up to date (one stored message each, delivered),
  then ``CatchUp.check()`` five times: wall time per pass (median), this process' CPU
  and Redis' CPU (``INFO commandstats``, XREAD) per pass and per channel.
* **catch-up**: the node misses ``--missed`` messages on every channel (a reported break,
  the held live copies dropped as a lost connection drops them), then hears again:
  wall time until every missed message was read from Redis and handed to its session
  (``on_continuity(True)`` to ``settle()``), node and Redis CPU.

Results go to docs/benchmarks.md, between the ``micro_catchup`` markers (``--no-write``:
print only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import uvloop

from bench.procs import CLIENT_CORE, Registry, redis_flushall, start_redis
from tidings.brokers.redis import RedisBroker
from tidings.destinations import route
from tidings.hub import LocalSubscription
from tidings.inbox.base import InboxLimits
from tidings.inbox.redis import RedisInbox
from tidings.message import Message
from tidings.node import Node
from tidings.wsframe import OP_TEXT

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- micro_catchup:begin -->", "<!-- micro_catchup:end -->"
PASSES = 5


@dataclass(eq=False)
class Counting:
    """The hub's view of a session that only counts the frames it is sent."""

    id: str
    version: str = "1.2"
    frames: int = 0

    def send_frame(self, frame: bytes, opcode: int = OP_TEXT, /) -> bool:
        self.frames += 1
        return True

    def next_message_id(self) -> str:
        return f"{self.id}-{self.frames}"

    def expect_ack(self, message_id: str, sub: LocalSubscription, message: Message) -> None:
        raise AssertionError("auto subscriptions expect no ACK")


async def redis_usec(node: Node, command: str) -> float:
    """Microseconds Redis has spent in ``command`` so far (INFO commandstats)."""
    assert isinstance(node.broker, RedisBroker)
    stats = await node.broker.redis.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return float(entry["usec"]) if entry else 0.0


async def publish_each(node: Node, channels: list[str], count: int) -> None:
    for n in range(count):
        await asyncio.gather(
            *(
                node.submit(Message(id="", channel=c, destination="/message", body=b"x" * 100))
                for c in channels
            )
        )
        del n


async def measure(url: str, channels_n: int, missed: int) -> dict[str, float]:
    redis_flushall(url)
    broker = RedisBroker(url)
    node = Node(broker, inbox=RedisInbox(broker, InboxLimits()), catchup_interval_s=0)
    await node.start()
    try:
        channels = [f"u:b{i}" for i in range(channels_n)]
        await publish_each(node, channels, 1)
        sessions = [Counting(f"s{i}") for i in range(channels_n)]
        await asyncio.gather(
            *(
                node.subscribe(
                    LocalSubscription(
                        s, "sub-0", f"/user/b{i}/message", route(f"/user/b{i}/message", f"b{i}")
                    )
                )
                for i, s in enumerate(sessions)
            )
        )
        await node.catchup.check()  # sets the starting points not set yet (last_ids)
        assert len(node.catchup.last) == channels_n

        walls, cpus, redis_cpus = [], [], []
        for _ in range(PASSES):
            r0, c0, w0 = await redis_usec(node, "xread"), time.process_time(), time.perf_counter()
            behind = await node.catchup.check()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            redis_cpus.append((await redis_usec(node, "xread") - r0) / 1e6)
            assert behind == [], behind
        out = {
            "channels": channels_n,
            "check_ms": statistics.median(walls) * 1000,
            "check_node_ms": statistics.median(cpus) * 1000,
            "check_redis_ms": statistics.median(redis_cpus) * 1000,
        }

        node.catchup.on_continuity(False)
        await publish_each(node, channels, missed)
        for held in node.catchup.held.values():
            held.clear()  # never announced, as with the connection down
        before = sum(s.frames for s in sessions)
        r0 = await redis_usec(node, "evalsha")
        c0, w0 = time.process_time(), time.perf_counter()
        node.catchup.on_continuity(True)
        await node.catchup.settle()
        out["catchup_ms"] = (time.perf_counter() - w0) * 1000
        out["catchup_node_ms"] = (time.process_time() - c0) * 1000
        out["catchup_redis_ms"] = (await redis_usec(node, "evalsha") - r0) / 1000
        delivered = sum(s.frames for s in sessions) - before
        assert delivered == channels_n * missed, (delivered, channels_n * missed)
        out["caught_up"] = delivered
        return out
    finally:
        await node.stop()


def table(rows: list[dict[str, float]], missed: int) -> str:
    lines = [
        "| channels | safety-net pass: wall | node CPU (per channel) | Redis CPU (per channel) "
        f"| catch-up of {missed} missed/channel: wall | node CPU | Redis CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["channels"]
        lines.append(
            f"| {n:,.0f} | {r['check_ms']:.1f} ms "
            f"| {r['check_node_ms']:.1f} ms ({r['check_node_ms'] * 1000 / n:.1f} µs) "
            f"| {r['check_redis_ms']:.1f} ms ({r['check_redis_ms'] * 1000 / n:.2f} µs) "
            f"| {r['catchup_ms']:.0f} ms | {r['catchup_node_ms']:.0f} ms "
            f"| {r['catchup_redis_ms']:.0f} ms |"
        )
    return "\n".join(lines)


def write_docs(text: str) -> None:
    doc = DOCS.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc:
        head, _, rest = doc.partition(BEGIN)
        _, _, tail = rest.partition(END)
        doc = head + block + tail
    else:
        doc = doc.rstrip("\n") + "\n\n## Catch-up and safety net (issue 13)\n\n" + block + "\n"
    DOCS.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", default="1000,10000", help="comma-separated counts")
    parser.add_argument("--missed", type=int, default=5, help="messages missed per channel")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit docs/")
    args = parser.parse_args()
    counts = [int(c) for c in args.channels.split(",")]
    os.sched_setaffinity(0, {int(CLIENT_CORE)})
    reg = Registry()
    rows = []
    with tempfile.TemporaryDirectory(prefix="micro-catchup-") as log_dir:
        try:
            _, url = start_redis(reg, Path(log_dir))
            for count in counts:
                rows.append(uvloop.run(measure(url, count, args.missed)))
                print(rows[-1], flush=True)
        finally:
            reg.stop_all()
    text = (
        f"`.venv/bin/python -m bench.micro_catchup` ({time.strftime('%Y-%m-%d')}; node in the "
        "benchmark process on the client core, redis-server on the server core; median of "
        f"{PASSES} passes):\n\n" + table(rows, args.missed)
    )
    print(text)
    if not args.no_write:
        write_docs(text)


if __name__ == "__main__":
    main()
