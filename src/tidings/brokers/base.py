"""The broker interface: how nodes hand messages to each other (DESIGN.md §4).

Six methods, as in encode/broadcaster, with the push model of centrifuge: the broker
calls the node's handler for every message on a channel the node subscribed to.
A broker that cannot take a publish raises BrokerUnavailable; it never accepts and
drops.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

MessageHandler = Callable[[str, bytes], None]
"""Called with (channel, payload) for each message received on a subscribed channel."""


ContinuityHandler = Callable[[bool], None]
"""Called with False when the broker may have stopped hearing its channels (the
subscriber connection was lost) and with True once it hears every one of them again.
What was published in between never arrives live: the node reads it from the inbox
(DESIGN.md §5, "pub/sub is not the source of truth, the stream is")."""


class Broker(Protocol):
    async def start(self, handler: MessageHandler) -> None:
        """Connect and begin delivering messages of subscribed channels to ``handler``."""

    async def close(self) -> None:
        """Disconnect; no handler calls after this returns."""

    def on_continuity(self, handler: ContinuityHandler | None) -> None:
        """Report breaks in delivery to ``handler`` (a broker that never has one never calls)."""

    async def subscribe(self, channel: str) -> None:
        """Receive this channel's messages from now on (idempotent)."""

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving this channel's messages (idempotent)."""

    async def publish(self, channel: str, payload: bytes) -> None:
        """Hand a message to every node subscribed to ``channel``; BrokerUnavailable if not."""

    @property
    def ready(self) -> bool:
        """True while publishes and subscriptions can succeed."""


def reconnect_delay(failures: int, initial_s: float, max_s: float) -> float:
    """Capped exponential delay before reconnect attempt ``failures``, with jitter (the
    Redis and AMQP brokers' reconnect loops)."""
    delay = min(max_s, initial_s * 2.0 ** (failures - 1))
    return delay * random.uniform(0.5, 1.0)
