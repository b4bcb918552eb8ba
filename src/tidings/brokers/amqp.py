"""The AMQP 0-9-1 broker (``amqp://user:pass@host:port/vhost``, ``amqps://``): nodes meet
on RabbitMQ (issue 20).

Routing is RabbitMQ's own (DESIGN.md §4, targeted routing): one exchange for the
deployment (``?exchange=NAME``, default ``tidings``) and one exclusive, auto-delete,
server-named queue per node. ``subscribe`` binds the node's queue to the exchange with
the channel's routing key, ``unsubscribe`` unbinds it; a publish carries the channel's
routing key, and RabbitMQ copies it into the queues that bound it and no other, so a
node receives only the channels it bound.

Routing keys: the exchange is a *direct* exchange, not a topic exchange. A direct
exchange matches a routing key byte for byte, so ``.``, ``*`` and ``#`` in a channel name
mean nothing to it (a topic exchange reads ``.`` as a word separator and ``*``/``#`` in a
binding as wildcards: ``t:a.*`` would also receive ``t:a.b``), no escaping is needed, and
its lookup is a hash, not a trie walk. A name is its own routing key while its UTF-8 fits
AMQP's shortstr (255 bytes); a longer one is routed as ``#sha256:`` + the hex digest of
its UTF-8 (``routing_key``), which no Tidings channel name (``u:...``, ``t:...``) can be.

Publishes wait for RabbitMQ's publisher confirm (``Basic.Ack``) before returning; a
``Basic.Nack``, a lost connection or no confirm within CONFIRM_TIMEOUT_S raise
BrokerUnavailable. Nothing is accepted and dropped. The publishes of one loop turn go out
in one write (``_write_publishes``).

One connection, two AMQP channels: one consumes and (un)binds, one publishes with
confirms. A task owns the connection: connect, declare, consume, bind every wanted
channel, serve until the connection, a channel or the consumer ends, then report the
break (``on_continuity(False)``) and reconnect with capped, jittered exponential
backoff; ``on_continuity(True)`` once the new queue holds every binding again, so the
node's catch-up (tidings.catchup) reads what was missed from the inbox. The queue is
exclusive, so it (and its bindings) die with the connection: a reconnect declares a new
one. AMQP heartbeats (``?heartbeat=SECONDS``, default HEARTBEAT_S) notice a silently dead
connection within about three heartbeats.

The (un)binds asked for in one loop turn go out together, in call order (``_flush``): the
binds of a run as one write of ``Queue.Bind`` frames with nowait, then one ``Basic.Qos``
whose answer proves RabbitMQ applied them all (an AMQP channel runs its methods in order;
a failed bind closes the channel instead), as the Redis broker batches its SUBSCRIBEs.

Library: aiormq (docs/decisions.md, session 8): the publish with confirm is the hot
path, and aio-pika adds its own objects on top of aiormq's per publish and a "robust"
reconnect that would hide the break this broker must report.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
from functools import partial
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiormq
from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from tidings.brokers import AMQP_SCHEMES
from tidings.brokers.base import LinkState, MessageHandler, ReconnectingBroker
from tidings.errors import BrokerUnavailable

log = logging.getLogger(__name__)

DEFAULT_EXCHANGE = "tidings"
CONNECT_TIMEOUT_S = 2.0
"""TCP connect, TLS and the AMQP handshake: a dead RabbitMQ is noticed within it."""
SETUP_TIMEOUT_S = 10.0
"""Declaring the exchange and queue, consuming and binding every wanted channel."""
SUBSCRIBE_TIMEOUT_S = 3.0
"""How long a batch of (un)binds may take, plus BIND_ALLOWANCE_S for each of them."""
BIND_ALLOWANCE_S = 0.002
"""RabbitMQ applies a binding in about 0.7 ms here (5,000 took 3.6 s on a busy machine):
a batch of many gets that much longer."""
CONFIRM_TIMEOUT_S = 5.0
"""How long ``publish()`` waits for RabbitMQ's publisher confirm."""
START_TIMEOUT_S = 5.0
"""How long ``start()`` waits for the first connection before returning not-ready."""
CLOSE_TIMEOUT_S = 2.0
"""Bound on the AMQP close handshake."""
HEARTBEAT_S = 2
"""AMQP heartbeat asked for unless the URL says ``?heartbeat=``: aiormq drops a connection
that sent nothing for 3 * (heartbeat + 1) s, 9 s here (RabbitMQ after two missed ones)."""
MAX_KEY_BYTES = 255
"""AMQP 0-9-1 shortstr: the longest routing key."""

