"""Micro-benchmark of the inbox's publish script: Redis CPU per publish, old script vs new.

    .venv/bin/python -m bench.micro_script [--ref HEAD] [--pairs 3] [--scenario s2]
    .venv/bin/python -m bench.micro_script --callgrind [--pairs 1] [--count 2000]

One private redis-server takes every run. Each run empties it, fills the streams as the
scenario says, then times ``--count`` publishes made by ``tidings.publisher.Publisher``
(``--in-flight`` at a time, on uvloop in this process) with the server's default limits
(1,000 messages and 7 days per user, 100 per topic). Runs alternate between the script of
``--ref`` (its ``src/tidings/inbox/redis.py``, from ``git show``, loaded beside this
tree's modules: HEAD by default, for an uncommitted change; ``c3e424e`` holds the script
before 2026-11-27's rewrite) and this tree's, ``--pairs`` times; which goes first swaps
every pair.

Reported per publish, from the redis-server process: CPU from /proc/<pid>/stat
(utime + stime, in clock ticks: ~10 ms steps), the main thread's run time from
/proc/<pid>/schedstat (ns), and the script's own time from ``INFO commandstats``
(``usec_per_call`` of EVALSHA: wall time, so it counts preemption too). On a busy machine
these move by 20% from run to run. ``--callgrind`` runs redis-server under valgrind's
callgrind instead and counts the instructions it executes (user space, not the kernel's
socket work) for the timed publishes: the same from run to run within ~2%, whatever else
the machine does (Debian package valgrind; ~10x slower, hence fewer publishes).

Scenarios:
  s2     1,000 users with 50 messages each; publishes to ``u<i % 1000>`` (benchmark S2:
         short inboxes, nothing trimmed)
  full   100 users with 1,000 messages each (full): each publish trims one by count
  acked  as full, and each user has acked and read ids: each trim makes the id sets forget
  topic  100 topics with 100 messages each (full): ``to_topic``, each trims one by count
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path

import redis
import uvloop

import tidings.publisher
from bench.micro_publish import bounded
from bench.procs import CLK_TCK, Proc, cpu_ticks, free_port, wait_port
from tidings.inbox import redis as current_inbox
from tidings.publisher import Publisher

ROOT = Path(__file__).resolve().parent.parent
BODY = "x" * 100


@dataclass(frozen=True)
class Scenario:
    channels: int
    prefill: int  # messages per channel before the timed publishes
    topic: bool = False
    acked: bool = False


SCENARIOS = {
    "s2": Scenario(channels=1000, prefill=50),
    "full": Scenario(channels=100, prefill=1000),
    "acked": Scenario(channels=100, prefill=1000, acked=True),
    "topic": Scenario(channels=100, prefill=100, topic=True),
}


def ref_module(ref: str) -> types.ModuleType:
    """``tidings.inbox.redis`` as it is at git ``ref``, importing this tree's other modules."""
    source = subprocess.run(
        ["git", "show", f"{ref}:src/tidings/inbox/redis.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    name = f"_inbox_redis_at_{ref.replace('/', '_').replace('~', '_').replace('^', '_')}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{ref}:src/tidings/inbox/redis.py", "exec"), module.__dict__)
    return module


def schedstat_ns(pid: int) -> int:
    """Run time of ``pid``'s main thread in ns (proc(5) /proc/pid/schedstat, first field)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


class Meter:
    """What the redis-server at ``pid`` spent between ``start`` and ``stop``."""

    def __init__(self, pid: int, cg_dir: Path | None) -> None:
        self.pid = pid
        self.cg_dir = cg_dir  # callgrind's output directory, when under callgrind
        self._ticks = self._ns = 0

    def start(self) -> None:
        if self.cg_dir is not None:
            self._callgrind("--zero")
            self._callgrind("--instr=on")
        self._ticks, self._ns = cpu_ticks(self.pid), schedstat_ns(self.pid)

    def stop(self) -> tuple[int, int, int]:
        """(clock ticks, main-thread ns, instructions: 0 without callgrind)."""
        ticks, ns = cpu_ticks(self.pid) - self._ticks, schedstat_ns(self.pid) - self._ns
        instructions = 0
        if self.cg_dir is not None:
            self._callgrind("--instr=off")
            before = set(self.cg_dir.iterdir())
            self._callgrind("--dump")
            (dump,) = set(self.cg_dir.iterdir()) - before
            for line in dump.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    instructions = max(instructions, int(line.split()[1]))
        return ticks, ns, instructions

    def _callgrind(self, option: str) -> None:
        subprocess.run(
            ["callgrind_control", option, str(self.pid)], check=True, capture_output=True
        )


async def one_run(
    url: str,
    module: types.ModuleType,
    scenario: Scenario,
    meter: Meter,
    *,
    count: int,
    in_flight: int,
) -> tuple[float, ...]:
    """Per timed publish: µs of CPU, µs of main-thread run time, µs of script time (wall),
    and instructions (0 without callgrind)."""
    tidings.publisher.InboxWriter = module.InboxWriter  # type: ignore[attr-defined]
    try:
        publisher = Publisher.from_url(url)
    finally:
        tidings.publisher.InboxWriter = current_inbox.InboxWriter  # type: ignore[attr-defined]
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
        async with publisher as pub:
            channels = scenario.channels

            async def one(n: int) -> str:
                if scenario.topic:
                    return await pub.to_topic(f"t{n % channels}", BODY)
                return await pub.to_user(f"u{n % channels}", BODY)

            await bounded(channels * scenario.prefill, in_flight, one)
            if scenario.acked:
                _ack_newest(client, channels)
            client.config_resetstat()
            meter.start()
            await bounded(count, in_flight, one)
            ticks, ns, instructions = meter.stop()
            script_us = float(client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
    finally:
        client.close()
    return 1e6 * ticks / CLK_TCK / count, ns / 1e3 / count, script_us, instructions / count


def _ack_newest(client: redis.Redis, users: int) -> None:
    """Mark each user's 20 newest ids acked and read, as ``RedisInbox.ack`` and ``mark_read``
    store them (so they outlive the timed publishes' trims: the sets stay non-empty)."""
    pipe = client.pipeline(transaction=False)
    for u in range(users):
        entries: list[tuple[bytes, object]] = client.xrevrange(  # type: ignore[assignment]
            f"tidings:inbox:u:u{u}", count=20
        )
        for entry_id, _ in entries:
            score = float(entry_id.split(b"-")[0])
            pipe.zadd(f"tidings:acked:u{u}", {entry_id: score})
            pipe.zadd(f"tidings:read:u{u}", {entry_id: score})
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="HEAD", help="git ref of the old script (HEAD)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="s2")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--callgrind", action="store_true", help="count instructions")
    args = parser.parse_args()
    scenario = SCENARIOS[args.scenario]
    variants = {args.ref: ref_module(args.ref), "tree": current_inbox}
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="micro-script-") as tmp:
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no"]
        cg_dir = None
        if args.callgrind:
            cg_dir = Path(tmp)
            argv = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={cg_dir}/callgrind.out",
                *argv,
            ]
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        server = Proc("redis", popen, popen.pid)
        try:
            wait_port(port, server, within=60)
            results = _runs(
                args, scenario, variants, f"redis://127.0.0.1:{port}/0", Meter(popen.pid, cg_dir)
            )
        finally:
            server.stop()
    columns = [3] if args.callgrind else [0, 1, 2]
    for name, runs in results.items():
        values = [[run[i] for run in runs] for i in columns]
        print(
            f"{name:>8}: median {' | '.join(f'{statistics.median(v):8.2f}' for v in values)}"
            f"   min {' | '.join(f'{min(v):8.2f}' for v in values)}"
        )
    key = 3 if args.callgrind else 1
    old, new = (statistics.median(run[key] for run in results[name]) for name in variants)
    what = "instructions" if args.callgrind else "main thread"
    print(f"{what}, median: {100 * (new / old - 1):+.1f}% ({args.ref} -> tree)")


def _runs(
    args: argparse.Namespace,
    scenario: Scenario,
    variants: dict[str, types.ModuleType],
    url: str,
    meter: Meter,
) -> dict[str, list[tuple[float, ...]]]:
    results: dict[str, list[tuple[float, ...]]] = {name: [] for name in variants}
    what = (
        "instructions"
        if args.callgrind
        else "µs: CPU (/proc stat) | main thread (schedstat) | script (commandstats)"
    )
    print(
        f"scenario {args.scenario}: {args.count:,} publishes, {args.in_flight} in flight, "
        f"{args.pairs} pairs; per publish, {what}",
        flush=True,
    )
    for pair in range(args.pairs):
        order = list(variants) if pair % 2 == 0 else list(reversed(variants))
        for name in order:
            start = time.perf_counter()
            got = uvloop.run(
                one_run(
                    url, variants[name], scenario, meter, count=args.count, in_flight=args.in_flight
                )
            )
            results[name].append(got)
            shown = f"{got[3]:9.0f}" if args.callgrind else " | ".join(f"{v:6.2f}" for v in got[:3])
            print(
                f"  pair {pair + 1} {name:>8}: {shown}   ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    return results


if __name__ == "__main__":
    main()
