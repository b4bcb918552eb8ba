"""Webhook round trip (issue 16): client SEND -> ``--app-webhook`` -> reply MESSAGE, p50/p99.

    .venv/bin/python -m bench.micro_app_webhook [--rate 1000] [--seconds 10] [--clients 50]
        [--delay-ms 0,20] [--rounds 1] [--node-args "--app-webhook-concurrency 16"]

Starts one node (``tidings serve``, the embedded memory broker, default limits) on the
server core and a real aiohttp webhook (a process of its own on the client core) that
answers every call with ``{"reply": <the SEND's body>}``, at once or after ``--delay-ms``.
``--clients`` STOMP-over-WebSocket sessions (aiohttp clients parsed with the project's
frame parser, in this process on the client core) each CONNECT as user ``u<i>`` and
SUBSCRIBE to ``/user/queue/reply`` and ``/user/queue/errors``; then SENDs to ``/app/echo``
with a ``receipt`` go out open loop, ``--rate`` a second in total (round robin over the
sessions, on a 1 ms tick) for ``--seconds`` after a one-second warm-up. Each SEND's round
trip is from just before its frame is written to the arrival of its reply MESSAGE (matched
by body). Printed: p50/p99/max, the rate achieved, errors (an ERROR frame, a message on
``/user/queue/errors``, a reply or RECEIPT missing 5 s after the last SEND: all must be 0)
and the node's CPU (% of one core, from /proc).

A 20 ms webhook keeps ~20 calls in flight at 1,000/s: under the node's
``--app-webhook-concurrency`` (64) and, per session, ``MAX_APP_CALLS`` (8) at 20/s each,
so the rate must hold and the round trip grow by the 20 ms only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import mkdtemp

import aiohttp
import orjson
import uvloop
from aiohttp import web

from bench.procs import (
    CLIENT_CORE,
    CLK_TCK,
    SERVER_CORE,
    Registry,
    cpu_ticks,
    free_port,
    wait_http_ok,
    wait_port,
)
from tidings.stomp.frames import SERVER_COMMANDS, FrameParser, Limits

WARMUP_S = 1.0
DRAIN_S = 5.0  # how long the last replies may take before they count as missing


def serve_webhook(port: int, delay_s: float) -> None:
    """The back end: ``{"reply": body}`` for every call, after ``delay_s``."""

    async def echo(request: web.Request) -> web.Response:
        call = orjson.loads(await request.read())
        if delay_s:
            await asyncio.sleep(delay_s)
        return web.Response(
            body=orjson.dumps({"reply": call["body"]}), content_type="application/json"
        )

    app = web.Application()
    app.router.add_post("/hook", echo)
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop()
    )


@dataclass
class Tally:
    sent: dict[int, float] = field(default_factory=dict)  # SEND number -> perf_counter
    took: dict[int, float] = field(default_factory=dict)  # SEND number -> round trip (s)
    receipts: int = 0
    errors: list[str] = field(default_factory=list)
    expected: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def check(self) -> None:
        if len(self.took) >= self.expected and self.receipts >= self.expected:
            self.done.set()


class Client:
    """One STOMP session as user ``u<index>``: CONNECT, two SUBSCRIBEs, SENDs, a reader."""

    def __init__(self, http: aiohttp.ClientSession, index: int, tally: Tally) -> None:
        self.http, self.index, self.tally = http, index, tally
        self.parser = FrameParser(Limits(max_frame_bytes=1 << 20), commands=SERVER_COMMANDS)
        self.ready = asyncio.Event()

    async def open(self, url: str) -> None:
        self.ws = await self.http.ws_connect(url, protocols=("v12.stomp",))
        self.reader = asyncio.create_task(self.read())
        await self.ws.send_bytes(
            frame(
                "CONNECT", {"accept-version": "1.2", "login": f"u{self.index}", "heart-beat": "0,0"}
            )
        )
        await self.ws.send_bytes(
            frame("SUBSCRIBE", {"id": "reply", "destination": "/user/queue/reply"})
        )
        await self.ws.send_bytes(
            frame(
                "SUBSCRIBE",
                {"id": "errors", "destination": "/user/queue/errors", "receipt": "subscribed"},
            )
        )
        async with asyncio.timeout(10):
            await self.ready.wait()

    async def send(self, number: int) -> None:
        self.tally.sent[number] = time.perf_counter()
        await self.ws.send_bytes(
            frame(
                "SEND", {"destination": "/app/echo", "receipt": str(number)}, str(number).encode()
            )
        )

    async def read(self) -> None:
        tally = self.tally
        async for msg in self.ws:
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                break
            data = msg.data.encode() if isinstance(msg.data, str) else msg.data
            now = time.perf_counter()
            for item in self.parser.feed(data):
                if item.command == "MESSAGE" and item.get("subscription") == "reply":
                    number = int(item.body)
                    tally.took[number] = now - tally.sent[number]
                elif item.command == "RECEIPT":
                    if item.get("receipt-id") == "subscribed":
                        self.ready.set()
                    else:
                        tally.receipts += 1
                        tally.check()
                elif item.command != "CONNECTED":
                    tally.errors.append(
                        f"u{self.index}: {item.command} {item.headers} {item.body[:200]!r}"
                    )
        if not self.ready.is_set() or self.ws.close_code not in (None, 1000):
            tally.errors.append(f"u{self.index}: closed {self.ws.close_code}")


def frame(command: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = "".join(f"{name}:{value}\n" for name, value in headers.items())
    return f"{command}\n{head}\n".encode() + body + b"\0"


async def drive(port: int, clients: int, rate: float, seconds: float, node_pid: int) -> str:
    tally = Tally()
    async with aiohttp.ClientSession() as http:
        sessions = [Client(http, i, tally) for i in range(clients)]
        await asyncio.gather(*(s.open(f"ws://127.0.0.1:{port}/stomp") for s in sessions))
        loop = asyncio.get_running_loop()
        warmup = int(rate * WARMUP_S)
        total = tally.expected = warmup + int(rate * seconds)
        start, n, ticks, measured_from = loop.time(), 0, 0, time.perf_counter()
        while n < total:
            due = min(total, int((loop.time() - start) * rate) + 1)
            for k in range(n, due):
                await sessions[k % clients].send(k)
            if n < warmup <= due:
                ticks, measured_from = cpu_ticks(node_pid), time.perf_counter()
            n = due
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - measured_from
        node_cpu = (cpu_ticks(node_pid) - ticks) / CLK_TCK / elapsed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                await tally.done.wait()
        for s in sessions:
            await s.ws.close()
            await s.reader
    took = sorted(v for k, v in tally.took.items() if k >= warmup)
    measured = total - warmup
    missing = (total - len(tally.took)) + (total - tally.receipts)
    errors = len(tally.errors) + missing
    for line in tally.errors[:5]:
        print("  error:", line, file=sys.stderr)
    p50 = took[len(took) // 2] if took else float("nan")
    p99 = took[min(len(took) - 1, int(0.99 * len(took)))] if took else float("nan")
    return (
        f"p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, max {max(took, default=0) * 1e3:.1f} ms, "
        f"mean {statistics.fmean(took) * 1e3 if took else 0:.2f} ms; "
        f"{measured / elapsed:.0f} SENDs/s sent, {len(took) / elapsed:.0f} replies/s; "
        f"errors {errors} (missing replies+receipts {missing}); "
        f"node CPU {100 * node_cpu:.0f}% ({1e6 * node_cpu * elapsed / measured:.0f} µs/SEND)"
    )


def run(args: argparse.Namespace, delay_ms: float, log_dir: Path) -> str:
    reg = Registry()
    try:
        hook_port, node_port = free_port(), free_port()
        hook = reg.start(
            "webhook",
            [
                sys.executable,
                "-m",
                "bench.micro_app_webhook",
                "--serve-webhook",
                str(hook_port),
                "--delay-ms",
                str(delay_ms),
            ],
            core=CLIENT_CORE,
            log_dir=log_dir,
        )
        wait_port(hook_port, hook)
        node = reg.start(
            "node",
            [
                *(sys.executable, "-m", "tidings", "serve", "--port", str(node_port)),
                *("--app-webhook", f"http://127.0.0.1:{hook_port}/hook", "--log-level", "warning"),
                *args.node_args.split(),
            ],
            core=SERVER_CORE,
            log_dir=log_dir,
        )
        wait_http_ok(f"http://127.0.0.1:{node_port}/healthz", node, within=60)
        return uvloop.run(drive(node_port, args.clients, args.rate, args.seconds, node.pid))
    finally:
        reg.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="SENDs a second, in total")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--delay-ms", default="0,20", help="webhook answer delays to run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--node-args",
        default="",
        help="more `tidings serve` options, e.g. --app-webhook-concurrency 16",
    )
    parser.add_argument("--serve-webhook", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_webhook:
        serve_webhook(args.serve_webhook, float(args.delay_ms) / 1000)
        return
    os.sched_setaffinity(0, {int(CLIENT_CORE)})
    log_dir = Path(mkdtemp(prefix="micro-app-webhook-"))
    print(
        f"{args.clients} sessions, {args.rate:g} SENDs/s for {args.seconds:g} s, "
        f"memory broker; logs in {log_dir}"
    )
    for round_ in range(args.rounds):
        for delay in (float(part) for part in args.delay_ms.split(",")):
            print(
                f"round {round_ + 1}, webhook delay {delay:g} ms: {run(args, delay, log_dir)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
