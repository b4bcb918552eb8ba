"""A lean Redis connection for the hottest commands: EVALSHA of one Lua script.

Every message published costs one EVALSHA of the inbox's publish script, and every
CONNECT of a user a share of one EVALSHA of the presence script. Sent through redis-py's
pipeline, a node spent ~250 µs of CPU per HTTP publish, about a quarter of it in Pipeline
objects, command packing, reply parsing and timers (docs/decisions.md).
``ScriptConnection`` does only what these calls need, on a connection of its own. It
speaks RESP2 (https://redis.io/docs/latest/develop/reference/protocol-spec/): each call
is packed once as an array of bulk strings (``hiredis.pack_command``), the calls of one
loop turn go out in one write, and ``hiredis.Reader`` parses the replies. A RESP2 reply
carries no request id: it answers the oldest command not yet answered, so replies
resolve the callers' futures in the order the commands were written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError

from tidings.errors import BrokerUnavailable, ReplicasUnavailable
from tidings.redis_connect import MORE, bulk, connection_params, open_connection, reply_error
from tidings.redis_connect import pack as _pack


class _Outcome(Protocol):
    """Where a reply goes: the caller's future, or a ``_Held`` reply or a ``_Wait``."""

    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


_Call = tuple[bytes | None, _Outcome | None]
"""A command awaiting its reply: the command, kept for one NOSCRIPT retry (None: no
retry), and where its reply goes (None: nobody waits for this reply)."""

Replicas = tuple[int, float]
"""``ScriptConnection(wait=...)``: how many replicas must hold a call's writes, and how
many seconds ``WAIT`` may take to hear so."""


