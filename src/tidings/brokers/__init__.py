"""Brokers, chosen by URL scheme: ``memory://`` (default); ``redis://`` comes next."""

from __future__ import annotations

from urllib.parse import urlsplit

from tidings.brokers.base import Broker, MessageHandler
from tidings.brokers.memory import MemoryBroker

__all__ = ["Broker", "MemoryBroker", "MessageHandler", "broker_from_url"]


def broker_from_url(url: str) -> Broker:
    """Build the broker a URL names; ValueError with the supported schemes otherwise."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryBroker()
    raise ValueError(f"unsupported broker URL {url!r}: supported schemes are memory://")
