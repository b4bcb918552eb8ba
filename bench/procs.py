"""Processes the benchmark starts: pinned with taskset, measured from /proc, always stopped."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SERVER_CORE = "0"
CLIENT_CORE = "1"


class BenchError(Exception):
    """Something the benchmark needs did not work; the message says what."""


def free_port() -> int:
    """A free TCP port below the ephemeral range (32768-60999 here), so that no outgoing
    connection can take it between this check and the server's bind."""
    for _ in range(200):
        port = random.randint(20_000, 32_000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise BenchError("no free port between 20000 and 32000")


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (proc(5) /proc/pid/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def tree_ticks(pid: int) -> int:
    """CPU of ``pid``'s whole process tree in clock ticks: utime + stime + cutime + cstime
    of each live process (a child that ended and was reaped is in its parent's cutime),
    as loadgen.mjs meters every process it is given (a PostgreSQL cluster's backends are
    the postmaster's children). OSError if ``pid`` itself is gone."""
    total = 0
    for current in tree_pids(pid):
        try:
            with open(f"/proc/{current}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            if current == pid:
                raise
            continue
        total += sum(int(v) for v in fields[11:15])
    return total


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/pid/status (VmRSS, VmHWM), or 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    return status_kb(pid, "VmRSS")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (proc(5) /proc/pid/task/tid/children)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo += [int(child) for child in f.read().split()]
    return pids


def nofile_limit(pid: int) -> int | None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


@dataclass
class Proc:
    """A started process; ``stop`` ends it (SIGTERM, then SIGKILL) by its own pid."""

    name: str
    popen: subprocess.Popen[bytes] | None
    pid: int
    log: Path | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True

    def stop(self, grace: float = 5.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive():
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)

    def log_tail(self, lines: int = 20) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Registry:
    """Every process the run started, so that a failure or ^C still stops them all."""

    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        core: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        log = log_dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                ["taskset", "-c", core, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        proc = Proc(name, popen, popen.pid, log)
        self.procs.append(proc)
        return proc

    def adopt(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


def wait_port(port: int, proc: Proc, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited early:\n{proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{proc.name}: nothing listens on port {port} after {within} s")


def wait_http_ok(url: str, proc: Proc, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited early:\n{proc.log_tail()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.05)
    raise BenchError(f"{proc.name}: {url} did not answer 200 within {within} s")


class Meter:
    """CPU (% of one core, each with its process tree) and RSS of some processes between
    ``start`` and ``stop``."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = {name: pid for name, pid in procs.items() if pid}
        self._t0 = 0.0
        self._ticks: dict[str, int] = {}

    def start(self) -> Meter:
        self._t0 = time.monotonic()
        self._ticks = {name: _ticks_or_zero(pid) for name, pid in self.procs.items()}
        return self

    def stop(self) -> dict[str, dict[str, float]]:
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        out: dict[str, dict[str, float]] = {}
        for name, pid in self.procs.items():
            used = (_ticks_or_zero(pid) - self._ticks[name]) / CLK_TCK
            out[name] = {
                "cpu_pct": round(100 * used / elapsed, 1),
                "rss_mb": round(rss_kb(pid) / 1024, 1),
                "peak_rss_mb": round(status_kb(pid, "VmHWM") / 1024, 1),
            }
        return out


def _ticks_or_zero(pid: int) -> int:
    try:
        return tree_ticks(pid)
    except OSError:
        return 0


def core_busy(seconds: float) -> dict[str, float]:
    """Busy % of each core over ``seconds`` (proc(5) /proc/stat), whoever used it."""

    def sample() -> dict[str, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *values = line.split()
                if name.startswith("cpu") and name != "cpu":
                    v = [int(x) for x in values[:8]]
                    out["core" + name[3:]] = (sum(v) - v[3] - v[4], sum(v))
        return out

    a = sample()
    time.sleep(seconds)
    b = sample()
    return {
        core: round(100 * (b[core][0] - a[core][0]) / max(b[core][1] - a[core][1], 1), 1)
        for core in a
    }


BACKING = ("redis", "rabbitmq", "postgresql")
"""The names (prefixes) under which the servers that back a system's nodes are metered."""


def interference(cpu: dict[str, float]) -> dict[str, float]:
    """CPU on each core used by processes the bench did not start, from a loadgen
    ``cpuPct`` (servers and what backs them, Redis or RabbitMQ and PostgreSQL with their
    process trees, run on core 0; the loadgen and publisher on core 1)."""
    ours0 = sum(v for k, v in cpu.items() if k.startswith(("server-", *BACKING)))
    ours1 = sum(v for k, v in cpu.items() if k in ("loadgen", "publisher"))
    out = {}
    if "core0" in cpu and cpu["core0"] is not None:
        out["core0"] = round(max(0.0, cpu["core0"] - ours0), 1)
    if "core1" in cpu and cpu["core1"] is not None:
        out["core1"] = round(max(0.0, cpu["core1"] - ours1), 1)
    return out


# -- Redis ------------------------------------------------------------------------------
def start_redis(reg: Registry, log_dir: Path) -> tuple[Proc, str]:
    """A private redis-server on a free loopback port (never the machine's 6379)."""
    if shutil.which("redis-server") is None:
        raise BenchError("redis-server is not installed (./run setup installs it)")
    port = free_port()
    proc = reg.start(
        "redis",
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--maxclients",
            "10000",
            "--dir",
            str(log_dir),
        ],
        core=SERVER_CORE,
        log_dir=log_dir,
    )
    wait_port(port, proc)
    return proc, f"redis://127.0.0.1:{port}/0"


def redis_flushall(url: str) -> None:
    """FLUSHALL over a raw socket (RESP), so the bench needs no Redis client library."""
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    with socket.create_connection((host, int(port)), 5) as sock:
        sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
        sock.recv(64)


# -- RabbitMQ -----------------------------------------------------------------------------
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


@dataclass
class RabbitNode:
    name: str  # Erlang node name, e.g. tbench1-1234@localhost
    amqp_port: int
    dist_port: int
    web_stomp_port: int
    base: Path
    proc: Proc | None = None


class RabbitCluster:
    """Private RabbitMQ nodes with Web-STOMP, each with its own data dir and ports.

    The machine's own RabbitMQ keeps its default open-file limit (1024, so about 830
    sockets), too few for S3; private nodes inherit this shell's limit instead and leave
    the machine's node untouched.
    """

    _count = 0

    def __init__(
        self,
        reg: Registry,
        work: Path,
        log_dir: Path,
        *,
        web_stomp: bool = True,
        core: str = SERVER_CORE,
        ctl_core: str = CLIENT_CORE,
    ) -> None:
        self.reg = reg
        self.work = work
        self.log_dir = log_dir
        self.home = work / "home"
        self.nodes: list[RabbitNode] = []
        self.web_stomp = web_stomp
        """Enable the Web-STOMP and STOMP plugins (the bench's peer); AMQP alone without."""
        self.core = core
        """taskset's CPU list for the nodes (tests pass "0-1": the whole machine)."""
        self.ctl_core = ctl_core
        self._peers: dict[str, list[str]] = {}
        RabbitCluster._count += 1
        self._tag = f"{os.getpid()}-{RabbitCluster._count}"

    @staticmethod
    def available() -> bool:
        return (RABBIT_BIN / "rabbitmq-server").exists()

    def _env(self, node: RabbitNode, peers: Sequence[str]) -> dict[str, str]:
        conf = node.base / "rabbitmq.conf"
        lines = [
            f"listeners.tcp.local = 127.0.0.1:{node.amqp_port}",
            "loopback_users = none",
            "log.console = false",
            "log.file.level = warning",
        ]
        if self.web_stomp:
            lines += [
                f"web_stomp.tcp.port = {node.web_stomp_port}",
                "web_stomp.tcp.ip = 127.0.0.1",
                f"stomp.listeners.tcp.1 = 127.0.0.1:{free_port()}",
            ]
        if peers:
            lines.append("cluster_formation.peer_discovery_backend = classic_config")
            lines += [
                f"cluster_formation.classic_config.nodes.{i} = {peer}"
                for i, peer in enumerate(peers, 1)
            ]
        conf.write_text("\n".join(lines) + "\n")
        plugins = "rabbitmq_web_stomp" if self.web_stomp else ""
        (node.base / "enabled_plugins").write_text(f"[{plugins}].\n")
        return {
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(node.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.log_dir / node.name.split("@")[0]),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(conf),
            "RABBITMQ_CONF_ENV_FILE": "/dev/null",
            "RABBITMQ_PID_FILE": str(node.base / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def ctl(self, node: RabbitNode, *args: str, timeout: float = 90) -> str:
        env = {**os.environ, "HOME": str(self.home), "ERL_EPMD_ADDRESS": "127.0.0.1"}
        ctl = str(RABBIT_BIN / "rabbitmqctl")
        done = subprocess.run(
            ["taskset", "-c", self.ctl_core, ctl, "-n", node.name, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def start(self, count: int) -> list[RabbitNode]:
        """Start ``count`` nodes on the server core; the later ones join the first."""
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(f"TIDINGSBENCH{os.getpid()}")
            cookie.chmod(0o400)
        first = None
        for index in range(count):
            node = RabbitNode(
                name=f"tbench{index + 1}-{self._tag}@localhost",
                amqp_port=free_port(),
                dist_port=free_port(),
                web_stomp_port=free_port(),
                base=self.work / f"node{len(self.nodes) + 1}",
            )
            (node.base / "log").mkdir(parents=True, exist_ok=True)
            self._peers[node.name] = [first.name, node.name] if first else []
            self.nodes.append(node)
            self.start_node(node)
            if first is None:
                first = node
        if count > 1 and first is not None:
            status = self.ctl(first, "cluster_status")
            missing = [n.name for n in self.nodes if n.name not in status]
            if missing:
                raise BenchError(f"RabbitMQ nodes did not form a cluster: {missing}")
        return self.nodes

    def start_node(self, node: RabbitNode) -> None:
        """Boot ``node`` (again, after ``stop_node``) on its own ports and data dir."""
        env = self._env(node, self._peers.get(node.name, []))
        done = subprocess.run(
            ["taskset", "-c", self.core, str(RABBIT_BIN / "rabbitmq-server"), "-detached"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"rabbitmq-server failed: {done.stderr or done.stdout}")
        try:
            self.ctl(node, "wait", str(node.base / "pid"), "--timeout", "90")
        except BenchError as exc:
            raise BenchError(f"{exc}\n{self._boot_error(node)}") from None
        pid = int((node.base / "pid").read_text().strip())
        number = self.nodes.index(node) + 1
        node.proc = self.reg.adopt(Proc(f"rabbitmq-{number}", None, pid, None))

    def stop_node(self, node: RabbitNode) -> None:
        """Stop ``node`` (``rabbitmqctl stop``, then by its pid); its data dir stays."""
        if node.proc is None:
            return
        with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
            self.ctl(node, "stop", timeout=30)
        self.reg.stop(node.proc)
        node.proc = None

    def _boot_error(self, node: RabbitNode) -> str:
        """The lines around BOOT FAILED in the node's log, if it wrote one."""
        logs = sorted((self.log_dir / node.name.split("@")[0]).glob("*.log"))
        text = "\n".join(p.read_text(errors="replace") for p in logs if "upgrade" not in p.name)
        at = text.find("BOOT FAILED")
        return text[at : at + 1500] if at >= 0 else text[-1500:]

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.stop_node(node)
        self.nodes.clear()