_Pending = asyncio.Future[str | None]
"""One per channel being bound: None once RabbitMQ applied the bind, else why not."""

_PROPERTIES = spec.Basic.Properties(delivery_mode=1)
"""Transient: RabbitMQ only announces, the inbox stores."""

_ERRORS = (aiormq.exceptions.AMQPError, RuntimeError, OSError, TimeoutError)
"""What aiormq raises when the connection or a channel is (or goes) away."""


def routing_key(channel: str) -> str:
    """The routing key of ``channel`` on the direct exchange (see the module docstring)."""
    raw = channel.encode()
    if len(raw) <= MAX_KEY_BYTES:
        return channel
    return "#sha256:" + hashlib.sha256(raw).hexdigest()


def split_url(url: str) -> tuple[str, str]:
    """(the URL aiormq connects to, the exchange name): ``?exchange=`` is Tidings' own.

    ValueError for another scheme or an empty exchange name. A URL without a path is
    the default vhost ``/`` (aiormq's reading too); ``heartbeat`` defaults to HEARTBEAT_S.
    """
    parts = urlsplit(url)
    if parts.scheme not in AMQP_SCHEMES:
        raise ValueError(f"expected an amqp:// or amqps:// URL, got scheme {parts.scheme!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    exchange = DEFAULT_EXCHANGE
    rest: list[tuple[str, str]] = []
    for name, value in query:
        if name == "exchange":
            exchange = value
        else:
            rest.append((name, value))
    if not exchange or len(exchange.encode()) > MAX_KEY_BYTES:
        raise ValueError("?exchange= must name an exchange of 1 to 255 bytes")
    if not any(name == "heartbeat" for name, _ in rest):
        rest.append(("heartbeat", str(HEARTBEAT_S)))
    return urlunsplit(parts._replace(query=urlencode(rest))), exchange


class _Link:
    """One connection's AMQP objects, set up by ``AmqpBroker._connect``."""

    def __init__(self, connection: aiormq.Connection) -> None:
        self.connection = connection
        self.consumer: aiormq.Channel | None = None
        self.publisher: aiormq.Channel | None = None
        self.queue = ""
        self.outgoing: list[tuple[str, bytes, asyncio.Future[Any]]] = []
        """Publishes of this loop turn, for ``AmqpBroker._write_publishes``."""
        self.cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Resolved when RabbitMQ cancels the consumer (the queue was deleted)."""
        self.lock = asyncio.Lock()
        """Held by the (un)bind batch being sent (``AmqpBroker._apply``)."""

    async def close(self) -> None:
        """Close the connection, bounded; whatever is in flight on it fails."""
        with contextlib.suppress(*_ERRORS):
            await self.connection.close(
                ConnectionError("amqp connection closed"), timeout=CLOSE_TIMEOUT_S
            )


class AmqpBroker(ReconnectingBroker):
    """Broker on RabbitMQ: a direct exchange, one exclusive queue per node.

    Ready (``ReconnectingBroker``) while connected with every wanted channel bound; lost
    when the connection, a channel or the consumer ends.
    """

    def __init__(
        self,
        url: str,
        *,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 1.0,
    ) -> None:
        self._url, self.exchange = split_url(url)
        self.received = 0
        """Messages handed to the handler."""
        self._state = LinkState(
            log, "rabbitmq", "rabbitmq connection", backoff_initial_s, backoff_max_s
        )
        # Routing key -> channel name, for every channel subscribed and not unsubscribed.
        self._routes: dict[str, str] = {}
        # Routing key -> the Queue.Bind of subscribe() in flight (None once BindOk came,
        # else why it failed); concurrent subscribers of one channel share it.
        self._binding: dict[str, _Pending] = {}
        self._handler: MessageHandler | None = None
        self._link: _Link | None = None
        self._task: asyncio.Task[None] | None = None
        # (Un)binds of this loop turn in call order, for _flush: (key, pending) to bind,
        # (key, None) to unbind.
        self._operations: list[tuple[str, _Pending | None]] = []
        self._applying: set[asyncio.Task[None]] = set()  # batches under way

    @property
    def queue(self) -> str:
        """This node's queue on RabbitMQ while connected, else ``""``."""
        return self._link.queue if self._link is not None else ""

    # -- Broker interface ------------------------------------------------------------

    async def start(self, handler: MessageHandler) -> None:
        """Start the connection task; wait (bounded) until the first connection is set up.

        If RabbitMQ cannot be reached within START_TIMEOUT_S this returns anyway, not
        ready, and keeps reconnecting in the background.
        """
        if self._state.closed:
            raise BrokerUnavailable("amqp broker is closed")
        if self._task is not None:
            return
        self._handler = handler
        self._task = asyncio.create_task(self._run(), name="tidings-amqp")
        await self._state.wait_ready(START_TIMEOUT_S)

    async def close(self) -> None:
        """Stop the task and close the connection; no handler call after this returns."""
        if not self._state.close():
            return  # closed already
        self._handler = None
        task, self._task = self._task, None
        for running in [*self._applying, *([task] if task is not None else [])]:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

    async def subscribe(self, channel: str) -> None:
        """Return once RabbitMQ has bound the channel's key to this node's queue
        (idempotent; concurrent callers of one channel share one ``Queue.Bind``).

        The bind goes out with the others of this loop turn (``_flush``). BrokerUnavailable
        if not connected, or RabbitMQ has not applied it within SUBSCRIBE_TIMEOUT_S of the
        batch's turn (the channel is then not wanted any more).
        """
        key = routing_key(channel)
        if key in self._routes:
            pending = self._binding.get(key)
            if pending is None:
                if not self._state.ready:
                    raise BrokerUnavailable("amqp unavailable: not connected")
                return  # bound on the current connection
        else:
            self._live()  # BrokerUnavailable unless connected and ready
            pending = asyncio.get_running_loop().create_future()
            self._binding[key] = pending
            self._routes[key] = channel
            self._queue_operation(key, pending)
        error = await asyncio.shield(pending)
        if error is not None:
            raise BrokerUnavailable(f"amqp unavailable: binding {channel!r} {error}")

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel`` at once; unbind it if connected (never raises)."""
        key = routing_key(channel)
        if self._routes.pop(key, None) is None:
            return
        self._binding.pop(key, None)
        link = self._link
        if link is not None and link.consumer is not None and not link.consumer.is_closed:
            self._queue_operation(key, None)  # else the queue died with its bindings

    async def publish(self, channel: str, payload: bytes) -> None:
        """Publish and wait for RabbitMQ's confirm; BrokerUnavailable unless it acked."""
        if self._state.closed or self._handler is None:
            raise BrokerUnavailable("amqp broker is not running")
        link = self._link
        if link is None or link.publisher is None or link.publisher.is_closed:
            raise BrokerUnavailable("amqp unavailable: not connected")
        confirmation = self._queue_publish(link, routing_key(channel), payload)
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT_S):
                confirm = await asyncio.shield(confirmation)
        except aiormq.exceptions.DeliveryError as exc:  # Basic.Nack
            raise BrokerUnavailable(
                f"amqp unavailable: RabbitMQ refused the message ({exc.frame!r})"
            ) from exc
        except _ERRORS as exc:
            raise BrokerUnavailable(f"amqp unavailable: publish not confirmed: {exc!r}") from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller's cancellation
            # aiormq rejects a confirm with CancelledError when its channel closes.
            raise BrokerUnavailable(
                "amqp unavailable: connection lost before the confirm"
            ) from None
        if not isinstance(confirm, spec.Basic.Ack):
            raise BrokerUnavailable(f"amqp unavailable: RabbitMQ refused the message ({confirm!r})")

    def _queue_publish(self, link: _Link, key: str, payload: bytes) -> asyncio.Future[Any]:
        """Queue a publish for ``_write_publishes``; the future is RabbitMQ's confirm."""
        confirmation: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        confirmation.add_done_callback(_retrieve)  # a caller that timed out is gone
        if not link.outgoing:
            asyncio.get_running_loop().call_soon(self._flush_publishes, link)
        link.outgoing.append((key, payload, confirmation))
        return confirmation

    def _flush_publishes(self, link: _Link) -> None:
        batch, link.outgoing = link.outgoing, []
        task = asyncio.create_task(self._write_publishes(link, batch))
        self._applying.add(task)
        task.add_done_callback(self._applying.discard)

    async def _write_publishes(
        self, link: _Link, batch: list[tuple[str, bytes, asyncio.Future[Any]]]
    ) -> None:
        """Write the publishes of one loop turn in one write, each with its delivery tag.

        aiormq's ``basic_publish`` writes each publish on its own: one system call per
        message was most of the client's time (docs/decisions.md). Here, under the
        channel's lock as there, every publish takes the next delivery tag and a
        confirmation future in aiormq's table, which its reader resolves on
        ``Basic.Ack``/``Basic.Nack`` (``multiple`` too) and rejects if the channel closes.
        """
        publisher = link.publisher
        assert publisher is not None
        try:
            async with publisher.lock:
                first = publisher.delivery_tag + 1
                frames: list[Any] = []
                step = publisher.max_content_size
                for key, payload, _ in batch:
                    frames.append(spec.Basic.Publish(exchange=self.exchange, routing_key=key))
                    frames.append(ContentHeader(body_size=len(payload), properties=_PROPERTIES))
                    frames += [
                        ContentBody(payload[at : at + step]) for at in range(0, len(payload), step)
                    ]
                for tag, (_, _, confirmation) in enumerate(batch, first):
                    confirmed = publisher.create_future()
                    publisher.confirmations[tag] = confirmed
                    confirmed.add_done_callback(partial(_chain, confirmation))
                publisher.delivery_tag += len(batch)
                try:
                    await publisher.write_queue.put(ChannelFrame.marshall(publisher.number, frames))
                except BaseException:
                    # Not sent: RabbitMQ will number the next publishes from ``first``.
                    publisher.delivery_tag = first - 1
                    for tag in range(first, first + len(batch)):
                        publisher.confirmations.pop(tag, None)
                    raise
        except BaseException as exc:
            for _, _, confirmation in batch:
                if not confirmation.done():
                    confirmation.set_exception(ConnectionError(f"publish not sent: {exc!r}"))
            if isinstance(exc, asyncio.CancelledError):
                raise
            if not isinstance(exc, _ERRORS):
                raise

    # -- subscriptions ---------------------------------------------------------------

    def _live(self) -> None:
        """BrokerUnavailable unless connected, ready, and the consuming channel open."""
        link = self._link
        consumer = link.consumer if link is not None else None
        if not self._state.ready or consumer is None or consumer.is_closed:
            raise BrokerUnavailable("amqp unavailable: not connected")

    def _queue_operation(self, key: str, pending: _Pending | None) -> None:
        """Queue a Queue.Bind (with its ``pending``) or a Queue.Unbind (None) for ``_flush``."""
        if not self._operations:
            asyncio.get_running_loop().call_soon(self._flush)  # runs next loop turn
        self._operations.append((key, pending))

    def _flush(self) -> None:
        """Apply the (un)binds queued in the last loop turn, in call order, as one batch.

        Batches run one after the other (``_apply``, under the link's lock), so RabbitMQ
        applies every bind and unbind in the order ``subscribe`` and ``unsubscribe`` were
        called, whatever the batches' sizes.
        """
        operations, self._operations = self._operations, []
        link = self._link
        if link is None or link.consumer is None or link.consumer.is_closed:
            self._settle(operations, "not sent: not connected")
            return
        task = asyncio.create_task(self._apply(link, operations))
        self._applying.add(task)
        task.add_done_callback(self._applying.discard)

    async def _apply(self, link: _Link, operations: list[tuple[str, _Pending | None]]) -> None:
        """Send a batch's binds without waiting for each ``BindOk`` (``nowait``) and its
        unbinds (``Queue.Unbind`` has no nowait), then one ``Basic.Qos``: its ``QosOk``
        proves RabbitMQ applied them all, since an AMQP channel runs its methods in order
        and a failed bind closes it instead (the connection task then reconnects)."""
        consumer = link.consumer
        assert consumer is not None
        error: str | None = None
        async with link.lock:
            try:
                async with asyncio.timeout(_allowance(SUBSCRIBE_TIMEOUT_S, len(operations))):
                    for unbind, run in itertools.groupby(operations, lambda op: op[1] is None):
                        keys = [key for key, _ in run]
                        if not unbind:
                            await self._send_binds(consumer, link.queue, keys)
                            continue
                        for key in keys:
                            await consumer.queue_unbind(link.queue, self.exchange, routing_key=key)
                    await consumer.basic_qos(prefetch_count=0)
            except TimeoutError:
                error = f"not confirmed within {_allowance(SUBSCRIBE_TIMEOUT_S, len(operations))}s"
            except _ERRORS as exc:
                error = f"not confirmed: {exc!r}"
            except asyncio.CancelledError:  # aiormq's, when the channel closes
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    self._settle(operations, "not confirmed: broker closed")
                    raise
                error = "not confirmed: connection lost"
        self._settle(operations, error)
        if error is not None:
            log.warning("rabbitmq (un)bind batch failed: %s", error)

    async def _send_binds(self, consumer: aiormq.Channel, queue: str, keys: list[str]) -> None:
        """``Queue.Bind`` with nowait for every key, in one write: aiormq's ``rpc`` would
        make a task and a write per bind (5,000 subscribes took 2.6 s that way)."""
        frames = [
            spec.Queue.Bind(queue=queue, exchange=self.exchange, routing_key=key, nowait=True)
            for key in keys
        ]
        async with consumer.lock:  # what aiormq's rpc holds while it writes
            await consumer.write_queue.put(ChannelFrame.marshall(consumer.number, frames))

    def _settle(self, operations: list[tuple[str, _Pending | None]], error: str | None) -> None:
        """Answer a batch's subscribers; a failed bind makes its channel not wanted."""
        for key, pending in operations:
            if pending is None:
                continue
            if self._binding.get(key) is pending:
                del self._binding[key]
                if error is not None:
                    self._routes.pop(key, None)
            if not pending.done():
                pending.set_result(error)

    # -- the connection --------------------------------------------------------------

    async def _run(self) -> None:
        """Own the connection: connect, serve, and on loss reconnect, forever."""
        while True:
            link = _Link(aiormq.Connection(self._url))
            try:
                await self._connect(link)
                await self._serve(link)
            except _ERRORS as exc:
                self._state.failed(exc)
            except Exception:
                log.exception("amqp connection task failed unexpectedly")
            finally:
                self._lost()
                await link.close()
            await asyncio.sleep(self._state.backoff())

    async def _connect(self, link: _Link) -> None:
        """Connect, declare the exchange and a new queue, consume it, bind every wanted
        channel; then ready, and ``on_continuity(True)``.

        The binds go out as one batch (``_send_binds``, then one ``Basic.Qos``), bounded
        by SETUP_TIMEOUT_S and BIND_ALLOWANCE_S per channel.
        """
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await link.connection.connect()
        self._link = link
        async with asyncio.timeout(_allowance(SETUP_TIMEOUT_S, len(self._routes))):
            consumer = cast(aiormq.Channel, await link.connection.channel(publisher_confirms=False))
            publisher = await link.connection.channel(publisher_confirms=True)
            await consumer.exchange_declare(self.exchange, exchange_type="direct", durable=True)
            # Publishes may go out from now on (a publish to an exchange not declared yet
            # would close the channel); the node's catch-up covers any while rebinding.
            link.publisher = cast(aiormq.Channel, publisher)
            declared = await consumer.queue_declare("", exclusive=True, auto_delete=True)
            link.queue = declared.queue or ""
            consumer.on_consumer_cancel_callbacks.add(lambda frame: _resolve(link.cancelled))
            await consumer.basic_consume(link.queue, self._on_delivery, no_ack=True)
            wanted = list(self._routes)
            await self._send_binds(consumer, link.queue, wanted)
            await consumer.basic_qos(prefetch_count=0)
            link.consumer = consumer
            # Unsubscribed while the binds were on their way: unbind those again.
            for key in wanted:
                if key not in self._routes:
                    await consumer.queue_unbind(link.queue, self.exchange, routing_key=key)
        self._state.up()

    async def _serve(self, link: _Link) -> None:
        """Return (raising why) once the connection, a channel or the consumer ends."""
        assert link.consumer is not None and link.publisher is not None
        watched: list[asyncio.Future[Any]] = [
            link.connection.closing,
            link.consumer.closing,
            link.publisher.closing,
            link.cancelled,
        ]
        try:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in watched:
                if future is not link.cancelled:
                    future.cancel()  # an observer only (aiormq's Base.closing)
        for future in done:
            if future is link.cancelled:
                raise ConnectionError("RabbitMQ cancelled the consumer (queue deleted?)")
            if not future.cancelled() and (exc := future.exception()) is not None:
                raise ConnectionError(f"{exc!r}")
        raise ConnectionError("connection closed")

    async def _on_delivery(self, message: DeliveredMessage) -> None:
        """aiormq runs it as a task per message, in arrival order; it never awaits."""
        channel = self._routes.get(message.routing_key or "")
        handler = self._handler
        if channel is None or handler is None:
            return  # unsubscribed meanwhile, or closing
        self.received += 1
        try:
            handler(channel, message.body)
        except Exception:
            log.exception("broker message handler failed on %s", channel)

    def _lost(self) -> None:
        """Forget the connection: not ready, continuity broken, binds in flight fail."""
        self._state.down()
        self._link = None
        binding, self._binding = self._binding, {}
        for key, pending in binding.items():
            self._routes.pop(key, None)
            if not pending.done():
                pending.set_result("lost with the connection")


def _allowance(base_s: float, binds: int) -> float:
    """A timeout for ``binds`` bindings: ``base_s`` and BIND_ALLOWANCE_S for each."""
    return round(base_s + BIND_ALLOWANCE_S * binds, 3)


def _chain(target: asyncio.Future[Any], source: asyncio.Future[Any]) -> None:
    """Pass aiormq's confirmation (``source``) on to the publisher's future."""
    if target.done():
        return
    if source.cancelled():
        target.set_exception(ConnectionError("confirmation cancelled: channel closed"))
    elif (exc := source.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen (its publisher may have timed out)."""
    if not future.cancelled():
        future.exception()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
