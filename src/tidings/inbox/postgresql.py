"""The inbox on PostgreSQL (``--inbox postgresql://...``, issue 20), with any broker.

The tables and functions are the schema ``tidings`` (``pg_migrations/0001_inbox.sql``,
applied by ``tidings migrate``); each operation is one call of one of its functions,
one round trip, so each is atomic as the Redis inbox's Lua scripts are. Ids, ordering,
retention, read state, acks and idempotency follow the Redis inbox's rules exactly
(tests/test_inbox_contract.py runs the same contract on all of them).

Storage and routing are two engines here, so "store, then announce" is two steps:
``tidings.store`` commits the message (its id assigned under the channel row's lock, so
ids are committed in id order and a reader that read "after X" never misses one), then
the broker announces it (``"<id> <message>"``, as ``split_announcement`` reads). An
announcement that fails after the commit does not fail the publish: the message is
stored, and the node-side catch-up (tidings.catchup) delivers it from here.

Publishes go by group commit (``_GroupCommit``): those a node has waiting are stored in
one statement, one transaction (``tidings.store_many``, each message by ``tidings.store``),
then announced, then their locks released in one more round trip.

Announcements of one channel must leave in id order, or a subscriber's de-duplication
(one comparison of ids) would drop the earlier one. Within a node, a channel is in one
batch at a time and its publishes keep their submission order; across nodes sharing a
broker, ``tidings.store`` takes a session-level advisory lock per channel that is
released only once the announcement is out. On the memory broker (one node) that lock
is not needed and not taken.

Every node also drains the transactional outbox (``tidings.publish_to_user`` and
``publish_to_topic``, ``pg_outbox.py``) into the inbox.

A background sweep deletes in batches what has expired (Redis key TTLs: a channel
``max_age_s`` + 1 s after its last publish, idempotency keys, read floors).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import asyncpg

from tidings.brokers.base import Broker
from tidings.brokers.memory import MemoryBroker
from tidings.errors import BrokerUnavailable, TidingsError
from tidings.inbox.base import History, InboxLimits, Stored, UnreadState
from tidings.inbox.memory import TTL_MARGIN_S, check_limits, known_ids, parse_id, user_of
from tidings.inbox.pg_outbox import POLL_INTERVAL_S, OutboxDrainer
from tidings.inbox.pg_schema import check_schema, migrate
from tidings.message import Message

log = logging.getLogger(__name__)

MAX_BIGINT = 2**63 - 1
"""Ids are stored as two bigints; a bound beyond (an id never given out) is clamped."""
POOL_SIZE = 10
"""Connections per node (asyncpg pool): publishes of different channels in parallel."""
BATCHES = 8
"""Publish batches in flight at a time (group commit), each on a pooled connection."""
MAX_BATCH = 200
"""Publishes stored in one statement at most."""
SWEEP_INTERVAL_S = 30.0
SWEEP_BATCH = 500
COMMAND_TIMEOUT_S = 10.0
"""The longest any inbox call may take; then BrokerUnavailable."""

# Errors that mean "the database cannot serve now", not "this call is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.InvalidCatalogNameError,  # the database is gone
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization
)


def _bound(inbox_id: str) -> tuple[int, int]:
    """``(ms, seq)`` of an id given as a bound (ValueError if malformed), within bigints."""
    ms, seq = parse_id(inbox_id)
    if ms > MAX_BIGINT:
        return MAX_BIGINT, MAX_BIGINT
    return ms, min(seq, MAX_BIGINT)


def _ids(ids: Sequence[str]) -> tuple[list[int], list[int]]:
    """The well-formed ids that could be stored, as two columns."""
    keys = [key for key in known_ids(ids) if key[0] <= MAX_BIGINT and key[1] <= MAX_BIGINT]
    return [k[0] for k in keys], [k[1] for k in keys]


def _state(row: Any) -> UnreadState:
    """A row's ``unread``, ``last_ms`` and ``last_seq`` (NULL: no id given out yet)."""
    last = None if row["last_ms"] is None else f"{row['last_ms']}-{row['last_seq']}"
    return UnreadState(int(row["unread"]), last)


