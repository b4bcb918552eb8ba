"""Peer: python-socketio's AsyncServer on aiohttp (uvloop) with AsyncRedisManager.

Usage: python socketio_py.py <port> <redis-url>

Clients join a room with an acknowledged "sub" event; back ends publish with the write-only
AsyncRedisManager (bench/peers/pysio_publisher.py), which reaches every node through Redis.
"""

from __future__ import annotations

import sys

import socketio
import uvloop
from aiohttp import web


def main() -> None:
    port = int(sys.argv[1])
    redis_url = sys.argv[2]
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=socketio.AsyncRedisManager(redis_url),
        transports=["websocket"],
        cors_allowed_origins="*",
    )

    @sio.on("sub")
    async def subscribe(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    app = web.Application()
    sio.attach(app)

    async def ready(_app: web.Application) -> None:
        print("READY", flush=True)

    app.on_startup.append(ready)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
