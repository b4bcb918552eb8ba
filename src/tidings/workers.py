"""``tidings serve --workers N``: start N node processes, replace the ones that die, drain
them all on SIGTERM/SIGINT (issue 13, item 5; docs/deploy.md, Workers).

The parent is a small supervisor loop on ``multiprocessing.connection.wait``: it waits on
each worker's process sentinel (readable when the worker ends), on each worker's readiness
pipe (the worker writes once its port is bound) and on a self-pipe that the signal handler
writes to, with a timeout for the next replacement that is due.

- A worker that ends with ``EXIT_START_FAILED`` before it reported ready could not start
  (port taken, Redis too old): the others are stopped and the server exits 1, as before.
- Any other end outside a shutdown is a death: logged with its exit code or signal, and the
  worker is started again (same index, so the same node id and config) after a backoff that
  doubles from ``Policy.first_backoff_s`` to ``Policy.max_backoff_s``, back to the first
  once a worker lived ``Policy.stable_after_s``.
- ``Policy.crash_limit`` deaths within ``Policy.crash_window_s``: one error line, the others
  are stopped, exit 1.
- SIGTERM/SIGINT is forwarded to every live worker (to one still starting once it reported
  ready); from then on nothing is started again. The exit code is 0 when every worker
  ended with 0 (or by the forwarded signal).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

log = logging.getLogger("tidings")

EXIT_START_FAILED = 1
READY = b"ready"

# (index, the write end of its readiness pipe) -> a process not yet started.
MakeWorker = Callable[[int, Connection], BaseProcess]


@dataclass(frozen=True)
class Policy:
    """How eagerly dead workers are replaced, and when the server gives up."""

    first_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    stable_after_s: float = 30.0
    crash_limit: int = 5
    crash_window_s: float = 60.0


@dataclass
class _Slot:
    """One of the N workers, across its replacements."""

    index: int
    name: str
    process: BaseProcess | None = None
    ready_pipe: Connection | None = None
    ready: bool = False
    started_at: float = 0.0
    backoff_s: float = 0.0
    restart_at: float | None = None


def describe_exit(exitcode: int | None) -> str:
    """``signal 9 (SIGKILL)`` or ``exit code 3``: how a process ended, for a log line."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"signal {-exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class Supervisor:
    """Runs ``count`` workers made by ``make`` until they all ended; ``run`` is the exit code.

    ``names[i]`` names worker ``i`` in log lines (its node id); ``mark_dead(pid)`` is called
    for every worker that ended (prometheus-client's multiprocess clean-up).
    """

    def __init__(
        self,
        names: list[str],
        make: MakeWorker,
        mark_dead: Callable[[int | None], None],
        policy: Policy | None = None,
    ) -> None:
        self.policy = policy or Policy()
        self._make = make
        self._mark_dead = mark_dead
        self._slots = [
            _Slot(index, name, backoff_s=self.policy.first_backoff_s)
            for index, name in enumerate(names)
        ]
        self._deaths: deque[float] = deque()
        self._stopping = False
        self._failed = False
        self._signal = signal.SIGTERM
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> int:
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for slot in self._slots:
                self._start(slot)
            while self._busy():
                self._step()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
        return EXIT_START_FAILED if self._failed else 0

    def _busy(self) -> bool:
        alive = any(slot.process is not None for slot in self._slots)
        pending = any(slot.restart_at is not None for slot in self._slots)
        return alive or (pending and not self._stopping)

    def _step(self) -> None:
        waiting: dict[Connection | int, tuple[str, _Slot | None]] = {self._wake_r: ("wake", None)}
        for slot in self._slots:
            if slot.process is not None:
                waiting[slot.process.sentinel] = ("ended", slot)
            if slot.ready_pipe is not None:
                waiting[slot.ready_pipe] = ("ready", slot)
        due = [s.restart_at for s in self._slots if s.restart_at is not None]
        timeout = None if self._stopping or not due else max(0.0, min(due) - time.monotonic())
        for handle in multiprocessing.connection.wait(list(waiting), timeout):
            what, owner = waiting[handle]  # type: ignore[index]  # one of our handles
            if what == "wake":
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)
            elif owner is not None and what == "ready" and owner.ready_pipe is handle:
                self._read_ready(owner)
            elif owner is not None and what == "ended" and owner.process is not None:
                self._ended(owner)
        if not self._stopping:
            now = time.monotonic()
            for slot in self._slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    log.info("starting worker %s again", slot.name)
                    self._start(slot)

    # -- events ---------------------------------------------------------------------------------
    def _start(self, slot: _Slot) -> None:
        reader, writer = multiprocessing.Pipe(duplex=False)
        process = self._make(slot.index, writer)
        slot.restart_at = None
        slot.ready = False
        slot.started_at = time.monotonic()
        process.start()
        writer.close()  # the worker holds its own copy; EOF here once it is gone
        slot.process, slot.ready_pipe = process, reader

    def _read_ready(self, slot: _Slot) -> None:
        pipe = slot.ready_pipe
        if pipe is None:
            return
        with contextlib.suppress(EOFError, OSError):
            slot.ready = pipe.recv_bytes() == READY
        pipe.close()
        slot.ready_pipe = None
        if slot.ready and self._stopping:  # held back until it started (see _stop)
            self._signal_worker(slot)

    def _ended(self, slot: _Slot) -> None:
        process = slot.process
        assert process is not None
        process.join()
        if slot.ready_pipe is not None and slot.ready_pipe.poll():
            self._read_ready(slot)  # it reported ready, then ended: read that first
        if slot.ready_pipe is not None:
            slot.ready_pipe.close()
            slot.ready_pipe = None
        slot.process = None
        self._mark_dead(process.pid)
        code, now = process.exitcode, time.monotonic()
        how = describe_exit(code)
        if self._stopping:
            if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                log.error(
                    "worker %s (pid %s) ended during shutdown (%s)", slot.name, process.pid, how
                )
                self._failed = True
            return
        if code == EXIT_START_FAILED and not slot.ready:
            log.error("worker %s could not start: stopping the others", slot.name)
            self._failed = True
            self._stop(signal.SIGTERM)
            return
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - self.policy.crash_window_s:
            self._deaths.popleft()
        alive = sum(s.process is not None for s in self._slots)
        if len(self._deaths) >= self.policy.crash_limit:
            log.error(
                "workers keep dying: %d deaths within %g s (the last: %s, %s); stopping the "
                "other %d and exiting",
                len(self._deaths),
                self.policy.crash_window_s,
                slot.name,
                how,
                alive,
            )
            self._failed = True
            self._stop(signal.SIGTERM)
            return
        if now - slot.started_at >= self.policy.stable_after_s:
            slot.backoff_s = self.policy.first_backoff_s
        delay = slot.backoff_s
        slot.backoff_s = min(delay * 2, self.policy.max_backoff_s)
        slot.restart_at = now + delay
        log.error(
            "worker %s (pid %s) died (%s); %d of %d workers still serve; starting it again "
            "in %.1f s",
            slot.name,
            process.pid,
            how,
            alive,
            len(self._slots),
            delay,
        )

    def _on_signal(self, signum: int, _frame: object = None) -> None:
        self._stop(signal.Signals(signum))
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def _stop(self, signum: signal.Signals) -> None:
        """Forward ``signum`` to every live worker; start none from now on.

        A worker that has not reported ready yet gets it once it does (``_read_ready``):
        stopped in the middle of its start-up, its event loop would close under a pending
        address lookup and log a traceback. Its start-up is bounded (it binds, or exits 1).
        """
        self._stopping = True
        self._signal = signum
        for slot in self._slots:
            slot.restart_at = None
            if slot.ready:
                self._signal_worker(slot)

    def _signal_worker(self, slot: _Slot) -> None:
        process = slot.process
        if process is not None and process.pid is not None and process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, self._signal)
