"""Brokers, chosen by URL scheme: ``memory://`` (default), ``redis://``, ``rediss://``
``redis+sentinel://`` (``rediss+sentinel://``) and ``redis+cluster://``
(``rediss+cluster://``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from tidings.brokers.base import Broker, ContinuityHandler, MessageHandler
from tidings.brokers.memory import MemoryBroker

REDIS_SCHEMES = (
    "redis",
    "rediss",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)
"""The URL schemes of a broker on Redis (shared by every node of a deployment)."""

__all__ = [
    "REDIS_SCHEMES",
    "Broker",
    "ContinuityHandler",
    "MemoryBroker",
    "MessageHandler",
    "broker_from_url",
]


def broker_from_url(url: str) -> Broker:
    """Build the broker a URL names; ValueError with the supported schemes otherwise."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryBroker()
    if scheme in REDIS_SCHEMES:
        # Imported here so that redis-py loads only when a Redis URL is configured.
        from tidings.brokers.redis import redis_broker  # noqa: PLC0415

        return redis_broker(url)
    raise ValueError(
        f"unsupported broker URL {url!r}: supported schemes are memory://, redis://, rediss://, "
        "redis+sentinel://, rediss+sentinel://, redis+cluster://, rediss+cluster://"
    )
