"""The broker on Redis Cluster (``redis+cluster://``, issue 18): sharded pub/sub.

``RedisBroker`` with three differences:

* a channel's pub/sub channel is ``P{<channel>}`` (``tidings.redis_keys``), in the slot of
  the channel's stream, and goes by ``SPUBLISH``/``SSUBSCRIBE``
  (https://redis.io/docs/latest/develop/interact/pubsub/#sharded-pubsub): a message
  travels only inside its shard, not over the whole cluster bus;
* the subscriber connection is one connection per master (``Shards``), each holding the
  channels of that master's slots (one SSUBSCRIBE per slot: a command's channels must
  share a slot) and a probe channel of its own; together they act as the one connection
  of ``RedisBroker``: ready once every master confirmed, lost when any is lost;
* the command client is redis-py's ``RedisCluster`` (``tidings.redis_cluster``).

When slots move (a failover, a resharding) Redis ends the shard subscriptions of the
slots a node lost with an ``sunsubscribe`` nobody asked for, or refuses a new SSUBSCRIBE
with ``MOVED``. Either ends the whole subscriber connection: ``RedisBroker`` reports the
continuity break (so the node's catch-up reads the streams), loads the slot map again and
subscribes every channel where its slot lives now. The raw channels (the legacy Spring
channel, published with plain PUBLISH, which a cluster sends to every node) are
subscribed with SUBSCRIBE on the first master's connection.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster

from tidings import redis_cluster
from tidings.brokers.redis import RedisBroker, RedisClient, Subscriber, command_client
from tidings.brokers.redis_pubsub import PubSubConnection
from tidings.errors import BrokerUnavailable
from tidings.redis_connect import open_connection

_SUBSCRIBE = {b"SUBSCRIBE": b"SSUBSCRIBE", b"UNSUBSCRIBE": b"SUNSUBSCRIBE"}


class RedisClusterBroker(RedisBroker):
    """``RedisBroker`` on a Redis Cluster; see the module docstring."""

    redis: RedisCluster

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._token = secrets.token_hex(8)
        # The probe channel of each master's connection, by master ("host:port"), and
        # when each was last heard (loop time).
        self._probes: dict[str, bytes] = {}
        self._heard: dict[bytes, float] = {}

    def _command_client(self, url: str) -> RedisClient:
        return command_client(url)

    def _key(self, channel: str) -> bytes:
        return self.layout.live(channel).encode()

    async def publish(self, channel: str, payload: bytes) -> None:
        """SPUBLISH through the cluster client; BrokerUnavailable unless Redis took it."""
        if self._state.closed or self._handler is None:
            raise BrokerUnavailable("redis broker is not running")
        try:
            await self.redis.spublish(self._key(channel), payload)
        except Exception as exc:  # redis-py's cluster errors are not all RedisError
            raise BrokerUnavailable(f"redis unavailable: {exc}") from exc

    # -- the subscriber connections -----------------------------------------------------

    def _new_link(self) -> Subscriber:
        return Shards(self)

    async def _connect(self, link: Any) -> None:
        """Load the slot map, connect to every master, subscribe there its probe channel
        and the wanted channels of its slots, then PING each (ready once all answered)."""
        assert isinstance(link, Shards)
        await redis_cluster.load_slots(self.redis)
        masters = self.redis.get_primaries()
        if not masters:
            raise BrokerUnavailable("redis cluster unavailable: no master in the slot map")
        self._probes = {master.name: self._probe_for(master.name) for master in masters}
        loop = asyncio.get_running_loop()
        self._heard = dict.fromkeys(self._probes.values(), loop.time())
        for master in masters:
            params = redis_cluster.node_params(master, client_name="tidings-pubsub")
            connection = link.add(master.name)
            await open_connection(params, connection)
        self._link = link
        raw = [key for key in self._routes if key in self._raw_keys]
        wanted = [key for key in self._routes if key not in self._raw_keys]
        first = True
        for name, connection in link.by_node.items():
            commands: list[tuple[bytes, ...]] = [(b"SSUBSCRIBE", self._probes[name])]
            if first and raw:
                commands.append((b"SUBSCRIBE", *raw))
            first = False
            connection.send(commands)
        link.send([(b"SUBSCRIBE", *wanted)] if wanted else [])
        for connection in link.by_node.values():
            connection.send([(b"PING",)])

    def _probe_for(self, master: str) -> bytes:
        """A probe channel in a slot of ``master``."""
        for n in range(1_000_000):
            key = f"{self.layout.prefix}probe:{{{self._token}-{n}}}".encode()
            node = redis_cluster.master_of(self.redis, redis_cluster.slot_of(key))
            if node is not None and node.name == master:
                return key
        raise BrokerUnavailable(f"redis cluster: no slot of {master} found for a probe")

    def _on_message(self, key: bytes, payload: bytes) -> None:
        if key in self._heard:  # a probe: the deadline is the least recently heard one's
            heard = self._heard
            heard[key] = now = asyncio.get_running_loop().time()
            self._deaf_after(min(heard.values(), default=now) + self._probe_timeout_s)
            return
        super()._on_message(key, payload)

    async def _publish_probe(self) -> None:
        for key in list(self._probes.values()):
            await self.redis.spublish(key, b"probe")


class Shards:
    """One subscriber connection per master, acting as ``RedisBroker``'s one connection."""

    def __init__(self, broker: RedisClusterBroker) -> None:
        self.broker = broker
        self.by_node: dict[str, PubSubConnection] = {}
        self.ended: asyncio.Future[BrokerUnavailable] = asyncio.get_running_loop().create_future()
        self._ponged: set[str] = set()
        # SUNSUBSCRIBEs sent and not confirmed yet, per channel: a confirmation beyond
        # them is Redis dropping a channel whose slot left the node.
        self._unsubscribing: defaultdict[bytes, int] = defaultdict(int)

    def add(self, name: str) -> PubSubConnection:
        """A new connection to master ``name`` (not connected yet)."""
        connection = PubSubConnection(
            self.broker._on_message,
            self.broker._on_subscribed,
            lambda: self._on_pong(name),
            self._on_sunsubscribed,
        )
        connection.ended.add_done_callback(self._connection_ended)
        self.by_node[name] = connection
        return connection

    @property
    def is_open(self) -> bool:
        return not self.ended.done() and all(c.is_open for c in self.by_node.values())

    def send(self, commands: Sequence[Sequence[bytes]]) -> None:
        """(UN)SUBSCRIBE commands as SSUBSCRIBE/SUNSUBSCRIBE, one per slot, each to the
        connection of the slot's master; ConnectionError if the map names no such one."""
        client = self.broker.redis
        out: defaultdict[str, list[tuple[bytes, ...]]] = defaultdict(list)
        for command, *keys in commands:
            by_slot: defaultdict[int, list[bytes]] = defaultdict(list)
            for key in keys:
                by_slot[redis_cluster.slot_of(key)].append(key)
            sharded = _SUBSCRIBE[command]
            for slot, slot_keys in by_slot.items():
                master = redis_cluster.master_of(client, slot)
                if master is None or master.name not in self.by_node:
                    self._end(BrokerUnavailable(f"redis cluster: slot {slot} has moved"))
                    raise ConnectionError(f"no connection to the master of slot {slot}")
                out[master.name].append((sharded, *slot_keys))
                if sharded == b"SUNSUBSCRIBE":
                    for key in slot_keys:
                        self._unsubscribing[key] += 1
        for name, node_commands in out.items():
            self.by_node[name].send(node_commands)

    def close(self) -> None:
        self._end(BrokerUnavailable("redis unavailable: subscriber connection closed"))
        for connection in self.by_node.values():
            connection.close()

    def _on_pong(self, name: str) -> None:
        self._ponged.add(name)
        if len(self._ponged) == len(self.by_node):
            self.broker._on_pong()

    def _on_sunsubscribed(self, key: bytes) -> None:
        if self._unsubscribing.get(key):
            self._unsubscribing[key] -= 1
            if not self._unsubscribing[key]:
                del self._unsubscribing[key]
            return
        if key in self.broker._routes or key in self.broker._heard:
            raise BrokerUnavailable(f"redis cluster: {key!r} was unsubscribed (its slot moved)")

    def _connection_ended(self, ended: asyncio.Future[BrokerUnavailable]) -> None:
        self._end(ended.result())

    def _end(self, why: BrokerUnavailable) -> None:
        if not self.ended.done():
            self.ended.set_result(why)
            for connection in self.by_node.values():
                connection.close()
