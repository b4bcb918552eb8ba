"""Who is online, cluster-wide (issue: presence).

Each node records its own sessions: a user's entry lists ``<node>|<session>`` members,
each with an expiry that the owning node refreshes every ``ttl / 3``. A node that dies
(even by SIGKILL) stops refreshing, so its sessions stop counting within ``ttl``.

The memory implementation is here; the Redis one is ``brokers/redis_presence.py``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class UserPresence:
    online: bool
    sessions: int
    nodes: list[str]


class Presence(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, user: str, session_id: str) -> None:
        """Record a local session of ``user``; once this returns, reads anywhere see it.

        Never raises: a failed write is logged and repaired by the next refresh.
        """

    def remove(self, user: str, session_id: str) -> None:
        """Forget a local session of ``user`` (written in the background)."""

    async def get(self, user: str) -> UserPresence: ...

    async def query(self, users: list[str]) -> dict[str, bool]: ...


class LocalSessions:
    """This node's sessions by user; the part both implementations share."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.by_user: defaultdict[str, set[str]] = defaultdict(set)

    def add_local(self, user: str, session_id: str) -> None:
        self.by_user[user].add(session_id)

    def remove(self, user: str, session_id: str) -> None:
        sessions = self.by_user.get(user)
        if sessions is not None:
            sessions.discard(session_id)
            if not sessions:
                del self.by_user[user]


class MemoryPresence(LocalSessions):
    """One process: presence is the local registry itself."""

    async def start(self) -> None:
        pass

    async def add(self, user: str, session_id: str) -> None:
        self.add_local(user, session_id)

    async def close(self) -> None:
        self.by_user.clear()

    async def get(self, user: str) -> UserPresence:
        count = len(self.by_user.get(user, ()))
        return UserPresence(count > 0, count, [self.node_id] if count else [])

    async def query(self, users: list[str]) -> dict[str, bool]:
        return {user: user in self.by_user for user in users}
