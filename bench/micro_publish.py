"""Micro-benchmark of the publish path: client CPU per inbox publish, private redis-server.

    .venv/bin/python -m bench.micro_publish http [--count 3000] [--in-flight 8] [--batch N]
    .venv/bin/python -m bench.micro_publish http --callgrind [--count 300] [--batch N]
    .venv/bin/python -m bench.micro_publish deliver [--via http|direct] [--callgrind]
    .venv/bin/python -m bench.micro_publish direct [--count 20000] [--in-flight 64]

``http`` starts one node (``tidings serve --broker``) and POSTs to
``/api/v1/users/u<n % 1000>/messages``: the node's CPU per request, from /proc. With
``--batch N`` it POSTs ``/api/v1/messages`` with N such messages a request instead (the
count is of messages): the node's CPU per message.
``direct`` runs ``tidings.publisher`` on uvloop in this process, as a back end would:
this process's CPU per ``to_user``. Both warm up first (connections, script load). To
measure another tree's code, put its ``src`` first: ``PYTHONPATH=/tmp/old/src ...``.

``deliver`` opens ``--sessions`` STOMP sessions on the node (user ``u<i>`` subscribed to
``/user/u<i>/message``) and publishes one message at a time to a random one of them,
awaiting its MESSAGE frame before the next: S2's work for one message on one node, the
request (``--via http``) and the delivery, or the delivery alone (``--via direct``:
``tidings.publisher`` straight to Redis). The node's cost per message.

``--callgrind`` runs the node under valgrind's callgrind and counts the instructions it
executes (user space) for the timed requests, sent one at a time: the same within ~1% from
run to run whatever else the machine does, where CPU times here move by 20%.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop

from bench.procs import CLK_TCK, Proc, cpu_ticks, free_port, wait_http_ok, wait_port
from tidings.publisher import Publisher

WARMUP = 1000  # every user u0..u999 published to once: the steady state of S2
BODY = "x" * 100


async def bounded(count: int, in_flight: int, one: Callable[[int], Awaitable[object]]) -> None:
    """``one(n)`` for n in range(count), by ``in_flight`` workers."""
    numbers = iter(range(count))

    async def worker() -> None:
        for n in numbers:
            await one(n)

    await asyncio.gather(*(worker() for _ in range(in_flight)))


async def paced(count: int, rate: float, one: Callable[[int], Awaitable[object]]) -> None:
    """``one(n)`` for n in range(count), started at ``rate`` a second on a 1 ms tick."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Future[object]] = set()
    start, n = loop.time(), 0
    while n < count:
        due = min(count, int((loop.time() - start) * rate) + 1)
        for k in range(n, due):
            task = asyncio.ensure_future(one(k))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        n = due
        await asyncio.sleep(0.001)
    await asyncio.gather(*tasks)


class NodeCost:
    """The node's CPU time (``cpu_ticks``), or with ``callgrind`` its instruction count."""

    def __init__(self, node: Proc, callgrind: Path | None) -> None:
        self._node, self._callgrind = node, callgrind

    def start(self) -> None:
        self._ticks, self._start = cpu_ticks(self._node.pid), time.perf_counter()
        if self._callgrind is not None:
            _callgrind_control("--instr=on", self._node.pid)

    def stop(self, count: int, unit: str) -> str:
        """Rate and cost per ``unit`` of ``count`` since ``start``."""
        elapsed = time.perf_counter() - self._start
        if self._callgrind is None:
            used = (cpu_ticks(self._node.pid) - self._ticks) / CLK_TCK
            return f"{count / elapsed:.0f} {unit}/s; node CPU {1e6 * used / count:.1f} µs/{unit}"
        _callgrind_control("--instr=off", self._node.pid)
        _callgrind_control("--dump", self._node.pid)
        totals = [
            int(line.split()[1])
            for dump in self._callgrind.glob("callgrind.out.*")
            for line in dump.read_text().splitlines()
            if line.startswith("totals:")
        ]
        return f"node {sum(totals) / count / 1000:.1f}k instructions/{unit} (callgrind)"


def _callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


async def http(meter: NodeCost, port: int, count: int, in_flight: int, rate: float | None) -> str:
    async with aiohttp.ClientSession() as session:

        async def one(n: int) -> None:
            path = f"/api/v1/users/u{n % 1000}/messages"
            async with session.post(f"http://127.0.0.1:{port}{path}", json={"body": BODY}) as r:
                assert r.status == 202, await r.text()

        await bounded(WARMUP, in_flight, one)
        meter.start()
        await (bounded(count, in_flight, one) if rate is None else paced(count, rate, one))
        return "http: " + meter.stop(count, "request")


