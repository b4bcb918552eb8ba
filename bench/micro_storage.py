"""Redis memory per stored message and per inbox (docs/capacity.md, issue 18 item 5).

    .venv/bin/python -m bench.micro_storage [--users 10000] [--per-user 10] [--bytes 100]

A private redis-server (7.x, jemalloc, no persistence); ``tidings.publisher`` stores, for
each of ``--users`` users, first one message (every inbox exists), then ``--per-user`` - 1
more, each a JSON string of ``--bytes`` characters, 64 publishes in flight. ``INFO memory``
``used_memory`` before, after the first pass and after the rest: the first pass's growth per
user is an inbox with one message, the rest's growth per message is what one more message
costs. Then the same again with an idempotency key on every publish (a key per message,
kept a day by default). Default limits otherwise (1,000 messages per inbox, 7 days):
nothing is trimmed here. Last, presence: one connected session for each of ``--users``
users (``RedisPresence.add``, as a node does at CONNECT; session ids as the server makes
them), ``used_memory`` growth per session.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from pathlib import Path

import redis
import redis.asyncio
import uvloop

from bench.procs import Registry, redis_flushall, start_redis
from tidings.brokers.redis_presence import RedisPresence
from tidings.publisher import Publisher

IN_FLIGHT = 64


def used_memory(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        value: int = client.info("memory")["used_memory"]
        return value


async def store(url: str, users: int, rounds: range, body: str, idempotent: bool) -> None:
    """For each round, one message to each of ``users`` users."""
    jobs = iter([(r, u) for r in rounds for u in range(users)])
    async with Publisher.from_url(url) as publisher:

        async def worker() -> None:
            for r, u in jobs:
                key = f"k{r}-{u}" if idempotent else None
                await publisher.to_user(f"u{u}", body, idempotency_key=key)

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


def measure(url: str, users: int, per_user: int, size: int, idempotent: bool) -> dict[str, float]:
    redis_flushall(url)
    body = "x" * size
    uvloop.run(store(url, 1, range(1), body, idempotent))  # script loaded, connections made
    redis_flushall(url)
    base = used_memory(url)
    uvloop.run(store(url, users, range(1), body, idempotent))
    first = used_memory(url)
    uvloop.run(store(url, users, range(1, per_user), body, idempotent))
    last = used_memory(url)
    with redis.Redis.from_url(url) as client:
        stored = sum(client.xlen(f"tidings:inbox:u:u{u}") for u in range(0, users, 97))
    if stored != per_user * len(range(0, users, 97)):
        raise SystemExit(f"expected {per_user} messages in every sampled inbox, got {stored}")
    return {
        "inbox_with_one_message": (first - base) / users,
        "per_further_message": (last - first) / (users * (per_user - 1)),
        "per_message_overall": (last - base) / (users * per_user),
        "total_mb": (last - base) / 2**20,
    }


async def connect(url: str, users: int) -> None:
    """One presence entry per user, as node ``bench-1`` writes them at CONNECT."""
    client = redis.asyncio.Redis.from_url(url)
    presence = RedisPresence(client, "bench-1")
    try:
        await asyncio.gather(*(presence.add(f"u{u}", secrets.token_hex(8)) for u in range(users)))
    finally:
        presence.by_user.clear()  # close() would remove them: keep them to be measured
        await presence.close()
        await client.aclose()


def presence_bytes(url: str, users: int) -> float:
    redis_flushall(url)
    base = used_memory(url)
    uvloop.run(connect(url, users))
    with redis.Redis.from_url(url) as client:
        if client.zcard("tidings:presence:u0") != 1:
            raise SystemExit("no presence entry for u0")
    return (used_memory(url) - base) / users


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--per-user", type=int, default=10)
    parser.add_argument("--bytes", type=int, default=100)
    args = parser.parse_args()
    reg = Registry()
    with tempfile.TemporaryDirectory(prefix="micro-storage-") as log_dir:
        try:
            _, url = start_redis(reg, Path(log_dir))
            print(
                f"`python -m bench.micro_storage --users {args.users} --per-user "
                f"{args.per_user} --bytes {args.bytes}` ({time.strftime('%Y-%m-%d')}), "
                "bytes of Redis used_memory:"
            )
            print(
                "| idempotency key | inbox with 1 message | each further message | "
                "per message overall | total |"
            )
            print("|---|---|---|---|---|")
            for idempotent in (False, True):
                r = measure(url, args.users, args.per_user, args.bytes, idempotent)
                print(
                    f"| {'yes' if idempotent else 'no'} | {r['inbox_with_one_message']:.0f} B "
                    f"| {r['per_further_message']:.0f} B | {r['per_message_overall']:.0f} B "
                    f"| {r['total_mb']:.1f} MiB |",
                    flush=True,
                )
            per_session = presence_bytes(url, args.users)
            print(f"\npresence: {per_session:.0f} B of used_memory per connected session")
        finally:
            reg.stop_all()


if __name__ == "__main__":
    main()
