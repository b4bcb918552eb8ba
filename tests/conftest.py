"""Shared fixtures: real Tidings server processes and real npm STOMP clients.

Example::

    async def test_echo(tidings_server, js_client):
        server = await tidings_server("--auth", "none")
        client = await js_client("stompjs7", server.ws_url())
        await client.connect()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .cluster_fixture import cluster, redis_cluster  # noqa: F401
from .jsclient import JsClient
from .nginx_fixture import nginx_proxy  # noqa: F401
from .ports import free_port
from .postgres_fixture import pg_cluster, postgres_db  # noqa: F401
from .processes import terminate
from .rabbit_fixture import rabbit_server  # noqa: F401
from .redis_fixture import redis_server  # noqa: F401
from .sentinel_fixture import replicated, sentinels  # noqa: F401
from .wheel_support import installed_wheel  # noqa: F401

HEALTH_TIMEOUT = 15.0
HEALTH_POLL_INTERVAL = 0.05
STOP_GRACE = 5.0


async def http_status(port: int, path: str) -> int | None:
    """Status code of `GET path` on 127.0.0.1:port, or None if nothing answers in 1 s."""
    try:
        async with asyncio.timeout(1.0):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return None
    parts = status_line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


class TidingsServer:
    """One `python -m tidings serve` process, started by the `tidings_server` fixture."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.http_url = f"http://127.0.0.1:{port}"
        self.multiprocess = False

    def __repr__(self) -> str:
        return f"<TidingsServer pid={self.proc.pid} port={self.port}>"

    def ws_url(self, path: str = "/stomp") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, as ``{'name{labels}': value}``."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.http_url}/metrics") as reply:
            assert reply.status == 200, reply.status
            text = await reply.text()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    async def metric(self, family: str) -> float:
        """A metric family's samples summed over their labels (0 before its first one)."""
        return sum(
            value
            for name, value in (await self.metrics()).items()
            if name == family or name.startswith(family + "{")
        )

    async def stop(self, *, grace: float = STOP_GRACE) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds; return the exit code."""
        return await terminate(self.proc, grace)

    async def _check_it_is_ours(self) -> None:
        """Fail if another process answered on our port (a free-port race with a stranger)."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.http_url}/healthz") as reply,
        ):
            pid = (await reply.json()).get("pid")
        if self.multiprocess:
            return  # a worker process answers, not the parent
        if pid != self.proc.pid:
            pytest.fail(f"{self!r}: port {self.port} is served by pid {pid}, not by this server")

    async def wait_healthy(self, within: float = HEALTH_TIMEOUT) -> None:
        """Return once GET /healthz answers 200; fail the test if it exits or never does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            if self.proc.returncode is not None:
                pytest.fail(
                    f"{self!r} exited with {self.proc.returncode} before /healthz answered; "
                    f"log tail:\n{self.log_tail()}"
                )
            if await http_status(self.port, "/healthz") == 200:
                await self._check_it_is_ours()
                return
            if loop.time() >= deadline:
                pytest.fail(
                    f"{self!r}: /healthz did not answer 200 within {within}s; "
                    f"log tail:\n{self.log_tail()}"
                )
            await asyncio.sleep(HEALTH_POLL_INTERVAL)


StartServer = Callable[..., Awaitable[TidingsServer]]


async def worker_health(server: TidingsServer) -> tuple[str, int] | None:
    """``(node id, pid)`` of the worker that takes a fresh connection's GET /healthz, or
    None when nothing answers (every worker is down)."""
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
            http.get(f"{server.http_url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r,
        ):
            health = await r.json()
    except (aiohttp.ClientError, TimeoutError):
        return None
    return health["node"], health["pid"]


async def worker_pids(
    server: TidingsServer,
    workers: int,
    *,
    within: float = 20.0,
    not_pids: frozenset[int] = frozenset(),
) -> dict[str, int]:
    """``{node id: pid}`` of every worker, from /healthz on fresh connections (the kernel
    spreads them over the workers); pids in ``not_pids`` (dead workers) do not count."""
    pids: dict[str, int] = {}
    async with asyncio.timeout(within):
        while len(pids) < workers:
            health = await worker_health(server)
            if health is None or health[1] in not_pids:
                await asyncio.sleep(HEALTH_POLL_INTERVAL)  # a poll interval
                continue
            pids[health[0]] = health[1]
    return pids


@pytest.fixture
async def tidings_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Factory: `server = await tidings_server(*extra_args, env=None, port=None)`.

    Runs `sys.executable -m tidings serve --host 127.0.0.1 --port <port> *extra_args`
    with `env` added to this process's environment, logging to a file in tmp_path,
    and returns once GET /healthz answers 200. Every server it started is stopped
    (SIGTERM, SIGKILL after 5 s) at teardown. Pass `port=` to restart on the same port.
    """
    servers: list[TidingsServer] = []

    async def start_server(
        *extra_args: str, env: Mapping[str, str] | None = None, port: int | None = None
    ) -> TidingsServer:
        port = port or free_port()
        log_path = tmp_path / f"tidings-{port}-{len(servers)}.log"
        args = [sys.executable, "-m", "tidings", "serve", "--host", "127.0.0.1"]
        args += ["--port", str(port), *extra_args]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=full_env,
            )
        server = TidingsServer(proc, port, log_path)
        server.multiprocess = "--workers" in extra_args
        servers.append(server)
        await server.wait_healthy()
        return server

    yield start_server

    for server in servers:
        await server.stop()


JsClientFactory = Callable[..., Awaitable[JsClient]]


@pytest.fixture
async def js_client() -> AsyncIterator[JsClientFactory]:
    """Factory: `client = await js_client("stompjs7" | "legacy", url, **start_kwargs)`.

    Starts a tests/js/agent.mjs process (see tests/jsclient.py); all are closed at teardown.
    """
    clients: list[JsClient] = []

    async def start(lib: str, url: str, **kwargs: Any) -> JsClient:
        client = await JsClient.start(lib, url, **kwargs)
        clients.append(client)
        return client

    yield start

    for client in clients:
        await client.close()


SHARED_STORES = ["redis", "amqp+pg"]
"""What the nodes of a cluster share: one Redis (routing and storage), or RabbitMQ
routing with the PostgreSQL inbox (issue 20)."""


@pytest.fixture(params=SHARED_STORES)
def shared_store(request: pytest.FixtureRequest) -> list[str]:
    """The arguments every node of one cluster takes: ``--broker`` (and ``--inbox``) on
    the session's Redis, or on a new RabbitMQ exchange and a new PostgreSQL database."""
    if request.param == "redis":
        return ["--broker", request.getfixturevalue("redis_server").url]
    rabbit = request.getfixturevalue("rabbit_server")
    database = request.getfixturevalue("postgres_db")
    return ["--broker", rabbit.url(), "--inbox", database.url]
