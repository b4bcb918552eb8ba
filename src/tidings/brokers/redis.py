"""The Redis broker (``redis://``, ``rediss://``, ``redis+sentinel://``): nodes on several
machines share one Redis. On Redis Cluster (``redis+cluster://``) the broker is
``brokers.redis_cluster.RedisClusterBroker``, this one with sharded pub/sub;
``redis_broker`` picks by URL.

Two connections, as in centrifuge's Redis engine (DESIGN.md §4):

* the *command* client (``self.redis``, a small bounded pool) runs ``PUBLISH`` and is
  reused by the node for presence keys;
* one *subscriber* connection carries ``SUBSCRIBE`` and the messages. It is not
  redis-py's: ``redis_pubsub.PubSubConnection`` speaks RESP2 (messages and subscription
  replies arrive as plain ``[kind, channel, data]`` arrays, in order) and acts on every
  reply of a chunk as it is read, so a message is one handler call with no await. The
  (UN)SUBSCRIBEs asked for in one loop turn are written together, one command per run of
  channels (``_flush``). A task owns its life: connect, wait for its end, reconnect.

Faults are handled here, not by the node: when the subscriber connection breaks (Redis
restarted, ``CLIENT KILL TYPE pubsub``) or goes deaf (the probe stops coming back), the
task reconnects with capped, jittered exponential backoff and resubscribes every
channel it still wants, so live delivery resumes on its own. ``ready`` is False meanwhile
and publishes that Redis does not take raise BrokerUnavailable; nothing is accepted and
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import redis.asyncio
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from tidings import redis_cluster, redis_sentinel
from tidings.brokers.base import LinkState, MessageHandler, ReconnectingBroker
from tidings.brokers.redis_pubsub import PubSubConnection
from tidings.errors import BrokerUnavailable
from tidings.redis_connect import connection_params, open_connection
from tidings.redis_keys import KeyLayout

RedisClient = redis.asyncio.Redis | RedisCluster
"""A command client: of one Redis, or of a Redis Cluster (issue 18)."""

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 1.0
"""TCP connect + handshake bound: a dead Redis is noticed within a second."""
SOCKET_TIMEOUT_S = 2.0
"""Bound on one command's reply (and on waiting for a free pooled connection)."""
SUBSCRIBE_TIMEOUT_S = 3.0
"""How long ``subscribe()`` waits for Redis to confirm before giving up."""
START_TIMEOUT_S = 5.0
"""How long ``start()`` waits for the first subscriber connection before returning not-ready."""
POOL_SIZE = 32
"""Command connections at most; publishers beyond that wait up to SOCKET_TIMEOUT_S."""
SUBSCRIBE_BATCH = 1000
"""Channels per SUBSCRIBE or UNSUBSCRIBE command."""

_Waiter = asyncio.Future[str | None]
"""One per SUBSCRIBE sent: None once Redis confirmed it, else why it was not."""


class Subscriber(Protocol):
    """The subscriber connection as the broker uses it: a ``PubSubConnection``, or on a
    cluster one per master together (``brokers.redis_cluster``)."""

    @property
    def ended(self) -> asyncio.Future[BrokerUnavailable]: ...
    @property
    def is_open(self) -> bool: ...
    def send(self, commands: Sequence[Sequence[bytes]]) -> None: ...
    def close(self) -> None: ...


def redis_broker(url: str, **kwargs: Any) -> RedisBroker:
    """The broker of a Redis URL: ``RedisClusterBroker`` for ``redis+cluster://`` (and
    ``rediss+cluster://``), else ``RedisBroker``; ``kwargs`` as ``RedisBroker`` takes."""
    if redis_cluster.is_cluster_url(url):
        from tidings.brokers.redis_cluster import RedisClusterBroker  # noqa: PLC0415

        return RedisClusterBroker(url, **kwargs)
    return RedisBroker(url, **kwargs)


def command_client(url: str, *, client_name: str | None = None) -> RedisClient:
    """A client on a bounded pool of POOL_SIZE connections, with the timeouts above.

    No silent retries: a publish Redis did not take must surface as an error. A
    ``redis+sentinel://`` URL gets a pool that finds the master through the sentinels
    at each connect (``tidings.redis_sentinel``); a ``redis+cluster://`` URL redis-py's
    cluster client, POOL_SIZE connections per node (``tidings.redis_cluster``).
    """
    settings: dict[str, Any] = {
        "max_connections": POOL_SIZE,
        "timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
        "client_name": client_name,
    }
    if redis_cluster.is_cluster_url(url):
        return redis_cluster.cluster_client(url, **settings)
    if redis_sentinel.is_sentinel_url(url):
        pool: ConnectionPool = redis_sentinel.master_pool(url, **settings)
    else:
        pool = BlockingConnectionPool.from_url(url, **settings)
    return redis.asyncio.Redis.from_pool(pool)


