"""What ``--inbox-min-replicas`` costs a publish: latency p50/p99 with 0 and 1 replicas.

    .venv/bin/python -m bench.micro_replicas [--count 2000] [--in-flight 1,8] [--rounds 2]

Starts a private master and one replica of it (``redis-server --replicaof``) on loopback,
then, for each setting, one node (``tidings serve --broker redis://<master>
--inbox-min-replicas N``) and POSTs ``--count`` publishes to
``/api/v1/users/u<n % 1000>/messages`` (after a warm-up of 1,000), ``--in-flight`` at a
time; each request's latency is measured from send to its 202. The settings alternate
``--rounds`` times (0, 1, 0, 1...) so that the machine's other work hits both alike;
percentiles are over all rounds of a setting. With 1, each write of publish calls ends
with ``WAIT 1 <timeout>`` on the node's publish connection (``inbox/resp.py``): the 202
waits for the replica's acknowledgement, one more round trip master -> replica -> master.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp
import uvloop

from bench.micro_publish import BODY, WARMUP, bounded
from bench.procs import Proc, free_port, wait_http_ok, wait_port


def start(name: str, argv: list[str]) -> Proc:
    popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return Proc(name, popen, popen.pid)


def redis(port: int, *extra: str) -> Proc:
    # --dir: a replica writes the RDB of its full sync there, not in the working directory
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--dir", tempfile.mkdtemp(prefix="micro-replicas-")]
    proc = start(f"redis-{port}", [*argv, "--repl-diskless-sync-delay", "0", *extra])
    wait_port(port, proc)
    return proc


def wait_replica(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        info = subprocess.run(
            ["redis-cli", "-p", str(port), "INFO", "replication"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if "master_link_status:up" in info:
            return
        time.sleep(0.1)
    raise RuntimeError(f"replica on {port} not in sync after {within} s")


async def latencies(port: int, count: int, in_flight: int) -> list[float]:
    """Seconds from send to 202 of ``count`` publishes, ``in_flight`` at a time."""
    took: list[float] = []
    async with aiohttp.ClientSession() as session:

        async def one(n: int) -> None:
            path = f"http://127.0.0.1:{port}/api/v1/users/u{n % 1000}/messages"
            started = time.perf_counter()
            async with session.post(path, json={"body": BODY}) as reply:
                assert reply.status == 202, await reply.text()
            took.append(time.perf_counter() - started)

        await bounded(WARMUP, in_flight, one)
        took.clear()
        await bounded(count, in_flight, one)
    return took


def run_node(master: int, replicas: int, count: int, in_flight: int) -> list[float]:
    port = free_port()
    url = f"redis://127.0.0.1:{master}/0"
    node = start(
        "node",
        [
            *(sys.executable, "-m", "tidings", "serve", "--broker", url, "--port", str(port)),
            *("--inbox-min-replicas", str(replicas), "--log-level", "warning"),
        ],
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", node, within=120)
        return uvloop.run(latencies(port, count, in_flight))
    finally:
        node.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--in-flight", default="1,8", help="comma-separated concurrencies")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    master_port, replica_port = free_port(), free_port()
    procs = [redis(master_port)]
    try:
        procs.append(redis(replica_port, "--replicaof", "127.0.0.1", str(master_port)))
        wait_replica(replica_port)
        for in_flight in (int(part) for part in args.in_flight.split(",")):
            samples: dict[int, list[float]] = {0: [], 1: []}
            for _ in range(args.rounds):
                for replicas in samples:
                    samples[replicas] += run_node(master_port, replicas, args.count, in_flight)
            p = {
                replicas: (percentile(v, 0.5), percentile(v, 0.99), statistics.fmean(v))
                for replicas, v in samples.items()
            }
            for replicas, (p50, p99, mean) in p.items():
                print(
                    f"in flight {in_flight}, --inbox-min-replicas {replicas}: "
                    f"p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, mean {mean * 1e3:.2f} ms "
                    f"({len(samples[replicas])} publishes)"
                )
            print(
                f"in flight {in_flight}, ratio 1 / 0: p50 {p[1][0] / p[0][0]:.2f}x, "
                f"p99 {p[1][1] / p[0][1]:.2f}x"
            )
    finally:
        for proc in reversed(procs):
            proc.stop()


if __name__ == "__main__":
    main()
