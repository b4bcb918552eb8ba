"""Micro-benchmark of the PostgreSQL inbox (issue 20): publishes per second, and the
driver it is built on, asyncpg against psycopg 3 (docs/decisions.md).

    python -m bench.micro_postgres [--messages 5000] [--concurrency 1,50] [--only channels]

A private PostgreSQL cluster (tests/postgres_fixture.py: fsync off, as the tests run
it), a fresh database for each measurement, this process on uvloop:

* **inbox**: ``PostgresInbox.publish`` of ``--messages`` messages, with ``concurrency``
  publishers at a time spread over 100 users (1: one after the other), on the memory
  broker (no advisory lock) and as on a shared broker (the advisory lock per channel
  held until the announcement is out; the announcement itself goes to a memory broker).
* **channels** (S2's shape): ``--messages`` publishes, each to a user of its own (a
  channel with no history), ``concurrency`` at a time, with the cross-node advisory lock
  (as on ``--broker amqp://``); messages/s, and each publish's latency (its call to its
  return) p50 and p99.
* **driver**: the same ``tidings.store`` call (no advisory lock) through an asyncpg pool
  and through a psycopg ``AsyncConnectionPool`` (psycopg 3 with its C speedups, if
  installed: it is not a dependency of Tidings), so only the driver differs.

* **outbox**: a back end's connection commits ``--messages`` transactions, each calling
  ``tidings.publish_to_user`` once, while one node drains (woken by NOTIFY): messages/s
  from the first commit to the last delivery, and commit (the back end's COMMIT returned)
  to delivery (the node's broker handed the announcement over) p50 and p99; then 500
  transactions at 100 a second, where the latency is the drain's, not a queue's.

Prints calls per second and this process' CPU per call; the database's CPU is the same
work in both drivers' runs.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import uvloop
from tests.postgres_fixture import PgCluster

from tidings.brokers.memory import MemoryBroker
from tidings.inbox.base import InboxLimits, split_announcement
from tidings.inbox.postgresql import PostgresInbox
from tidings.message import Message

USERS = 100
STORE = "SELECT * FROM tidings.store($1, $2, $3, $4, $5, $6, $7, $8, $9)"


async def timed(calls: int, concurrency: int, call: Callable[[int], Awaitable[object]]) -> str:
    """Run ``call(i)`` for i < calls, ``concurrency`` at a time; calls/s and CPU per call."""
    queue = iter(range(calls))

    async def worker() -> None:
        for i in queue:
            await call(i)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return f"{calls / wall:8.0f}/s  client CPU {cpu / calls * 1e6:6.0f} µs/call"


def message(i: int) -> Message:
    return Message("", f"u:{i % USERS}", "/message", b'{"n": %d, "text": "hello"}' % i)


async def bench_channels(cluster: PgCluster, calls: int, concurrency: int) -> str:
    """Every publish to a channel of its own, with the advisory lock; latency per call."""
    database = await cluster.database()
    broker = MemoryBroker()
    await broker.start(lambda channel, payload: None)
    inbox = PostgresInbox(database.url, broker, InboxLimits(), sweep_interval_s=0)
    inbox._cross_node = True  # as on a shared broker
    await inbox.start()
    latencies: list[float] = []

    async def call(i: int) -> None:
        start = time.perf_counter()
        await inbox.publish(Message("", f"u:s2-{i}", "/message", b'{"n": %d}' % i))
        latencies.append(time.perf_counter() - start)

    try:
        result = await timed(calls, concurrency, call)
    finally:
        await inbox.close()
        await database.drop()
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    return f"{result}  p50 {p50 * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms"


async def bench_inbox(cluster: PgCluster, calls: int, concurrency: int, shared: bool) -> str:
    database = await cluster.database()
    broker = MemoryBroker()
    await broker.start(lambda channel, payload: None)
    inbox = PostgresInbox(database.url, broker, InboxLimits(), sweep_interval_s=0)
    inbox._cross_node = shared  # the advisory lock a shared broker needs
    await inbox.start()
    try:
        return await timed(calls, concurrency, lambda i: inbox.publish(message(i)))
    finally:
        await inbox.close()
        await database.drop()


def store_args(i: int) -> tuple[object, ...]:
    m = message(i)
    return (m.channel, m.destination, m.encode(), 1000, 604_800_000, 604_801_000, None, 1, None)


async def bench_asyncpg(cluster: PgCluster, calls: int, concurrency: int) -> str:
    database = await cluster.database()
    pool = await asyncpg.create_pool(database.url, min_size=concurrency, max_size=concurrency)
    try:
        return await timed(calls, concurrency, lambda i: pool.fetchrow(STORE, *store_args(i)))
    finally:
        await pool.close()
        await database.drop()


async def bench_psycopg(cluster: PgCluster, calls: int, concurrency: int) -> str:
    try:
        import psycopg_pool  # noqa: PLC0415 - not a dependency of Tidings
    except ImportError:
        return "psycopg_pool not installed (pip install 'psycopg[binary]' psycopg-pool)"
    database = await cluster.database()
    sql = "SELECT * FROM tidings.store(" + ", ".join(["%s"] * 9) + ")"
    pool = psycopg_pool.AsyncConnectionPool(
        database.url, min_size=concurrency, max_size=concurrency, open=False
    )
    await pool.open(wait=True)

    async def call(i: int) -> object:
        async with pool.connection() as conn:
            cursor = await conn.execute(sql, store_args(i), prepare=True)
            return await cursor.fetchone()

    try:
        return await timed(calls, concurrency, call)
    finally:
        await pool.close()
        await database.drop()


async def bench_outbox(cluster: PgCluster, calls: int, rate: float = 0.0) -> str:
    """As fast as one back-end connection commits, or ``rate`` transactions a second."""
    database = await cluster.database()
    delivered: dict[int, float] = {}
    done = asyncio.Event()

    def heard(channel: str, payload: bytes) -> None:
        number = int(Message.decode(split_announcement(payload)[1]).body)
        delivered[number] = time.perf_counter()
        if len(delivered) == calls:
            done.set()

    broker = MemoryBroker()
    await broker.start(heard)
    await broker.subscribe("u:7")
    inbox = PostgresInbox(database.url, broker, InboxLimits(), sweep_interval_s=0)
    await inbox.start()
    await asyncio.wait_for(inbox.outbox.listening.wait(), 10)
    app = await asyncpg.connect(database.url)
    committed: dict[int, float] = {}
    try:
        start = time.perf_counter()
        for n in range(calls):
            if rate:
                await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
            async with app.transaction():
                await app.execute("SELECT tidings.publish_to_user('7', $1::text::jsonb)", str(n))
            committed[n] = time.perf_counter()
        await asyncio.wait_for(done.wait(), 60)
        wall = max(delivered.values()) - start
        lags = sorted(delivered[n] - committed[n] for n in range(calls))
    finally:
        await app.close()
        await inbox.close()
        await database.drop()
    p50, p99 = lags[len(lags) // 2], lags[int(len(lags) * 0.99)]
    return (
        f"{calls / wall:6.0f} messages/s; commit to delivery "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    )


async def main(calls: int, concurrencies: list[int], only: str | None) -> None:
    cluster = PgCluster()
    cluster.start()
    try:
        if only == "channels":
            for concurrency in concurrencies:
                result = await bench_channels(cluster, calls, concurrency)
                print(f"channels, {concurrency:3d} at a time: {result}")
            return
        for concurrency in concurrencies:
            print(f"-- {calls} publishes, {concurrency} at a time, over {USERS} users")
            for shared in (False, True):
                label = "advisory lock" if shared else "memory broker"
                result = await bench_inbox(cluster, calls, concurrency, shared)
                print(f"inbox ({label}):   {result}")
            print(f"store via asyncpg:  {await bench_asyncpg(cluster, calls, concurrency)}")
            print(f"store via psycopg:  {await bench_psycopg(cluster, calls, concurrency)}")
            print(f"channels of their own: {await bench_channels(cluster, calls, concurrency)}")
        print(
            f"-- outbox, {calls} transactions of one message: {await bench_outbox(cluster, calls)}"
        )
        print(f"-- outbox, 500 transactions at 100/s: {await bench_outbox(cluster, 500, 100)}")
    finally:
        cluster.remove()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", default="1,50")
    parser.add_argument(
        "--only", choices=["channels"], help="only the many-channels measurement (S2's shape)"
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    uvloop.run(main(args.messages, levels, args.only))
