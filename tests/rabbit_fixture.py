"""A private RabbitMQ node for the tests, on free ports of 127.0.0.1, never the machine's 5672.

It is the bench's ``RabbitCluster`` (bench/procs.py: own data dir, Erlang cookie, node
name and ports, from /usr/lib/rabbitmq/bin) without the Web-STOMP plugin. A node boots in
about 10 s, so one serves the whole test session (``rabbit_server``); tests keep apart by
using an exchange of their own (``RabbitServer.url()`` names a new one each call), and
each broker's queue is exclusive to its connection. At the end of the session the node is
stopped and its directory removed.

Example::

    def test_routing(rabbit_server):
        broker = AmqpBroker(rabbit_server.url())
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.procs import BenchError, RabbitCluster, RabbitNode, Registry


class RabbitServer:
    """One private RabbitMQ node; ``stop()`` and ``start()`` keep its port and data."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._cluster = RabbitCluster(
            Registry(), workdir / "rabbit", workdir / "logs", web_stomp=False, core="0-1"
        )
        self._node: RabbitNode | None = None

    @property
    def node(self) -> RabbitNode:
        assert self._node is not None, "RabbitServer not started"
        return self._node

    @property
    def port(self) -> int:
        return self.node.amqp_port

    @property
    def running(self) -> bool:
        return self._node is not None and self._node.proc is not None

    def url(self, exchange: str = "") -> str:
        """An amqp:// URL of this node on an exchange of its own (a new name if not given)."""
        name = exchange or f"test-{secrets.token_hex(4)}"
        return f"amqp://guest:guest@127.0.0.1:{self.port}/?exchange={name}"

    def boot(self) -> None:
        """Start the node the first time (blocking: for the session fixture)."""
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            (self._node,) = self._cluster.start(1)
        except BenchError as exc:
            self._cluster.stop()
            pytest.fail(f"private RabbitMQ node did not start: {exc}")

    def shutdown(self) -> None:
        """Stop the node and remove its directory (blocking)."""
        self._cluster.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def stop(self) -> None:
        """``rabbitmqctl stop``: every client connection is closed, the port freed."""
        await asyncio.to_thread(self._cluster.stop_node, self.node)

    async def start(self) -> None:
        """Start again on the same ports after ``stop()``; return once it serves AMQP."""
        if not self.running:
            await asyncio.to_thread(self._cluster.start_node, self.node)

    async def ctl(self, *args: str) -> str:
        """``rabbitmqctl -n <node> args...``'s output (about 1.5 s: an Erlang VM starts)."""
        return await asyncio.to_thread(self._cluster.ctl, self.node, *args, timeout=60)

    async def bindings(self, exchange: str) -> list[tuple[str, str]]:
        """(queue, routing key) of every binding from ``exchange``."""
        out = await self.ctl(
            "list_bindings",
            "--quiet",
            "--no-table-headers",
            "source_name",
            "destination_name",
            "routing_key",
        )
        rows = [line.split("\t") for line in out.splitlines() if line]
        return sorted((row[1], row[2]) for row in rows if len(row) == 3 and row[0] == exchange)


@pytest.fixture(scope="session")
def rabbit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitServer]:
    """The session's private RabbitMQ node (see RabbitServer); stopped and removed at the end."""
    if not RabbitCluster.available():
        pytest.fail("rabbitmq-server is not installed (./run setup installs it)")
    server = RabbitServer(tmp_path_factory.mktemp("rabbitmq"))
    server.boot()
    try:
        yield server
    finally:
        server.shutdown()
