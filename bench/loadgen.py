"""The Python side of bench/loadgen.mjs: start it on the client core, send it commands."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import subprocess
from pathlib import Path
from typing import Any

from bench.procs import CLIENT_CORE, BenchError, Proc, Registry

BENCH_DIR = Path(__file__).resolve().parent


class LoadGen:
    def __init__(self, reg: Registry, log_dir: Path, name: str = "loadgen") -> None:
        self.name = name
        log = (log_dir / f"{name}.log").open("ab")
        self.popen = subprocess.Popen(
            ["taskset", "-c", CLIENT_CORE, "node", str(BENCH_DIR / "loadgen.mjs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=BENCH_DIR,
            start_new_session=True,
        )
        log.close()
        self.proc = reg.adopt(Proc(name, self.popen, self.popen.pid, log_dir / f"{name}.log"))
        self._ids = itertools.count(1)
        self._buffer = b""
        first = self._read_line(30)
        if not first.get("ready"):
            raise BenchError(f"{name} did not start: {first}")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read_line(self, timeout: float) -> dict[str, Any]:
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise BenchError(f"{self.name}: no answer within {timeout} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise BenchError(f"{self.name} exited:\n{self.proc.log_tail()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def send(self, cmd: str, **args: Any) -> int:
        """Send a command without waiting; ``wait`` collects the answer."""
        assert self.popen.stdin is not None
        ident = next(self._ids)
        self.popen.stdin.write(json.dumps({"id": ident, "cmd": cmd, **args}).encode() + b"\n")
        self.popen.stdin.flush()
        return ident

    def wait(self, ident: int, timeout: float) -> dict[str, Any]:
        reply = self._read_line(timeout)
        if reply.get("id") != ident:
            raise BenchError(f"{self.name}: answer {reply.get('id')} for command {ident}")
        if not reply.get("ok"):
            raise BenchError(f"{self.name}: {reply.get('error')}")
        reply.pop("id", None)
        reply.pop("ok", None)
        return reply

    def call(self, cmd: str, timeout: float = 120, **args: Any) -> dict[str, Any]:
        return self.wait(self.send(cmd, **args), timeout)

    def close(self) -> None:
        with contextlib.suppress(BenchError, OSError):
            self.call("exit", timeout=10)
        self.proc.stop()
