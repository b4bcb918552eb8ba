"""Back-end publisher for the python-socketio peer: its write-only AsyncRedisManager.

Usage: python pysio_publisher.py <redis-url>

Reads ``<room>\\t<body>`` lines on stdin and emits event "m" with the body to the room. Prints
READY once connected, then ``{"ok": N, "errors": M}`` about every 100 ms.
"""

from __future__ import annotations

import asyncio
import json
import sys

import socketio

MAX_IN_FLIGHT = 64


async def main() -> None:
    manager = socketio.AsyncRedisManager(sys.argv[1], write_only=True)
    manager.initialize()
    counts = {"ok": 0, "errors": 0}
    await manager.emit("m", "warm-up", room="bench-nobody")
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def emit(room: str, body: str) -> None:
        try:
            await manager.emit("m", body, room=room)
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
        task = asyncio.create_task(emit(room, body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    reporter.cancel()
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
