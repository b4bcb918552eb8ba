"""Draining the transactional outbox into the PostgreSQL inbox (issue 20, item 4).

A back end calls ``tidings.publish_to_user(user_id, body, idempotency_key)`` (or
``publish_to_topic``) inside its own transaction (``pg_migrations/0002_outbox.sql``):
the row exists, and ``NOTIFY tidings_outbox`` is sent, only if that transaction commits.
Every node with a PostgreSQL inbox drains the table:

* woken by the notification (a connection of its own that ``LISTEN``\\s), and every
  ``poll_interval_s`` anyway (a notification sent while that connection was down is
  not repeated);
* one transaction per batch: ``SELECT ... ORDER BY n LIMIT BATCH FOR UPDATE SKIP
  LOCKED`` (two nodes never take the same rows, nor wait on each other's), each row
  stored with ``tidings.store`` (its id assigned now, its channel's advisory lock taken:
  announcements in id order), the rows deleted; commit, then announce. A node that dies
  before its commit leaves the rows to the next drainer: stored and delivered once.

Rows are taken in ``n`` order and stored in one ``tidings.store_many`` (as the group
commit of HTTP publishes does: every advisory lock first, in key order, then the rows
grouped by channel, channels in name order: no deadlock), each channel's rows in ``n``
order. Two drainers keep that order between them: a channel whose earlier row another
drainer holds (taken, not yet committed) is left to a later batch, so its rows are
never stored before that drainer's, whichever of them takes the advisory lock first.
A row whose body breaks the publish rules (the SQL functions check them first, so only
a row written by hand) is logged and deleted, never retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from tidings.errors import BrokerUnavailable, InvalidPublish
from tidings.message import Message
from tidings.publish_rules import topic_message, user_message

if TYPE_CHECKING:
    from tidings.inbox.postgresql import PostgresInbox

log = logging.getLogger(__name__)

CHANNEL = "tidings_outbox"
BATCH = 100
POLL_INTERVAL_S = 1.0
BEHIND_RETRY_S = 0.005
"""How soon a drainer that had to leave every row it took tries again."""
# The oldest rows no other drainer holds, each with whether an earlier row of its
# channel is still in the outbox and not among them: held by another drainer that has
# not committed yet. Such a channel is left for this batch (its rows must be stored
# after that drainer's, in n order, whichever takes the channel's advisory lock first).
_TAKE = (
    "WITH taken AS (SELECT n, channel, body, idempotency_key FROM tidings.outbox"
    " ORDER BY n LIMIT $1 FOR UPDATE SKIP LOCKED)"
    " SELECT n, channel, body::text AS body, idempotency_key,"
    " EXISTS (SELECT 1 FROM tidings.outbox o WHERE o.channel = t.channel AND o.n < t.n"
    " AND o.n NOT IN (SELECT n FROM taken)) AS behind"
    " FROM taken t"
)


def outbox_message(channel: str, body: str) -> Message:
    """The message an outbox row stands for, as the HTTP API would make it
    (InvalidPublish if it breaks a rule)."""
    value = orjson.loads(body)
    if channel.startswith("u:"):
        return user_message(channel[2:], value)
    return topic_message(channel[2:], value)


class OutboxDrainer:
    """One node's drain loop of ``tidings.outbox`` into ``inbox``."""

    def __init__(
        self,
        inbox: PostgresInbox,
        url: str,
        lock_key: Callable[[str], int],
        *,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self._inbox = inbox
        self._url = url
        self._lock_key = lock_key
        self._poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._listener: Any = None
        self.listening = asyncio.Event()
        """Set while the LISTEN connection is up (cleared when it is found gone)."""
        self._task: asyncio.Task[None] | None = None
        self.drained = 0
        """Rows stored (or found stored under their idempotency key) so far."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tidings-pg-outbox")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_listener()

    async def _run(self) -> None:
        while True:
            await self._listen()
            try:
                while taken := await self.drain_batch():
                    if taken < 0:  # every row was behind another drainer's
                        await asyncio.sleep(BEHIND_RETRY_S)  # a poll: its commit has no event
            except BrokerUnavailable as exc:
                log.info("outbox drain failed, retrying: %s", exc)
            except Exception:
                log.exception("outbox drain failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)
            self._wake.clear()

    async def drain_batch(self) -> int:
        """Take, store and delete up to BATCH rows in one transaction, then announce
        them; returns how many rows were stored (or dropped as invalid), -1 if every row
        taken was left behind another drainer's, 0 if there were none."""
        inbox = self._inbox
        async with inbox.connection() as conn:
            # Per channel, in the order stored: how many times its lock was taken, and
            # the messages to announce (the never-announced ones first).
            due: dict[str, tuple[int, list[Message]]] = {}
            announced: dict[str, str | None] = {}
            try:
                async with conn.transaction():
                    rows = await conn.fetch(_TAKE, BATCH)
                    if not rows:
                        return 0
                    entries: list[tuple[Message, str | None, int | None]] = []
                    left = {row["channel"] for row in rows if row["behind"]}
                    rows = [row for row in rows if row["channel"] not in left]
                    if not rows:
                        return -1
                    for row in sorted(rows, key=lambda r: (r["channel"], r["n"])):
                        try:
                            message = outbox_message(row["channel"], row["body"])
                        except (InvalidPublish, orjson.JSONDecodeError) as exc:
                            log.error("outbox row %d dropped: %s", row["n"], exc)
                            continue
                        lock = self._lock_key(message.channel)
                        entries.append((message, row["idempotency_key"], lock))
                    stored = await inbox.store_many(conn, entries) if entries else []
                    for (message, _, _), (inbox_id, fresh, pending) in zip(
                        entries, stored, strict=True
                    ):
                        times, messages = due.get(message.channel) or (0, pending)
                        if fresh:
                            messages.append(message.stored_as(inbox_id))
                        due[message.channel] = (times + 1, messages)  # later pending: ours
                    await conn.execute(
                        "DELETE FROM tidings.outbox WHERE n = ANY($1::bigint[])",
                        [row["n"] for row in rows],
                    )
                self.drained += len(rows)
                for channel, (_, messages) in due.items():
                    announced[channel] = await inbox.announce(channel, messages)
            finally:
                # Session-level locks outlive a rollback too: always released here (those
                # of a store_many that failed, by the pool's reset: asyncpg unlocks all).
                for channel, (times, _) in due.items():
                    lock = self._lock_key(channel)
                    await inbox.release(conn, channel, announced.get(channel), lock, times)
        return len(rows)

    async def _listen(self) -> None:
        """(Re)open the LISTEN connection if it is gone; polling covers the meantime."""
        if self._listener is not None and not self._listener.is_closed():
            return
        self.listening.clear()
        await self._close_listener()
        try:
            self._listener = await asyncpg.connect(self._url, timeout=5)
            # Kept before it listens: a stop (cancel) meanwhile still closes it.
            await self._listener.add_listener(CHANNEL, self._notified)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            every = self._poll_interval_s
            log.info("outbox: cannot LISTEN now (polling every %s s): %s", every, exc)
            await self._close_listener()
            return
        self.listening.set()

    async def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is None:
            return
        try:
            await asyncio.wait_for(conn.close(), 5)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()
        except asyncio.CancelledError:
            conn.terminate()
            raise

    def _notified(self, *_: object) -> None:
        self._wake.set()
