"""Micro-benchmark of publishing with publisher confirms on RabbitMQ (issue 20).

    .venv/bin/python -m bench.micro_amqp [--count 20000] [--in-flight 1 64] [--aio-pika]

A private RabbitMQ node (bench/procs.py ``RabbitCluster``, no Web-STOMP) on the server
core; this process on the client core (uvloop) publishes 200-byte messages, each awaited
until RabbitMQ's confirm, with N publishes in flight:

* ``broker``: ``AmqpBroker.publish`` (aiormq) to channels the same broker bound, so every
  message also comes back to its consumer (the node's whole path: publish, confirm,
  delivery);
* ``broker, unrouted``: the same to channels no queue bound (publish and confirm only);
* ``aio-pika, unrouted`` (``--aio-pika``, if installed): aio-pika's ``Exchange.publish``
  on a channel with confirms, the same messages: what the wrapper would cost.

Per row: publishes/s, this process's CPU µs per publish, and with 1 in flight the
publish -> confirm latency p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from bench.procs import CLIENT_CORE, RabbitCluster, Registry
from tidings.brokers.amqp import AmqpBroker

PAYLOAD = b"m" * 200
CHANNELS = 100
WARMUP = 2000

Publish = Callable[[str, bytes], Awaitable[object]]


async def measure(
    publish: Publish, prefix: str, count: int, in_flight: int
) -> tuple[float, float, list[float]]:
    """(publishes/s, CPU µs per publish, latencies in ms when one at a time)."""
    latencies: list[float] = []
    sent = 0

    async def worker(n: int) -> None:
        nonlocal sent
        while sent < n:
            sent += 1
            channel = f"{prefix}{sent % CHANNELS}"
            if in_flight == 1:
                start = time.perf_counter()
                await publish(channel, PAYLOAD)
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                await publish(channel, PAYLOAD)

    await asyncio.gather(*(worker(WARMUP) for _ in range(in_flight)))
    sent, latencies = 0, []
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(count) for _ in range(in_flight)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return count / wall, cpu / count * 1e6, latencies


async def bench(url: str, args: argparse.Namespace) -> list[str]:
    rows = []
    received = 0

    def handler(channel: str, payload: bytes) -> None:
        nonlocal received
        received += 1

    broker = AmqpBroker(url)
    await broker.start(handler)
    await asyncio.gather(*(broker.subscribe(f"u:{n}") for n in range(CHANNELS)))
    try:
        for in_flight in args.in_flight:
            for name, prefix in (("broker", "u:"), ("broker, unrouted", "nobody:")):
                rows.append(
                    row(
                        name,
                        in_flight,
                        *await measure(broker.publish, prefix, args.count, in_flight),
                    )
                )
    finally:
        await broker.close()
    if args.aio_pika:
        rows += await bench_aio_pika(url, args)
    return rows


async def bench_aio_pika(url: str, args: argparse.Namespace) -> list[str]:
    try:
        import aio_pika  # noqa: PLC0415 - optional, for this comparison only
    except ImportError:
        return ["aio-pika is not installed: no comparison row"]
    connection = await aio_pika.connect(url.split("?", 1)[0])
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange("tidings", "direct", durable=True)

    async def publish(key: str, payload: bytes) -> object:
        return await exchange.publish(aio_pika.Message(payload, delivery_mode=1), key)

    rows = []
    try:
        for in_flight in args.in_flight:
            result = await measure(publish, "nobody:", args.count, in_flight)
            rows.append(row("aio-pika, unrouted", in_flight, *result))
    finally:
        await connection.close()
    return rows


def row(name: str, in_flight: int, rate: float, cpu_us: float, latencies: list[float]) -> str:
    text = f"| {name} | {in_flight} | {rate:,.0f} | {cpu_us:.0f} |"
    if latencies:
        q = statistics.quantiles(latencies, n=100)
        text += f" {q[49]:.2f} / {q[98]:.2f} |"
    else:
        text += " |"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--aio-pika", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="micro-amqp-"))
    reg = Registry()
    cluster = RabbitCluster(reg, work / "rabbit", work / "logs", web_stomp=False)
    try:
        (work / "logs").mkdir(parents=True)
        (node,) = cluster.start(1)
        os.sched_setaffinity(0, {int(CLIENT_CORE)})
        url = f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/"
        rows = uvloop.run(bench(url, args))
    finally:
        cluster.stop()
        reg.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print("| client | in flight | publishes/s | client CPU µs/publish | p50 / p99 ms |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
