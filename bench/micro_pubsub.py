"""Micro-benchmark of the Redis broker's read path: receiver CPU per message, from /proc.

    .venv/bin/python -m bench.micro_pubsub paced [--rate 5000] [--seconds 6]
    .venv/bin/python -m bench.micro_pubsub burst [--count 100000] [--batch 100]

A private redis-server on a free port, then a receiver process (``RedisBroker`` on uvloop,
subscribed to 1,000 channels ``u:0``..``u:999``, its handler only counts) and this process
as the publisher, with a raw socket (no client library): ``paced`` sends one PUBLISH at a
time on a fixed schedule (message *i* due at ``t0 + i / rate``) to a random channel, so
each message reaches the receiver alone, as in S2; ``burst`` sends pipelines of
``--batch`` PUBLISHes as fast as Redis answers, so messages arrive many per read, as in
S1's saturation. Redis and the receiver run on the server core, the publisher on the
client core (bench/procs.py). After a warm-up of 2,000 messages, the receiver's CPU time
(``/proc/<pid>/schedstat``, ns; utime + stime in ticks as a check) over the measured
messages, divided by their number. The receiver's probe (one PUBLISH a second) is in the
figure, on both sides alike.

To measure another tree's broker, put its ``src`` first: ``PYTHONPATH=/tmp/old/src ...``
(the receiver inherits it and prints which ``tidings`` it runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

import tidings
from bench.procs import CLIENT_CORE, CLK_TCK, SERVER_CORE, Registry, cpu_ticks, start_redis
from tidings.brokers.redis import RedisBroker

CHANNELS = 1000
WARMUP = 2000
PAYLOAD = b"m" * 200  # about an inbox announcement of a short notification


# -- receiver (a process of its own) ----------------------------------------------------
async def receive(url: str, marks: list[int]) -> None:
    """Start a broker on ``url``; print READY, then MARK <n> as the count reaches each mark."""
    reached: asyncio.Queue[int] = asyncio.Queue()
    wanted = set(marks)
    count = 0

    def handler(channel: str, payload: bytes) -> None:
        nonlocal count
        count += 1
        if count in wanted:
            reached.put_nowait(count)

    broker = RedisBroker(url)
    await broker.start(handler)
    await asyncio.gather(*(broker.subscribe(f"u:{n}") for n in range(CHANNELS)))
    print(f"READY {tidings.__file__}", flush=True)
    for _ in marks:
        print(f"MARK {await reached.get()}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await broker.close()


def receiver_main(url: str, marks: list[int]) -> None:
    uvloop.run(receive(url, marks))


# -- publisher (this process) ---------------------------------------------------------
def publish_command(channel: int) -> bytes:
    key = f"tidings:u:{channel}".encode()
    parts = [b"PUBLISH", key, PAYLOAD]
    return b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class Publisher:
    """PUBLISH over a raw socket; every reply is read before the next write."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rng = random.Random(12345)

    def send(self, count: int) -> None:
        """``count`` PUBLISHes to random channels in one write; wait for their replies."""
        data = b"".join(publish_command(self.rng.randrange(CHANNELS)) for _ in range(count))
        self.sock.sendall(data)
        replies = b""
        while replies.count(b"\r\n") < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the publisher's connection")
            replies += chunk
        if replies != b":1\r\n" * count:
            raise RuntimeError(f"not every PUBLISH reached one subscriber: {replies[:80]!r}")

    def paced(self, count: int, rate: float) -> float:
        """One at a time, message i due at t0 + i / rate; return the achieved rate."""
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.send(1)
        return count / (time.perf_counter() - start)

    def burst(self, count: int, batch: int) -> float:
        start = time.perf_counter()
        for sent in range(0, count, batch):
            self.send(min(batch, count - sent))
        return count / (time.perf_counter() - start)


def schedstat_ns(pid: int) -> int:
    """Time ``pid``'s threads ran on a CPU, in ns (proc(5) /proc/pid/schedstat, field 1)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def expect(proc: subprocess.Popen[str], word: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(word):
        raise RuntimeError(f"receiver said {line!r}, expected {word}")
    return line.split(maxsplit=1)[1].strip()


def run(args: argparse.Namespace, url: str, port: int) -> str:
    count = args.count or (int(args.rate * args.seconds) if args.mode == "paced" else 100_000)
    argv = [sys.executable, "-m", "bench.micro_pubsub", "receiver", url, str(WARMUP)]
    argv.append(str(WARMUP + count))
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        where = expect(proc, "READY")
        publisher = Publisher(port)
        publisher.burst(WARMUP, 50)
        expect(proc, "MARK")
        ns, ticks = schedstat_ns(proc.pid), cpu_ticks(proc.pid)
        if args.mode == "paced":
            rate = publisher.paced(count, args.rate)
        else:
            rate = publisher.burst(count, args.batch)
        expect(proc, "MARK")
        used_ns = schedstat_ns(proc.pid) - ns
        used_ticks = cpu_ticks(proc.pid) - ticks
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    per = used_ns / 1000 / count
    per_ticks = 1e6 * used_ticks / CLK_TCK / count
    shape = f"{args.rate:.0f}/s one at a time" if args.mode == "paced" else f"{args.batch}/write"
    return (
        f"{args.mode} ({shape}): {count} messages at {rate:,.0f}/s; receiver CPU "
        f"{per:.1f} µs/message (ticks: {per_ticks:.0f}); tidings from {where}"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "receiver":
        receiver_main(sys.argv[2], [int(mark) for mark in sys.argv[3:]])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["paced", "burst"])
    parser.add_argument("--rate", type=float, default=5000.0, help="paced: messages/s")
    parser.add_argument("--seconds", type=float, default=6.0, help="paced: length")
    parser.add_argument("--count", type=int, help="messages measured (after the warm-up)")
    parser.add_argument("--batch", type=int, default=100, help="burst: PUBLISHes per write")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(CLIENT_CORE)})
    reg = Registry()
    with tempfile.TemporaryDirectory(prefix="micro-pubsub-") as log_dir:
        try:
            _, url = start_redis(reg, Path(log_dir))
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            print(run(args, url, port))
        finally:
            reg.stop_all()


if __name__ == "__main__":
    main()
