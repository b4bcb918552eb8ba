"""The PostgreSQL inbox's schema: versioned SQL files applied in order (issue 20).

The files are ``pg_migrations/<NNNN>_<name>.sql``, shipped in the package. Everything
lives in the schema ``tidings``; ``tidings.tidings_schema_version`` records each version
applied. ``tidings migrate --inbox postgresql://...`` (or ``serve --migrate``) applies
the missing ones, all in one transaction under an advisory lock, so two nodes started
with ``--migrate`` together apply each file once. A node refuses to start on a schema
that is not the one its code expects (``SchemaNotReady``, exit code 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from tidings.errors import TidingsError
from tidings.options import redact_url

PG_SCHEMES = ("postgresql", "postgres")
"""URL schemes of ``--inbox`` that name a PostgreSQL database."""
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK = 0x7469_6469_6E67_73  # pg_advisory_xact_lock key of `tidings migrate` ("tidings")


class SchemaNotReady(TidingsError):
    """The database's ``tidings`` schema is missing or older (or newer) than this code's."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped in the package, by version."""
    found = []
    for entry in resources.files("tidings.inbox").joinpath("pg_migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"pg_migrations must be numbered 0001 on without holes: {found}")
    return found


def latest_version() -> int:
    return len(migrations())


async def schema_version(conn: Any) -> int:
    """The newest version applied to this database; 0 when none is."""
    exists = await conn.fetchval("SELECT to_regclass('tidings.tidings_schema_version')")
    if exists is None:
        return 0
    version = await conn.fetchval(
        "SELECT coalesce(max(version), 0) FROM tidings.tidings_schema_version"
    )
    return int(version)


async def migrate(conn: Any) -> list[int]:
    """Apply the missing migrations in one transaction; returns the versions applied."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        await conn.execute(
            "CREATE SCHEMA IF NOT EXISTS tidings;"
            "CREATE TABLE IF NOT EXISTS tidings.tidings_schema_version ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await schema_version(conn)
        applied = []
        for migration in migrations():
            if migration.version <= current:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO tidings.tidings_schema_version (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration.version)
    return applied


async def apply(url: str) -> tuple[list[int], int]:
    """``tidings migrate``: connect to ``url``, apply what is missing; returns the versions
    applied and the version now. TidingsError if the database cannot be reached."""
    import asyncpg  # noqa: PLC0415 - the optional dependency, only where it is used

    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        where = redact_url(url)
        raise TidingsError(f"cannot connect to {where}: {exc}") from None
    try:
        applied = await migrate(conn)
        return applied, await schema_version(conn)
    finally:
        await conn.close()


async def check_schema(conn: Any) -> None:
    """SchemaNotReady unless the database holds exactly this code's schema version."""
    have, want = await schema_version(conn), latest_version()
    if have == want:
        return
    if have > want:
        raise SchemaNotReady(
            f"the PostgreSQL inbox schema is at version {have}, newer than this Tidings "
            f"({want}): run the newer Tidings, or restore the database"
        )
    raise SchemaNotReady(
        f"the PostgreSQL inbox schema is at version {have}, this Tidings needs {want}: "
        "run `tidings migrate --inbox <url>` (or start with --migrate)"
    )
