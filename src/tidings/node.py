"""A node joins the local hub and the broker (DESIGN.md §4, centrifuge's node).

It subscribes the broker to a channel when the first local subscriber arrives, rolls
the hub back if that fails, and unsubscribes a little after the last one leaves so that
churn does not thrash the broker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from dataclasses import dataclass, field

import orjson

from tidings.brokers.base import Broker
from tidings.errors import BrokerUnavailable
from tidings.hub import Hub, LocalSubscription
from tidings.message import Message, encode_body, user_channel
from tidings.presence import MemoryPresence, Presence

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Counters:
    """Monotonic counters, exported by /metrics."""

    published: int = 0
    received: dict[str, int] = field(default_factory=lambda: {"user": 0, "topic": 0, "legacy": 0})
    delivered: int = 0
    slow_consumers: int = 0


_CHANNEL_KINDS = {"u": "user", "t": "topic"}


class Node:
    def __init__(
        self,
        broker: Broker,
        presence: Presence | None = None,
        *,
        node_id: str = "",
        unsubscribe_delay_s: float = 2.0,
        legacy_channel: str | None = None,
    ) -> None:
        self.broker = broker
        self.id = node_id or secrets.token_hex(4)
        self.presence = presence if presence is not None else MemoryPresence(self.id)
        self.legacy_channel = legacy_channel
        self.hub = Hub()
        self.counters = Counters()
        self.unsubscribe_delay_s = unsubscribe_delay_s
        self._ids = itertools.count(1)
        self._id_prefix = f"{self.id}-{secrets.token_hex(3)}-"
        self._channel_ready: dict[str, asyncio.Task[None]] = {}
        self._pending_unsubscribe: dict[str, asyncio.TimerHandle] = {}
        self._started = False

    async def start(self) -> None:
        await self.broker.start(self._on_broker_message)
        await self.presence.start()
        self._started = True

    async def stop(self) -> None:
        self._started = False
        for handle in self._pending_unsubscribe.values():
            handle.cancel()
        self._pending_unsubscribe.clear()
        await self.presence.close()
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

    def unsubscribe(self, sub: LocalSubscription) -> None:
        if self.hub.remove(sub):
            self._schedule_unsubscribe(sub.route.channel)

    def remove_session(self, session_id: str) -> None:
        for sub in self.hub.subscriptions_of(session_id):
            self.unsubscribe(sub)

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
        task = asyncio.ensure_future(self.broker.unsubscribe(channel))
        task.add_done_callback(_log_failure)

    async def publish(self, message: Message) -> None:
        """Hand ``message`` to the broker; BrokerUnavailable if it cannot take it."""
        if not self._started:
            raise BrokerUnavailable("node is not running")
        await self.broker.publish(message.channel, message.encode())
        self.counters.published += 1

    def _on_broker_message(self, channel: str, payload: bytes) -> None:
        if channel == self.legacy_channel:
            self.counters.received["legacy"] += 1
            decode = self._decode_legacy
        else:
            self.counters.received[_CHANNEL_KINDS.get(channel[:1], "user")] += 1
            decode = Message.decode
        try:
            message = decode(payload)
        except (ValueError, TypeError, KeyError, UnicodeError) as exc:
            log.warning("ignoring an undecodable message on %s: %s", channel, exc)
            return
        self.counters.delivered += self.hub.deliver(message)

    def _decode_legacy(self, payload: bytes) -> Message:
        """The seed's ``{code, form, to, content}`` JSON, delivered as /pushToOneTest does."""
        data = orjson.loads(payload)
        if isinstance(data, str):  # a JSON string holding the JSON (double-encoded by a template)
            data = orjson.loads(data)
        to = data["to"]
        if not isinstance(to, str | int) or isinstance(to, bool) or not str(to):
            raise ValueError("'to' must be a user id")
        body, content_type = encode_body(data["content"])
        return Message(
            id=self.new_message_id(),
            channel=user_channel(str(to)),
            destination="/message",
            body=body,
            content_type=content_type,
        )


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("broker unsubscribe failed: %s", task.exception())
