"""The embedded default broker: one process, no setup (``memory://``)."""

from __future__ import annotations

from tidings.brokers.base import ContinuityHandler, MessageHandler
from tidings.errors import BrokerUnavailable


class MemoryBroker:
    """In-process broker: a publish reaches the handler synchronously, in order."""

    def __init__(self) -> None:
        self._handler: MessageHandler | None = None
        self._channels: set[str] = set()

    async def start(self, handler: MessageHandler) -> None:
        self._handler = handler

    async def close(self) -> None:
        self._handler = None
        self._channels.clear()

    def on_continuity(self, handler: ContinuityHandler | None) -> None:
        """A publish reaches the handler in the same call: delivery never breaks."""

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def publish(self, channel: str, payload: bytes) -> None:
        self.deliver(channel, payload)

    def deliver(self, channel: str, payload: bytes) -> None:
        """``publish`` without the coroutine: the handler has the payload on return."""
        if self._handler is None:
            raise BrokerUnavailable("memory broker is not running")
        if channel in self._channels:
            self._handler(channel, payload)

    @property
    def ready(self) -> bool:
        return self._handler is not None

    @property
    def channels(self) -> frozenset[str]:
        """Channels currently subscribed (for tests and metrics)."""
        return frozenset(self._channels)
