"""``tidings serve`` under tracemalloc, for S3's per-session memory breakdown.

Usage: python bench/tracemalloc_serve.py <report-file> <tidings serve args...>

SIGUSR1 takes the baseline snapshot; SIGUSR2 writes what was allocated since then, by
source line and by file, as JSON to <report-file>. Only Python-allocator memory is
traced: the rest of RSS growth is C-level (uvloop/libuv handles, malloc overhead).
"""

from __future__ import annotations

import json
import signal
import sys
import tracemalloc
from pathlib import Path
from typing import Any

TOP = 25


def main() -> None:
    report = Path(sys.argv[1])
    tracemalloc.start(1)
    state: dict[str, Any] = {}

    def baseline(_signum: int, _frame: object) -> None:
        state["base"] = tracemalloc.take_snapshot()

    def dump(_signum: int, _frame: object) -> None:
        snap = tracemalloc.take_snapshot()
        base = state.get("base") or snap
        out: dict[str, Any] = {}
        for key in ("lineno", "filename"):
            diff = snap.compare_to(base, key)
            out[key] = [
                [str(stat.traceback[0]), stat.size_diff, stat.count_diff] for stat in diff[:TOP]
            ]
            out[f"total_{key}"] = sum(stat.size_diff for stat in diff)
        report.write_text(json.dumps(out))

    signal.signal(signal.SIGUSR1, baseline)
    signal.signal(signal.SIGUSR2, dump)
    from tidings.cli import main as tidings_main  # noqa: PLC0415 - after tracemalloc starts

    tidings_main(["serve", *sys.argv[2:]])


if __name__ == "__main__":
    main()
