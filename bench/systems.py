"""The systems under test: how to start N nodes of each and how clients reach them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import (
    SERVER_CORE,
    BenchError,
    Proc,
    RabbitCluster,
    Registry,
    free_port,
    wait_http_ok,
    wait_port,
)
from bench.redis_cluster import RedisCluster

BENCH_DIR = Path(__file__).resolve().parent


@dataclass
class Context:
    """What every deployment needs: the process registry, Redis, where to write logs."""

    reg: Registry
    log_dir: Path
    work_dir: Path
    redis_url: str
    redis_pid: int
    tidings_env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable


@dataclass
class Deployment:
    system: str
    servers: list[Proc]
    proto: str  # "stomp" or "sio"
    flavor: str | None
    targets: list[dict[str, Any]]
    topic_dest: str
    user_dest: str
    publisher: dict[str, Any]
    uses_redis: bool
    stop: Callable[[], None]
    redis_pids: dict[str, int] | None = None
    """The Redis processes to meter, by name (None: the context's one Redis)."""
    redis_calls: Callable[[], dict[str, dict[str, int]]] | None = None
    """Each Redis master's ``INFO commandstats`` call counts now (a cluster's spread)."""
    services: dict[str, int] = field(default_factory=dict)
    """Other processes of the deployment to meter, by name (tidings-amqp-pg's RabbitMQ)."""

    def client_spec(self, destination: str, **extra: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "proto": self.proto,
            "flavor": self.flavor,
            "targets": self.targets,
            "destination": destination,
        }
        spec.update(extra)
        return spec

    def meter_pids(self, ctx: Context) -> dict[str, int]:
        pids = {f"server-{i + 1}": proc.pid for i, proc in enumerate(self.servers)}
        if self.redis_pids is not None:
            pids.update(self.redis_pids)
        elif self.uses_redis:
            pids["redis"] = ctx.redis_pid
        return {**pids, **self.services}


@dataclass(frozen=True)
class System:
    key: str
    label: str
    describe: str
    deploy: Callable[[Context, int], Deployment]
    family: str | None = None
    """The ``--systems`` name that selects it besides its key (a second publish path)."""


def _start_nodes(
    ctx: Context,
    nodes: int,
    start: Callable[[int, int], Proc],
    ready: Callable[[Proc, int], None],
) -> tuple[list[Proc], list[int]]:
    """Start ``nodes`` processes on free ports and wait for each; stop them all on failure."""
    procs: list[Proc] = []
    ports: list[int] = []
    try:
        for index in range(nodes):
            port = free_port()
            procs.append(start(index, port))
            ports.append(port)
        for proc, port in zip(procs, ports, strict=True):
            ready(proc, port)
    except BaseException:
        for proc in procs:
            ctx.reg.stop(proc)
        raise
    return procs, ports


def _stopper(ctx: Context, procs: list[Proc]) -> Callable[[], None]:
    def stop() -> None:
        for proc in procs:
            ctx.reg.stop(proc)

    return stop


def _tidings(
    broker: str, *, direct: bool = False, batch: bool = False, workers: int = 1
) -> Callable[[Context, int], Deployment]:
    """Tidings nodes; publishes over HTTP (``batch``: the batch route, one request per node
    per tick), or with ``direct`` through tidings.publisher. ``workers`` > 1: each server
    is ``--workers N`` (N node processes on one port, children of the one started)."""

    def deploy(ctx: Context, nodes: int) -> Deployment:
        cluster = _start_cluster(ctx) if broker == "redis-cluster" else None
        backing = _amqp_pg(ctx) if broker == "amqp-pg" else None
        try:
            return _deploy(ctx, nodes, cluster, backing)
        except BaseException:
            if cluster is not None:
                cluster.stop()
            if backing is not None:
                backing.stop()
            raise

    def _deploy(
        ctx: Context, nodes: int, cluster: RedisCluster | None, backing: _Backing | None
    ) -> Deployment:
        url = {"redis": ctx.redis_url, "memory": "memory://"}.get(broker)
        if cluster is not None:
            url = cluster.url
        if backing is not None:
            store = backing.args
        else:
            assert url is not None
            store = ["--broker", url]

        def start(index: int, port: int) -> Proc:
            argv = [ctx.python, "-m", "tidings", "serve", "--host", "127.0.0.1"]
            argv += ["--port", str(port), *store, "--node-id", f"bench-{index + 1}"]
            argv += ["--log-level", "warning"]
            if workers > 1:
                argv += ["--workers", str(workers)]
            return ctx.reg.start(
                f"tidings-{broker}-{index + 1}-{port}",
                argv,
                core=SERVER_CORE,
                log_dir=ctx.log_dir,
                env={"PYTHONUNBUFFERED": "1", **ctx.tidings_env},
                cwd=ctx.work_dir,
            )

        def ready(proc: Proc, port: int) -> None:
            wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc)

        procs, ports = _start_nodes(ctx, nodes, start, ready)
        publisher: dict[str, Any] = {
            "kind": "http",
            "targets": [{"port": port} for port in ports],
            "topicPath": "/api/v1/topics/bench/messages",
            "userPath": "/api/v1/users/{u}/messages",
            "poolSize": 16,
        }
        if batch:
            publisher.update(batchPath="/api/v1/messages", topicName="bench")
        if direct:
            publisher = {
                "kind": "pyhelper",
                "python": ctx.python,
                "script": str(BENCH_DIR / "peers" / "tidings_publisher.py"),
                "env": ctx.tidings_env,
                "redis": url,
                "topicRoom": "t:bench",
                "userRoom": "u:{u}",
            }
        deployment = Deployment(
            system=f"tidings-{broker}",
            servers=procs,
            proto="stomp",
            flavor="tidings",
            targets=[{"port": port, "path": "/stomp"} for port in ports],
            topic_dest="/topic/bench",
            user_dest="/user/{u}/message",
            publisher=publisher,
            uses_redis=broker not in ("memory", "amqp-pg"),
            stop=_then(_stopper(ctx, procs), backing.stop) if backing else _stopper(ctx, procs),
            services=backing.services if backing else {},
        )
        if cluster is not None:
            cluster_nodes = _adopt(ctx, cluster)
            deployment.redis_pids = {f"redis-{i + 1}": p.pid for i, p in enumerate(cluster_nodes)}
            deployment.redis_calls = lambda: {
                f"redis-{cluster.ports.index(port) + 1}": calls
                for port, calls in cluster.calls().items()
            }
            stop_nodes = deployment.stop

            def stop() -> None:
                stop_nodes()
                for node in cluster_nodes:
                    ctx.reg.stop(node)
                cluster.stop()

            deployment.stop = stop
        return deployment

    return deploy


