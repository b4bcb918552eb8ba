"""The node registry: which nodes are alive, and what each last reported (issue 17).

Every node writes a small record about itself every ``HEARTBEAT_S`` seconds (the admin
service's heartbeat, ``server/admin.py``); a record lives ``RECORD_TTL_S`` after its
write, so a node that stops, even by SIGKILL, leaves the list within that, and a node
that shuts down cleanly removes its record at once. Records are JSON objects; the
registry does not look inside them.

The memory implementation is here; the Redis one is ``brokers/redis_registry.py``.
"""

from __future__ import annotations

import time
from typing import Protocol

HEARTBEAT_S = 2.0
"""How often a node writes its record."""
RECORD_TTL_S = 5.0
"""How long a record lives after its write: two heartbeats and some slack."""


class Registry(Protocol):
    async def write(self, node_id: str, record: bytes) -> None:
        """Store ``node_id``'s record (JSON) for RECORD_TTL_S; BrokerUnavailable if not."""

    async def remove(self, node_id: str) -> None:
        """Forget ``node_id`` now (a clean shutdown); BrokerUnavailable if not."""

    async def records(self) -> dict[str, bytes]:
        """Every live node's latest record; BrokerUnavailable if they cannot be read."""


class MemoryRegistry:
    """One process, one node: the records are a dict with expiry times."""

    def __init__(self, ttl_s: float = RECORD_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._records: dict[str, tuple[float, bytes]] = {}

    async def write(self, node_id: str, record: bytes) -> None:
        self._records[node_id] = (time.monotonic() + self.ttl_s, record)

    async def remove(self, node_id: str) -> None:
        self._records.pop(node_id, None)

    async def records(self) -> dict[str, bytes]:
        now = time.monotonic()
        return {node: record for node, (expiry, record) in self._records.items() if expiry > now}
