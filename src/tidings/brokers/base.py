"""The broker interface: how nodes hand messages to each other (DESIGN.md §4).

Six methods, as in encode/broadcaster, with the push model of centrifuge: the broker
calls the node's handler for every message on a channel the node subscribed to.
A broker that cannot take a publish raises BrokerUnavailable; it never accepts and
drops.
"""

from __future__ import annotations

import asyncio
import logging
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


class LinkState:
    """Whether a broker hears every channel it wants, kept the same way by the Redis and
    AMQP brokers: ``up`` once a connection is set up with all of them, ``down`` when it
    is lost. Reports both to the continuity handler, counts the reconnects, logs failed
    attempts (a warning for the first of an outage, then debug) and spaces them."""

    def __init__(
        self,
        log: logging.Logger,
        server: str,
        connection: str,
        backoff_initial_s: float,
        backoff_max_s: float,
    ) -> None:
        self.ready = False
        self.reconnects = 0
        """Times the connection was re-established after a loss."""
        self.continuity: ContinuityHandler | None = None
        self.became_ready = asyncio.Event()
        self._log = log
        self._server = server  # "redis": "redis unreachable", "redis broker not ready"
        self._connection = connection  # "redis subscriber connection lost"
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._ever_ready = False
        self._failures = 0  # attempts failed since the connection was last ready
        self.closed = False
        """Set by ``close``: the broker is closed for good."""

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait (bounded) for the first connection; on timeout log that it goes on."""
        try:
            await asyncio.wait_for(self.became_ready.wait(), timeout_s)
        except TimeoutError:
            self._log.warning(
                "%s broker not ready after %.1fs; still reconnecting", self._server, timeout_s
            )

    def close(self) -> bool:
        """The broker closes: no continuity reports from now on, and a ``wait_ready``
        under way returns. False if it was closed already."""
        if self.closed:
            return False
        self.closed = True
        self.became_ready.set()
        return True

    def up(self) -> None:
        """The connection hears every wanted channel: ready, continuity restored."""
        if self.ready:
            return
        self.ready = True
        self.became_ready.set()
        if self._ever_ready:
            self.reconnects += 1
            self._log.info("%s re-established (%d reconnects)", self._connection, self.reconnects)
        self._ever_ready = True
        self._report(True)

    def failed(self, exc: BaseException) -> None:
        """Log why an attempt, or the connection, failed (before ``down``)."""
        if not self._ever_ready and self._failures == 0:
            self._log.warning("%s unreachable: %s (retrying in the background)", self._server, exc)
        elif self.ready or self._failures == 0:
            self._log.warning("%s lost: %s", self._connection, exc)
        else:
            self._log.debug("%s reconnect failed: %s", self._server, exc)

    def down(self) -> None:
        """The connection is gone: not ready, continuity broken if it was ready."""
        if self.ready:
            self._failures = 0
            self._report(False)
        self.ready = False
        self.became_ready.clear()

    def backoff(self) -> float:
        """The delay before the next attempt, one more failed (``reconnect_delay``)."""
        self._failures += 1
        return reconnect_delay(self._failures, self._backoff_initial_s, self._backoff_max_s)

    def _report(self, hearing: bool) -> None:
        handler = self.continuity
        if handler is None or self.closed:
            return
        try:
            handler(hearing)
        except Exception:
            self._log.exception("broker continuity handler failed")


class ReconnectingBroker:
    """What the Redis and AMQP brokers answer from their ``LinkState``."""

    _state: LinkState

    @property
    def ready(self) -> bool:
        """True while connected and hearing every wanted channel (``LinkState.up``)."""
        return self._state.ready

    @property
    def reconnects(self) -> int:
        """Times the connection was re-established after a loss."""
        return self._state.reconnects

    def on_continuity(self, handler: ContinuityHandler | None) -> None:
        """``handler(False)`` when the connection is lost, ``handler(True)`` once a new
        one hears every wanted channel again (``LinkState``)."""
        self._state.continuity = handler
