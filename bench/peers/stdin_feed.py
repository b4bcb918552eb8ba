"""The loop of the Python publisher helpers (pysio_publisher.py, tidings_publisher.py).

bench/loadgen.mjs starts a helper on the client core. It prints READY once connected,
then ``{"ok": N, "errors": M}`` about every 100 ms. Its stdin carries two kinds of line:

* ``<room>\\t<body>``: publish ``body`` to ``room`` now (saturation, where the load
  generator decides when the next message may go);
* ``!rate <json>``: publish a fixed-rate schedule itself, as a back end would: message
  *i* is due at ``t0 + i / rate`` (µs on CLOCK_MONOTONIC, the load generator's clock),
  its body carries that time, and its user comes from the load generator's generator,
  so both know which message went where. No line per message crosses the pipe: a
  Node back end's emitter (socket.io's) publishes from its own process too. The helper
  prints ``{"rate_done": true, ...}`` once every message of the schedule has started.

At most MAX_IN_FLIGHT publishes are in flight; a schedule that falls behind shows as
latency, since bodies carry the scheduled time, not the send time.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

MAX_IN_FLIGHT = 64
BODY_LEN = 100  # as loadgen.mjs

Publish = Callable[[str, str], Awaitable[object]]


def make_body(sched_us: float, phase: int, seq: int) -> str:
    """The load generator's ``makeBody``: ``~T<µs>~P<phase>~S<seq>~xxx…``, 100 bytes."""
    head = f"~T{math.floor(sched_us):016d}~P{phase:02d}~S{seq:010d}~"
    return head + "x" * (BODY_LEN - len(head))


def rooms(spec: dict[str, Any]) -> list[str]:
    """The room of each message of a schedule, drawn as loadgen.mjs's ``nextUser`` does."""
    total = spec["total"]
    if spec["target"] != "user":
        return [spec["topicRoom"]] * total
    users, offset, rng, out = spec["users"], spec.get("userOffset", 0), 12345, []
    template = spec["userRoom"]
    for _ in range(total):
        rng = (rng * 1103515245 + 12345) & 0xFFFFFFFF
        out.append(template.replace("{u}", str(offset + rng % users)))
    return out


def now_us() -> float:
    return time.monotonic_ns() / 1000  # CLOCK_MONOTONIC, as Node's process.hrtime()


async def run(publish: Publish) -> None:
    """Print READY, serve stdin's lines (see the module docstring), report counts."""
    counts: dict[str, Any] = {"ok": 0, "errors": 0}
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()

    async def one(room: str, body: str) -> None:
        try:
            await publish(room, body)
            counts["ok"] += 1
        except Exception:
            counts["errors"] += 1
        finally:
            slots.release()

    async def start(room: str, body: str) -> None:
        await slots.acquire()
        task = asyncio.create_task(one(room, body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def schedule(spec: dict[str, Any]) -> None:
        rate, t0, phase = spec["rate"], spec["t0"], spec["phase"]
        targets = rooms(spec)
        total, i = len(targets), 0
        while i < total:
            due = min(total, math.floor((now_us() - t0) * rate / 1e6) + 1)
            while i < due:
                await start(targets[i], make_body(t0 + i * 1e6 / rate, phase, i))
                i += 1
            if i < total:
                await asyncio.sleep(0.001)
        print(json.dumps({**counts, "rate_done": True, "started": total}), flush=True)

    async def report() -> None:
        while True:
            await asyncio.sleep(0.1)
            print(json.dumps(counts), flush=True)

    reporter = asyncio.create_task(report())
    while line := await reader.readline():
        text = line.decode().rstrip("\n")
        if text.startswith("!rate "):
            await schedule(json.loads(text[len("!rate ") :]))
            continue
        room, _, body = text.partition("\t")
        await start(room, body)
    if tasks:
        await asyncio.wait(tasks)
    reporter.cancel()
    print(json.dumps(counts), flush=True)
