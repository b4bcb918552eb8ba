"""A private Redis Cluster for the tests (issue 18): 3 masters, optionally replicas.

The cluster itself is bench/redis_cluster.py's (the bench's ``tidings-cluster`` starts the
same one), on ports below 55536 (the cluster bus listens on port + 10000) that this run
hands out once. Start-up takes about a second, so the suite starts one cluster per session
(``redis_cluster``) and empties it before each test (``cluster``: ``FLUSHALL`` on every
master, ``SCRIPT FLUSH`` too).

Example::

    def test_spread(cluster):
        url = cluster.url  # redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bench.redis_cluster
import pytest
import redis
import redis.asyncio.cluster
from bench.procs import BenchError
from bench.redis_cluster import BUS_OFFSET, port_free

from .ports import _handed_out

MAX_PORT = 65535 - BUS_OFFSET


def cluster_port() -> int:
    """A free port below 55536 whose bus port (+10000) is free too, never handed out twice."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port > MAX_PORT:  # the kernel's ephemeral range reaches 60999: shift it down
            port -= BUS_OFFSET + 10000
        bus = port + BUS_OFFSET
        if {port, bus} & _handed_out or not (port_free(port) and port_free(bus)):
            continue
        _handed_out.update((port, bus))
        return port


class RedisCluster(bench.redis_cluster.RedisCluster):
    """bench/redis_cluster.py's cluster on ports this run hands out once, failing the test
    (not raising ``BenchError``) when it does not start."""

    def __init__(self, workdir: Path, **options: Any) -> None:
        super().__init__(workdir, port=cluster_port, **options)

    def start(self) -> None:
        try:
            super().start()
        except BenchError as exc:
            pytest.fail(str(exc))

    def restart(self) -> None:
        try:
            super().restart()
        except BenchError as exc:
            pytest.fail(str(exc))

    def async_client(self) -> redis.asyncio.cluster.RedisCluster:
        """A cluster-aware asyncio client; close it with ``aclose()``."""
        nodes = [redis.asyncio.cluster.ClusterNode("127.0.0.1", p) for p in self.ports]
        return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, socket_timeout=2.0)


class _SharedClient(redis.asyncio.cluster.RedisCluster):
    """A cluster client that tests may "close" after each use: ``ClusterServer`` closes it."""

    async def aclose(self) -> None:
        return None

    async def close_shared(self) -> None:
        await super().aclose()


class ClusterServer:
    """The cluster where the contract suites use a ``RedisServer``: ``client()`` and
    ``stop()`` (the ``cluster`` fixture starts it again for the next test).

    ``client()`` is one client, loaded once (``open``): a cluster client's first command
    reads the slot map and ``COMMAND``, which may take longer than a test's timing allows.
    """

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self.url = cluster.url
        nodes = [redis.asyncio.cluster.ClusterNode("127.0.0.1", p) for p in cluster.ports]
        self._client = _SharedClient(startup_nodes=nodes, socket_timeout=2.0)

    async def open(self) -> None:
        await self._client.initialize()

    async def close(self) -> None:
        await self._client.close_shared()

    def client(self) -> redis.asyncio.cluster.RedisCluster:
        return self._client

    async def stop(self) -> None:
        await asyncio.to_thread(self.cluster.stop)


@contextlib.contextmanager
def running_cluster(**options: Any) -> Iterator[RedisCluster]:
    """A started cluster (``RedisCluster``'s options: masters, replicas, password, tls) in a
    temporary directory; stopped and removed on exit."""
    with tempfile.TemporaryDirectory(prefix="tidings-cluster-") as workdir:
        cluster = RedisCluster(Path(workdir), **options)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One 3-master cluster for the whole session (see the module docstring)."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    """The session's cluster, emptied for this test (started again if a test stopped it)."""
    if not redis_cluster.running:
        redis_cluster.restart()
    redis_cluster.flush()
    return redis_cluster
