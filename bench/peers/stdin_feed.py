"""The loop of the Python publisher helpers (pysio_publisher.py, tidings_publisher.py).

bench/loadgen.mjs starts a helper on the client core and writes ``<room>\\t<body>`` lines
to its stdin at the scenario's rate (the body carries its scheduled send time); the
helper publishes each through its system's back-end library, at most MAX_IN_FLIGHT at a
time. It prints READY once connected, then ``{"ok": N, "errors": M}`` about every 100 ms.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable

MAX_IN_FLIGHT = 64

Publish = Callable[[str, str], Awaitable[object]]


async def run(publish: Publish) -> None:
    """Print READY, publish every line of stdin with ``publish(room, body)``, report counts."""
    counts = {"ok": 0, "errors": 0}
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(room: str, body: str) -> None:
        try:
            await publish(room, body)
            counts["ok"] += 1
        except Exception:
            counts["errors"] += 1
        finally:
            slots.release()

    async def report() -> None:
        while True:
            await asyncio.sleep(0.1)
            print(json.dumps(counts), flush=True)

    reporter = asyncio.create_task(report())
    tasks: set[asyncio.Task[None]] = set()
    while line := await reader.readline():
        room, _, body = line.decode().rstrip("\n").partition("\t")
        await slots.acquire()
        task = asyncio.create_task(one(room, body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    reporter.cancel()
    print(json.dumps(counts), flush=True)
