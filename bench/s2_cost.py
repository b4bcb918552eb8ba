"""Where S2's server time goes, per message: CPU (user, system) and context switches.

    .venv/bin/python -m bench.s2_cost tidings,tidings-batch,tidings-direct,socketio-node

For each system: two nodes and 1,000 users as in S2, 2 s of warm-up at 500 msg/s, then
``--seconds`` at ``--rate``; prints the p99 and, for each node and Redis, user and system
CPU µs and voluntary / involuntary context switches per message published (from
/proc/<pid>/stat and /proc/<pid>/status). Figures per message published, so a node that
handles half the messages shows half its cost per message it handles.

``--src DIR`` runs the nodes from another tree's ``src`` (``git archive <rev> src | tar -x
-C DIR/..``), to compare two versions in alternating runs. ``--profile DIR`` records node 1
(py-spy raw stacks, or ``perf record -g`` with ``--perf``) with node 1 alone on the server
core: a profile of a node sharing its core with the other node and Redis shows where it
was preempted, not what it spent.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from bench.loadgen import LoadGen
from bench.procs import CLIENT_CORE, CLK_TCK, Proc, Registry, start_redis
from bench.scenarios import _open, _publisher, _pyspy, _teardown
from bench.systems import ALL, Context

USERS = 1000


def sample(pid: int) -> tuple[int, int, int, int]:
    """(user ticks, system ticks, voluntary switches, involuntary switches) of ``pid``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    switches = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name.endswith("ctxt_switches"):
                switches[name] = int(value)
    return (
        int(fields[11]),
        int(fields[12]),
        switches["voluntary_ctxt_switches"],
        switches["nonvoluntary_ctxt_switches"],
    )


def _profile(
    args: argparse.Namespace, ctx: Context, redis_pid: int, servers: list[Proc], name: str
) -> subprocess.Popen[bytes]:
    """Node 1 alone on the server core, everything else on the client core, and a
    profiler (on the client core) recording node 1 for the measured phase."""
    for other in (redis_pid, *(server.pid for server in servers[1:])):
        subprocess.run(["taskset", "-pc", CLIENT_CORE, str(other)], check=True, capture_output=True)
    pid = servers[0].pid
    out = Path(args.profile) / name
    if not args.perf:
        return _pyspy(ctx, pid, args.seconds, out.with_suffix(".txt"))
    argv = ["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", f"{out}.perf"]
    argv += ["--", "sleep", str(args.seconds)]
    return subprocess.Popen(["taskset", "-c", CLIENT_CORE, *argv], stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("systems", help="comma list of S2 systems, e.g. tidings,socketio-node")
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument(
        "--redis-core", help="move the bench's Redis to this core (S2 pins it to the servers')"
    )
    parser.add_argument(
        "--src", help="run the nodes from this tree's src (e.g. an old commit's, git archive)"
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="profile node 1 for the measured phase into DIR/<system>.txt (py-spy raw stacks),"
        " with Redis and node 2 moved to the other core so node 1 has core 0 to itself",
    )
    parser.add_argument(
        "--perf", action="store_true", help="with --profile: perf record -g into DIR/<system>.perf"
    )
    args = parser.parse_args()
    log_dir, work = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    reg = Registry()
    try:
        redis, url = start_redis(reg, log_dir)
        if args.redis_core is not None:
            subprocess.run(["taskset", "-pc", args.redis_core, str(redis.pid)], check=True)
        lg = LoadGen(reg, log_dir)
        lg.call("config", clkTck=CLK_TCK)
        env = {"PYTHONPATH": str(Path(args.src).resolve())} if args.src else {}
        ctx = Context(reg, log_dir, work, url, redis.pid, tidings_env=env)
        for name in args.systems.split(","):
            dep = ALL[name].deploy(ctx, 2)
            try:
                _open(lg, dep, ctx, USERS, dep.user_dest)
                _publisher(lg, dep)
                common = {"fanout": 1, "target": "user", "users": USERS, "drainMs": 5000}
                lg.call("rate", timeout=60, rate=500, seconds=2, phase=1, **common)
                pids = {"node 1": dep.servers[0].pid, "node 2": dep.servers[1].pid}
                if dep.uses_redis:
                    pids["redis"] = redis.pid
                spy = None
                if args.profile:
                    spy = _profile(args, ctx, redis.pid, dep.servers, name)
                before = {key: sample(pid) for key, pid in pids.items()}
                run = lg.call(
                    "rate",
                    timeout=args.seconds + 60,
                    rate=args.rate,
                    seconds=args.seconds,
                    phase=2,
                    **common,
                )
                after = {key: sample(pid) for key, pid in pids.items()}
                if spy is not None:
                    spy.communicate(timeout=60)
                n = run["published"]
                parts = []
                for key in pids:
                    user, system, vol, invol = (
                        a - b for a, b in zip(after[key], before[key], strict=True)
                    )
                    parts.append(
                        f"{key}: user {1e6 * user / CLK_TCK / n:.0f} sys "
                        f"{1e6 * system / CLK_TCK / n:.0f} µs, switches {vol / n:.2f} + "
                        f"{invol / n:.2f}"
                    )
                p99 = run["latencyUs"]["p99"] / 1e3
                print(f"{name}: p99 {p99:.2f} ms | " + " | ".join(parts), flush=True)
            finally:
                _teardown(ctx, lg, dep)
    finally:
        reg.stop_all()


if __name__ == "__main__":
    main()