class _Deaf(Exception):
    """The subscriber connection stopped returning our probes: treat it as lost."""


class RedisBroker(ReconnectingBroker):
    """Broker on Redis pub/sub: one Redis channel per logical channel, ``prefix + name``.

    ``raw_channels`` (e.g. the legacy Spring channel ``webSocketMsgPush``) are subscribed
    verbatim for the broker's whole life and reach the handler under their raw name.

    Ready (``ReconnectingBroker``) while the subscriber connection is up, has confirmed
    every channel's SUBSCRIBE and hears its probes; lost when it breaks or goes deaf.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tidings:",
        raw_channels: tuple[str, ...] = (),
        probe_interval_s: float = 1.0,
        probe_timeout_s: float = 3.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 1.0,
    ) -> None:
        self.redis: RedisClient = self._command_client(url)
        """The command client; also for the node's own keys (presence)."""
        self.layout = KeyLayout(prefix, cluster=isinstance(self.redis, RedisCluster))
        """The names of each channel's keys (``tidings.redis_keys``)."""
        self.received = 0
        """Messages handed to the handler."""

        self._prefix = prefix.encode()
        self._probe_key = self._prefix + b"probe:" + secrets.token_hex(8).encode()
        self._raw_keys = {name.encode(): name for name in raw_channels}
        self._probe_interval_s = probe_interval_s
        self._probe_timeout_s = probe_timeout_s
        self._state = LinkState(
            log, "redis", "redis subscriber connection", backoff_initial_s, backoff_max_s
        )

        # Redis channel -> name given to the handler, for everything we want delivered:
        # the raw channels and every logical channel subscribed and not unsubscribed.
        self._routes: dict[bytes, str] = dict(self._raw_keys)
        # One waiter per SUBSCRIBE sent by subscribe(), in sending order per channel;
        # Redis confirms in the same order.
        self._waiters: dict[bytes, deque[_Waiter]] = {}
        # (Un)subscribes of this loop turn in call order, for _flush to write:
        # (b"SUBSCRIBE", key, waiter) or (b"UNSUBSCRIBE", key, None).
        self._pending: list[tuple[bytes, bytes, _Waiter | None]] = []
        self._handler: MessageHandler | None = None
        self._link: Subscriber | None = None  # the subscriber connection, once set up
        self._deaf_at: asyncio.Timeout | None = None  # pushed forward by each probe
        self._tasks: list[asyncio.Task[None]] = []

    def _command_client(self, url: str) -> RedisClient:
        """The command client of ``url``; also reads the subscriber connection's settings
        from its pool (under a name of its own)."""
        client = command_client(url)
        assert isinstance(client, redis.asyncio.Redis), "a redis+cluster:// URL: redis_broker"
        self._params = connection_params(client.connection_pool, client_name="tidings-pubsub")
        return client

    # -- Broker interface ------------------------------------------------------------

    async def start(self, handler: MessageHandler) -> None:
        """Start the reader and the probe; wait (bounded) for the first subscription.

        If Redis cannot be reached within START_TIMEOUT_S this returns anyway, not
        ready, and keeps reconnecting in the background.
        """
        if self._state.closed:
            raise BrokerUnavailable("redis broker is closed")
        if self._tasks:
            return
        self._handler = handler
        self._tasks = [
            asyncio.create_task(self._run_subscriber(), name="tidings-redis-subscriber"),
            asyncio.create_task(self._run_probe(), name="tidings-redis-probe"),
        ]
        await self._state.wait_ready(START_TIMEOUT_S)

    async def close(self) -> None:
        """Stop both tasks, close both connections; no handler call after this returns."""
        if not self._state.close():
            return  # closed already
        self._handler = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        link = self._link
        self._lost()
        if link is not None:
            link.close()
        await self.redis.aclose()

    async def subscribe(self, channel: str) -> None:
        """Return once Redis has confirmed the subscription (idempotent).

        The SUBSCRIBE goes out with the others of this loop turn (``_flush``); concurrent
        callers of one channel share one. BrokerUnavailable if the subscriber connection
        is down, the write fails, or Redis does not confirm within SUBSCRIBE_TIMEOUT_S of
        the write; the channel is then not wanted any more.
        """
        key = self._key(channel)
        if key in self._routes:
            waiters = self._waiters.get(key)
            if not waiters:
                if not self._state.ready:
                    raise BrokerUnavailable("redis unavailable: subscriber not connected")
                return  # confirmed on the current connection
            waiter = waiters[-1]
        else:
            self._live_link()  # BrokerUnavailable unless connected and ready
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(key, deque()).append(waiter)
            self._routes[key] = channel
            self._queue(b"SUBSCRIBE", key, waiter)
        error = await asyncio.shield(waiter)
        if error is not None:
            self._forget(key)
            raise BrokerUnavailable(f"redis unavailable: subscription to {channel!r} {error}")

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel`` at once; tell Redis if connected (never raises)."""
        key = self._key(channel)
        if key not in self._raw_keys:
            self._forget(key)

    async def publish(self, channel: str, payload: bytes) -> None:
        """PUBLISH on the command connection; BrokerUnavailable unless Redis took it."""
        if self._state.closed or self._handler is None:
            raise BrokerUnavailable("redis broker is not running")
        try:
            await self.redis.publish(self._key(channel), payload)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from exc

    # -- subscriber connection -------------------------------------------------------

    def _key(self, channel: str) -> bytes:
        return self._prefix + channel.encode()

    def _live_link(self) -> Subscriber:
        """The subscriber connection if it can take a command now, else BrokerUnavailable."""
        link = self._link
        if not self._state.ready or link is None or not link.is_open:
            raise BrokerUnavailable("redis unavailable: subscriber not connected")
        return link

    def _forget(self, key: bytes) -> None:
        """Stop delivering ``key`` and, best effort, unsubscribe it on Redis."""
        if self._routes.pop(key, None) is None:
            return
        link = self._link
        if link is not None and link.is_open:  # else a reconnect will not resubscribe it
            self._queue(b"UNSUBSCRIBE", key)

    def _queue(self, command: bytes, key: bytes, waiter: _Waiter | None = None) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)  # runs next loop turn
        self._pending.append((command, key, waiter))

    def _flush(self) -> None:
        """Write the (un)subscribes queued in the last loop turn as one write.

        Redis runs them as if sent one by one: in call order, consecutive ones of a kind
        as one command of up to SUBSCRIBE_BATCH channels, one confirmation per channel.
        If the write fails, each SUBSCRIBE's callers fail and its channel is not wanted;
        those Redis does not confirm within SUBSCRIBE_TIMEOUT_S fail then (one timer).
        A connection loss (``_lost``) drops what is queued and fails what is unconfirmed.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return  # dropped by _lost
        commands: list[tuple[bytes, ...]] = []
        for command, run in itertools.groupby(pending, key=lambda item: item[0]):
            commands += _commands(command, [key for _, key, _ in run])
        waiters = [(key, waiter) for _, key, waiter in pending if waiter is not None]
        link = self._link
        try:
            if link is None or not link.is_open:
                raise ConnectionError("subscriber not connected")
            link.send(commands)
        except Exception as exc:  # the subscriber task will reconnect
            log.debug("redis (un)subscribe write failed: %s", exc)
            for key, waiter in waiters:
                self._routes.pop(key, None)
                with contextlib.suppress(KeyError, ValueError):
                    self._waiters[key].remove(waiter)
                if not waiter.done():
                    waiter.set_result(f"not sent: {exc}")
            return
        if waiters:
            loop = asyncio.get_running_loop()
            loop.call_later(SUBSCRIBE_TIMEOUT_S, _expire, [waiter for _, waiter in waiters])

    async def _run_subscriber(self) -> None:
        """Own the subscriber connection: connect, serve, and on loss reconnect, until
        closed. (``close`` cancels this task; a cancellation a client library turned into
        a connection error must not keep it reconnecting: it also checks ``closed``.)"""
        while not self._state.closed:
            link = self._new_link()
            try:
                await self._connect(link)
                await self._serve(link)
            except (BrokerUnavailable, RedisError, OSError, TimeoutError, _Deaf) as exc:
                self._state.failed(exc)
            except Exception:
                log.exception("redis subscriber failed unexpectedly")
            finally:
                self._lost()
                link.close()
            await asyncio.sleep(self._state.backoff())

    def _new_link(self) -> Subscriber:
        return PubSubConnection(self._on_message, self._on_subscribed, self._on_pong)

    async def _connect(self, link: Any) -> None:
        """Connect and subscribe the probe, the raw channels and every wanted channel.

        A PING follows the SUBSCRIBE commands; its reply (``_on_pong``) proves all of
        them confirmed and makes the broker ready. The connection has the command pool's
        settings, RESP2 and no socket timeout after its set-up: it may rightly be silent
        for long, and the probe deadline bounds that instead (``_serve``).
        """
        assert isinstance(link, PubSubConnection)
        await open_connection(self._params, link)
        self._link = link
        commands = [*_commands(b"SUBSCRIBE", [self._probe_key, *self._routes]), (b"PING",)]
        # One write: an UNSUBSCRIBE queued meanwhile cannot land between these.
        link.send(commands)

    async def _serve(self, link: Subscriber) -> None:
        """Return (raising why) once the connection ends or goes deaf.

        One deadline covers the whole session, pushed forward by each probe that comes
        back (``_on_message``): no timer per read.
        """
        deadline = asyncio.get_running_loop().time() + self._probe_timeout_s
        try:
            async with asyncio.timeout_at(deadline) as self._deaf_at:
                why = await link.ended
        except TimeoutError:
            raise _Deaf(f"no probe came back for {self._probe_timeout_s}s") from None
        finally:
            self._deaf_at = None
        raise why

    # -- what the subscriber connection reads (called from its data_received) ----------

    def _on_message(self, key: bytes, payload: bytes) -> None:
        channel = self._routes.get(key)
        handler = self._handler
        if channel is None or handler is None:
            if key == self._probe_key:
                now = asyncio.get_running_loop().time()
                self._deaf_after(now + self._probe_timeout_s)
            return  # our probe, or unsubscribed meanwhile, or closing
        self.received += 1
        try:
            handler(channel, payload)
        except Exception:
            log.exception("broker message handler failed on %s", channel)

    def _deaf_after(self, deadline: float) -> None:
        """Move the deaf deadline to ``deadline`` (loop time): a probe came back."""
        deaf_at = self._deaf_at
        # A probe that comes after the deadline fired, before the waiting task ran: the
        # connection is being dropped as deaf already (a fired Timeout refuses reschedule
        # with RuntimeError, which would escape data_received).
        if deaf_at is not None and not deaf_at.expired():
            deaf_at.reschedule(deadline)

    def _on_subscribed(self, key: bytes) -> None:
        waiters = self._waiters.get(key)
        if waiters:
            waiter = waiters.popleft()
            if not waiters:
                del self._waiters[key]
            if not waiter.done():
                waiter.set_result(None)

    def _on_pong(self) -> None:
        self._state.up()

    def _lost(self) -> None:
        """Forget the subscriber connection: not ready, pending subscribes fail."""
        self._state.down()
        self._link = None
        self._pending = []  # queued SUBSCRIBEs' waiters are in _waiters too
        waiters, self._waiters = self._waiters, {}
        for queue in waiters.values():
            for waiter in queue:
                if not waiter.done():
                    waiter.set_result("lost with the connection")

    # -- probe -----------------------------------------------------------------------

    async def _run_probe(self) -> None:
        """Publish to our private probe channel; ``_serve`` notices if nothing comes back."""
        while not self._state.closed:
            await asyncio.sleep(self._probe_interval_s)
            try:
                await self._publish_probe()
            except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
                log.debug("redis probe publish failed: %s", exc)

    async def _publish_probe(self) -> None:
        await self.redis.publish(self._probe_key, b"probe")


def _commands(command: bytes, keys: list[bytes]) -> list[tuple[bytes, ...]]:
    """``command`` for ``keys``, at most SUBSCRIBE_BATCH of them per command."""
    return [
        (command, *keys[start : start + SUBSCRIBE_BATCH])
        for start in range(0, len(keys), SUBSCRIBE_BATCH)
    ]


def _expire(waiters: list[_Waiter]) -> None:
    """Fail the waiters of one write that Redis has not confirmed by now."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(f"not confirmed within {SUBSCRIBE_TIMEOUT_S}s")
