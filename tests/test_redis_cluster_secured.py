"""A Redis Cluster that wants a password, and one that speaks only TLS (issue 18 item 1).

Each test starts its own cluster (bench/redis_cluster.py; the session cluster has neither):
``requirepass`` and ``masterauth`` on 3 masters with a replica each, reached through
``redis+cluster://:<password>@...``; and ``--tls-port`` only (clients, replication and the
cluster bus over TLS) with a CA and a node certificate made here with the ``openssl`` CLI,
reached through ``rediss+cluster://...?ssl_ca_certs=<ca>``. On each, a node's broker and
inbox subscribe and the direct publisher stores and announces: the command client, the
lean RESP connections of the scripts and the shard subscribers all authenticate or
handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from bench.redis_cluster import Tls

from tidings.brokers.redis import redis_broker
from tidings.brokers.redis_cluster import RedisClusterBroker
from tidings.inbox.base import InboxLimits, split_announcement
from tidings.inbox.redis import RedisInbox
from tidings.publisher import Publisher

from .cluster_fixture import RedisCluster, running_cluster

PASSWORD = "clu$ter pw:@/"  # characters a URL must quote


def make_tls(workdir: Path) -> Tls:
    """A CA and a certificate for 127.0.0.1 / localhost signed by it (P-256 keys)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl CLI is not on PATH (Debian package openssl)")
    ca, ca_key = workdir / "ca.pem", workdir / "ca.key"
    cert, key, csr = workdir / "node.pem", workdir / "node.key", workdir / "node.csr"
    ext = workdir / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sign = ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial"]
    sign += ["-out", cert, "-days", "2", "-extfile", ext]
    steps = [
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=test"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        sign,
    ]
    for step in steps:
        subprocess.run([openssl, *map(str, step)], check=True, capture_output=True, timeout=30)
    return Tls(ca=ca, cert=cert, key=key)


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tidings-cluster-tls-") as path:
        yield Path(path)


async def publish_and_receive(cluster: RedisCluster) -> None:
    """A node's broker and inbox on ``cluster.url``; the direct publisher stores to a user
    and the node gets the announcement; the inbox reads the message back."""
    broker = redis_broker(cluster.url)
    assert isinstance(broker, RedisClusterBroker)
    inbox = RedisInbox(broker, InboxLimits())
    got: list[tuple[str, bytes]] = []
    announced = asyncio.Event()

    def on_message(channel: str, payload: bytes) -> None:
        got.append((channel, payload))
        announced.set()

    await asyncio.wait_for(broker.start(on_message), 20)
    try:
        await inbox.start()
        await broker.subscribe("u:7")
        async with Publisher.from_url(cluster.url) as publisher:
            ids = await asyncio.gather(*(publisher.to_user(str(n), n) for n in range(7, 20)))
        await asyncio.wait_for(announced.wait(), 10)
        assert [split_announcement(p)[0] for c, p in got if c == "u:7"] == [ids[0]]
        history = await inbox.history("u:7", "0", limit=10)
        assert [stored.message.id for stored in history.messages] == [ids[0]]
        assert history.messages[0].message.body == b"7"
    finally:
        await inbox.close()
        await broker.close()


async def test_a_cluster_with_a_password() -> None:
    with running_cluster(replicas=1, password=PASSWORD) as cluster:
        assert cluster.url.startswith("redis+cluster://:clu%24ter%20pw%3A%40%2F@127.0.0.1:")
        with (
            redis.Redis(port=cluster.ports[0], socket_timeout=2) as anonymous,
            pytest.raises(redis.AuthenticationError),
        ):
            anonymous.ping()
        # every replica authenticated to its master (masterauth): start() waited for its link
        assert len(cluster.masters()) == 3
        await publish_and_receive(cluster)
        keys = 0
        for port in cluster.masters():
            with cluster.client(port) as client:
                keys += len(client.keys("tidings:inbox:*"))
        assert keys == 13


async def test_a_cluster_over_tls(workdir: Path) -> None:
    tls = make_tls(workdir)
    with running_cluster(tls=tls) as cluster:
        assert cluster.url.startswith("rediss+cluster://127.0.0.1:")
        with socket.create_connection(("127.0.0.1", cluster.ports[0]), 2) as plain:
            plain.settimeout(1)
            plain.sendall(b"PING\r\n")
            with contextlib.suppress(TimeoutError, ConnectionError):
                assert not plain.recv(64).startswith(b"+PONG")  # the port speaks only TLS
        await publish_and_receive(cluster)
