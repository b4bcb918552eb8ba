"""A node joins the local hub and the broker (DESIGN.md §4, centrifuge's node).

It subscribes the broker to a channel when the first local subscriber arrives, rolls
the hub back if that fails, and unsubscribes a little after the last one leaves so that
churn does not thrash the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import orjson

from tidings.brokers.base import Broker
from tidings.brokers.memory import MemoryBroker
from tidings.catchup import DEFAULT_INTERVAL_S, CatchUp
from tidings.errors import BrokerUnavailable
from tidings.hub import Hub, LocalSubscription
from tidings.inbox.base import Inbox, InboxLimits, split_announcement
from tidings.inbox.memory import MemoryInbox
from tidings.legacy import SpringBridge
from tidings.message import APPLICATION_JSON, Message, user_channel
from tidings.metrics import DELIVERY_LAG_BUCKETS, Histogram
from tidings.outbound import Flusher, loop_flusher
from tidings.presence import MemoryPresence, Presence

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Counters:
    """Monotonic counters, plain numbers read by /metrics at scrape time (metrics.py)."""

    published: int = 0
    received: dict[str, int] = field(default_factory=lambda: {"user": 0, "topic": 0, "legacy": 0})
    delivered: int = 0
    slow_consumers: int = 0
    send_rate_limited: int = 0  # sessions ended past --send-rate
    send_store_refused: int = 0  # SENDs refused past --max-send-stored-bytes
    # Stored (the inbox id's millisecond) to written to the sockets, per message delivered.
    delivery_lag: Histogram = field(default_factory=lambda: Histogram(DELIVERY_LAG_BUCKETS))


_CHANNEL_KINDS = {"u": "user", "t": "topic"}
INBOX_STATE_DESTINATION = "/queue/inbox-state"


class Node:
    def __init__(
        self,
        broker: Broker,
        presence: Presence | None = None,
        inbox: Inbox | None = None,
        *,
        node_id: str = "",
        unsubscribe_delay_s: float = 2.0,
        bridge: SpringBridge | None = None,
        catchup_interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.broker = broker
        self.id = node_id or secrets.token_hex(4)
        self.presence = presence if presence is not None else MemoryPresence(self.id)
        if inbox is None:
            if not isinstance(broker, MemoryBroker):
                raise TypeError("a node on a shared broker needs that broker's inbox")
            inbox = MemoryInbox(broker, InboxLimits())
        self.inbox = inbox
        # The Spring bridge (tidings.legacy): what arrives on its channel goes to it.
        self.bridge = bridge
        self.legacy_channel = bridge.channel if bridge is not None else None
        self.hub = Hub(self.new_message_id)
        self.counters = Counters()
        self.unsubscribe_delay_s = unsubscribe_delay_s
        self._ids = itertools.count(1)
        self._id_prefix = f"{self.id}-{secrets.token_hex(3)}-"
        # The broker's subscription per channel: pending, or True once confirmed (a
        # finished task would keep a Task, its coroutine and a Context per channel).
        self._channel_ready: dict[str, asyncio.Task[None] | Literal[True]] = {}
        self._pending_unsubscribe: dict[str, asyncio.TimerHandle] = {}
        self._node_handlers: dict[str, Callable[[bytes], None]] = {}  # n:<id>... channels
        self._started = False
        self._flusher: Flusher | None = None  # the loop's, once started
        self.catchup = CatchUp(
            inbox,
            self._deliver,
            channels=lambda: self.hub.channels,
            keys_of=self.hub.keys_of,
            ready=lambda: self.ready,
            interval_s=catchup_interval_s,
        )
        # The catch-up's state, read on every delivery (src/tidings/catchup.py).
        self._last_delivered = self.catchup.last
        self._held = self.catchup.held
        self._gaps = self.catchup.gaps
        # Stored milliseconds of messages whose frames wait for the loop turn's flush.
        self._lag_pending: list[int] = []

    async def start(self) -> None:
        self._flusher = loop_flusher()
        self._flusher.after_flush.append(self._observe_pending_lag)
        self.broker.on_continuity(self.catchup.on_continuity)
        await self.broker.start(self._on_broker_message)
        await self.inbox.start()
        await self.presence.start()
        self._started = True
        self.catchup.start()

    async def stop(self) -> None:
        self._started = False
        if self._flusher is not None:
            with contextlib.suppress(ValueError):
                self._flusher.after_flush.remove(self._observe_pending_lag)
            self._lag_pending.clear()
        for handle in self._pending_unsubscribe.values():
            handle.cancel()
        self._pending_unsubscribe.clear()
        self.broker.on_continuity(None)
        await self.catchup.stop()
        if self.bridge is not None:
            await self.bridge.close()
        await self.presence.close()
        await self.inbox.close()
        await self.broker.close()

    @property
    def ready(self) -> bool:
        return self._started and self.broker.ready

    def new_message_id(self) -> str:
        """Unique across nodes: node id, a per-process random part, a counter."""
        return f"{self._id_prefix}{next(self._ids)}"

    async def subscribe(self, sub: LocalSubscription) -> None:
        """Make ``sub`` live; when this returns, messages published afterwards reach it."""
        channel = sub.route.channel
        self.hub.add(sub)
        pending = self._pending_unsubscribe.pop(channel, None)
        if pending is not None:
            pending.cancel()
        ready = self._channel_ready.get(channel)
        if ready is True:
            return
        if ready is None:
            ready = self._channel_ready[channel] = asyncio.ensure_future(
                self.broker.subscribe(channel)
            )
        try:
            await asyncio.shield(ready)
        except Exception as exc:
            if self._channel_ready.get(channel) is ready:
                del self._channel_ready[channel]
            self.hub.remove(sub)
            raise BrokerUnavailable(f"cannot subscribe to {channel}: {exc}") from exc
        if self._channel_ready.get(channel) is ready:
            self._channel_ready[channel] = True
            self.catchup.subscribed(channel)

    def unsubscribe(self, sub: LocalSubscription) -> None:
        if self.hub.remove(sub):
            self._schedule_unsubscribe(sub.route.channel)

    def _schedule_unsubscribe(self, channel: str) -> None:
        if channel in self._pending_unsubscribe:
            return
        loop = asyncio.get_running_loop()
        self._pending_unsubscribe[channel] = loop.call_later(
            self.unsubscribe_delay_s, self._unsubscribe_now, channel
        )

    def _unsubscribe_now(self, channel: str) -> None:
        self._pending_unsubscribe.pop(channel, None)
        if self.hub.has_channel(channel):
            return
        self._channel_ready.pop(channel, None)
        self.catchup.forget(channel)
        task = asyncio.ensure_future(self.broker.unsubscribe(channel))
        task.add_done_callback(_log_failure)

    async def publish(self, message: Message, *, idempotency_key: str | None = None) -> str:
        """Store ``message`` and announce it (DESIGN.md §5); returns its inbox id.

        BrokerUnavailable if it could not be stored: a return means stored and announced.
        """
        return await self.submit(message, idempotency_key=idempotency_key)

    def submit(
        self, message: Message, *, idempotency_key: str | None = None
    ) -> asyncio.Future[str]:
        """``publish`` started now: a future of its inbox id (or BrokerUnavailable).

        Raises BrokerUnavailable at once if the node is not running. Publishes submitted
        in one loop turn are stored in the order they were submitted.
        """
        if not self._started:
            raise BrokerUnavailable("node is not running")
        future = self.inbox.submit(message, idempotency_key=idempotency_key)
        future.add_done_callback(self._count_published)
        return future

    def _count_published(self, future: asyncio.Future[str]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.counters.published += 1

    async def mark_read(self, user: str, *, ids: list[str], up_to: str | None) -> int:
        """Record read state and tell every session of ``user``; returns the unread count.

        The event goes to ``/user/queue/inbox-state`` (and ``/user/<id>/queue/inbox-state``)
        so that badges agree on every device (issue 4), with ``last``, the newest id the
        count took into account: a client orders the event by it (issue 16).
        """
        unread, last = await self.inbox.mark_read(user, ids=ids, up_to=up_to)
        event = {"unread": unread, "last": last, "read": ids, "up_to": up_to}
        await self.publish_event(
            Message(
                id=self.new_message_id(),
                channel=user_channel(user),
                destination=INBOX_STATE_DESTINATION,
                body=orjson.dumps(event),
                content_type=APPLICATION_JSON,
            )
        )
        return unread

    async def publish_event(self, message: Message) -> None:
        """Announce ``message`` live without storing it (state events, not notifications)."""
        if not self._started:
            raise BrokerUnavailable("node is not running")
        await self.broker.publish(message.channel, message.encode())

    # -- messages addressed to this node (SockJS relay, server/sockjs_relay.py; the admin
    # API's control requests, server/control.py) -------------------------------------------
    def on_node_message(self, handler: Callable[[bytes], None] | None, suffix: str = "") -> str:
        """Hand what other nodes send to this one on ``n:<node id><suffix>`` to ``handler``
        (None: stop); returns that channel, which the caller must subscribe the broker to."""
        channel = f"n:{self.id}{suffix}"
        if handler is None:
            self._node_handlers.pop(channel, None)
        else:
            self._node_handlers[channel] = handler
        return channel

    async def delete_inbox(self, user: str, *, up_to: str | None) -> tuple[int, int]:
        """Delete ``user``'s stored messages (all, or those <= ``up_to``) and tell every
        session of the user, as ``mark_read`` does; returns (deleted, unread after)."""
        deleted, (unread, last) = await self.inbox.delete(user, up_to=up_to)
        event: dict[str, object] = {"unread": unread, "last": last, "read": [], "up_to": None}
        event["deleted"] = deleted
        if up_to is not None:
            event["deleted_up_to"] = up_to
        await self.publish_event(
            Message(
                id=self.new_message_id(),
                channel=user_channel(user),
                destination=INBOX_STATE_DESTINATION,
                body=orjson.dumps(event),
                content_type=APPLICATION_JSON,
            )
        )
        return deleted, unread

    def _on_broker_message(self, channel: str, payload: bytes) -> None:
        if channel.startswith("n:"):  # node channels: never a delivery
            handler = self._node_handlers.get(channel)
            if handler is not None:
                handler(payload)
            return
        if channel == self.legacy_channel and self.bridge is not None:
            self.counters.received["legacy"] += 1
            self.bridge.received(payload)  # stored, then announced on the user's channel
            return
        self.counters.received[_CHANNEL_KINDS.get(channel[:1], "user")] += 1
        try:
            message = _decode_announcement(payload)
        except (ValueError, TypeError, KeyError, UnicodeError) as exc:
            log.warning("ignoring an undecodable message on %s: %s", channel, exc)
            return
        order = message.order
        if order is not None:  # stored: the catch-up's bookkeeping, O(1) per message
            if self._held:
                buffer = self._held.get(channel)
                if buffer is not None:  # a catch-up of this channel is due or running
                    self.catchup.hold(buffer, channel, message)
                    return
            self._last_delivered[channel] = order
        self._deliver(message)

    def _deliver(self, message: Message) -> None:
        """Hand ``message`` to the local subscribers (live, or from a catch-up)."""
        if self._gaps:
            message = self.catchup.with_gap(message)
        flusher = self._flusher or loop_flusher()
        started = flusher.begin_burst()  # a fan-out to a quiet node writes at once
        try:
            delivered = self.hub.deliver(message)
        finally:
            flusher.end_burst(started)
        counters = self.counters
        counters.delivered += delivered
        # Delivery lag, stored -> written, once per message on this node (not per frame):
        # now if every frame was written at once, else after this loop turn's flush.
        order = message.order
        if delivered and order is not None:
            if flusher.flush_pending and flusher is self._flusher:
                self._lag_pending.append(order[0])  # _observe_pending_lag, after the flush
                return
            lag = time.time() - order[0] / 1000
            lag = lag if lag > 0 else 0.0  # another machine's clock may be ahead
            histogram = counters.delivery_lag  # Histogram.observe inlined (~1k instructions)
            histogram.counts[bisect_left(histogram.bounds, lag)] += 1
            histogram.sum += lag

    def _observe_pending_lag(self) -> None:
        """The flusher has written this loop turn's frames: their messages' lag is now.

        Called by the flusher after every flush (a loop callback per message cost ~5k
        instructions a delivery under callgrind, this ~1k per flush).
        """
        pending = self._lag_pending
        if not pending:
            return
        now = time.time()
        histogram = self.counters.delivery_lag
        counts, bounds = histogram.counts, histogram.bounds
        for stored_ms in pending:
            lag = now - stored_ms / 1000
            lag = lag if lag > 0 else 0.0
            counts[bisect_left(bounds, lag)] += 1
            histogram.sum += lag
        pending.clear()


def _decode_announcement(payload: bytes) -> Message:
    inbox_id, encoded = split_announcement(payload)
    return Message.decode(encoded, inbox_id)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("broker unsubscribe failed: %s", task.exception())
