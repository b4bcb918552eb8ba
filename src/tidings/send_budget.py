"""How many bytes client SENDs may keep stored, per node (``--max-send-stored-bytes``).

A SEND is a publish: it is stored in its channel's stream (a topic's history, a user's
inbox) like a back end's, for ``--inbox-max-age``. With ``--send-allow '/topic/**'`` a
client that SENDs to 1,000 distinct topics made the memory broker hold +60 MB, and on
Redis left 1,000 stream keys for 7 days (issue 14). So the node counts what its clients'
SENDs can still have stored, and refuses a SEND that would take the count past the
budget (``ERROR message:SEND storage limit reached``, server/session.py).

The count is an upper bound of what is held, never an estimate: per channel it keeps the
sizes of the last SENDs the channel can retain (``--topic-history`` for a topic,
``--inbox-max-messages`` for a user), so a busy channel costs at most what it keeps, and
a channel is forgotten as its stream key expires (its last write + the inbox's TTL).
Trimming by age or by a back end's publishes only makes the real figure smaller. Each
SEND counts its body and destination plus ``OVERHEAD`` (ids, stream fields), so the
bookkeeping itself is bounded by the budget too. Time: amortized O(1) per SEND (each
channel expires once).
"""

from __future__ import annotations

from collections import OrderedDict, deque

from tidings.inbox.base import InboxLimits
from tidings.inbox.memory import TTL_MARGIN_S

OVERHEAD = 128
"""Bytes counted per stored SEND beyond its body and destination (stream id, fields)."""


class SendBudget:
    """The bytes this node's clients' SENDs may hold in the inbox; ``limit`` 0: no cap."""

    __slots__ = ("_channels", "_limits", "_ttl_s", "held", "limit")

    def __init__(self, limit: int, limits: InboxLimits) -> None:
        self.limit = limit
        self._limits = limits
        self._ttl_s = limits.max_age_s + TTL_MARGIN_S  # the stream key's TTL
        # channel -> (when its key expires, sizes of its retained SENDs), in last-write
        # order, which is expiry order (one TTL for every channel). An OrderedDict: a
        # plain dict's first key is found past the holes its deletions left (quadratic).
        self._channels: OrderedDict[str, tuple[float, deque[int]]] = OrderedDict()
        self.held = 0

    def admit(self, channel: str, size: int, now: float) -> bool:
        """Count a SEND of ``size`` bytes to ``channel`` at ``now`` (monotonic seconds);
        False, counting nothing, if it would take the node past the budget."""
        if not self.limit:
            return True
        self._expire(now)
        keep = self._limits.topic_history if channel.startswith("t:") else self._limits.max_messages
        if keep < 1:
            return True  # the channel keeps nothing
        size += OVERHEAD
        entry = self._channels.get(channel)
        sizes = entry[1] if entry is not None else None
        freed = sizes[0] if sizes is not None and len(sizes) >= keep else 0
        if self.held - freed + size > self.limit:
            return False
        if sizes is None:
            sizes = deque()
        elif freed:
            sizes.popleft()
        sizes.append(size)
        self.held += size - freed
        self._channels[channel] = (now + self._ttl_s, sizes)
        self._channels.move_to_end(channel)  # now the latest write
        return True

    def _expire(self, now: float) -> None:
        channels = self._channels
        while channels:
            expires, sizes = next(iter(channels.values()))
            if expires > now:
                return
            channels.popitem(last=False)
            self.held -= sum(sizes)
