"""The in-process inbox paired with the memory broker: the Redis inbox's rules, mirrored.

Everything ``RedisInbox`` does with streams, sorted sets and key TTLs is done here with
lists and dicts, so that a single node without Redis behaves the same (DESIGN.md §5):

* ids are ``"<ms>-<seq>"`` per channel, ``ms`` the wall clock, never going backwards
  even if the clock does (as ``XADD *``);
* each publish trims by count (``max_messages`` for users, ``topic_history`` for topics)
  and by age; every read trims by age first, so nothing older than ``max_age_s`` is
  ever returned; ``gap`` compares with the greatest id ever trimmed;
* per user, acknowledged ids and read ids forget trimmed ids;
* every piece of state vanishes a while after its last write (Redis key TTLs), so the
  data of users who went away does not pile up. What a vanished inbox held is unknown:
  it reports ``gap`` for any resume but ``"0"``, and so does a new inbox for a resume
  from before its first id.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tidings.brokers.memory import MemoryBroker
from tidings.errors import BrokerUnavailable
from tidings.inbox.base import History, InboxLimits, Stored, UnreadState
from tidings.message import Message, id_key

Key = tuple[int, int]
"""An id as ``(ms, seq)``, the form ids are compared and stored in here."""

MAX_ID_PART = 2**64 - 1
"""Redis stream ids are two unsigned 64-bit numbers."""
TTL_MARGIN_S = 1.0
"""Keys outlive ``max_age_s`` by this much: the last message is due before its key goes."""


def parse_id(inbox_id: str) -> Key:
    """``(ms, seq)`` of an inbox id (``"0"`` and ``"<ms>"`` mean seq 0); ValueError if malformed."""
    try:
        ms, seq = id_key(inbox_id)
    except ValueError:
        raise ValueError(f"{inbox_id!r} is not an inbox id like 1700000000000-0") from None
    if not (0 <= ms <= MAX_ID_PART and 0 <= seq <= MAX_ID_PART):
        raise ValueError(f"{inbox_id!r} is out of the inbox id range")
    return ms, seq


def canonical_id(inbox_id: str) -> str:
    """The spelling of an id that storage uses (``"7"`` → ``"7-0"``); ValueError if malformed."""
    ms, seq = parse_id(inbox_id)
    return f"{ms}-{seq}"


def known_ids(ids: Sequence[str]) -> list[Key]:
    """The well-formed ids among ``ids``: malformed ones cannot be stored, so are unknown."""
    keys = []
    for inbox_id in ids:
        try:
            keys.append(parse_id(inbox_id))
        except ValueError:
            continue
    return keys


MAX_REPLICA_TIMEOUT_S = 10.0
"""The longest a publish may wait for its replicas (``--inbox-replica-timeout``)."""


def check_limits(limits: InboxLimits) -> None:
    if limits.max_messages < 1 or limits.topic_history < 0:
        raise ValueError("inbox limits: max_messages must be >= 1 and topic_history >= 0")
    if limits.max_age_s <= 0 or limits.idempotency_ttl_s <= 0:
        raise ValueError("inbox limits: max_age_s and idempotency_ttl_s must be > 0")
    if limits.min_replicas < 0 or not 0 < limits.replica_timeout_s <= MAX_REPLICA_TIMEOUT_S:
        raise ValueError(
            "inbox limits: min_replicas must be >= 0 and replica_timeout_s in "
            f"(0, {MAX_REPLICA_TIMEOUT_S}]"
        )


def user_of(channel: str) -> str | None:
    """The user of a user channel, None for a topic; ValueError for anything else."""
    if channel.startswith("u:"):
        return channel[2:]
    if channel.startswith("t:"):
        return None
    raise ValueError(f"{channel!r} is not an inbox channel (u:<user> or t:<topic>)")


K = TypeVar("K")
V = TypeVar("V")


def _wall_ms() -> int:
    """Milliseconds of the wall clock: ids and ages, as Redis ``TIME`` (tests replace it)."""
    return time.time_ns() // 1_000_000


class _Expiring(Generic[K, V]):
    """Values that vanish ``ttl_s`` after their last ``put``, like Redis keys whose TTL is
    refreshed on write. The TTL is the same for all, so the dict's order is expiry order
    and each ``put`` sweeps what has expired from the front."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= time.monotonic():
            del self._items[key]
            return None
        return item[1]

    def put(self, key: K, value: V) -> None:
        now = time.monotonic()
        self._items[key] = (now + self._ttl_s, value)
        self._items.move_to_end(key)
        while self._items:
            first = next(iter(self._items.values()))
            if first[0] > now:
                break
            self._items.popitem(last=False)