@dataclass
class _Backing:
    """Private services the nodes share instead of Redis: their ``serve`` arguments, the
    processes to meter, and how to stop them."""

    args: list[str]
    services: dict[str, int]
    stop: Callable[[], None]


def _then(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        try:
            first()
        finally:
            second()

    return both


def _amqp_pg(ctx: Context) -> _Backing:
    """A private RabbitMQ node (AMQP only) and a private PostgreSQL (fsync off, the schema
    migrated; tests/postgres_fixture.py), both on the server core like the other systems'
    servers (issue 20). Both are metered with their process trees: RabbitMQ's node and
    PostgreSQL's postmaster with its backends (one process per connection)."""
    import asyncio  # noqa: PLC0415

    from tests.postgres_fixture import PgCluster  # noqa: PLC0415 - bench-only dependency

    rabbit = RabbitCluster(
        ctx.reg, ctx.work_dir / f"rabbit-{free_port()}", ctx.log_dir, web_stomp=False
    )
    postgres = PgCluster(wrap=("taskset", "-c", SERVER_CORE))
    try:
        (node,) = rabbit.start(1)
        postgres.start()
        database = asyncio.run(postgres.database())
    except BaseException:
        rabbit.stop()
        postgres.remove()
        raise
    amqp = f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/?exchange=bench"
    services = {"rabbitmq": node.proc.pid} if node.proc else {}
    if postgres.pid is not None:
        services["postgresql"] = postgres.pid
    return _Backing(
        ["--broker", amqp, "--inbox", database.url],
        services,
        _then(rabbit.stop, postgres.remove),
    )


def _start_cluster(ctx: Context) -> RedisCluster:
    """3 masters, no replicas, on the server core like the single Redis."""
    workdir = ctx.work_dir / f"cluster-{free_port()}"
    workdir.mkdir(parents=True)
    cluster = RedisCluster(workdir, core=SERVER_CORE)
    cluster.start()
    return cluster


def _adopt(ctx: Context, cluster: RedisCluster) -> list[Proc]:
    """The cluster's nodes in the registry (stopped on ^C like every other process)."""
    return [
        ctx.reg.adopt(Proc(f"redis-{i + 1}-{port}", popen, popen.pid, None))
        for i, (port, popen) in enumerate(cluster.processes.items())
    ]


def _socketio_node(ctx: Context, nodes: int) -> Deployment:
    def start(index: int, port: int) -> Proc:
        return ctx.reg.start(
            f"socketio-node-{index + 1}-{port}",
            ["node", str(BENCH_DIR / "peers" / "socketio_node.mjs"), str(port), ctx.redis_url],
            core=SERVER_CORE,
            log_dir=ctx.log_dir,
            cwd=BENCH_DIR,
        )

    procs, ports = _start_nodes(ctx, nodes, start, lambda proc, port: wait_port(port, proc))
    return Deployment(
        system="socketio-node",
        servers=procs,
        proto="sio",
        flavor=None,
        targets=[{"port": port} for port in ports],
        topic_dest="bench",
        user_dest="u{u}",
        publisher={
            "kind": "sioemit",
            "redis": ctx.redis_url,
            "topicRoom": "bench",
            "userRoom": "u{u}",
        },
        uses_redis=True,
        stop=_stopper(ctx, procs),
    )


def _python_socketio(ctx: Context, nodes: int) -> Deployment:
    def start(index: int, port: int) -> Proc:
        return ctx.reg.start(
            f"python-socketio-{index + 1}-{port}",
            [ctx.python, str(BENCH_DIR / "peers" / "socketio_py.py"), str(port), ctx.redis_url],
            core=SERVER_CORE,
            log_dir=ctx.log_dir,
            cwd=BENCH_DIR,
        )

    procs, ports = _start_nodes(ctx, nodes, start, lambda proc, port: wait_port(port, proc))
    return Deployment(
        system="python-socketio",
        servers=procs,
        proto="sio",
        flavor=None,
        targets=[{"port": port} for port in ports],
        topic_dest="bench",
        user_dest="u{u}",
        publisher={
            "kind": "pyhelper",
            "python": ctx.python,
            "script": str(BENCH_DIR / "peers" / "pysio_publisher.py"),
            "redis": ctx.redis_url,
            "topicRoom": "bench",
            "userRoom": "u{u}",
        },
        uses_redis=True,
        stop=_stopper(ctx, procs),
    )


def _rabbitmq(ctx: Context, nodes: int) -> Deployment:
    if not RabbitCluster.available():
        raise BenchError("rabbitmq-server is not installed")
    # A boot can fail on a port taken between free_port() and the node's bind: retry once.
    for attempt in (1, 2):
        cluster = RabbitCluster(ctx.reg, ctx.work_dir / f"rabbit-{free_port()}", ctx.log_dir)
        try:
            started = cluster.start(nodes)
            break
        except BenchError:
            cluster.stop()
            if attempt == 2:
                raise
        except BaseException:
            cluster.stop()
            raise
    targets = [{"port": node.web_stomp_port, "path": "/ws"} for node in started]
    return Deployment(
        system="rabbitmq",
        servers=[node.proc for node in started if node.proc is not None],
        proto="stomp",
        flavor="rabbit",
        targets=targets,
        topic_dest="/topic/bench",
        user_dest="/topic/user.{u}",
        publisher={
            "kind": "stomp",
            "flavor": "rabbit",
            "targets": targets[:1],
            "topicDest": "/topic/bench",
            "userDest": "/topic/user.{u}",
        },
        uses_redis=False,
        stop=cluster.stop,
    )


TIDINGS = System(
    "tidings",
    "Tidings (Redis broker)",
    "python -m tidings serve --broker redis://…; publishes: POST /api/v1/… (HTTP keep-alive)",
    _tidings("redis"),
)
TIDINGS_DIRECT = System(
    "tidings-direct",
    "Tidings (Redis broker), direct publisher",
    "the same nodes; publishes: tidings.publisher.Publisher straight to Redis (the inbox's "
    "Lua script, auto-pipelined), from a Python helper on the client core that publishes "
    "the scenario's fixed-rate schedule itself, as a back end would",
    _tidings("redis", direct=True),
    family="tidings",
)
TIDINGS_BATCH = System(
    "tidings-batch",
    "Tidings (Redis broker), HTTP API batched",
    "the same nodes; publishes: POST /api/v1/messages (HTTP keep-alive), the messages due in "
    "one load-generator tick (1 ms) as one request per node",
    _tidings("redis", batch=True),
    family="tidings",
)
TIDINGS_WORKERS = System(
    "tidings-workers",
    "Tidings (Redis broker), one server of 3 worker processes",
    "python -m tidings serve --workers 3 --broker redis://…: three node processes on one "
    "port (SO_REUSEPORT), the server core shared; for the most sessions one server holds "
    "when one process may open only so many files",
    _tidings("redis", workers=3),
    family="tidings",
)
TIDINGS_AMQP_PG = System(
    "tidings-amqp-pg",
    "Tidings (RabbitMQ routing, PostgreSQL inbox)",
    "python -m tidings serve --broker amqp://… --inbox postgresql://… (a private RabbitMQ "
    "and a private PostgreSQL, fsync off, on the server core); publishes: HTTP API",
    _tidings("amqp-pg"),
)
TIDINGS_CLUSTER = System(
    "tidings-cluster",
    "Tidings (Redis Cluster broker, 3 masters)",
    "python -m tidings serve --broker redis+cluster://… on a Redis Cluster of 3 masters (no "
    "replicas), all on the server core like the single Redis; publishes: POST /api/v1/… "
    "(HTTP keep-alive)",
    _tidings("redis-cluster"),
)
TIDINGS_MEMORY = System(
    "tidings-memory",
    "Tidings (memory broker)",
    "python -m tidings serve (embedded broker, one process); publishes: HTTP API",
    _tidings("memory"),
)
SOCKETIO_NODE = System(
    "socketio-node",
    "Node socket.io 4 + Redis adapter",
    "socket.io 4 with @socket.io/redis-adapter; publishes: @socket.io/redis-emitter",
    _socketio_node,
)
PYTHON_SOCKETIO = System(
    "python-socketio",
    "python-socketio + AsyncRedisManager",
    "python-socketio AsyncServer on aiohttp+uvloop with AsyncRedisManager; publishes: "
    "write-only AsyncRedisManager",
    _python_socketio,
)
RABBITMQ = System(
    "rabbitmq",
    "RabbitMQ Web-STOMP",
    "rabbitmq-server with rabbitmq_web_stomp, STOMP clients straight to it; publishes: "
    "STOMP SEND from a back-end connection",
    _rabbitmq,
)

ALL = {
    s.key: s
    for s in (
        TIDINGS,
        TIDINGS_DIRECT,
        TIDINGS_BATCH,
        TIDINGS_WORKERS,
        TIDINGS_AMQP_PG,
        TIDINGS_CLUSTER,
        TIDINGS_MEMORY,
        SOCKETIO_NODE,
        PYTHON_SOCKETIO,
        RABBITMQ,
    )
}
