"""S1 at a fixed rate, two Tidings source trees alternating, for A/B decisions.

    .venv/bin/python -m bench.ab_s1 tidings old=/tmp/old/src,new=src --rounds 3

Each round runs ``bench.scenarios.s1_broadcast`` (1,000 subscribers; 10 s at 20 msg/s,
then 4 s of saturation) once per tree, in order, on one Redis and one load generator, and
prints the first-delivery, spread and all-deliveries percentiles and the saturation rate.
The system is ``tidings`` (Redis broker) or ``tidings-memory``. A tree is any ``src``
directory: ``git worktree add /tmp/old <rev>`` makes one of another revision.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

from bench.loadgen import LoadGen
from bench.procs import CLK_TCK, Registry, start_redis
from bench.scenarios import FULL, s1_broadcast
from bench.systems import ALL, Context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=["tidings", "tidings-memory"])
    parser.add_argument("trees", help="name=src,name=src: the source trees to alternate")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trees = [tuple(item.split("=", 1)) for item in args.trees.split(",")]
    sizes = dataclasses.replace(FULL, s1_saturate_repeats=1, s1_saturate_s=4, s1_fixed_s=10)
    log_dir, work = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    reg = Registry()
    try:
        redis, redis_url = start_redis(reg, log_dir)
        lg = LoadGen(reg, log_dir)
        lg.call("config", clkTck=CLK_TCK)
        for _ in range(args.rounds):
            for name, src in trees:
                env = {"PYTHONPATH": str(Path(src).resolve())}
                ctx = Context(reg, log_dir, work, redis_url, redis.pid, tidings_env=env)
                result = s1_broadcast(ctx, lg, ALL[args.system], sizes)
                fixed = result["fixed_rate"]
                first, spread, every = (
                    fixed["firstDeliveryUs"],
                    fixed["spreadUs"],
                    fixed["latencyUs"],
                )
                print(
                    f"{name:8s} first p50 {first['p50'] / 1e3:.2f} p99 {first['p99'] / 1e3:.2f}"
                    f" | spread p50 {spread['p50'] / 1e3:.2f} p99 {spread['p99'] / 1e3:.2f}"
                    f" | all p50 {every['p50'] / 1e3:.2f} p99 {every['p99'] / 1e3:.2f} ms"
                    f" | saturation {result['saturation']['rate'] / 1e3:.0f}k/s",
                    flush=True,
                )
    finally:
        reg.stop_all()


if __name__ == "__main__":
    main()
