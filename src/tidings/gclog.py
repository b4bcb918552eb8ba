"""Opt-in log of every garbage collection (``TIDINGS_GC_LOG=1``), to find loop stalls.

One line per collection: generation, pause, objects collected and uncollectable,
``gc.get_count()`` after it and the objects left in the collected generation. A full
(generation 2) pass walks every tracked object that is not frozen, and stops the loop
that long; docs/decisions.md has what the log showed in S1.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger("tidings.gc")


class _GcLog:
    __slots__ = ("_started",)

    def __init__(self) -> None:
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause_ms = (time.perf_counter() - self._started) * 1000
        generation = info["generation"]
        log.info(
            "gen%d %.2f ms collected=%d uncollectable=%d count=%s gen%d_objects=%d frozen=%d",
            generation,
            pause_ms,
            info["collected"],
            info["uncollectable"],
            gc.get_count(),
            generation,
            len(gc.get_objects(generation)),
            gc.get_freeze_count(),
        )


def install() -> None:
    """Log every collection of this process at INFO on ``tidings.gc``, whatever the level."""
    if not any(isinstance(callback, _GcLog) for callback in gc.callbacks):
        log.setLevel(logging.INFO)
        gc.callbacks.append(_GcLog())
