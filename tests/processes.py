"""Ending the child processes tests start (servers, nginx, Node agents)."""

from __future__ import annotations

import asyncio
import contextlib
import signal


async def terminate(proc: asyncio.subprocess.Process, grace: float) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; return the exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()


async def exit_agent(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Ask a JSON-lines agent to ``exit`` on its stdin; SIGKILL it if it lingers."""
    stdin = proc.stdin
    if proc.returncode is None and stdin is not None and not stdin.is_closing():
        with contextlib.suppress(OSError):
            stdin.write(b'{"op":"exit"}\n')
            await stdin.drain()
        stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
