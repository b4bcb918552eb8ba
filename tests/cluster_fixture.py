"""A private Redis Cluster for the tests (issue 18): 3 masters, optionally 3 replicas.

Every node is a real ``redis-server --cluster-enabled yes`` on 127.0.0.1, on a port below
55536 (the cluster bus listens on port + 10000); ``redis-cli --cluster create`` assigns
the 16384 slots, and ``start`` returns once ``CLUSTER INFO`` says ``cluster_state:ok`` on
every node and every node knows every master's slots. Start-up takes about a second, so
the suite starts one cluster per session (``redis_cluster``) and empties it before each
test (``cluster``: ``FLUSHALL`` on every master, ``SCRIPT FLUSH`` too).

Example::

    def test_spread(cluster):
        url = cluster.url  # redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio.cluster

from .ports import _handed_out

START_TIMEOUT = 30.0
STOP_GRACE = 5.0
BUS_OFFSET = 10000
MAX_PORT = 65535 - BUS_OFFSET


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port below 55536 whose bus port (+10000) is free too, never handed out twice."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port > MAX_PORT:  # the kernel's ephemeral range reaches 60999: shift it down
            port -= BUS_OFFSET + 10000
        bus = port + BUS_OFFSET
        if {port, bus} & _handed_out or not (_free(port) and _free(bus)):
            continue
        _handed_out.update((port, bus))
        return port


class RedisCluster:
    """``masters`` masters with ``replicas`` replicas each, all on 127.0.0.1."""

    def __init__(self, workdir: Path, *, masters: int = 3, replicas: int = 0) -> None:
        self.workdir = workdir
        self.ports = [cluster_port() for _ in range(masters * (1 + replicas))]
        self.replicas = replicas
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:masters])
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        """Start every node, create the cluster, wait until every node says it is ok."""
        binary = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if binary is None or cli is None:
            pytest.fail("redis-server / redis-cli are not on PATH (Debian package redis-server)")
        for port in self.ports:
            self._start_node(binary, port)
        deadline = time.monotonic() + START_TIMEOUT
        for port in self.ports:
            self._until(lambda p=port: self._ping(p), deadline, f"node {port} answers PING")
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        replicas = ["--cluster-replicas", str(self.replicas)]
        created = subprocess.run(
            [cli, "--cluster", "create", *nodes, *replicas, "--cluster-yes"],
            capture_output=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        if created.returncode != 0:
            self.stop()
            pytest.fail(f"redis-cli --cluster create failed:\n{created.stdout.decode()}")
        for port in self.ports:
            self._until(lambda p=port: self._ok(p), deadline, f"node {port} cluster_state:ok")
        for port in self.ports:
            self._until(lambda p=port: self._synced(p), deadline, f"replica {port} in sync")

    def _synced(self, port: int) -> bool:
        """A master, or a replica whose link to its master is up."""
        with self.client(port) as client:
            info = client.info("replication")
        return info.get("role") == "master" or info.get("master_link_status") == "up"

    def revive(self, port: int) -> None:
        """Start a killed node again on its port, from its nodes.conf (it rejoins; a former
        master whose replica took over becomes that one's replica)."""
        binary = shutil.which("redis-server")
        assert binary is not None
        self._start_node(binary, port)

    def kill(self, port: int) -> None:
        """SIGKILL one node: no shutdown, no goodbye to its clients or its replicas."""
        proc = self._procs[port]
        proc.kill()
        proc.wait()

    @property
    def running(self) -> bool:
        """True while every node's process runs."""
        procs = self._procs.values()
        return len(self._procs) == len(self.ports) and all(p.poll() is None for p in procs)

    def restart(self) -> None:
        """Start every node again on its port, from its nodes.conf (the data is gone: no
        persistence); return once the cluster is ok again."""
        self.stop()
        binary = shutil.which("redis-server")
        assert binary is not None
        for port in self.ports:
            self._start_node(binary, port)
        deadline = time.monotonic() + START_TIMEOUT
        for port in self.ports:
            self._until(lambda p=port: self._ping(p) and self._ok(p), deadline, f"{port} ok")

    def async_client(self) -> redis.asyncio.cluster.RedisCluster:
        """A cluster-aware asyncio client; close it with ``aclose()``."""
        nodes = [redis.asyncio.cluster.ClusterNode("127.0.0.1", p) for p in self.ports]
        return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, socket_timeout=2.0)

    def _start_node(self, binary: str, port: int) -> None:
        node_dir = self.workdir / str(port)
        node_dir.mkdir(exist_ok=True)
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(node_dir)]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", "2000", "--repl-diskless-sync-delay", "0"]
        log = (node_dir / "redis.log").open("ab")
        with log:
            self._procs[port] = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def _until(self, condition: object, deadline: float, what: str) -> None:
        assert callable(condition)
        while not condition():
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis cluster: not true within {START_TIMEOUT}s: {what}")
            time.sleep(0.05)

    def _ping(self, port: int) -> bool:
        try:
            with self.client(port) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def _ok(self, port: int) -> bool:
        """cluster_state:ok and all 16384 slots known to this node."""
        with self.client(port) as client:
            info = client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and "cluster_slots_ok:16384" in text

    def client(self, port: int) -> redis.Redis:
        """A plain (not cluster-aware) client of one node."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0)

    def masters(self) -> list[int]:
        """The ports of the live nodes that are masters (with slots) now."""
        out = []
        for port, proc in self._procs.items():
            if proc.poll() is not None:
                continue
            with self.client(port) as client:
                if client.execute_command("ROLE")[0] == b"master":
                    out.append(port)
        return out

    def owner(self, slot: int, *, ask: int | None = None) -> int | None:
        """The port of the master serving ``slot`` as node ``ask`` (the first live master)
        sees it now."""
        port = ask if ask is not None else self.masters()[0]
        with self.client(port) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        return None

    def flush(self) -> None:
        """Empty every master: keys and the script cache."""
        for port in self.masters():
            with self.client(port) as client:
                client.flushall()
                client.script_flush()

    def stop(self) -> None:
        """SIGTERM every node, SIGKILL past STOP_GRACE; wait for each."""
        procs, self._procs = self._procs, {}
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
def running_cluster(*, masters: int = 3, replicas: int = 0) -> Iterator[RedisCluster]:
    """A started cluster in a temporary directory; stopped and removed on exit."""
    with tempfile.TemporaryDirectory(prefix="tidings-cluster-") as workdir:
        cluster = RedisCluster(Path(workdir), masters=masters, replicas=replicas)
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
