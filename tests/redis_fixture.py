"""A private ``redis-server`` per test, on a free port of 127.0.0.1.

Never the machine's Redis on 6379: each test gets its own process, which it may stop,
restart on the same port, or use to kill pub/sub clients, to exercise broker faults.

Example::

    async def test_restart(redis_server):
        broker = RedisBroker(redis_server.url)
        await redis_server.stop()
        await redis_server.start()
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import redis.asyncio

from .ports import free_port

START_TIMEOUT = 10.0
STOP_GRACE = 5.0
POLL_INTERVAL = 0.02


async def _answers_ping(port: int) -> bool:
    """True if something on 127.0.0.1:port answers an inline PING (with +PONG, or with
    -NOAUTH when it wants a password)."""
    try:
        async with asyncio.timeout(1.0):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"PING\r\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return line == b"+PONG\r\n" or line.startswith(b"-NOAUTH ")


class RedisServer:
    """One redis-server process; ``stop()`` and ``start()`` keep the same port.

    ``extra_args`` go to redis-server as they are (``--requirepass``, ``--unixsocket``...).
    """

    def __init__(self, workdir: Path, extra_args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.log_path = workdir / f"redis-{self.port}.log"
        self._proc: asyncio.subprocess.Process | None = None

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc else None
        return f"<RedisServer port={self.port} pid={pid}>"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        """Start (or restart) on ``self.port``; return once it answers PING."""
        if self.running:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH (Debian package redis-server)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        args += ["--dir", str(self.workdir), *self.extra_args]
        with self.log_path.open("ab") as log_file:
            self._proc = await asyncio.create_subprocess_exec(
                *args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not await _answers_ping(self.port):
            if self._proc.returncode is not None or loop.time() >= deadline:
                await self.stop()
                pytest.fail(f"{self!r} did not answer PING; log:\n{self.log_path.read_text()}")
            await asyncio.sleep(POLL_INTERVAL)

    async def stop(self) -> None:
        """SIGTERM and wait for exit (SIGKILL after STOP_GRACE seconds)."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def kill(self) -> None:
        """SIGKILL and wait for exit: no shutdown, no AOF fsync, no goodbye to clients."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

    def client(self) -> redis.asyncio.Redis:
        """A plain client of this server; close it with ``aclose()``."""
        return redis.asyncio.Redis(host="127.0.0.1", port=self.port, socket_timeout=2.0)

    async def kill_pubsub_clients(self) -> int:
        """``CLIENT KILL TYPE pubsub``: drop every subscriber connection; return how many."""
        client = self.client()
        try:
            killed = await client.client_kill_filter(_type="pubsub")
        finally:
            await client.aclose()
        return killed

    async def publish(self, channel: str, payload: bytes) -> int:
        """PUBLISH from a plain client; return the number of receivers."""
        client = self.client()
        try:
            return await client.publish(channel, payload)
        finally:
            await client.aclose()


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A running private redis-server (see RedisServer); stopped at teardown."""
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
