"""Storing what arrives on the legacy Spring channel, once for the whole cluster (tidings.legacy).

Every node receives every message of the channel. Each runs ``_STORE_CLAIMED`` for it:
the publish script's store-and-announce (``inbox.redis._STORE``, so the message is kept,
trimmed, expired and announced on the user's channel exactly as a publish), preceded by a
claim instead of the idempotency check. ``P legacy:<len(channel)>:<channel>:<digest>``
holds how many copies of that payload were stored within the window; a node that saw the
payload for the k-th time stores it only if fewer than k were, and the claim becomes k
(``legacy.Occurrences`` says why that stores each publish once, identical ones included).
The claim and the store are one script, so no two nodes can both pass the claim.

The calls go over a connection of their own (``ScriptConnection``): in the order the
messages arrived, those of one loop turn in one write.
"""

from __future__ import annotations

import asyncio
import dataclasses

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from tidings.inbox.redis import _STORE, _STORE_LOCALS, InboxWriter, script_connection
from tidings.legacy import CLAIM_WINDOW_S
from tidings.message import Message
from tidings.redis_connect import bulk

# KEYS: stream, acked, read ('' '' never: a user's), claim. ARGV: the publish script's six
# (message, destination, max_len, max_age_ms, ttl_ms, live channel), then this node's
# count of the payload and the claim's window (ms). Returns the new id, or nil: another
# node stored this copy.
_CLAIM = """
local claimed = redis.call('GET', KEYS[4])
if claimed and tonumber(claimed) >= tonumber(ARGV[7]) then
  redis.call('PEXPIRE', KEYS[4], ARGV[8])  -- the window runs from the last sighting
  return false
end
redis.call('SET', KEYS[4], ARGV[7], 'PX', ARGV[8])
"""
_STORE_CLAIMED = _STORE_LOCALS + _CLAIM + _STORE + "return id\n"


class LegacyStore:
    """Stores legacy messages through ``writer``'s keys and limits, claiming each copy."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        writer: InboxWriter,
        *,
        prefix: str = "tidings:",
        window_s: float = CLAIM_WINDOW_S,
    ) -> None:
        self._writer = writer
        self._layout = dataclasses.replace(writer.layout, prefix=prefix)
        self._connection = script_connection(client, _STORE_CLAIMED, encoding="ascii")
        self._head = self._connection.head(4, 8)
        self._window = bulk(max(1, int(window_s * 1000)))

    def submit(self, message: Message, name: str, occurrence: int) -> asyncio.Future[str | None]:
        """Store ``message`` unless ``occurrence`` copies of payload ``name`` were stored:
        a future of its inbox id, None if not stored, or BrokerUnavailable."""
        channel = message.channel
        keys, args = self._writer.packed_call(channel, message.destination)
        claim = self._layout.legacy_claim(channel, name)
        parts = (
            self._head,
            keys,
            bulk(claim),
            bulk(message.encode()),
            args,
            bulk(occurrence),
            self._window,
        )
        future: asyncio.Future[str | None] = self._connection.submit_packed(b"".join(parts))
        return future

    async def close(self) -> None:
        await self._connection.close()