@dataclass(slots=True)
class _Stream:
    """One channel's retained messages, oldest first; ``keys[i]`` is ``messages[i]``'s id."""

    keys: list[Key] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    last: Key = (0, 0)
    """The last id given out, even if trimmed since: new ids are greater."""
    gap_below: Key = (0, 0)
    """A resume after an id below this misses something: the greatest id trimmed so far,
    or for a new stream its first id (what came before is unknown)."""

    def next_key(self, now_ms: int) -> Key:
        ms = max(now_ms, self.last[0])
        return (ms, self.last[1] + 1) if ms == self.last[0] else (ms, 0)

    def trim_front(self, count: int) -> list[Key]:
        """Drop the ``count`` oldest; return their ids."""
        if count <= 0:
            return []
        gone = self.keys[:count]
        del self.keys[:count], self.messages[:count]
        self.gap_below = max(self.gap_below, gone[-1])
        return gone

    def contains(self, key: Key) -> bool:
        i = bisect.bisect_left(self.keys, key)
        return i < len(self.keys) and self.keys[i] == key


@dataclass(slots=True)
class _ReadState:
    """A user's read state: everything <= ``floor``, and ``ids`` (retained, above it)."""

    floor: Key = (0, 0)
    ids: set[Key] = field(default_factory=set)


