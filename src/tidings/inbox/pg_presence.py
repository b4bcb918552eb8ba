"""Presence, the node registry and the SockJS session directory in PostgreSQL (issue 20).

On ``--broker amqp:// --inbox postgresql://`` there is no Redis to hold what the Redis
broker keeps in expiring keys, so both live in the inbox's database, as rows with an
expiry (``pg_migrations/0003_presence.sql``), through the inbox's connection pool:

- ``PostgresPresence``: the ``Presence`` of ``brokers/redis_presence.py``, one row per
  session (``<node>|<session>`` of a user) that its node refreshes every ``ttl / 3``.
  The changes of one loop turn are one statement, and writes leave one at a time in the
  order they were made, so a session's removal never overtakes its entry.
- ``PostgresRegistry``: ``registry.py``'s node records (the admin routes' cluster view).
- ``PostgresDirectory``: ``server/sockjs_relay.py``'s ``Directory`` (session → owner,
  node liveness), so SockJS works behind a round-robin balancer on this combination.

Expiry is the database's clock (``clock_timestamp()``), not the nodes': their clocks
may disagree. Reads ignore expired rows; refreshes delete them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg

from tidings.errors import BrokerUnavailable
from tidings.inbox.postgresql import PostgresInbox
from tidings.presence import Changes, StoredPresence, UserPresence
from tidings.registry import RECORD_TTL_S

log = logging.getLogger(__name__)

WRITE_CHUNK = 1000
"""Sessions per statement of a refresh."""

_WRITE = """
WITH gone AS (
    DELETE FROM tidings.presence p USING unnest($3::text[], $4::text[]) AS r(u, m)
    WHERE p.user_name = r.u AND p.member = r.m
)
INSERT INTO tidings.presence (user_name, member, expires_at)
SELECT u, m, clock_timestamp() + make_interval(secs => $5)
FROM unnest($1::text[], $2::text[]) AS a(u, m)
ON CONFLICT (user_name, member) DO UPDATE SET expires_at = EXCLUDED.expires_at
"""
_SWEEP = "DELETE FROM tidings.presence WHERE expires_at < clock_timestamp()"
_GET = "SELECT member FROM tidings.presence WHERE user_name = $1 AND expires_at > clock_timestamp()"
_QUERY = (
    "SELECT DISTINCT user_name FROM tidings.presence"
    " WHERE user_name = ANY($1::text[]) AND expires_at > clock_timestamp()"
)


class PostgresPresence(StoredPresence):
    """Presence rows in ``tidings.presence`` with per-row expiry (module docstring)."""

    def __init__(self, inbox: PostgresInbox, node_id: str, *, ttl_s: float = 15.0) -> None:
        super().__init__(node_id, ttl_s)
        self.inbox = inbox
        self._writing = asyncio.Lock()  # FIFO: writes leave in the order they were made

    async def _write(self, changes: Sequence[tuple[str, Changes]]) -> None:
        """One statement (StoredPresence._write)."""
        rows: dict[tuple[str, str], None] = {}
        gone_users: list[str] = []
        gone_members: list[str] = []
        for user, (added, removed) in changes:
            for session in removed:
                gone_users.append(user)
                gone_members.append(self._member_prefix + session)
            for session in set(added).difference(removed):
                rows[user, self._member_prefix + session] = None
        if not rows and not gone_users:
            return
        async with self._writing, self.inbox.connection() as conn:
            await conn.execute(
                _WRITE,
                [user for user, _ in rows],
                [member for _, member in rows],
                gone_users,
                gone_members,
                self.ttl_s,
            )

    async def refresh(self) -> None:
        """Push every local entry's expiry forward (WRITE_CHUNK sessions a statement) and
        delete expired rows; the first failure is logged and ends this round."""
        entries = [(user, list(sessions)) for user, sessions in self.by_user.items()]
        try:
            chunk: list[tuple[str, Changes]] = []
            size = 0
            for user, sessions in entries:
                # The sessions as they are now: one removed meanwhile is not written back.
                now = [s for s in sessions if s in self.by_user.get(user, ())]
                chunk.append((user, (now, [])))
                size += len(now)
                if size >= WRITE_CHUNK:
                    await self._write(chunk)
                    chunk, size = [], 0
            if chunk:
                await self._write(chunk)
            async with self.inbox.connection() as conn:
                await conn.execute(_SWEEP)
        except (BrokerUnavailable, asyncpg.PostgresError) as exc:
            log.warning("presence refresh failed (the next one retries): %s", exc)

    async def get(self, user: str) -> UserPresence:
        async with self.inbox.connection() as conn:
            members = [row[0] for row in await conn.fetch(_GET, user)]
        nodes = sorted({member.partition("|")[0] for member in members})
        return UserPresence(bool(members), len(members), nodes)

    async def query(self, users: list[str]) -> dict[str, bool]:
        async with self.inbox.connection() as conn:
            online = {row[0] for row in await conn.fetch(_QUERY, users)}
        return {user: user in online for user in users}

    def node_registry(self) -> PostgresRegistry:
        """The node registry in the same database (server/admin.py)."""
        return PostgresRegistry(self.inbox)

    def session_directory(self) -> PostgresDirectory:
        """The SockJS session directory in the same database (server/sockjs.py)."""
        return PostgresDirectory(self.inbox)


class PostgresDirectory:
    """Which node owns which SockJS session, in ``tidings.sockjs_sessions``; which nodes
    are alive, in ``tidings.sockjs_nodes`` (``sockjs_relay.Directory``'s contract)."""

    def __init__(self, inbox: PostgresInbox, *, ttl_s: float | None = None) -> None:
        from tidings.server.sockjs_relay import DIRECTORY_TTL_S, NODE_TTL_S  # noqa: PLC0415

        self.inbox = inbox
        self.ttl_s = DIRECTORY_TTL_S if ttl_s is None else ttl_s
        self._node_ttl_s = NODE_TTL_S

    async def _value(self, sql: str, *args: object) -> object:
        async with self.inbox.connection() as conn:
            return await conn.fetchval(sql, *args)

    async def owner(self, session_id: str, claimant: str) -> str:
        """The session's live owner; ``claimant`` becomes it if it has none."""
        owner = await self._value(
            "SELECT tidings.sockjs_owner($1, $2, $3)", session_id, claimant, self.ttl_s
        )
        return str(owner)

    async def live_owner(self, session_id: str) -> str | None:
        owner = await self._value(
            "SELECT owner FROM tidings.sockjs_sessions WHERE session_id = $1"
            " AND expires_at > clock_timestamp() AND tidings.sockjs_alive(owner)",
            session_id,
        )
        return None if owner is None else str(owner)

    async def beat(self, node_id: str) -> None:
        """``node_id`` is alive for NODE_TTL_S more."""
        await self._value(
            "INSERT INTO tidings.sockjs_nodes VALUES ($1, clock_timestamp()"
            " + make_interval(secs => $2)) ON CONFLICT (node_id)"
            " DO UPDATE SET expires_at = EXCLUDED.expires_at",
            node_id,
            self._node_ttl_s,
        )

    async def alive(self, node_id: str) -> bool:
        return bool(await self._value("SELECT tidings.sockjs_alive($1)", node_id))

    async def gone(self, node_id: str) -> None:
        await self._value("DELETE FROM tidings.sockjs_nodes WHERE node_id = $1", node_id)

    async def claim(self, session_id: str, owner: str) -> None:
        """Take the session over (its recorded owner has gone)."""
        await self._value(
            "INSERT INTO tidings.sockjs_sessions VALUES ($1, $2, clock_timestamp()"
            " + make_interval(secs => $3)) ON CONFLICT (session_id)"
            " DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at",
            session_id,
            owner,
            self.ttl_s,
        )

    async def refresh(self, session_ids: list[str]) -> None:
        """Push these sessions' expiry forward, and delete expired rows."""
        async with self.inbox.connection() as conn:
            await conn.execute(
                "UPDATE tidings.sockjs_sessions SET expires_at = clock_timestamp()"
                " + make_interval(secs => $2) WHERE session_id = ANY($1::text[])",
                session_ids,
                self.ttl_s,
            )
            await conn.execute(
                "DELETE FROM tidings.sockjs_sessions WHERE expires_at < clock_timestamp();"
                "DELETE FROM tidings.sockjs_nodes WHERE expires_at < clock_timestamp()"
            )

    async def release(self, session_id: str, owner: str) -> None:
        await self._value(
            "DELETE FROM tidings.sockjs_sessions WHERE session_id = $1 AND owner = $2",
            session_id,
            owner,
        )


class PostgresRegistry:
    """Node records in ``tidings.nodes`` with per-row expiry (``registry.Registry``)."""

    def __init__(self, inbox: PostgresInbox, *, ttl_s: float = RECORD_TTL_S) -> None:
        self.inbox = inbox
        self.ttl_s = ttl_s

    async def write(self, node_id: str, record: bytes) -> None:
        """Store the record, and drop those that expired (nodes that died)."""
        async with self.inbox.connection() as conn:
            await conn.execute(
                "WITH gone AS (DELETE FROM tidings.nodes WHERE expires_at < clock_timestamp())"
                " INSERT INTO tidings.nodes VALUES ($1, $2, clock_timestamp()"
                " + make_interval(secs => $3)) ON CONFLICT (node_id)"
                " DO UPDATE SET record = EXCLUDED.record, expires_at = EXCLUDED.expires_at",
                node_id,
                record,
                self.ttl_s,
            )

    async def remove(self, node_id: str) -> None:
        async with self.inbox.connection() as conn:
            await conn.execute("DELETE FROM tidings.nodes WHERE node_id = $1", node_id)

    async def records(self) -> dict[str, bytes]:
        async with self.inbox.connection() as conn:
            rows = await conn.fetch(
                "SELECT node_id, record FROM tidings.nodes WHERE expires_at > clock_timestamp()"
            )
        return {row[0]: bytes(row[1]) for row in rows}
