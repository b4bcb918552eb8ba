"""Logging of a node: ``--log-format text|json``, ``--log-level``, and rate-limited warnings.

Levels are chosen so that a busy node's info log stays readable (docs/deploy.md, Logs):
start, drain and stop at info; each session's connect and disconnect at debug; auth
failures and slow-consumer disconnects at warning, through a ``RateLimited`` logger so a
flood of bad tokens writes one line per reason every ``WARNING_INTERVAL_S``, the next one
saying how many were left out.

The JSON format writes one object per line: ``time`` (UTC, ISO 8601, milliseconds),
``level``, ``logger``, ``message``, then any structured extras given with ``extra=``
(the start-up line's ``broker``, ``endpoints``...; an auth failure's ``reason``) and, for
an exception, ``exception`` with the traceback.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WARNING_INTERVAL_S = 10.0
"""A rate-limited warning is written at most once per reason in this many seconds."""
MAX_REASONS = 64
"""Reasons a RateLimited logger tracks; past that, new reasons share one budget."""

# What every LogRecord has: anything else on a record came with ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send every log record at ``level`` or above to stderr, as text or JSON lines."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class RateLimited:
    """A warning logger that writes at most one line per reason every ``interval_s``.

    The first warning of a reason is written at once; the ones that follow within the
    interval are counted, not written; the first one after it is written with that count
    (``suppressed`` in the JSON extras, "N more like this" in the text).
    """

    __slots__ = ("_clock", "_interval_s", "_log", "_reasons")

    def __init__(
        self,
        log: logging.Logger,
        interval_s: float = WARNING_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._interval_s = interval_s
        self._clock = clock
        # reason -> [time of the last line written, warnings left out since]
        self._reasons: dict[str, list[float]] = {}

    def warning(self, reason: str, message: str, *args: object, **extra: object) -> bool:
        """Log ``message % args`` unless ``reason`` was logged within the interval;
        True if a line was written."""
        if not self._log.isEnabledFor(logging.WARNING):
            return False
        now = self._clock()
        key = reason if reason in self._reasons or len(self._reasons) < MAX_REASONS else "other"
        state = self._reasons.get(key)
        if state is not None and now - state[0] < self._interval_s:
            state[1] += 1
            return False
        suppressed = int(state[1]) if state is not None else 0
        self._reasons[key] = [now, 0]
        if suppressed:
            message += " (%d more like this in the last %.0f s not logged)"
            args = (*args, suppressed, now - state[0] if state is not None else 0.0)
        self._log.warning(
            message, *args, extra={"reason": reason, "suppressed": suppressed, **extra}
        )
        return True
