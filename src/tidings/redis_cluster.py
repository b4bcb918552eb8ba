"""Redis Cluster: ``redis+cluster://`` broker URLs, the command client, and routing the
lean RESP connections by slot (issue 18).

A URL names some of the cluster's nodes (any: the rest are discovered)::

    redis+cluster://10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379?password=...

``rediss+cluster://`` speaks TLS to every node. User-info before the hosts
(``redis+cluster://:password@host:port,...``) or the query parameters ``username`` and
``password`` give the nodes' credentials; ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile`` and ``ssl_cert_reqs`` as for ``rediss://``. A cluster has only db 0.

Two kinds of connections, as on one Redis (``tidings.redis_connect``):

* the command client is redis-py's ``RedisCluster`` (``cluster_client``): it keeps the
  slot map, follows ``MOVED``/``ASK`` itself and splits pipelines per node. Good enough
  for what is not per message: reads of the inbox, presence queries, the registry.
* the hot paths (the publish and presence scripts) run on ``ClusterScripts``: one
  ``inbox.resp.ScriptConnection`` per master, a call routed by the slot of its first key
  (CRC16 of the hash tag, mod 16384) through the client's slot map. ``MOVED``: the map
  is loaded again (``CLUSTER SLOTS``) and the call sent to the slot's new master; ``ASK``
  (a slot migrating): sent once more to the node named, after ``ASKING``; ``TRYAGAIN``
  (the script's keys are split between the two nodes of a migrating slot, or, after
  ASKING, not all on the target yet): sent again TRYAGAIN_DELAY_S later, until the
  migration ends (then MOVED). None of them ran the script, so resending stores nothing
  twice; past MAX_REDIRECTS the call fails with BrokerUnavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from tidings import redis_urls
from tidings.errors import BrokerUnavailable
from tidings.inbox.resp import ErrorReply, Redirect, Replicas, ScriptConnection
from tidings.redis_connect import bulk, pack

log = logging.getLogger(__name__)

SCHEMES = ("redis+cluster", "rediss+cluster")
"""The URL schemes of a Redis Cluster (``rediss``: TLS)."""

DEFAULT_PORT = 6379
MAX_REDIRECTS = 10
"""MOVED/ASK/TRYAGAIN answers one call may follow before it fails (TRYAGAIN: about half a
second of a slot's migration)."""
REFRESH_INTERVAL_S = 0.1
"""The least time between two loads of the slot map after failed calls (a master down
fails every call to it until a replica takes over: one load per failure would be many)."""
TRYAGAIN_DELAY_S = 0.05
"""How long a call answered TRYAGAIN waits before it is sent again (redis-py's wait)."""

_QUERY_KEYS = frozenset(
    {"username", "password", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"}
)


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """What a ``redis+cluster://`` URL says."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ssl: dict[str, str] = field(default_factory=dict)


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://`` and ``rediss+cluster://`` URLs."""
    return urlsplit(url).scheme in SCHEMES


def parse(url: str) -> ClusterUrl:
    """The parts of a cluster URL; ValueError saying what is wrong (never the password)."""
    parts = redis_urls.split(url, SCHEMES)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        name, colon, secret = userinfo.partition(":")
        username, password = unquote(name) or None, unquote(secret) if colon else None
    if not hosts:
        raise ValueError("expected the nodes as host:port[,host:port...]")
    nodes = redis_urls.host_ports(hosts, DEFAULT_PORT, "the nodes")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has only db 0: give no path (or /0)")
    query = redis_urls.query(parts, _QUERY_KEYS)
    tls = parts.scheme == "rediss+cluster"
    ssl = {key: value for key, value in query.items() if key.startswith("ssl_")}
    if ssl and not tls:
        raise ValueError("ssl_* parameters need a rediss+cluster:// URL")
    return ClusterUrl(
        nodes=nodes,
        username=query.get("username") or username,
        password=query.get("password") or password,
        tls=tls,
        ssl=ssl,
    )


def cluster_client(url: str, **settings: Any) -> RedisCluster:
    """redis-py's cluster client for ``url``, with the connection ``settings`` of
    ``brokers.redis.command_client`` (``max_connections`` per node, ``socket_*``,
    ``client_name``; no retries: a publish Redis did not take must surface)."""
    target = parse(url)
    settings = {key: value for key, value in settings.items() if key != "timeout"}
    settings.setdefault("retry", Retry(NoBackoff(), 0))
    ssl: dict[str, Any] = {"ssl": True, **target.ssl} if target.tls else {}
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        username=target.username,
        password=target.password,
        **ssl,
        **settings,
    )


def node_params(node: ClusterNode, **overrides: Any) -> AbstractConnection:
    """A (never connected) connection of ``node``'s settings, for ``open_connection``."""
    params: AbstractConnection = node.connection_class(**{**node.connection_kwargs, **overrides})
    return params


def slot_of(key: str | bytes) -> int:
    """The slot of ``key``: CRC16 of its hash tag (or of all of it) mod 16384."""
    return key_slot(key.encode() if isinstance(key, str) else key)


async def load_slots(client: RedisCluster) -> None:
    """Read the slot map now (``CLUSTER SLOTS``); BrokerUnavailable if no node answers."""
    try:
        if client.nodes_manager.slots_cache:
            await client.nodes_manager.initialize()
        else:
            await client.initialize()
    except Exception as exc:
        raise BrokerUnavailable(f"redis cluster unavailable: {exc}") from exc


def master_of(client: RedisCluster, slot: int) -> ClusterNode | None:
    """The master serving ``slot`` in the client's slot map, None if it has none."""
    nodes = client.nodes_manager.slots_cache.get(slot)
    return nodes[0] if nodes else None


class ClusterScripts:
    """EVALSHA of one script on a cluster: a ``ScriptConnection`` per master, each call
    sent to the master of its slot (see the module docstring). The interface of
    ``ScriptConnection``; a call goes by its first key."""

    def __init__(
        self,
        client: RedisCluster,
        script: str,
        *,
        encoding: str | None = None,
        wait: Replicas | None = None,
    ) -> None:
        self._client = client
        self._script = script
        self._encoding = encoding
        self._wait = wait
        self._sha = hashlib.sha1(script.encode()).hexdigest().encode()
        self._asking = pack(b"ASKING")
        self._by_node: dict[str, ScriptConnection] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._loaded_at = -REFRESH_INTERVAL_S  # loop time of the last load

    @property
    def writes(self) -> int:
        """Writes of calls so far, over every master's connection."""
        return sum(connection.writes for connection in self._by_node.values())

    def head(self, keys: int, args: int) -> bytes:
        """As ``ScriptConnection.head``."""
        return b"*%d\r\n$7\r\nEVALSHA\r\n%s%s" % (3 + keys + args, bulk(self._sha), bulk(keys))

    def submit(self, keys: Sequence[str], args: Sequence[str | bytes | int]) -> asyncio.Future[Any]:
        """``ScriptConnection.submit``, to the master of ``keys[0]``'s slot."""
        return self.submit_packed(pack(b"EVALSHA", self._sha, len(keys), *keys, *args))

    def submit_packed(self, command: bytes) -> asyncio.Future[Any]:
        """``ScriptConnection.submit_packed``, to the master of the slot of the command's
        first key (an EVALSHA with at least one)."""
        outer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._route(command, slot_of(first_key(command)), outer, 0)
        return outer

    async def close(self) -> None:
        """Close every master's connection (pending calls fail)."""
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refreshing
        connections, self._by_node = self._by_node, {}
        for connection in connections.values():
            await connection.close()

    # -- routing ---------------------------------------------------------------------

    def _route(
        self,
        command: bytes,
        slot: int,
        outer: asyncio.Future[Any],
        tries: int,
        to: tuple[str, int] | None = None,
    ) -> None:
        """Send ``command`` to the master of ``slot`` (or, after ASK, with ASKING to ``to``)."""
        if outer.done():
            return
        if to is None:
            node = master_of(self._client, slot)
            if node is None:
                if tries > MAX_REDIRECTS:
                    outer.set_exception(BrokerUnavailable(f"redis cluster: no master for {slot}"))
                    return
                self._refresh(functools.partial(self._route, command, slot, outer, tries + 1))
                return
            address = (node.host, int(node.port))
        else:
            address = to
        connection = self._connection(address)
        if to is not None:
            connection.submit_packed(self._asking).add_done_callback(_ignore)
        inner = connection.submit_packed(command)
        inner.add_done_callback(functools.partial(self._done, command, slot, outer, tries))

    def _done(
        self,
        command: bytes,
        slot: int,
        outer: asyncio.Future[Any],
        tries: int,
        inner: asyncio.Future[Any],
    ) -> None:
        if outer.done():
            return
        if inner.cancelled():
            outer.cancel()
            return
        error = inner.exception()
        if error is None:
            outer.set_result(inner.result())
        elif isinstance(error, Redirect) and tries < MAX_REDIRECTS:
            if error.address is None:  # TRYAGAIN
                again = functools.partial(self._route, command, slot, outer, tries + 1)
                asyncio.get_running_loop().call_later(TRYAGAIN_DELAY_S, again)
            elif error.ask:
                self._route(command, slot, outer, tries + 1, to=error.address)
            else:
                self._refresh(functools.partial(self._route, command, slot, outer, tries + 1))
        else:
            outer.set_exception(error)
            if not isinstance(error, ErrorReply):  # a master lost or unreachable: a
                self._refresh(None)  # failover may have moved its slots (or will: again)

    def _connection(self, address: tuple[str, int]) -> ScriptConnection:
        name = f"{address[0]}:{address[1]}"
        connection = self._by_node.get(name)
        if connection is None:
            node = self._client.nodes_manager.get_node(address[0], address[1]) or ClusterNode(
                address[0], address[1], **self._client.nodes_manager.connection_kwargs
            )
            connection = ScriptConnection(
                node_params(node), self._script, encoding=self._encoding, wait=self._wait
            )
            self._by_node[name] = connection
        return connection

    def _refresh(self, then: Any) -> None:
        """Load the slot map again (one load at a time, REFRESH_INTERVAL_S apart), then
        call ``then()``."""
        if self._refreshing is None:
            self._refreshing = asyncio.create_task(self._load())
        if then is not None:
            self._refreshing.add_done_callback(lambda _: then())

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(self._loaded_at + REFRESH_INTERVAL_S - loop.time())
            self._loaded_at = loop.time()
            await load_slots(self._client)
        except BrokerUnavailable as exc:
            log.warning("redis cluster: cannot load the slot map: %s", exc)
        finally:
            self._refreshing = None


def first_key(command: bytes) -> bytes:
    """The first key of a packed ``EVALSHA sha numkeys key ...``: its fourth bulk string."""
    pos = command.index(b"\r\n") + 2  # past the array's header
    for _ in range(3):  # EVALSHA, the sha, numkeys
        end = command.index(b"\r\n", pos)
        pos = end + 2 + int(command[pos + 1 : end]) + 2
    end = command.index(b"\r\n", pos)
    return command[end + 2 : end + 2 + int(command[pos + 1 : end])]


def _ignore(future: asyncio.Future[Any]) -> None:
    """The reply to ASKING: nobody needs it (an error shows in the call's own reply)."""
    if not future.cancelled():
        future.exception()
