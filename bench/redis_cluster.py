"""A private Redis Cluster (issue 18): 3 masters, optionally replicas, a password, TLS.

Shared by the tests (tests/cluster_fixture.py: one cluster per session) and the bench
(bench/systems.py ``tidings-cluster``: its nodes pinned to the server core). Every node is
a real ``redis-server --cluster-enabled yes`` on 127.0.0.1, on a port whose bus port (+10000)
is free too; ``redis-cli --cluster create`` assigns the 16384 slots, and ``start`` returns
once ``CLUSTER INFO`` says ``cluster_state:ok`` on every node and every replica is in sync.
Failures raise ``BenchError`` saying what did not happen.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis

from bench.procs import BenchError

START_TIMEOUT = 30.0
STOP_GRACE = 5.0
BUS_OFFSET = 10000


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def bench_cluster_port() -> int:
    """A free port in 20000-22000 whose bus port (30000-32000) is free too: both below the
    ephemeral range, so no outgoing connection takes them before the node binds."""
    for _ in range(200):
        port = random.randint(20_000, 22_000)
        if port_free(port) and port_free(port + BUS_OFFSET):
            return port
    raise BenchError("no free port pair (p, p+10000) between 20000 and 22000")


@dataclass(frozen=True)
class Tls:
    """The files of a TLS cluster: every node's certificate and key, and the CA."""

    ca: Path
    cert: Path
    key: Path


class RedisCluster:
    """``masters`` masters with ``replicas`` replicas each, all on 127.0.0.1.

    ``core``: taskset's CPU list for every node (None: not pinned). ``password``: every
    node's ``requirepass`` and ``masterauth``. ``tls``: the nodes speak only TLS (clients,
    replication and the cluster bus).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        masters: int = 3,
        replicas: int = 0,
        port: Callable[[], int] = bench_cluster_port,
        core: str | None = None,
        password: str | None = None,
        tls: Tls | None = None,
    ) -> None:
        self.workdir = workdir
        self.ports = [port() for _ in range(masters * (1 + replicas))]
        self.replicas = replicas
        self.core = core
        self.password = password
        self.tls = tls
        scheme = "rediss+cluster" if tls else "redis+cluster"
        auth = f":{quote(password, safe='')}@" if password else ""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports[:masters])
        query = f"?ssl_ca_certs={quote(str(tls.ca))}" if tls else ""
        self.url = f"{scheme}://{auth}{hosts}{query}"
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def processes(self) -> dict[int, subprocess.Popen[bytes]]:
        """Each node's process, by port."""
        return dict(self._procs)

    def start(self) -> None:
        """Start every node, create the cluster, wait until every node says it is ok."""
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            raise BenchError(
                "redis-server / redis-cli are not on PATH (Debian package redis-server)"
            )
        for port in self.ports:
            self._start_node(binary, port)
        deadline = time.monotonic() + START_TIMEOUT
        for port in self.ports:
            self._until(lambda p=port: self._ping(p), deadline, f"node {port} answers PING")
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        replicas = ["--cluster-replicas", str(self.replicas)]
        created = subprocess.run(
            [cli, *self._cli_args(), "--cluster", "create", *nodes, *replicas, "--cluster-yes"],
            capture_output=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        if created.returncode != 0:
            self.stop()
            out = (created.stdout + created.stderr).decode(errors="replace")
            raise BenchError(f"redis-cli --cluster create failed:\n{out}")
        for port in self.ports:
            self._until(lambda p=port: self._ok(p), deadline, f"node {port} cluster_state:ok")
        for port in self.ports:
            self._until(lambda p=port: self._synced(p), deadline, f"replica {port} in sync")

    def _cli_args(self) -> list[str]:
        args = ["-a", self.password, "--no-auth-warning"] if self.password else []
        if self.tls:
            args += ["--tls", "--cacert", str(self.tls.ca)]
        return args

    def _synced(self, port: int) -> bool:
        """A master, or a replica whose link to its master is up."""
        with self.client(port) as client:
            info = client.info("replication")
        return bool(info.get("role") == "master" or info.get("master_link_status") == "up")

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

    def _start_node(self, binary: str, port: int) -> None:
        node_dir = self.workdir / str(port)
        node_dir.mkdir(exist_ok=True)
        args = ["taskset", "-c", self.core, binary] if self.core else [binary]
        args += ["--bind", "127.0.0.1", "--daemonize", "no", "--maxclients", "10000"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(node_dir)]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", "2000", "--repl-diskless-sync-delay", "0"]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(port), "--tls-cluster", "yes"]
            args += ["--tls-replication", "yes", "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            args += ["--tls-ca-cert-file", str(self.tls.ca)]
        else:
            args += ["--port", str(port)]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
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
                raise BenchError(f"redis cluster: not true within {START_TIMEOUT}s: {what}")
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

    def client_kwargs(self) -> dict[str, Any]:
        """redis-py connection options for any node: the password, TLS."""
        kwargs: dict[str, Any] = {"password": self.password, "socket_timeout": 2.0}
        if self.tls:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.tls.ca))
        return kwargs

    def client(self, port: int) -> redis.Redis:
        """A plain (not cluster-aware) client of one node."""
        return redis.Redis(host="127.0.0.1", port=port, **self.client_kwargs())

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

    def calls(self) -> dict[int, dict[str, int]]:
        """Each master's ``INFO commandstats`` call counts, by port and command."""
        out: dict[int, dict[str, int]] = {}
        for port in self.masters():
            with self.client(port) as client:
                stats = client.info("commandstats")
            out[port] = {
                name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()
            }
        return out

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


@contextlib.contextmanager
def running_cluster(workdir: Path, **options: Any) -> Iterator[RedisCluster]:
    """A started cluster in ``workdir`` (``RedisCluster``'s options); stopped on exit."""
    cluster = RedisCluster(workdir, **options)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