def _decode(ms: int, seq: int, body: bytes) -> Message:
    return Message.decode(body, f"{ms}-{seq}")


def _stored(row: Any) -> tuple[str, bool, list[Message]]:
    """A ``tidings.store`` row: the id, whether it was stored now, and the channel's
    messages stored before it but never announced."""
    pending = [
        _decode(ms, seq, body)
        for ms, seq, body in zip(row["pend_ms"], row["pend_seq"], row["pend_body"], strict=True)
    ]
    return f"{row['id_ms']}-{row['id_seq']}", bool(row["stored"]), pending


def _encoded(message: Message) -> bytes:
    """What ``tidings.messages.body`` holds: the message with an empty id."""
    return (dataclasses.replace(message, id="") if message.id else message).encode()


def lock_key(channel: str) -> int:
    """The advisory lock of ``channel``'s announcements (a signed 64-bit key)."""
    digest = zlib.crc32(channel.encode()) | (len(channel) << 32)
    return digest - 2**63 if digest >= 2**63 else digest


@dataclasses.dataclass(slots=True)
class _Publish:
    """A publish waiting for its batch: its channel's advisory lock key (None: no lock)."""

    message: Message
    key: str | None
    lock: int | None
    future: asyncio.Future[str]


class _GroupCommit:
    """Group commit: the publishes submitted while the batches in flight are busy (or in
    one loop turn) go together as the next batch, up to ``max_batch`` messages; at most
    ``batches`` batches at a time, each on a connection of its own. One publish alone
    goes at once, as a batch of one.

    A channel is in one batch at a time: its publishes submitted meanwhile wait, and go
    together, in submission order, in the next batch after that one is announced. So a
    node stores and announces each channel's publishes in the order submitted, and many
    publishes to one channel (a busy topic) take one round trip, not one each."""

    def __init__(self, inbox: PostgresInbox, *, batches: int, max_batch: int) -> None:
        self._inbox = inbox
        self._batches = batches
        self._max_batch = max_batch
        self._waiting: list[_Publish] = []
        self._running: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()
        """Channels with publishes in a batch in flight."""
        self._scheduled = False
        self.batches = 0
        """Batches stored so far (each one statement, one transaction)."""

    def add(self, message: Message, key: str | None) -> asyncio.Future[str]:
        loop = asyncio.get_running_loop()
        lock = lock_key(message.channel) if self._inbox._cross_node else None
        publish = _Publish(message, key, lock, loop.create_future())
        self._waiting.append(publish)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._start)  # after this loop turn: its publishes go together
        return publish.future

    def _start(self) -> None:
        self._scheduled = False
        while self._waiting and len(self._running) < self._batches:
            batch: list[_Publish] = []
            rest: list[_Publish] = []
            for publish in self._waiting:
                free = publish.message.channel not in self._busy
                (batch if free and len(batch) < self._max_batch else rest).append(publish)
            if not batch:
                return  # every waiting channel is in a batch in flight: its end starts more
            self._waiting = rest
            self._busy.update(publish.message.channel for publish in batch)
            task = asyncio.create_task(self._run(batch), name="tidings-pg-batch")
            self._running.add(task)

    async def _run(self, batch: list[_Publish]) -> None:
        try:
            self.batches += 1
            await self._inbox._store_batch(batch)
        except _BatchRefused:
            # One message the database refuses fails alone: each again, one by one.
            for publish in batch:
                await self._settle([publish])
        except BaseException as exc:
            if not _fail(batch, exc):
                log.warning("postgresql inbox: a batch's release failed: %s", exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._running.discard(asyncio.current_task())
            self._busy.difference_update(publish.message.channel for publish in batch)
            if self._waiting and not self._scheduled:
                self._start()

    async def _settle(self, batch: list[_Publish]) -> None:
        try:
            await self._inbox._store_batch(batch)
        except Exception as exc:
            if not _fail(batch, exc):
                log.warning("postgresql inbox: a batch's release failed: %s", exc)


class _BatchRefused(Exception):
    """``tidings.store_many`` of more than one message failed, not for unavailability
    (or in a deadlock the database broke): nothing was stored (one transaction), so each
    is tried alone."""


def _fail(batch: Sequence[_Publish], exc: BaseException) -> bool:
    """Fail the publishes of ``batch`` not yet done; whether there was any."""
    failed = False
    for publish in batch:
        if not publish.future.done():
            publish.future.set_exception(exc)
            failed = True
    return failed


class PostgresInbox:
    """User inboxes and topic histories in PostgreSQL, announced on ``broker``."""

    def __init__(
        self,
        url: str,
        broker: Broker,
        limits: InboxLimits,
        *,
        migrate: bool = False,
        pool_size: int = POOL_SIZE,
        batches: int = BATCHES,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
        outbox_poll_s: float = POLL_INTERVAL_S,
    ) -> None:
        check_limits(limits)
        self._url = url
        self._broker = broker
        self._limits = limits
        self._migrate = migrate
        self._pool_size = pool_size
        self._sweep_interval_s = sweep_interval_s
        self._max_age_ms = int(limits.max_age_s * 1000)
        self._ttl_ms = self._max_age_ms + int(TTL_MARGIN_S * 1000)
        self._key_ttl_ms = max(1, int(limits.idempotency_ttl_s * 1000))
        # One node on the memory broker: announcements of one channel are ordered here.
        self._cross_node = not isinstance(broker, MemoryBroker)
        self._group = _GroupCommit(self, batches=min(batches, pool_size), max_batch=MAX_BATCH)
        self._pool: asyncpg.Pool | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # The transactional outbox (pg_outbox.py); 0: this node does not drain it.
        self.outbox = OutboxDrainer(self, url, lock_key, poll_interval_s=outbox_poll_s)
        self._drain = outbox_poll_s > 0
        self._closed = False

    # -- life ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, apply the migrations if asked, check the schema (SchemaNotReady)."""
        self._closed = False
        if self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(
                    self._url,
                    min_size=1,
                    max_size=self._pool_size,
                    command_timeout=COMMAND_TIMEOUT_S,
                )
            except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
                raise TidingsError(f"cannot connect to the PostgreSQL inbox: {exc}") from None
        try:
            async with self._pool.acquire() as conn:
                if self._migrate:
                    await migrate(conn)
                await check_schema(conn)
        except BaseException:
            pool, self._pool = self._pool, None
            pool.terminate()
            raise
        if self._sweep_interval_s > 0 and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._run_sweeper(), name="tidings-pg-sweep")
        if self._drain:
            self.outbox.start()

    async def close(self) -> None:
        self._closed = True
        await self.outbox.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), COMMAND_TIMEOUT_S)
            except (*_UNAVAILABLE, asyncpg.PostgresError):
                pool.terminate()

    # -- publish ---------------------------------------------------------------------

    async def publish(self, message: Message, *, idempotency_key: str | None = None) -> str:
        return await self.submit(message, idempotency_key=idempotency_key)

    def submit(
        self, message: Message, *, idempotency_key: str | None = None
    ) -> asyncio.Future[str]:
        """``publish`` started now; publishes to one channel are stored (and announced)
        in the order they were submitted."""
        self._check_open()
        user_of(message.channel)  # ValueError now for a channel that is not an inbox's
        return self._group.add(message, idempotency_key)

    async def _store_batch(self, batch: Sequence[_Publish]) -> None:
        """Store ``batch`` in one transaction (``tidings.store_many``), announce its
        messages (each channel's in order, the channels together), resolve each publish's
        future, then release the channels' advisory locks in one more round trip (a
        release that fails is logged: the locks go with the connection's reset or end,
        and the announcements left unrecorded are made again by the next publish)."""
        batch = sorted(batch, key=lambda p: p.message.channel)  # rows locked in name order
        async with self.connection() as conn:
            try:
                stored = await self.store_many(conn, [(p.message, p.key, p.lock) for p in batch])
            except asyncpg.PostgresError as exc:
                retry = not isinstance(exc, _UNAVAILABLE) or isinstance(
                    exc, asyncpg.exceptions.TransactionRollbackError
                )
                if len(batch) == 1 or not retry:
                    raise
                raise _BatchRefused from exc  # its advisory locks go with the pool's reset
            # Per channel, in the order stored: the messages to announce, the
            # never-announced ones first (a later message's pending ones repeat them).
            due: dict[str, list[Message]] = {}
            ids = []
            for publish, (inbox_id, fresh, pending) in zip(batch, stored, strict=True):
                channel = publish.message.channel
                ids.append(inbox_id)
                if channel not in due:
                    due[channel] = pending
                if fresh:
                    due[channel].append(publish.message.stored_as(inbox_id))
            announced: dict[str, str | None] = {}
            try:
                if len(due) == 1:
                    [(channel, messages)] = due.items()
                    announced[channel] = await self.announce(channel, messages)
                else:
                    channels = list(due)
                    outcomes = await asyncio.gather(
                        *(self.announce(channel, due[channel]) for channel in channels)
                    )
                    announced = dict(zip(channels, outcomes, strict=True))
                # Stored and announced: the publishes return now, while the channels stay
                # in this batch (and their advisory locks held) until released.
                for publish, inbox_id in zip(batch, ids, strict=True):
                    if not publish.future.done():
                        publish.future.set_result(inbox_id)
            finally:
                if self._cross_node:
                    await self._release_many(conn, batch, announced)

    async def store_many(
        self, conn: Any, entries: Sequence[tuple[Message, str | None, int | None]]
    ) -> list[tuple[str, bool, list[Message]]]:
        """``store`` of each (message, idempotency key, lock) in one statement
        (``tidings.store_many``: every advisory lock first, in key order), in the order
        given, which is to be channel-name order (row locks in one order)."""
        if len(entries) == 1:  # the same, without the arrays' cost
            return [await self.store(conn, *entries[0])]
        rows = await conn.fetch(
            "SELECT * FROM tidings.store_many($1::text[], $2::text[], $3::bytea[],"
            " $4::integer[], $5::text[], $6::bigint[], $7, $8, $9)",
            [message.channel for message, _, _ in entries],
            [message.destination for message, _, _ in entries],
            [_encoded(message) for message, _, _ in entries],
            [self._max_len(message.channel) for message, _, _ in entries],
            [key for _, key, _ in entries],
            [lock for _, _, lock in entries],
            self._max_age_ms,
            self._ttl_ms,
            self._key_ttl_ms,
        )
        return [_stored(row) for row in rows]

    async def _release_many(
        self, conn: Any, batch: Sequence[_Publish], announced: Mapping[str, str | None]
    ) -> None:
        """``release`` of every publish of ``batch`` in one round trip."""
        if len(batch) == 1:
            publish = batch[0]
            assert publish.lock is not None
            last = announced.get(publish.message.channel)
            return await self.release(conn, publish.message.channel, last, publish.lock)
        bounds = [
            _bound(last) if (last := announced.get(p.message.channel)) else (None, None)
            for p in batch
        ]
        await conn.execute(
            "SELECT tidings.announced_many($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])",
            [p.message.channel for p in batch],
            [b[0] for b in bounds],
            [b[1] for b in bounds],
            [p.lock for p in batch],
        )

    def _max_len(self, channel: str) -> int:
        return self._limits.max_messages if channel.startswith("u:") else self._limits.topic_history

    async def store(
        self, conn: Any, message: Message, idempotency_key: str | None, lock: int | None
    ) -> tuple[str, bool, list[Message]]:
        """``tidings.store`` of ``message`` on ``conn``: its id, whether it was stored now
        (rather than found under its idempotency key), and the channel's messages stored
        before it that were never announced (their publisher died or its broker failed
        in between: to announce first). With ``lock``, the channel's advisory lock is
        held on return: the caller announces, then calls ``release``."""
        row = await conn.fetchrow(
            "SELECT * FROM tidings.store($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            message.channel,
            message.destination,
            _encoded(message),
            self._max_len(message.channel),
            self._max_age_ms,
            self._ttl_ms,
            idempotency_key,
            self._key_ttl_ms,
            lock,
        )
        return _stored(row)

    async def announce(self, channel: str, messages: Sequence[Message]) -> str | None:
        """Announce committed messages in order; returns the id of the last one announced
        (None if none was). The first failure stops it: the rest is left to the catch-up
        and to the channel's next publish (``tidings.store``'s pending messages)."""
        announced = None
        for message in messages:
            payload = message.id.encode() + b" " + message.encode()
            try:
                await self._broker.publish(channel, payload)
            except BrokerUnavailable as exc:
                log.warning(
                    "stored %s on %s but could not announce it (catch-up delivers it): %s",
                    message.id,
                    channel,
                    exc,
                )
                break
            announced = message.id
        return announced

    async def release(
        self, conn: Any, channel: str, announced: str | None, lock: int, times: int = 1
    ) -> None:
        """Record ``channel``'s announcements up to ``announced`` and release its advisory
        lock, taken ``times`` times by ``store``."""
        ms, seq = _bound(announced) if announced is not None else (None, None)
        await conn.execute(
            "SELECT tidings.announced($1, $2, $3, $4, $5)", channel, ms, seq, lock, times
        )

    # -- reads -----------------------------------------------------------------------

    async def history(self, channel: str, after: str, *, limit: int) -> History:
        user_of(channel)
        return (await self.histories({channel: after}, limit=limit))[channel]

    async def histories(self, after: Mapping[str, str], *, limit: int) -> dict[str, History]:
        """One statement for every channel (in channel order: rows are locked in one order)."""
        self._check_open()
        if not after:
            return {}
        channels = sorted(after)
        for channel in channels:
            user_of(channel)
        bounds = [_bound(after[channel]) for channel in channels]
        rows = await self._fetch(
            "SELECT h.* FROM unnest($1::text[], $2::bigint[], $3::bigint[]) WITH ORDINALITY"
            " AS t(c, ms, seq, i), LATERAL tidings.history(t.c, t.ms, t.seq, $4, $5) h"
            " ORDER BY t.i",
            channels,
            [b[0] for b in bounds],
            [b[1] for b in bounds],
            max(limit, 0),
            self._max_age_ms,
        )
        pages = {
            channel: History(
                [
                    Stored(_decode(ms, seq, body))
                    for ms, seq, body in zip(
                        row["ids_ms"], row["ids_seq"], row["bodies"], strict=True
                    )
                ],
                gap=row["gap"],
            )
            for channel, row in zip(channels, rows, strict=True)
        }
        return {channel: pages[channel] for channel in after}

    async def last_ids(self, channels: Sequence[str]) -> dict[str, str | None]:
        self._check_open()
        if not channels:
            return {}
        rows = await self._fetch(
            "SELECT * FROM tidings.last_ids($1::text[], $2)", list(channels), self._max_age_ms
        )
        return {
            row["r_channel"]: None if row["r_ms"] is None else f"{row['r_ms']}-{row['r_seq']}"
            for row in rows
        }

    async def behind(self, after: Mapping[str, str]) -> list[str]:
        self._check_open()
        if not after:
            return []
        channels = list(after)
        bounds = [_bound(after[channel]) for channel in channels]
        rows = await self._fetch(
            "SELECT * FROM tidings.behind($1::text[], $2::bigint[], $3::bigint[])",
            channels,
            [b[0] for b in bounds],
            [b[1] for b in bounds],
        )
        return [row["r_channel"] for row in rows]

    async def unacked(self, user: str, destination: str, *, limit: int) -> list[Stored]:
        self._check_open()
        if limit <= 0:
            return []
        rows = await self._fetch(
            "SELECT * FROM tidings.unacked($1, $2, $3, $4)",
            user,
            destination,
            limit,
            self._max_age_ms,
        )
        return [Stored(_decode(r["r_ms"], r["r_seq"], r["r_body"])) for r in rows]

    async def ack(self, user: str, ids: Sequence[str]) -> None:
        self._check_open()
        ms, seq = _ids(ids)
        if ms:
            await self._fetch(
                "SELECT tidings.ack($1, $2::bigint[], $3::bigint[], $4)",
                user,
                ms,
                seq,
                self._max_age_ms,
            )

    async def listing(self, user: str, after: str, *, limit: int) -> list[Stored]:
        self._check_open()
        after_ms, after_seq = _bound(after)
        if limit <= 0:
            return []
        rows = await self._fetch(
            "SELECT * FROM tidings.listing($1, $2, $3, $4, $5)",
            user,
            after_ms,
            after_seq,
            limit,
            self._max_age_ms,
        )
        return [Stored(_decode(r["r_ms"], r["r_seq"], r["r_body"]), read=r["r_read"]) for r in rows]

    async def unread(self, user: str) -> int:
        return (await self.unread_state(user))[0]

    async def unread_state(self, user: str) -> UnreadState:
        self._check_open()
        rows = await self._fetch(
            "SELECT * FROM tidings.unread_state($1, $2)", user, self._max_age_ms
        )
        return _state(rows[0])

    async def mark_read(
        self, user: str, *, ids: Sequence[str] = (), up_to: str | None = None
    ) -> UnreadState:
        self._check_open()
        up = _bound(up_to) if up_to is not None else (None, None)
        ms, seq = _ids(ids)
        rows = await self._fetch(
            "SELECT * FROM tidings.mark_read($1, $2::bigint[], $3::bigint[], $4, $5, $6, $7)",
            user,
            ms,
            seq,
            up[0],
            up[1],
            self._max_age_ms,
            self._ttl_ms,
        )
        return _state(rows[0])

    async def delete(self, user: str, *, up_to: str | None = None) -> tuple[int, UnreadState]:
        self._check_open()
        up = _bound(up_to) if up_to is not None else (None, None)
        rows = await self._fetch(
            "SELECT * FROM tidings.delete_inbox($1, $2, $3, $4)",
            user,
            up[0],
            up[1],
            self._max_age_ms,
        )
        return int(rows[0]["deleted"]), _state(rows[0])

    # -- expiry ----------------------------------------------------------------------

    async def sweep(self) -> int:
        """Delete what has expired, in batches of SWEEP_BATCH (each its own transaction)."""
        total = 0
        while True:
            rows = await self._fetch("SELECT tidings.sweep($1) AS n", SWEEP_BATCH)
            gone = int(rows[0]["n"])
            total += gone
            if gone < SWEEP_BATCH:
                return total

    async def _run_sweeper(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                await self.sweep()
            except BrokerUnavailable as exc:
                log.info("postgresql inbox sweep skipped: %s", exc)
            except Exception:
                log.exception("postgresql inbox sweep failed")

    # -- internals -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._pool is None:
            raise BrokerUnavailable("inbox is closed")

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A pooled connection; the database's unavailability as BrokerUnavailable."""
        self._check_open()
        assert self._pool is not None
        try:
            async with self._pool.acquire(timeout=COMMAND_TIMEOUT_S) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"postgresql unavailable: {exc}") from exc

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self.connection() as conn:
            rows: list[Any] = await conn.fetch(sql, *args)
            return rows
