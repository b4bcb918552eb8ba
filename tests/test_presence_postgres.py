"""Presence and the SockJS session directory in PostgreSQL (``inbox/pg_presence.py``,
issue 20): what their writes leave in the database, and when.

Two nodes' objects share one database here, as two nodes on ``--broker amqp://
--inbox postgresql://`` do; the tests read the tables with a connection of their own.
The same behaviour through real nodes is in tests/test_cluster.py (presence) and
tests/test_sockjs_cluster.py (SockJS behind round robin), parametrized over both stores.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tidings.brokers.memory import MemoryBroker
from tidings.inbox.base import InboxLimits
from tidings.inbox.pg_presence import WRITE_CHUNK, PostgresDirectory, PostgresPresence
from tidings.inbox.postgresql import PostgresInbox
from tidings.server.sockjs_relay import NODE_TTL_S

from .postgres_fixture import PgDatabase
from .presence_contract import add_and_remove_in_one_turn, claim_release_and_take_over

TTL_S = 15.0


@pytest.fixture
async def inbox(postgres_db: PgDatabase) -> AsyncIterator[PostgresInbox]:
    inbox = PostgresInbox(postgres_db.url, MemoryBroker(), InboxLimits(), sweep_interval_s=0)
    await inbox.start()
    yield inbox
    await inbox.close()


@pytest.fixture
async def db(postgres_db: PgDatabase) -> AsyncIterator[asyncpg.Connection]:
    conn = await postgres_db.connect()
    yield conn
    await conn.close()


@pytest.fixture
async def nodes(inbox: PostgresInbox) -> AsyncIterator[tuple[PostgresPresence, PostgresPresence]]:
    """Nodes A and B; their refreshers sleep TTL/3, longer than any test here."""
    a, b = PostgresPresence(inbox, "A", ttl_s=TTL_S), PostgresPresence(inbox, "B", ttl_s=TTL_S)
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()


async def rows(db: asyncpg.Connection, user: str) -> dict[str, float]:
    """``user``'s members and the seconds until each expires (the database's clock)."""
    found = await db.fetch(
        "SELECT member, extract(epoch FROM expires_at - clock_timestamp()) AS left_s"
        " FROM tidings.presence WHERE user_name = $1",
        user,
    )
    return {row["member"]: float(row["left_s"]) for row in found}


async def test_add_returns_once_stored_and_reads_see_every_node(
    nodes: tuple[PostgresPresence, PostgresPresence], db: asyncpg.Connection
) -> None:
    a, b = nodes
    await asyncio.gather(*(a.add(f"u{n}", "s") for n in range(50)), b.add("u7", "t"))
    for n in range(50):
        left = (await rows(db, f"u{n}"))["A|s"]
        assert TTL_S - 2 < left <= TTL_S
    seen = await b.get("u7")
    assert (seen.online, seen.sessions, seen.nodes) == (True, 2, ["A", "B"])
    assert await a.query(["u3", "u7", "nobody"]) == {"u3": True, "u7": True, "nobody": False}
    b.remove("u7", "t")
    await asyncio.sleep(0)  # the removal is queued for this turn's write
    await b.close()  # waits for the writes in flight
    seen = await a.get("u7")
    assert (seen.online, seen.sessions, seen.nodes) == (True, 1, ["A"])


async def test_a_removal_never_overtakes_its_entry(
    nodes: tuple[PostgresPresence, PostgresPresence], db: asyncpg.Connection
) -> None:
    a, _ = nodes
    await add_and_remove_in_one_turn(a, "u")  # nothing of it is left
    # Removed in the next turn, while the add's write may still be in flight.
    await asyncio.gather(a.add("u", "next"), _remove_soon(a, "u", "next"))
    await asyncio.gather(*a._writes)
    assert await rows(db, "u") == {}
    assert not (await a.get("u")).online


async def _remove_soon(presence: PostgresPresence, user: str, session: str) -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    presence.remove(user, session)


async def test_refresh_pushes_expiry_forward_in_chunks_and_deletes_expired_rows(
    nodes: tuple[PostgresPresence, PostgresPresence], db: asyncpg.Connection
) -> None:
    a, _ = nodes
    users = [f"u{n}" for n in range(WRITE_CHUNK + 5)]
    await asyncio.gather(*(a.add(user, "s") for user in users))
    # A dead node's row, and one of ours that has aged: the refresh renews only ours.
    await db.execute("UPDATE tidings.presence SET expires_at = clock_timestamp() + interval '1s'")
    await db.execute(
        "INSERT INTO tidings.presence VALUES ('u1', 'C|dead', clock_timestamp() - interval '1s')"
    )
    await a.refresh()  # two statements (WRITE_CHUNK + 5 sessions), then the sweep
    assert set(await rows(db, "u1")) == {"A|s"}
    for user in users:
        assert (await rows(db, user))["A|s"] > TTL_S - 2
    assert (await a.get("u1")).sessions == 1


async def test_a_failed_write_does_not_fail_the_session_and_the_refresh_repairs_it(
    nodes: tuple[PostgresPresence, PostgresPresence],
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, _ = nodes
    await db.execute("ALTER TABLE tidings.presence RENAME TO presence_away")
    try:
        await a.add("u", "s")  # returns: the session goes on without its entry
    finally:
        await db.execute("ALTER TABLE tidings.presence_away RENAME TO presence")
    assert "presence write failed (the next refresh retries)" in caplog.text
    assert not (await a.get("u")).online
    await a.refresh()
    assert set(await rows(db, "u")) == {"A|s"}


async def test_the_directory_claims_releases_and_takes_over(
    inbox: PostgresInbox, db: asyncpg.Connection
) -> None:
    directory = PostgresDirectory(inbox)
    await claim_release_and_take_over(directory)
    assert await db.fetchval("SELECT count(*) FROM tidings.sockjs_nodes") == 0
    await directory.beat("B")
    left = await db.fetchval(
        "SELECT extract(epoch FROM expires_at - clock_timestamp()) FROM tidings.sockjs_nodes"
        " WHERE node_id = 'B'"
    )
    assert NODE_TTL_S - 2 < float(left) <= NODE_TTL_S

    # An expired entry is nobody's; claim and refresh renew; refresh sweeps the expired.
    await directory.claim("s2", "B")
    await db.execute(
        "UPDATE tidings.sockjs_sessions SET expires_at = clock_timestamp() - interval '1s'"
        " WHERE session_id = 's2'"
    )
    assert await directory.live_owner("s2") is None
    assert await directory.owner("s2", "B") == "B"  # claimed again, renewed
    assert await directory.live_owner("s2") == "B"
    await db.execute(
        "INSERT INTO tidings.sockjs_sessions VALUES ('old', 'B', clock_timestamp() - interval '1s')"
    )
    await directory.refresh(["s2"])
    sessions = await db.fetch("SELECT session_id FROM tidings.sockjs_sessions ORDER BY 1")
    assert [row[0] for row in sessions] == ["s2"]


async def test_two_nodes_claiming_one_session_at_once_agree_on_its_owner(
    inbox: PostgresInbox,
) -> None:
    directory = PostgresDirectory(inbox)
    await asyncio.gather(directory.beat("A"), directory.beat("B"))
    for n in range(20):
        owners = await asyncio.gather(directory.owner(f"s{n}", "A"), directory.owner(f"s{n}", "B"))
        assert owners[0] == owners[1] and owners[0] in ("A", "B")
