"""Redis Sentinel: ``redis+sentinel://`` broker URLs and finding the current master.

A URL names the sentinels and the master they watch, not a Redis::

    redis+sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/mymaster?db=0&password=...

``rediss+sentinel://`` speaks TLS to the master and to the sentinels. Query parameters:
``db``, ``username`` and ``password`` (the master's), ``sentinel_username`` and
``sentinel_password`` (the sentinels', when they have ``requirepass``). User-info before
the hosts is refused: it would be unclear whose password it is.

Every connection a node opens asks the sentinels for the master each time it connects
(Sentinel's client guide, https://redis.io/docs/latest/develop/reference/sentinel-clients/:
"ask each sentinel in turn", step 1-2) and then checks with ``ROLE`` that the server it
reached is a master (step 3): a sentinel that has not yet seen a failover, or a master
just demoted, would otherwise take our writes or refuse them with READONLY. After a
failover the sentinels kill the clients of the demoted master (``CLIENT KILL TYPE
normal|pubsub``), and a killed master closes them itself; either way each connection
is lost, connects again, and finds the new master:

* the command pool (``master_pool``): redis-py's ``SentinelConnectionPool`` with our
  ``CheckedMasterConnection`` (ROLE after the handshake) and a bound on connections as
  ``BlockingConnectionPool`` has;
* the lean RESP connections (``redis_connect.open_connection``: the publish script's,
  the presence script's, the broker's subscriber) call ``master_address`` before they
  connect and send ``ROLE`` with their handshake.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from tidings import redis_urls

SCHEMES = ("redis+sentinel", "rediss+sentinel")
"""The URL schemes of a Sentinel-managed Redis (``rediss``: TLS)."""

DEFAULT_PORT = 26379
"""A sentinel's port when the URL gives none (Redis' default for ``--sentinel``)."""

_QUERY_KEYS = frozenset({"db", "username", "password", "sentinel_username", "sentinel_password"})


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """What a ``redis+sentinel://`` URL says."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False


def is_sentinel_url(url: str) -> bool:
    """True for ``redis+sentinel://`` and ``rediss+sentinel://`` URLs."""
    return urlsplit(url).scheme in SCHEMES


def parse(url: str) -> SentinelUrl:
    """The parts of a Sentinel URL; ValueError saying what is wrong (never the password)."""
    parts = redis_urls.split(url, SCHEMES)
    if "@" in parts.netloc:
        raise ValueError(
            "give the master's password as ?password= and the sentinels' as "
            "?sentinel_password=, not before the hosts"
        )
    sentinels = redis_urls.host_ports(parts.netloc, DEFAULT_PORT, "sentinels")
    master = unquote(parts.path.strip("/"))
    if not master or "/" in master:
        raise ValueError("expected the master's name as the path: .../<master-name>")
    query = redis_urls.query(parts, _QUERY_KEYS)
    db = query.get("db", "0")
    if not db.isdigit():
        raise ValueError(f"db must be a number, got {db!r}")
    return SentinelUrl(
        sentinels=sentinels,
        master=master,
        db=int(db),
        username=query.get("username") or None,
        password=query.get("password") or None,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
        tls=parts.scheme == "rediss+sentinel",
    )


class CheckedMasterConnection(SentinelManagedConnection):
    """A pooled connection to the master the sentinels name, checked with ``ROLE``."""

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        await super().on_connect_check_health(check_health=check_health)
        if self.connection_pool.is_master:
            await self.send_command("ROLE", check_health=False)
            check_role(await self.read_response(), f"{self.host}:{self.port}")


class CheckedMasterSSLConnection(CheckedMasterConnection, SentinelManagedSSLConnection):
    """``CheckedMasterConnection`` over TLS."""


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool, waiting (``timeout``) for a free connection past
    ``max_connections`` as ``BlockingConnectionPool`` does, instead of failing at once.
    Closing it (``Redis.aclose``) closes the connections to the sentinels too."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # closing, not a new master's address (get_master_address)
            await self.sentinel_manager.aclose()


def check_role(reply: Any, address: str) -> None:
    """RedisConnectionError unless ``reply`` (to ``ROLE``) says master."""
    role = reply[0] if isinstance(reply, list) and reply else reply
    if isinstance(role, bytes):
        role = role.decode(errors="replace")
    if role != "master":
        raise RedisConnectionError(
            f"{address} is a {role}, not the master (the sentinels' view is stale or a "
            "failover is under way)"
        )


def master_pool(url: str, **kwargs: Any) -> ConnectionPool:
    """A bounded pool of connections to the master of ``url`` (a Sentinel URL), with the
    connection settings ``kwargs`` (those of ``BlockingConnectionPool.from_url``:
    ``max_connections``, ``timeout``, ``socket_*``, ``retry``, ``client_name``).

    The sentinels are asked with the same timeouts, without retries (discovery moves on
    to the next sentinel instead).
    """
    target = parse(url)
    socket_kwargs = {key: value for key, value in kwargs.items() if key.startswith("socket_")}
    sentinel_kwargs: dict[str, Any] = {**socket_kwargs, "ssl": target.tls}
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
        sentinel_kwargs["username"] = target.sentinel_username
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
    connection_class = CheckedMasterSSLConnection if target.tls else CheckedMasterConnection
    pool = _BlockingSentinelPool(  # type: ignore[no-untyped-call]  # redis-py: untyped
        target.master,
        sentinel,
        connection_class=connection_class,
        db=target.db,
        username=target.username,
        password=target.password,
        **kwargs,
    )
    return pool


def discovery_timeout(params: SentinelManagedConnection) -> float:
    """How long asking every sentinel in turn may take: each a connect and a reply."""
    pool = params.connection_pool
    count = len(pool.sentinel_manager.sentinels)
    connect = params.socket_connect_timeout or 1.0
    reply = params.socket_timeout or 1.0
    return count * (connect + reply)


async def master_address(params: SentinelManagedConnection) -> tuple[str, int]:
    """The master's address as the sentinels of ``params``' pool say now (the first that
    knows a master not marked down); RedisConnectionError (MasterNotFoundError) if none
    does, TimeoutError past ``discovery_timeout``."""
    async with asyncio.timeout(discovery_timeout(params)):
        host, port = await params.connection_pool.get_master_address()
    return str(host), int(port)
