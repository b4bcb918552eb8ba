"""Micro-benchmark of RedisPresence writes: N adds, C callers at a time, then refreshes.

A private redis-server and this process share one core (as Tidings and Redis do in S4).
Each repeat uses a new presence and new users. Per repeat it prints the wall time of the
adds, this process's CPU time for them, Redis' CPU time for them (from /proc), and for
one refresh of every user: its CPU time, Redis' CPU time for it and the longest the loop
waited meanwhile:

    .venv/bin/python -m bench.micro_presence [--adds 5000] [--concurrency 100]

To measure another version of presence, put its src/ first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import uvloop

import tidings.brokers.redis_presence
from bench.procs import CLK_TCK, SERVER_CORE, Registry, start_redis
from tidings.brokers.redis import command_client
from tidings.brokers.redis_presence import RedisPresence


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def longest_wait(done: asyncio.Event) -> float:
    """The longest gap between two turns of this task until ``done``: the loop's stall."""
    longest, last = 0.0, time.perf_counter()
    while not done.is_set():
        await asyncio.sleep(0)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    return longest


async def one_run(url: str, redis_pid: int, run: int, args: argparse.Namespace) -> list[float]:
    client = command_client(url)
    presence = RedisPresence(client, f"bench{run}")
    await presence.add("warm", "up")  # connects, loads the script
    users = iter(f"r{run}-{i}" for i in range(args.adds))

    async def caller() -> None:
        for user in users:  # the callers share one iterator: each user is taken once
            await presence.add(user, "s")

    redis0, cpu0, start = cpu_s(redis_pid), time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(args.concurrency)))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    redis = cpu_s(redis_pid) - redis0

    redis0, cpu0 = cpu_s(redis_pid), time.process_time()
    await presence.refresh() if hasattr(presence, "refresh") else await _old_refresh(presence)
    refresh_cpu = time.process_time() - cpu0
    refresh_redis = cpu_s(redis_pid) - redis0
    done = asyncio.Event()
    watcher = asyncio.ensure_future(longest_wait(done))
    await asyncio.sleep(0)
    await presence.refresh() if hasattr(presence, "refresh") else await _old_refresh(presence)
    done.set()
    stall = await watcher
    await presence.close()
    await client.aclose()
    return [wall, cpu, redis, refresh_cpu, stall, refresh_redis]


async def _old_refresh(presence: RedisPresence) -> None:
    """The refresh of versions before RedisPresence.refresh() (2026-11-27)."""
    write = presence._write_chunks  # type: ignore[attr-defined]
    await write([(u, set(s)) for u, s in presence.by_user.items()])


async def main_async(args: argparse.Namespace, url: str, redis_pid: int) -> None:
    print(f"presence: {tidings.brokers.redis_presence.__file__}")
    rows = []
    for run in range(args.repeat):
        row = await one_run(url, redis_pid, run, args)
        rows.append(row)
        wall, cpu, redis, refresh_cpu, stall, refresh_redis = row
        print(
            f"run {run}: adds {wall * 1000:.1f} ms wall, {cpu * 1e6 / args.adds:.1f} µs CPU "
            f"and {redis * 1e6 / args.adds:.1f} µs Redis CPU per add; refresh of "
            f"{args.adds} users {refresh_cpu * 1000:.1f} ms CPU, Redis "
            f"{refresh_redis * 1e6 / args.adds:.1f} µs per user, longest stall "
            f"{stall * 1000:.2f} ms",
            flush=True,
        )
    best = [min(column) for column in zip(*rows, strict=True)]
    print(
        f"{args.adds} adds, {args.concurrency} at a time, min of {args.repeat}: "
        f"{best[0] * 1000:.1f} ms wall, {best[1] * 1e6 / args.adds:.1f} µs CPU per add, "
        f"refresh {best[3] * 1000:.1f} ms CPU ({best[5] * 1e6 / args.adds:.1f} µs Redis CPU "
        f"per user), stall {best[4] * 1000:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adds", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(SERVER_CORE)})
    reg = Registry()
    try:
        proc, url = start_redis(reg, Path(tempfile.mkdtemp(prefix="micro-presence-")))
        uvloop.run(main_async(args, url, proc.pid))
    finally:
        reg.stop_all()


if __name__ == "__main__":
    main()
