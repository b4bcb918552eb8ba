"""``./run fuzz``: the parsers' property tests, many more examples than the suite runs.

Runs tests/test_parser_fuzz.py and tests/test_stomp_fuzz.py (STOMP frames and sessions,
WebSocket frames, HTTP/1 requests, SockJS bodies, ``--send-allow`` globs, RESP2 replies)
round after round, each round with ``TIDINGS_FUZZ_SCALE`` times every property's suite
budget (tests/fuzz_budget.py) and a new random number, until ``--minutes`` have passed
or a round fails. Every round prints its number first: hypothesis's seed, which picks its
examples; ``--round N`` runs round N again, the very same examples. Exit code 0 when
every round passed, 1 on a failure.

    ./run fuzz                     # 10 minutes
    ./run fuzz --minutes 60 --scale 50
    ./run fuzz --round 1234567     # reproduce a failing round
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ("tests/test_parser_fuzz.py", "tests/test_stomp_fuzz.py")
SCALE_ENV = "TIDINGS_FUZZ_SCALE"  # tests/fuzz_budget.py reads it


def run_round(number: int, scale: int) -> bool:
    """One pytest run of the fuzz tests, hypothesis seeded with ``number``; True if it
    passed."""
    print(f"fuzz: round {number}, {scale}x the suite's examples", flush=True)
    command = [
        sys.executable,
        *("-m", "pytest", *TESTS, "-q", "-x", "-p", "no:cacheprovider"),
        f"--hypothesis-seed={number}",
    ]
    env = {**os.environ, SCALE_ENV: str(scale)}
    passed = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode == 0
    if not passed:
        print(f"fuzz: round {number} FAILED; again: ./run fuzz --round {number} --scale {scale}")
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument(
        "--scale", type=int, default=20, help="examples per property, times the suite's (20)"
    )
    parser.add_argument("--round", type=int, help="run this round (its number) again")
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be at least 1")
    if args.round is not None:
        return 0 if run_round(args.round, args.scale) else 1
    deadline = time.monotonic() + args.minutes * 60
    rounds = 0
    while True:
        if not run_round(secrets.randbits(32), args.scale):
            return 1
        rounds += 1
        if time.monotonic() >= deadline:
            break
    print(f"fuzz: {rounds} rounds passed in {args.minutes:g} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
