"""Who is online, cluster-wide (issue: presence).

Each node records its own sessions: a user's entry lists ``<node>|<session>`` members,
each with an expiry that the owning node refreshes every ``ttl / 3``. A node that dies
(even by SIGKILL) stops refreshing, so its sessions stop counting within ``ttl``.

The memory implementation is here, with ``StoredPresence``, the part the Redis one
(``brokers/redis_presence.py``) and the PostgreSQL one (``inbox/pg_presence.py``) share:
the changes of one loop turn are written together, and ``add`` returns once they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from tidings.errors import BrokerUnavailable


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


Changes = tuple[list[str], list[str]]
"""One user's sessions to add and to remove."""


class StoredPresence(LocalSessions, ABC):
    """Presence in a store shared by the nodes: each loop turn's adds and removes are one
    ``_write`` (a CONNECT storm sends one write per turn, not one per session), and a
    refresher task calls ``refresh`` every ``ttl / 3``."""

    def __init__(self, node_id: str, ttl_s: float) -> None:
        super().__init__(node_id)
        self.ttl_s = ttl_s
        self._member_prefix = node_id + "|"
        self._changes: dict[str, Changes] = {}  # this loop turn's, by user
        self._stored: list[asyncio.Future[None]] = []  # add()s waiting for them
        self._writes: set[asyncio.Future[None]] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._closed = False
        self._log = logging.getLogger(type(self).__module__)

    @abstractmethod
    def _write(self, changes: Sequence[tuple[str, Changes]]) -> Awaitable[None]:
        """Write ``changes``: the removals, and the entries not removed in the same turn.
        Writes leave in the order of the calls, so a removal never overtakes its entry;
        a failed one raises (BrokerUnavailable, or the store's own error)."""

    @abstractmethod
    async def refresh(self) -> None:
        """Push every local entry's expiry forward; never raises BrokerUnavailable."""

    async def start(self) -> None:
        self._closed = False
        self._refresher = asyncio.create_task(self._refresh_forever(), name="tidings-presence")

    async def close(self) -> None:
        self._closed = True
        self._flush()  # this turn's changes first: the removals below come after them
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await asyncio.gather(*self._writes, return_exceptions=True)
        # Best effort: remove our entries so a clean shutdown reads offline at once
        # (failed: they expire).
        entries: list[tuple[str, Changes]] = [
            (user, ([], list(sessions))) for user, sessions in self.by_user.items()
        ]
        with contextlib.suppress(BrokerUnavailable):
            await self._write(entries)
        self.by_user.clear()

    async def add(self, user: str, session_id: str) -> None:
        """Written with the other changes of this loop turn; returns once it is stored
        (or its write failed: logged, and the next refresh writes it again)."""
        self.add_local(user, session_id)
        if self._closed:
            return
        self._user_changes(user)[0].append(session_id)
        stored = asyncio.get_running_loop().create_future()
        self._stored.append(stored)
        await stored

    def remove(self, user: str, session_id: str) -> None:
        super().remove(user, session_id)
        if not self._closed:
            self._user_changes(user)[1].append(session_id)

    def _user_changes(self, user: str) -> Changes:
        changes = self._changes.get(user)
        if changes is None:
            if not self._changes:
                asyncio.get_running_loop().call_soon(self._flush)
            changes = self._changes[user] = ([], [])
        return changes

    def _flush(self) -> None:
        """Write this turn's changes; the add()s return when the write is answered."""
        changes, self._changes = self._changes, {}
        stored, self._stored = self._stored, []
        if not changes:
            return  # flushed already, by close()
        write = asyncio.ensure_future(self._write(list(changes.items())))
        self._writes.add(write)
        write.add_done_callback(partial(self._written, stored))

    def _written(self, stored: list[asyncio.Future[None]], write: asyncio.Future[None]) -> None:
        self._writes.discard(write)
        for future in stored:
            if not future.done():
                future.set_result(None)
        if not write.cancelled() and (exc := write.exception()) is not None:
            self._log.warning("presence write failed (the next refresh retries): %s", exc)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self.refresh()
            except Exception:  # never let the refresher die: entries would expire
                self._log.exception("presence refresh failed")


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