class ScriptConnection:
    """Runs EVALSHA of ``script`` for any number of callers over one connection of its own.

    It connects on first use to the Redis of ``client``'s pool (``redis://``, ``rediss://``
    or ``unix://``, read from the pool's settings), with its credentials, db, client name
    and timeouts. The calls made in one loop turn share one write; at most
    ``max_in_flight`` await their replies at a time, later ones wait their turn in order.
    Each caller gets the script's reply, or BrokerUnavailable carrying Redis' error reply,
    which fails no other call. NOSCRIPT (Redis restarted, ``SCRIPT FLUSH``): the script
    is loaded and those calls are sent once more. The connection lost, or no reply for
    the pool's socket timeout: every pending call fails with BrokerUnavailable and the
    next call connects again. Nothing is resent then: a call may have run, and only its
    caller knows whether to retry (with an idempotency key, a retry stores nothing twice).
    With an ``encoding``, bulk-string replies come decoded (``str``), as redis-py's
    ``decode_responses``.

    With ``wait=(replicas, timeout_s)`` each write of calls ends with ``WAIT replicas
    timeout`` (https://redis.io/docs/latest/commands/wait/: it blocks this connection until
    the replicas acknowledged every write made on it so far, or the timeout): the calls of
    that write are answered only with its reply, and fail with ReplicasUnavailable when it
    counts fewer replicas. The link's reply timeout grows by ``timeout_s``, which WAIT may
    rightly take.
    """

    def __init__(
        self,
        client: Redis | AbstractConnection,
        script: str,
        *,
        max_in_flight: int = 128,
        encoding: str | None = None,
        wait: Replicas | None = None,
    ) -> None:
        # A Redis client's pool settings, or a connection's (a cluster node's, issue 18)
        if isinstance(client, AbstractConnection):
            self._params = client
        else:
            self._params = connection_params(client.connection_pool)
        self._encoding = encoding
        self._wait: tuple[bytes, int, float] | None = None
        if wait is not None and wait[0] > 0:
            replicas, timeout_s = wait
            command = _pack(b"WAIT", replicas, max(1, round(timeout_s * 1000)))
            self._wait = (command, replicas, timeout_s)
        self._sha = hashlib.sha1(script.encode()).hexdigest().encode()
        self._load = _pack(b"SCRIPT", b"LOAD", script)
        self._max_in_flight = max_in_flight
        self.writes = 0
        """Writes of callers' commands so far (the NOSCRIPT retries' not counted)."""
        self._queue: deque[tuple[bytes, asyncio.Future[Any]]] = deque()  # not written yet
        self._link: _Link | None = None
        self._connecting: asyncio.Task[None] | None = None

    async def call(self, keys: Sequence[str], args: Sequence[str | bytes | int]) -> Any:
        """``EVALSHA sha len(keys) *keys *args``: the script's reply, or BrokerUnavailable."""
        return await self.submit(keys, args)

    def submit(self, keys: Sequence[str], args: Sequence[str | bytes | int]) -> asyncio.Future[Any]:
        """``call`` without the coroutine: the call is queued now, in order with every other
        call, and the future gets its reply or BrokerUnavailable. The caller must retrieve
        that outcome (an unretrieved exception is logged by asyncio)."""
        return self.submit_packed(_pack(b"EVALSHA", self._sha, len(keys), *keys, *args))

    def head(self, keys: int, args: int) -> bytes:
        """The start of an EVALSHA with ``keys`` keys and ``args`` arguments, up to its first
        key: with ``redis_connect.bulk`` of each key and argument after it, a command for
        ``submit_packed`` (a caller that sends many alike packs their constant parts once)."""
        return b"*%d\r\n$7\r\nEVALSHA\r\n%s%s" % (3 + keys + args, bulk(self._sha), bulk(keys))

    def submit_packed(self, command: bytes) -> asyncio.Future[Any]:
        """``submit`` of a command packed already (see ``head``)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._queue:
            loop.call_soon(self._send)
        self._queue.append((command, future))
        return future

    async def close(self) -> None:
        """Fail every pending call and close the connection; a later call connects again."""
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        link, self._link = self._link, None
        error = BrokerUnavailable("redis unavailable: the script connection was closed")
        self._fail_queue(error)
        if link is not None:
            link.close(error)

    def _send(self) -> None:
        """Write the waiting calls, as many as ``max_in_flight`` allows, in one write."""
        link, queue = self._link, self._queue
        if link is None:
            if self._connecting is None and queue:
                self._connecting = asyncio.create_task(self._connect())
            return
        room = self._max_in_flight - len(link.pending)
        if room <= 0 or not queue:
            return
        if len(queue) <= room:
            calls = list(queue)
            queue.clear()
        else:
            calls = [queue.popleft() for _ in range(room)]
        calls = [call for call in calls if not call[1].done()]  # a cancelled caller is gone
        if calls:
            if self._wait is None:
                link.send(calls)
            else:
                _send_waited(link, calls, self._wait)
            self.writes += 1

    async def _connect(self) -> None:
        try:
            self._link = await _Link.open(
                self._params,
                self._load,
                self._send,
                self._lost,
                encoding=self._encoding,
                wait=self._wait,
            )
        except Exception as exc:
            if not isinstance(exc, BrokerUnavailable):
                exc = BrokerUnavailable(f"redis unavailable: {exc or type(exc).__name__}")
            self._fail_queue(exc)
        finally:
            self._connecting = None
        self._send()

    def _lost(self, link: _Link, error: BrokerUnavailable) -> None:
        if self._link is link:
            self._link = None
            self._fail_queue(error)

    def _fail_queue(self, error: BrokerUnavailable) -> None:
        queue, self._queue = self._queue, deque()
        for _, future in queue:
            if not future.done():
                future.set_exception(error)


class _Link(asyncio.Protocol):
    """One connection: commands written, replies matched to them in order."""

    def __init__(
        self,
        timeout: float | None,
        load: bytes,
        on_reply: Callable[[], None],
        on_lost: Callable[[_Link, BrokerUnavailable], None],
        *,
        encoding: str | None = None,
        wait: tuple[bytes, int, float] | None = None,
    ) -> None:
        self.pending: deque[_Call] = deque()
        self.wait = wait  # the WAIT command after each write, see ScriptConnection
        self._reader = hiredis.Reader(replyError=reply_error, notEnoughData=MORE, encoding=encoding)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._heard = 0.0  # loop time of the last reply, or of a write when none was pending
        self._load = load
        self._on_reply = on_reply
        self._on_lost = on_lost
        self._error: BrokerUnavailable | None = None  # set once lost

    @classmethod
    async def open(
        cls,
        params: AbstractConnection,
        load: bytes,
        on_reply: Callable[[], None],
        on_lost: Callable[[_Link, BrokerUnavailable], None],
        *,
        encoding: str | None = None,
        wait: tuple[bytes, int, float] | None = None,
    ) -> _Link:
        """Connect as redis-py would with ``params`` (``tidings.redis_connect``)."""
        timeout = params.socket_timeout
        if timeout is not None and wait is not None:
            timeout += wait[2]  # a WAIT may take that long before it answers
        link = cls(timeout, load, on_reply, on_lost, encoding=encoding, wait=wait)
        await open_connection(params, link)
        return link

    def send(
        self, calls: Sequence[tuple[bytes | None, _Outcome | None]], *, data: bytes | None = None
    ) -> None:
        """Write ``calls`` (their commands, or ``data`` instead) and await their replies."""
        assert self._transport is not None
        if not self.pending and self._timeout is not None:
            self._heard = self._loop.time()
            if self._timer is None:
                self._timer = self._loop.call_at(self._heard + self._timeout, self._check)
        if data is None:
            data = b"".join([command for command, _ in calls if command is not None])
        self._transport.write(data)
        self.pending.extend(calls)

    def close(self, error: BrokerUnavailable) -> None:
        self._fail(error)
        if self._transport is not None:
            self._transport.close()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(BrokerUnavailable(f"redis unavailable: connection lost ({exc or 'closed'})"))

    def data_received(self, data: bytes) -> None:
        reader, pending = self._reader, self.pending
        reader.feed(data)
        self._heard = self._loop.time()
        retry: list[_Call] = []
        resend: list[bytes] = []
        try:
            while (reply := reader.gets()) is not MORE:
                command, future = pending.popleft()
                if future is None or future.done():
                    continue  # nobody waits, or the caller is gone (cancelled)
                if isinstance(reply, NoScriptError) and command is not None:
                    retry.append((None, future))  # None: no second retry
                    resend.append(command)
                elif isinstance(reply, Exception):  # an error reply, for this call only
                    future.set_exception(_error(reply))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbled, or a reply unasked for
            self._abort(f"bad reply from redis: {exc!r}")
            return
        if retry:
            # Redis runs commands in order: the script is loaded before they run again.
            calls: list[_Call] = [(None, None), *retry]
            if self.wait is not None:  # and a WAIT after them, for them
                resend.append(self.wait[0])
                held = [cast(_Held, outcome) for _, outcome in retry]
                calls.append((None, _Wait(held, self.wait[1], self.wait[2])))
            self.send(calls, data=b"".join([self._load, *resend]))
        self._on_reply()

    # -- internals ---------------------------------------------------------------------

    def _check(self) -> None:
        """The reply timer: no reply for ``timeout`` while commands wait for one: lost."""
        self._timer = None
        if not self.pending or self._error is not None or self._timeout is None:
            return
        deadline = self._heard + self._timeout
        if self._loop.time() >= deadline - 0.001:
            self._abort(f"no reply within {self._timeout}s")
        else:
            self._timer = self._loop.call_at(deadline, self._check)

    def _abort(self, why: str) -> None:
        self._fail(BrokerUnavailable(f"redis unavailable: {why}"))
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, error: BrokerUnavailable) -> None:
        """Fail every call awaiting a reply; tell the owner, once."""
        if self._error is not None:
            return
        self._error = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self.pending = self.pending, deque()
        for _, future in pending:
            if future is not None and not future.done():
                future.set_exception(error)
        self._on_lost(self, error)


class ErrorReply(BrokerUnavailable):
    """Redis answered the call with an error: the connection itself is fine."""


class Redirect(ErrorReply):
    """A Redis Cluster's ``MOVED <slot> <host>:<port>``, ``ASK ...`` or ``TRYAGAIN``
    (``address`` None: a multi-key call in a slot under migration) error reply: the command
    did not run; ``tidings.redis_cluster`` sends it where (or when) the reply says."""

    def __init__(self, message: str, *, ask: bool, address: tuple[str, int] | None) -> None:
        super().__init__(message)
        self.ask = ask
        self.address = address


def _error(reply: Exception) -> ErrorReply:
    """The exception a caller gets for an error reply (``Redirect`` for MOVED, ASK and
    TRYAGAIN)."""
    text = str(reply)
    if text.startswith("TRYAGAIN"):
        return Redirect(f"redis unavailable: {text}", ask=False, address=None)
    if text.startswith(("MOVED ", "ASK ")):
        kind, _, address = text.split(" ", 2)
        host, _, port = address.rpartition(":")
        if port.isdigit():
            where = (host, int(port))
            return Redirect(f"redis unavailable: {text}", ask=kind == "ASK", address=where)
    return ErrorReply(f"redis unavailable: {text}")


def _send_waited(
    link: _Link, calls: list[tuple[bytes, asyncio.Future[Any]]], wait: tuple[bytes, int, float]
) -> None:
    """Write ``calls`` and a WAIT after them; each is answered once the WAIT is."""
    wait_command, replicas, timeout_s = wait
    held = [_Held(future) for _, future in calls]
    waited: list[_Call] = [(call[0], outcome) for call, outcome in zip(calls, held, strict=True)]
    waited.append((None, _Wait(held, replicas, timeout_s)))
    link.send(waited, data=b"".join([*(command for command, _ in calls), wait_command]))


_NO_REPLY = object()


class _Held:
    """A call's reply, held until the WAIT written after it answers (``_Wait``).

    An error reply or a lost connection fails the caller at once: there is nothing to
    wait for.
    """

    __slots__ = ("future", "reply")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future
        self.reply: Any = _NO_REPLY

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, result: Any, /) -> None:
        self.reply = result

    def set_exception(self, exception: BaseException, /) -> None:
        if not self.future.done():
            self.future.set_exception(exception)


class _Wait:
    """The reply to a ``WAIT replicas timeout``: the number of replicas that acknowledged.
    Enough: each held call gets its reply; fewer: ReplicasUnavailable. Calls still without
    a reply (sent again after NOSCRIPT, with a WAIT of their own) are left alone."""

    __slots__ = ("held", "replicas", "timeout_s")

    def __init__(self, held: list[_Held], replicas: int, timeout_s: float) -> None:
        self.held = held
        self.replicas = replicas
        self.timeout_s = timeout_s

    def done(self) -> bool:
        return False  # the held calls' outcome hangs on this reply, whoever waits

    def set_result(self, result: Any, /) -> None:
        count = result if isinstance(result, int) else 0
        error = None
        if count < self.replicas:
            error = ReplicasUnavailable(
                f"stored on the master, but {count} of the {self.replicas} replicas asked for "
                f"acknowledged it within {self.timeout_s * 1000:.0f} ms: a failover now could "
                "lose it; retry with the same idempotency key (nothing is stored twice)"
            )
        for held in self.held:
            if held.reply is _NO_REPLY or held.future.done():
                continue
            if error is None:
                held.future.set_result(held.reply)
            else:
                held.future.set_exception(error)

    def set_exception(self, exception: BaseException, /) -> None:
        for held in self.held:
            if held.reply is not _NO_REPLY and not held.future.done():
                held.future.set_exception(exception)
