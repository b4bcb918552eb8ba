"""Publish from a Python back end straight to the Redis of a Tidings deployment.

Example::

    async with Publisher.from_url("redis://127.0.0.1:6379/0") as pub:
        inbox_id = await pub.to_user("42", {"title": "Build done"})
        await pub.to_topic("public", "maintenance at 22:00")

It does what ``POST /api/v1/users/{user}/messages`` and ``.../topics/{topic}/messages`` do
on nodes started with ``--broker`` on that Redis, without the HTTP hop: the same rules
(``tidings.publish_rules``: InvalidPublish, before anything is sent) and the same Lua
script as a node's inbox (``tidings.inbox.redis.InboxWriter``), so the message gets its
``tidings-id``, is trimmed and expired by the same limits, and nodes deliver it; resume,
acks and unread counts see it. Calls made in one loop turn share one Redis round trip.
A ``redis+cluster://`` URL (issue 18) works alike: each publish goes to the master of its
channel's slot, those of one loop turn to one master in one write. See docs/publisher.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from tidings import publish_rules
from tidings.brokers.redis import command_client
from tidings.errors import InvalidPublish
from tidings.inbox.base import InboxLimits
from tidings.inbox.redis import InboxWriter
from tidings.message import Message
from tidings.publish_rules import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["Publisher"]


class Publisher:
    """Publishes to users and topics of the Tidings nodes on one Redis.

    ``limits`` and ``max_message_bytes`` must be the nodes' (``--inbox-max-messages``,
    ``--inbox-max-age``, ``--topic-history``, ``--inbox-idempotency-ttl``,
    ``--max-message-bytes``): they decide what is kept, for how long a key is remembered,
    and what is refused. Every publish returns the message's inbox id once Redis
    stored it, raises InvalidPublish (a ValueError) for bad input, with nothing stored,
    and BrokerUnavailable when Redis did not take it.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        limits: InboxLimits | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        legacy_channel: str | None = None,
    ) -> None:
        """Publish through ``client`` (its owner closes it); ``from_url`` makes its own.

        ``legacy_channel`` must be the nodes' ``--legacy-channel``: user messages to
        ``/message`` are then also published there for the Spring instances (tidings.legacy).
        """
        self._client = client
        self._owns_client = False
        self._writer = InboxWriter(client, limits or InboxLimits(), legacy_channel=legacy_channel)
        self._max_bytes = max_message_bytes

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        limits: InboxLimits | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        legacy_channel: str | None = None,
    ) -> Publisher:
        """A publisher on its own pool of connections to ``url`` (the nodes' ``--broker``),
        with the nodes' timeouts and no silent retries; ``aclose`` closes it."""
        client = command_client(url, client_name="tidings-publisher")
        publisher = cls(
            client,
            limits=limits,
            max_message_bytes=max_message_bytes,
            legacy_channel=legacy_channel,
        )
        publisher._owns_client = True
        return publisher

    async def start(self) -> None:
        """Check that Redis is >= 7.0 (only logged if Redis cannot be reached now)."""
        await self._writer.start()

    async def aclose(self) -> None:
        """Refuse further publishes (BrokerUnavailable); close the client if it is ours."""
        await self._writer.close()
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def to_user(
        self,
        user: str,
        content: object,
        *,
        destination: str = "/message",
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Store ``content`` in ``user``'s inbox and deliver it at ``/user/<user><destination>``.

        A string goes out as ``text/plain;charset=UTF-8``, any other JSON value as
        ``application/json;charset=UTF-8``, unless ``content_type`` says otherwise.
        ``headers`` become extra MESSAGE headers. A second publish with the same
        ``idempotency_key`` (per user, within ``limits.idempotency_ttl_s``, the nodes'
        ``--inbox-idempotency-ttl``: a day by default) stores nothing and returns the first id.
        """
        message = publish_rules.user_message(
            user,
            content,
            destination=destination,
            headers=_with_content_type(headers, content_type),
            max_bytes=self._max_bytes,
        )
        return await self._publish(message, idempotency_key)

    async def to_topic(
        self,
        topic: str,
        content: object,
        *,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Deliver ``content`` to every subscriber of ``/topic/<topic>`` and keep it in the
        topic's history; the arguments are those of ``to_user``."""
        message = publish_rules.topic_message(
            topic,
            content,
            headers=_with_content_type(headers, content_type),
            max_bytes=self._max_bytes,
        )
        return await self._publish(message, idempotency_key)

    async def _publish(self, message: Message, key: str | None) -> str:
        key = publish_rules.idempotency_key(key)
        return await self._writer.publish(message, idempotency_key=key)


def _with_content_type(headers: object, content_type: str | None) -> object:
    """``headers`` plus ``content-type``, checked like any header; it may be given once."""
    if content_type is None or (headers is not None and not isinstance(headers, Mapping)):
        return headers  # nothing to add, or not headers at all: publish_rules says so
    headers = headers or {}
    if any(isinstance(name, str) and name.lower() == "content-type" for name in headers):
        raise InvalidPublish(
            "invalid_field", "give the content type once: content_type= or a header"
        )
    return {**headers, "content-type": content_type}
