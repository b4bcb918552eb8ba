"""What a durable inbox does (DESIGN.md §5).

Every message published to a user channel (``u:<user>``) is stored in that user's
ordered inbox; every message on a topic channel (``t:<topic>``) in the topic's shorter
history. Storing assigns the id, an ordered ``"<ms>-<seq>"`` string as Redis Streams
make them, and the same call announces the message live on the broker with that id,
atomically: no node ever sees a live message whose id is not yet stored.

Live announcements on the broker are ``b"<id> " + message.encode()``; the node splits
the id off (``split_announcement``). Messages published without storing (ephemeral
events such as inbox-state) are plain ``message.encode()``, which starts with ``[``.

Per user, two sets of ids live beside the inbox: *acknowledged* (ACK/NACK of STOMP
``client`` and ``client-individual`` subscriptions) and *read* (the user's read state,
with an optional ``up_to`` floor). Both are per user, not per connection, so every
device agrees. Both forget ids that have been trimmed from the inbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from tidings.message import Message, id_key

__all__ = [
    "History",
    "Inbox",
    "InboxLimits",
    "Stored",
    "UnreadState",
    "compare_ids",
    "id_key",
    "split_announcement",
]


@dataclass(frozen=True, slots=True)
class InboxLimits:
    """Retention: user inboxes by count and age, topic histories by count and age; and
    durability: how many Redis replicas must hold a publish before it is answered
    (``min_replicas``, waited for up to ``replica_timeout_s``; Redis only)."""

    max_messages: int = 1000
    max_age_s: float = 7 * 24 * 3600.0
    topic_history: int = 100
    idempotency_ttl_s: float = 24 * 3600.0
    min_replicas: int = 0
    replica_timeout_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored message; ``message.id`` is its inbox id."""

    message: Message
    read: bool = False


@dataclass(frozen=True, slots=True)
class History:
    """Messages after some id, oldest first; ``gap`` when some after it were trimmed."""

    messages: list[Stored]
    gap: bool


class UnreadState(NamedTuple):
    """A user's unread count and ``last``, the newest id their inbox had given out when it
    was counted (even if trimmed or deleted since; None if it never held one), read in one
    step: messages with a greater id are not in ``unread``. Every inbox-state event carries
    both, so a client can order it against the messages it receives and against other
    events (issue 16; docs/notification-center.md)."""

    unread: int
    last: str | None


def compare_ids(a: str, b: str) -> int:
    """-1, 0 or 1 as inbox id ``a`` is before, equal to or after ``b`` (publish order)."""
    ka, kb = id_key(a), id_key(b)
    return (ka > kb) - (ka < kb)


def split_announcement(payload: bytes) -> tuple[str | None, bytes]:
    """``(id, encoded message)`` of a live announcement; id None for an ephemeral one."""
    if payload[:1] == b"[":
        return None, payload
    head, _, rest = payload.partition(b" ")
    return head.decode("ascii"), rest


class Inbox(Protocol):
    """Durable storage of user inboxes and topic histories, paired with a broker."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, message: Message, *, idempotency_key: str | None = None) -> str:
        """Store ``message`` on its channel's inbox and announce it live, atomically.

        Returns the new id. With an ``idempotency_key`` seen before on the same channel
        (within ``idempotency_ttl_s``), stores and announces nothing and returns the
        first id. Raises BrokerUnavailable when it cannot store; a return means stored.
        """

    def submit(
        self, message: Message, *, idempotency_key: str | None = None
    ) -> asyncio.Future[str]:
        """``publish`` started now, without a coroutine to await: a future of its outcome.

        The calls of one loop turn keep their order. The caller must retrieve the outcome.
        """

    async def history(self, channel: str, after: str, *, limit: int) -> History:
        """Retained messages of ``channel`` with id > ``after`` (``"0"``: all), oldest first.

        ``gap`` is True when messages with id > ``after`` existed but were trimmed.
        """

    async def histories(self, after: Mapping[str, str], *, limit: int) -> dict[str, History]:
        """``history`` of each channel of ``after`` after its id, in few round trips.

        For the node's catch-up (DESIGN.md §5: the stream, not pub/sub, is the source of
        truth): every channel a node may have missed announcements on, read at once.
        """

    async def last_ids(self, channels: Sequence[str]) -> dict[str, str | None]:
        """The newest retained id of each channel, None for one with nothing retained."""

    async def behind(self, after: Mapping[str, str]) -> list[str]:
        """The channels of ``after`` that hold a message with an id > the given one.

        The node's periodic safety net asks this for every channel it delivers: cheap
        per channel (a lookup, no message read) and in batches.
        """

    async def unacked(self, user: str, destination: str, *, limit: int) -> list[Stored]:
        """Retained messages of ``user`` at ``destination`` not acknowledged, oldest first."""

    async def ack(self, user: str, ids: Sequence[str]) -> None:
        """Mark these ids of ``user``'s inbox acknowledged (unknown ids are ignored)."""

    async def listing(self, user: str, after: str, *, limit: int) -> list[Stored]:
        """Like ``history`` of ``u:<user>`` but with each message's read flag set."""

    async def unread(self, user: str) -> int:
        """Retained messages of ``user`` not read."""

    async def unread_state(self, user: str) -> UnreadState:
        """``unread`` and ``last`` of ``user``'s inbox, read in one step: a client counting
        new messages from that id on never counts one twice."""

    async def mark_read(
        self, user: str, *, ids: Sequence[str] = (), up_to: str | None = None
    ) -> UnreadState:
        """Mark ids read, and everything <= ``up_to``; returns the state after."""

    async def delete(self, user: str, *, up_to: str | None = None) -> tuple[int, UnreadState]:
        """Delete ``user``'s retained messages: all, or those with id <= ``up_to``.

        Only the oldest go (the inbox is trimmed from its front, as by retention), so ids
        stay ordered, a resume from a deleted id reports ``gap`` and new ids are greater.
        Their acknowledged and read marks go with them. Returns (deleted, state after).
        """
