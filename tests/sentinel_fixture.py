"""A private Redis master, one replica and three sentinels per test (Redis Sentinel).

Every process is a real ``redis-server`` on a free port of 127.0.0.1; the sentinels run
``redis-server <generated config> --sentinel`` and watch the master as ``tidings``, with
``down-after-milliseconds`` 1000 so a killed master is failed over within seconds.
``ready()`` returns once every sentinel sees the replica and the other two sentinels:
only then can they agree on a failover.

Example::

    async def test_failover(sentinels):
        url = sentinels.url  # redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,.../tidings
        await sentinels.kill_master()
        new = await sentinels.wait_for_failover()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio

from .ports import free_port
from .processes import terminate
from .redis_fixture import POLL_INTERVAL, START_TIMEOUT, RedisServer, _answers_ping

MASTER_NAME = "tidings"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
READY_TIMEOUT = 20.0
FAILOVER_WAIT = 30.0


class Replicated:
    """A master and one replica of it (``replica.url``), both RedisServer."""

    def __init__(self, workdir: Path) -> None:
        # A full sync starts at once, not after Redis' default 5 s of waiting for more
        # replicas to share it; either may be the master.
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        self.master = RedisServer(workdir, fast_sync)
        self.replica = RedisServer(workdir, fast_sync)
        self.replica.extra_args += ["--replicaof", "127.0.0.1", str(self.master.port)]

    async def start(self) -> None:
        await self.master.start()
        await self.replica.start()
        await wait_for(lambda: _link_up(self.replica), "the replica's link to its master")

    async def stop(self) -> None:
        await self.replica.stop()
        await self.master.stop()


class Sentinels:
    """``count`` sentinels (three: enough to agree on a failover) watching
    ``servers.master`` under MASTER_NAME, with ``quorum`` votes to call it down."""

    def __init__(
        self, workdir: Path, servers: Replicated, *, count: int = 3, quorum: int = 2
    ) -> None:
        self.workdir = workdir
        self.servers = servers
        self.quorum = quorum
        self.ports = [free_port() for _ in range(count)]
        self.url = "redis+sentinel://{}/{}".format(
            ",".join(f"127.0.0.1:{port}" for port in self.ports), MASTER_NAME
        )
        self._procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH (Debian package redis-server)")
        for port in self.ports:
            conf = self.workdir / f"sentinel-{port}.conf"  # sentinels rewrite their config
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self.workdir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.servers.master.port} "
                f"{self.quorum}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            log = (self.workdir / f"sentinel-{port}.log").open("ab")
            with log:
                self._procs.append(
                    await asyncio.create_subprocess_exec(
                        binary,
                        str(conf),
                        "--sentinel",
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        for port in self.ports:
            await wait_for(functools.partial(_answers_ping, port), f"sentinel {port}")

    async def ready(self) -> None:
        """Return once every sentinel knows the replica and both other sentinels."""

        async def knows_all() -> bool:
            for port in self.ports:
                state = await self.master_state(port)
                if int(state.get("num-slaves", 0)) < 1:
                    return False
                if int(state.get("num-other-sentinels", 0)) < len(self.ports) - 1:
                    return False
            return True

        await wait_for(knows_all, "the sentinels to know each other and the replica")

    async def master_state(self, port: int) -> dict[str, str]:
        client = redis.asyncio.Redis(
            host="127.0.0.1", port=port, socket_timeout=2.0, decode_responses=True
        )
        try:
            reply = await client.execute_command("SENTINEL", "MASTER", MASTER_NAME)
        finally:
            await client.aclose()
        if isinstance(reply, dict):
            return {str(k): str(v) for k, v in reply.items()}
        return dict(zip(reply[::2], reply[1::2], strict=True))

    async def master_port(self) -> int:
        """The master's port as the first sentinel sees it."""
        return int((await self.master_state(self.ports[0]))["port"])

    async def kill_master(self) -> None:
        """SIGKILL the master's redis-server."""
        await self.servers.master.kill()

    async def wait_for_failover(self, old_port: int) -> int:
        """Wait until every sentinel names a master other than ``old_port``; its port."""

        async def moved() -> bool:
            ports = {await self.master_port_of(port) for port in self.ports}
            return len(ports) == 1 and old_port not in ports

        await wait_for(moved, "the sentinels to promote the replica", FAILOVER_WAIT)
        return await self.master_port()

    async def master_port_of(self, port: int) -> int:
        return int((await self.master_state(port))["port"])

    async def stop(self) -> None:
        for proc in self._procs:
            await terminate(proc, 5.0)


async def wait_for(
    check: Callable[[], Awaitable[bool]], what: str, within: float = READY_TIMEOUT
) -> None:
    """Poll ``check`` until it is true; fail the test after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() >= deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL * 5)


async def _link_up(server: RedisServer) -> bool:
    client = server.client()
    try:
        info = await client.info("replication")
    finally:
        await client.aclose()
    return info.get("master_link_status") == "up"


@contextlib.asynccontextmanager
async def one_sentinel(workdir: Path) -> AsyncIterator[Sentinels]:
    """A master, its replica and one sentinel that knows them (no failover: one sentinel
    never has a quorum of three): the cheap setup of the contract suites."""
    servers = Replicated(workdir)
    cluster = Sentinels(workdir, servers, count=1, quorum=1)
    try:
        await servers.start()
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()
        await servers.stop()


@pytest.fixture
async def replicated(tmp_path: Path) -> AsyncIterator[Replicated]:
    """A master and one replica, both running; stopped at teardown."""
    servers = Replicated(tmp_path)
    try:
        await servers.start()
        yield servers
    finally:
        await servers.stop()


@pytest.fixture
async def sentinels(replicated: Replicated, tmp_path: Path) -> AsyncIterator[Sentinels]:
    """Three sentinels watching ``replicated``, ready to fail it over."""
    cluster = Sentinels(tmp_path, replicated)
    try:
        await cluster.start()
        await cluster.ready()
        yield cluster
    finally:
        await cluster.stop()


__all__ = ["START_TIMEOUT", "Replicated", "Sentinels", "one_sentinel", "replicated", "sentinels"]
