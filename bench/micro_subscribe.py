"""Micro-benchmark of RedisBroker.subscribe: N new channels, C callers at a time.

A private redis-server and this process share one core (as Tidings and Redis do in S4),
so the time includes the Redis work each SUBSCRIBE write wakes. Each repeat uses a new
broker and new channel names; the figure is wall time per repeat:

    .venv/bin/python -m bench.micro_subscribe [--subscribes 5000] [--concurrency 100]

To measure another version of the broker, put its src/ first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import uvloop

import tidings.brokers.redis
from bench.procs import SERVER_CORE, Registry, start_redis
from tidings.brokers.redis import RedisBroker


async def one_run(url: str, run: int, subscribes: int, concurrency: int) -> float:
    broker = RedisBroker(url)
    await broker.start(lambda channel, payload: None)
    assert broker.ready
    names = iter(f"u:{run}-{i}" for i in range(subscribes))

    async def caller() -> None:
        for name in names:  # the callers share one iterator: each name is taken once
            await broker.subscribe(name)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await broker.close()
    return elapsed


async def main_async(args: argparse.Namespace, url: str) -> None:
    print(f"broker: {tidings.brokers.redis.__file__}")
    times = []
    for run in range(args.repeat):
        elapsed = await one_run(url, run, args.subscribes, args.concurrency)
        times.append(elapsed)
        print(f"run {run}: {elapsed * 1000:.1f} ms", flush=True)
    print(
        f"{args.subscribes} subscribes, {args.concurrency} at a time: "
        f"min {min(times) * 1000:.1f} ms ({args.subscribes / min(times):,.0f}/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribes", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(SERVER_CORE)})
    reg = Registry()
    try:
        _, url = start_redis(reg, Path(tempfile.mkdtemp(prefix="micro-subscribe-")))
        uvloop.run(main_async(args, url))
    finally:
        reg.stop_all()


if __name__ == "__main__":
    main()