class MemoryInbox:
    """The inbox for a single node on the memory broker; see the module docstring."""

    def __init__(self, broker: MemoryBroker, limits: InboxLimits) -> None:
        check_limits(limits)
        self._broker = broker
        self._limits = limits
        self._max_age_ms = int(limits.max_age_s * 1000)
        ttl_s = limits.max_age_s + TTL_MARGIN_S
        self._streams: _Expiring[str, _Stream] = _Expiring(ttl_s)
        self._acked: _Expiring[str, set[Key]] = _Expiring(ttl_s)
        self._read: _Expiring[str, _ReadState] = _Expiring(ttl_s)
        self._idempotency: _Expiring[tuple[str, str], str] = _Expiring(limits.idempotency_ttl_s)
        self._closed = False

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True

    def submit(
        self, message: Message, *, idempotency_key: str | None = None
    ) -> asyncio.Future[str]:
        """``publish`` done now (stored and delivered): a future already done."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(self._publish(message, idempotency_key))
        except BrokerUnavailable as exc:
            future.set_exception(exc)
        return future

    async def publish(self, message: Message, *, idempotency_key: str | None = None) -> str:
        return self._publish(message, idempotency_key)

    def _publish(self, message: Message, idempotency_key: str | None) -> str:
        user = user_of(message.channel)
        self._check_open()
        if not self._broker.ready:
            raise BrokerUnavailable("memory broker is not running")
        channel = message.channel
        if idempotency_key is not None:
            first = self._idempotency.get((channel, idempotency_key))
            if first is not None:
                return first
        stream = self._streams.get(channel)
        # A new (or emptied) inbox: the user's id sets may name ids of one that expired.
        fresh = stream is None or not stream.keys
        stream = stream or _Stream()
        now_ms = _wall_ms()
        key = stream.next_key(now_ms)
        inbox_id = f"{key[0]}-{key[1]}"
        stored = message.stored_as(inbox_id)
        payload = inbox_id.encode() + b" " + stored.encode()  # before storing: may raise
        if stream.last == (0, 0):
            stream.gap_below = key
        stream.keys.append(key)
        stream.messages.append(stored)
        stream.last = key
        limit = self._limits.max_messages if user is not None else self._limits.topic_history
        trimmed = stream.trim_front(len(stream.keys) - limit)
        self._trim_age(stream, user, now_ms, forget=bool(trimmed) or fresh)
        self._streams.put(channel, stream)
        if idempotency_key is not None:
            self._idempotency.put((channel, idempotency_key), inbox_id)
        # Stored and handed over in one step: announcements keep the order of the ids.
        self._broker.deliver(channel, payload)
        return inbox_id

    async def history(self, channel: str, after: str, *, limit: int) -> History:
        after_key = parse_id(after)
        stream = self._stream(channel, user_of(channel))
        if stream is None:
            return History([], gap=after_key != (0, 0))
        gap = after_key != (0, 0) and after_key < stream.gap_below
        return History([Stored(m) for _, m in _after(stream, after_key, limit)], gap=gap)

    async def histories(self, after: Mapping[str, str], *, limit: int) -> dict[str, History]:
        return {
            channel: await self.history(channel, a, limit=limit) for channel, a in after.items()
        }

    async def last_ids(self, channels: Sequence[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for channel in channels:
            stream = self._stream(channel, user_of(channel))
            last = stream.keys[-1] if stream is not None and stream.keys else None
            out[channel] = None if last is None else f"{last[0]}-{last[1]}"
        return out

    async def behind(self, after: Mapping[str, str]) -> list[str]:
        self._check_open()
        out = []
        for channel, inbox_id in after.items():
            stream = self._streams.get(channel)
            if stream is not None and stream.keys and stream.keys[-1] > parse_id(inbox_id):
                out.append(channel)
        return out

    async def unacked(self, user: str, destination: str, *, limit: int) -> list[Stored]:
        stream = self._stream(f"u:{user}", user)
        if stream is None or limit <= 0:
            return []
        acked = self._acked.get(user) or set()
        out = []
        for key, message in zip(stream.keys, stream.messages, strict=True):
            if message.destination == destination and key not in acked:
                out.append(Stored(message))
                if len(out) == limit:
                    break
        return out

    async def ack(self, user: str, ids: Sequence[str]) -> None:
        stream = self._stream(f"u:{user}", user)
        acked = self._acked.get(user) or set()
        if stream is not None:
            acked.update(key for key in known_ids(ids) if stream.contains(key))
        if acked:
            self._acked.put(user, acked)

    async def listing(self, user: str, after: str, *, limit: int) -> list[Stored]:
        after_key = parse_id(after)
        stream = self._stream(f"u:{user}", user)
        if stream is None:
            return []
        state = self._read.get(user) or _ReadState()
        return [
            Stored(m, read=key <= state.floor or key in state.ids)
            for key, m in _after(stream, after_key, limit)
        ]

    async def unread(self, user: str) -> int:
        stream = self._stream(f"u:{user}", user)
        return self._unread(stream, self._read.get(user) or _ReadState())

    async def unread_state(self, user: str) -> UnreadState:
        stream = self._stream(f"u:{user}", user)
        return self._state(stream, self._read.get(user) or _ReadState())

    async def mark_read(
        self, user: str, *, ids: Sequence[str] = (), up_to: str | None = None
    ) -> UnreadState:
        up_to_key = parse_id(up_to) if up_to is not None else None
        stream = self._stream(f"u:{user}", user)
        state = self._read.get(user) or _ReadState()
        if stream is not None:
            if up_to_key is not None:
                # The floor moves to the newest retained id <= up_to, and only forward.
                i = bisect.bisect_right(stream.keys, up_to_key)
                if i and stream.keys[i - 1] > state.floor:
                    state.floor = stream.keys[i - 1]
                    state.ids = {key for key in state.ids if key > state.floor}
            state.ids.update(
                key for key in known_ids(ids) if key > state.floor and stream.contains(key)
            )
        if state.floor != (0, 0) or state.ids:
            self._read.put(user, state)
        return self._state(stream, state)

    async def delete(self, user: str, *, up_to: str | None = None) -> tuple[int, UnreadState]:
        up_to_key = parse_id(up_to) if up_to is not None else None
        stream = self._stream(f"u:{user}", user)
        if stream is None:
            return 0, UnreadState(0, None)
        count = (
            len(stream.keys) if up_to_key is None else bisect.bisect_right(stream.keys, up_to_key)
        )
        gone = stream.trim_front(count)
        self._trim_age(stream, user, _wall_ms(), forget=bool(gone))
        return len(gone), self._state(stream, self._read.get(user) or _ReadState())

    # -- internals -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerUnavailable("inbox is closed")

    def _stream(self, channel: str, user: str | None) -> _Stream | None:
        """The channel's stream, trimmed by age as every read does; None if it has none."""
        self._check_open()
        stream = self._streams.get(channel)
        if stream is not None:
            self._trim_age(stream, user, _wall_ms())
        return stream

    def _trim_age(
        self, stream: _Stream, user: str | None, now_ms: int, *, forget: bool = False
    ) -> None:
        """Drop messages older than ``max_age_s``; if any went (or ``forget``), the user's
        id sets forget every id before the oldest retained one."""
        cutoff = (now_ms - self._max_age_ms, 0)
        if stream.trim_front(bisect.bisect_left(stream.keys, cutoff)):
            forget = True
        if not forget or user is None:
            return
        first = stream.keys[0] if stream.keys else (MAX_ID_PART + 1, 0)  # empty: forget all
        acked = self._acked.get(user)
        if acked:
            acked.difference_update([key for key in acked if key < first])
        state = self._read.get(user)
        if state is not None:
            state.ids.difference_update([key for key in state.ids if key < first])

    @classmethod
    def _state(cls, stream: _Stream | None, state: _ReadState) -> UnreadState:
        """The count and the last id given out, even if trimmed since (issue 16)."""
        if stream is None or stream.last == (0, 0):
            return UnreadState(cls._unread(stream, state), None)
        return UnreadState(cls._unread(stream, state), f"{stream.last[0]}-{stream.last[1]}")

    @staticmethod
    def _unread(stream: _Stream | None, state: _ReadState) -> int:
        if stream is None:
            return 0
        start = bisect.bisect_right(stream.keys, state.floor)
        return len(stream.keys) - start - len(state.ids)


def _after(stream: _Stream, after: Key, limit: int) -> list[tuple[Key, Message]]:
    """Up to ``limit`` (id, message) pairs after ``after``, oldest first."""
    start = bisect.bisect_right(stream.keys, after)
    end = start + max(limit, 0)
    return list(zip(stream.keys[start:end], stream.messages[start:end], strict=True))
