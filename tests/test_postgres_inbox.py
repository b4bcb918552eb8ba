"""The PostgreSQL inbox end to end (issue 20): ``--inbox`` beside ``--broker``, the
schema's migrations (``tidings migrate``, ``--migrate``), and resumes through real nodes.

The inbox contract itself runs on PostgreSQL in tests/test_inbox_contract.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tidings.inbox.pg_schema import latest_version, schema_version

from .conftest import StartServer
from .ports import free_port
from .postgres_fixture import PgCluster, PgDatabase
from .test_cli import run_cli
from .test_inbox_e2e import run_resume_scenario


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:
        yield session


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_resume_under_load_on_a_postgresql_inbox(
    broker: str,
    tidings_server: StartServer,
    redis_server: Any,
    postgres_db: PgDatabase,
    http: aiohttp.ClientSession,
) -> None:
    # Sessions dropped every 20 ms come back through the other node with
    # tidings-resume-after: every accepted message arrives exactly once, in order.
    args = ["--inbox", postgres_db.url]
    if broker == "memory":
        nodes = [await tidings_server(*args)]
    else:
        nodes = list(
            await asyncio.gather(
                *(
                    tidings_server(*args, "--broker", redis_server.url, "--node-id", f"N{n}")
                    for n in range(2)
                )
            )
        )
    readers = await run_resume_scenario(nodes, http, users=30, messages=1500)
    assert sum(r.reconnects for r in readers.values()) > 0
    conn = await postgres_db.connect()
    try:
        stored = await conn.fetchval("SELECT count(*) FROM tidings.messages")
    finally:
        await conn.close()
    assert stored == 1500


async def test_migrate_creates_the_schema_once(pg_cluster: PgCluster) -> None:
    database = await pg_cluster.database(migrated=False)
    try:
        first = await asyncio.to_thread(run_cli, "migrate", "--inbox", database.url)
        assert first.returncode == 0, first.stderr
        assert f"applied 1; schema version {latest_version()}" in first.stdout
        again = await asyncio.to_thread(run_cli, "migrate", env={"TIDINGS_INBOX": database.url})
        assert again.returncode == 0, again.stderr
        assert "nothing to apply" in again.stdout
        conn = await database.connect()
        try:
            assert await schema_version(conn) == latest_version()
            tables = await conn.fetch(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'tidings' ORDER BY 1"
            )
        finally:
            await conn.close()
        assert [t["table_name"] for t in tables] == [
            "acked",
            "channels",
            "idempotency",
            "messages",
            "read_floors",
            "read_ids",
            "tidings_schema_version",
        ]
    finally:
        await database.drop()


async def test_a_node_without_the_schema_refuses_to_start_and_migrate_fixes_it(
    pg_cluster: PgCluster, tidings_server: StartServer
) -> None:
    database = await pg_cluster.database(migrated=False)
    try:
        port = str(free_port())
        refused = await asyncio.to_thread(run_cli, "serve", "--port", port, "--inbox", database.url)
        assert refused.returncode == 2, refused.stderr
        assert "schema is at version 0" in refused.stderr
        assert "run `tidings migrate --inbox <url>` (or start with --migrate)" in refused.stderr
        assert "Traceback" not in refused.stderr
        node = await tidings_server("--inbox", database.url, "--migrate")
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{node.http_url}/api/v1/users/7/messages", json={"body": "hi"}) as reply,
        ):
            assert reply.status == 202, await reply.text()
        conn = await database.connect()
        try:
            assert await conn.fetchval("SELECT count(*) FROM tidings.messages") == 1
        finally:
            await conn.close()
    finally:
        await database.drop()


def test_migrate_needs_a_postgresql_url_and_a_reachable_database() -> None:
    missing = run_cli("migrate")
    assert missing.returncode == 2
    assert "--inbox postgresql://... is required" in missing.stderr
    unreachable = run_cli("migrate", "--inbox", "postgresql://nobody:secret@127.0.0.1:1/x")
    assert unreachable.returncode == 1
    assert "cannot connect to postgresql://nobody:***@127.0.0.1:1/x" in unreachable.stderr
    assert "secret" not in unreachable.stderr


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--broker", "redis://127.0.0.1:1/0", "--inbox", "memory://"],
            "--inbox memory:// keeps messages in this process",
        ),
        (
            ["--broker", "redis://127.0.0.1:1/0", "--inbox", "redis://127.0.0.1:2/0"],
            "must be the broker's own Redis",
        ),
        (["--inbox", "redis://127.0.0.1:2/0"], "must be the broker's own Redis"),
        (["--inbox", "mysql://x/y"], "expected a memory://, redis://"),
        (["--migrate"], "--migrate applies the schema of a --inbox postgresql://"),
        (
            ["--broker", "redis://h:1/0", "--legacy-channel", "c", "--inbox", "postgresql://h/d"],
            "--legacy-channel needs the Redis inbox",
        ),
        (
            ["--broker", "redis://h:1/0", "--inbox-min-replicas", "1", "--inbox", "postgres://h/d"],
            "--inbox-min-replicas waits for Redis replicas",
        ),
    ],
    ids=["memory-shared", "other-redis", "redis-memory", "scheme", "migrate", "legacy", "replicas"],
)
def test_inbox_combinations_that_cannot_work_exit_2(args: list[str], error: str) -> None:
    result = run_cli("serve", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("tidings serve: error: "), lines
    assert error in lines[1]
