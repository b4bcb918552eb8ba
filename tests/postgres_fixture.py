"""A private PostgreSQL cluster per test session, a fresh database per test.

Never the machine's PostgreSQL on 5432: ``initdb`` into a temporary directory with the
binaries of /usr/lib/postgresql/<version>/bin, started on a free port of 127.0.0.1 with
its unix socket in that directory, fsync off (nothing here must survive a crash);
stopped and removed at the end of the session. As root (CI), the cluster runs as the
``postgres`` user the Debian package creates: PostgreSQL refuses to run as root.

Each test gets its own database, copied (``CREATE DATABASE ... TEMPLATE``) from one
that holds the migrated schema (``tidings_template``), or from ``template0`` for a test
that wants it empty (``PgCluster.database(migrated=False)``).

Example::

    async def test_x(postgres_db):
        inbox = PostgresInbox(postgres_db.url, broker, InboxLimits())
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tidings.inbox.pg_schema import migrate

from .ports import free_port

START_TIMEOUT = 30.0
TEMPLATE = "tidings_template"
_names = count(1)


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_version)
    if not found:
        pytest.fail("no PostgreSQL server binaries under /usr/lib/postgresql (Debian postgresql)")
    return Path(found[-1]).parent


def _version(path: str) -> int:
    part = Path(path).parts[-3]
    return int(part) if part.isdigit() else 0


class PgCluster:
    """One ``postgres`` process on ``self.port``; superuser ``postgres``, trust auth."""

    def __init__(self, *, wrap: Sequence[str] = ()) -> None:
        self.wrap = list(wrap)
        """A command the server runs under, e.g. ``taskset -c 0`` (bench/systems.py)."""
        self.bin = _bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="tidings-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as: dict[str, Any] = {}  # Popen's user and group: postgres, if we are root
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        self._proc: subprocess.Popen[bytes] | None = None
        self._template_ready = False

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (its backends are its children)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if not self.data.exists():
            subprocess.run(
                [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                 "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
                check=True, capture_output=True, cwd=self.dir, **self._as,
            )  # fmt: skip
        settings = {
            "port": self.port,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": self.dir,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "max_connections": 200,
        }
        args = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        with (self.dir / "postgres.log").open("ab") as log:
            self._proc = subprocess.Popen(
                [*self.wrap, str(self.bin / "postgres"), "-D", str(self.data), *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, **self._as,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-q", "-h", str(self.dir), "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"postgres did not start:\n{(self.dir / 'postgres.log').read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), waited for; SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(2)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url("postgres"))

    async def database(self, *, migrated: bool = True) -> PgDatabase:
        """A new database of its own: the migrated schema, or empty."""
        conn = await self.admin()
        try:
            if migrated and not self._template_ready:
                await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
                await conn.execute(f"CREATE DATABASE {TEMPLATE} TEMPLATE template0")
                template = await asyncpg.connect(self.url(TEMPLATE))
                try:
                    await migrate(template)
                finally:
                    await template.close()
                self._template_ready = True
            name = f"t{os.getpid()}_{next(_names)}"
            source = TEMPLATE if migrated else "template0"
            await conn.execute(f"CREATE DATABASE {name} TEMPLATE {source}")
        finally:
            await conn.close()
        return PgDatabase(self, name)


@dataclass
class PgDatabase:
    cluster: PgCluster
    name: str

    @property
    def url(self) -> str:
        return self.cluster.url(self.name)

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url)

    async def drop(self) -> None:
        """Drop it now, ending every connection to it (the inbox then sees an outage)."""
        conn = await self.cluster.admin()
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        finally:
            await conn.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The session's private PostgreSQL cluster (started on first use)."""
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
async def postgres_db(pg_cluster: PgCluster) -> AsyncIterator[PgDatabase]:
    """A fresh database with the migrated schema, dropped at teardown."""
    database = await pg_cluster.database()
    try:
        yield database
    finally:
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            await database.drop()