async def http_batch(
    meter: NodeCost, port: int, count: int, in_flight: int, size: int, *, rate: float | None
) -> str:
    """``count`` messages, ``size`` a request, to ``/api/v1/messages``."""
    url = f"http://127.0.0.1:{port}/api/v1/messages"
    async with aiohttp.ClientSession() as session:

        async def one(n: int) -> None:
            items = [{"user": f"u{(n * size + i) % 1000}", "body": BODY} for i in range(size)]
            async with session.post(url, json={"messages": items}) as r:
                assert r.status == 202, await r.text()

        requests = max(count // size, 1)
        await bounded(max(WARMUP // size, 10), in_flight, one)
        meter.start()
        await (bounded(requests, in_flight, one) if rate is None else paced(requests, rate, one))
        return f"http batch {size}: " + meter.stop(requests * size, "message")


async def deliver(
    meter: NodeCost, port: int, url: str, count: int, *, sessions: int, via: str
) -> str:
    """One message at a time to a random subscribed session, awaited at its session."""
    async with (
        aiohttp.ClientSession() as http,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as ws_client,
        Publisher.from_url(url) as pub,
    ):
        sockets = [await _subscribed(ws_client, port, f"u{i}") for i in range(sessions)]
        pick = random.Random(7).randrange

        async def one(n: int) -> None:
            user = pick(sessions)
            if via == "http":
                path = f"http://127.0.0.1:{port}/api/v1/users/u{user}/messages"
                async with http.post(path, json={"body": BODY}) as r:
                    assert r.status == 202, await r.text()
            else:
                await pub.to_user(f"u{user}", BODY)
            frame = (await sockets[user].receive(timeout=30)).data
            assert isinstance(frame, str) and frame.startswith("MESSAGE\n"), frame

        await bounded(WARMUP, 1, one)
        meter.start()
        await bounded(count, 1, one)
        result = meter.stop(count, "message")
        for ws in sockets:
            await ws.close()
    return f"deliver via {via}, {sessions} sessions: {result}"


async def _subscribed(
    client: aiohttp.ClientSession, port: int, user: str
) -> aiohttp.ClientWebSocketResponse:
    """A STOMP 1.2 session of ``user`` subscribed to its messages."""
    ws = await client.ws_connect(f"ws://127.0.0.1:{port}/stomp", protocols=["v12.stomp"])
    await ws.send_str("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
    await ws.receive(timeout=30)  # CONNECTED
    sub = f"SUBSCRIBE\nid:0\ndestination:/user/{user}/message\nreceipt:r\n\n\0"
    await ws.send_str(sub)
    await ws.receive(timeout=30)  # RECEIPT
    return ws


async def direct(url: str, count: int, in_flight: int) -> str:
    async with Publisher.from_url(url) as pub:

        async def one(n: int) -> None:
            await pub.to_user(f"u{n % 1000}", BODY)

        await bounded(WARMUP, in_flight, one)
        cpu, start = time.process_time(), time.perf_counter()
        await bounded(count, in_flight, one)
        elapsed = time.perf_counter() - start
        used = time.process_time() - cpu
    return f"direct: {count / elapsed:.0f} publishes/s; CPU {1e6 * used / count:.0f} µs/publish"


def start(name: str, argv: list[str]) -> Proc:
    popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return Proc(name, popen, popen.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["http", "direct", "deliver"])
    parser.add_argument("--count", type=int)
    parser.add_argument("--in-flight", type=int)
    parser.add_argument("--batch", type=int, help="http: N messages a request, batch route")
    parser.add_argument(
        "--rate",
        type=float,
        help="http: start requests (not messages) at this rate (1 ms tick), not saturated",
    )
    parser.add_argument("--sessions", type=int, default=100, help="deliver: subscribed sessions")
    parser.add_argument(
        "--via", choices=["http", "direct"], default="http", help="deliver: how to publish"
    )
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="http: count the node's instructions under callgrind (requests one at a time)",
    )
    args = parser.parse_args()
    count = args.count or (300 if args.callgrind else 3000 if args.mode == "http" else 20_000)
    in_flight = 1 if args.callgrind else args.in_flight or (8 if args.mode == "http" else 64)
    redis_port, port = free_port(), free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    procs = [
        start(
            "redis",
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
        )
    ]
    try:
        wait_port(redis_port, procs[0])
        if args.mode == "direct":
            print(uvloop.run(direct(url, count, in_flight)))
            return
        serve = [sys.executable, "-m", "tidings", "serve", "--broker", url, "--port", str(port)]
        callgrind = Path(tempfile.mkdtemp()) if args.callgrind else None
        if callgrind is not None:
            out = f"--callgrind-out-file={callgrind}/callgrind.out.%p"
            serve = ["valgrind", "-q", "--tool=callgrind", "--instr-atstart=no", out, *serve]
        procs.append(start("node", [*serve, "--log-level", "warning"]))
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", procs[1], within=300)
        meter = NodeCost(procs[1], callgrind)
        if args.mode == "deliver":
            print(
                uvloop.run(deliver(meter, port, url, count, sessions=args.sessions, via=args.via))
            )
        elif args.batch:
            print(uvloop.run(http_batch(meter, port, count, in_flight, args.batch, rate=args.rate)))
        else:
            print(uvloop.run(http(meter, port, count, in_flight, args.rate)))
    finally:
        for proc in reversed(procs):
            proc.stop()


if __name__ == "__main__":
    main()
