"""Back-end publisher for Tidings on Redis: tidings.publisher, straight to Redis.

Usage: python tidings_publisher.py <redis-url>

Publishes each body read from stdin (see stdin_feed.py) to its room: ``u:<user>`` with
``Publisher.to_user``, ``t:<topic>`` with ``Publisher.to_topic``, as a back end would.
"""

from __future__ import annotations

import sys

import stdin_feed
import uvloop

from tidings.publisher import Publisher


async def main() -> None:
    async with Publisher.from_url(sys.argv[1]) as pub:
        await pub.to_topic("bench-warm-up", "warm-up")  # connects and loads the script

        async def publish(room: str, body: str) -> str:
            kind, _, name = room.partition(":")
            if kind == "u":
                return await pub.to_user(name, body)
            return await pub.to_topic(name, body)

        await stdin_feed.run(publish)


if __name__ == "__main__":
    uvloop.run(main())  # what a Tidings back end would run on, as the nodes do
