"""Back-end publisher for the python-socketio peer: its write-only AsyncRedisManager.

Usage: python pysio_publisher.py <redis-url>

Emits event "m" with each body read from stdin to its room (see stdin_feed.py).
"""

from __future__ import annotations

import asyncio
import sys

import socketio
import stdin_feed


async def main() -> None:
    manager = socketio.AsyncRedisManager(sys.argv[1], write_only=True)
    manager.initialize()
    await manager.emit("m", "warm-up", room="bench-nobody")
    await stdin_feed.run(lambda room, body: manager.emit("m", body, room=room))


if __name__ == "__main__":
    asyncio.run(main())
