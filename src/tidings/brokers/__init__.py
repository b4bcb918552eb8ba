"""Brokers, chosen by URL scheme: ``memory://`` (default), ``redis://``, ``rediss://``,
``redis+sentinel://`` (``rediss+sentinel://``), ``redis+cluster://`` (``rediss+cluster://``,
issue 18), and ``amqp://`` / ``amqps://`` (RabbitMQ, routing only: its messages are stored
elsewhere, issue 20)."""

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
AMQP_SCHEMES = ("amqp", "amqps")
"""The URL schemes of a broker on RabbitMQ (AMQP 0-9-1)."""
AMQP_NEEDS_INBOX = (
    "--broker amqp:// routes messages between nodes but stores none: it needs an inbox "
    "store of its own, --inbox postgresql://... (issue 20)"
)
"""Why a node refuses to start on an AMQP broker without a PostgreSQL ``--inbox``."""

__all__ = [
    "AMQP_NEEDS_INBOX",
    "AMQP_SCHEMES",
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
    if scheme in AMQP_SCHEMES:
        # Imported here so that aiormq (the `amqp` extra) loads only for an AMQP URL.
        from tidings.brokers.amqp import AmqpBroker  # noqa: PLC0415

        return AmqpBroker(url)
    raise ValueError(
        f"unsupported broker URL {url!r}: supported schemes are memory://, redis://, rediss://, "
        "redis+sentinel://, rediss+sentinel://, redis+cluster://, rediss+cluster://, amqp://, "
        "amqps://"
    )
