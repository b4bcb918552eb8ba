"""The Redis broker's subscriber connection: RESP2 pub/sub replies in, calls out.

redis-py's reader awaited ``read_response`` once per reply: a message that arrived alone
cost a Task wake-up and a stack of coroutine frames before the broker saw it. Here the
transport's ``data_received`` feeds the chunk to a ``hiredis.Reader`` and every complete
reply in it is acted on before it returns: a message is one call of ``on_message``.

``PubSubReader`` is that dispatch without I/O (bytes in, calls out), so tests feed it
bytes split anywhere; ``PubSubConnection`` is the asyncio Protocol around it, on a
connection opened by ``tidings.redis_connect`` (the pool's address, TLS, AUTH, name, db).

RESP2 in subscribed mode
(https://redis.io/docs/latest/develop/interact/pubsub/#wire-protocol-example): every reply
is an array whose first element names its kind: ``message`` (channel, payload),
``subscribe`` and ``unsubscribe`` (channel, count), and ``pong`` (the answer to PING).
Sharded pub/sub on Redis Cluster (issue 18) has ``smessage``, ``ssubscribe`` and
``sunsubscribe``, which Redis also sends unasked when a channel's slot leaves the node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import cast

import hiredis

from tidings.errors import BrokerUnavailable
from tidings.redis_connect import MORE, pack


class PubSubReader:
    """Parses what Redis sends a subscriber connection and calls one function per reply.

    ``on_message(channel, payload)`` for a message, ``on_subscribed(channel)`` for each
    channel a SUBSCRIBE confirmed, ``on_pong()`` for the answer to a PING; UNSUBSCRIBE's
    confirmations are passed over (nothing waits for them), SUNSUBSCRIBE's go to
    ``on_sunsubscribed(channel)`` if given. Whatever those functions raise goes to the
    caller of ``receive``.
    """

    def __init__(
        self,
        on_message: Callable[[bytes, bytes], None],
        on_subscribed: Callable[[bytes], None],
        on_pong: Callable[[], None],
        on_sunsubscribed: Callable[[bytes], None] | None = None,
    ) -> None:
        self._reader = hiredis.Reader(notEnoughData=MORE)
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._on_pong = on_pong
        self._on_sunsubscribed = on_sunsubscribed

    def receive(self, data: bytes) -> None:
        """Act on every reply that ``data`` completes, in order; keep the rest for later.

        BrokerUnavailable for bytes that are not RESP or an error reply (a SUBSCRIBE an
        ACL refuses, say): the replies after it are not acted on, and the connection is
        no use any more.
        """
        reader = self._reader
        reader.feed(data)
        on_message = self._on_message
        try:
            while (reply := reader.gets()) is not MORE:
                if reply.__class__ is not list:
                    raise BrokerUnavailable(f"redis unavailable: unexpected reply {reply!r}")
                kind = reply[0]
                # == first: a set lookup hashes each new kind (~250 ns more per message)
                if kind == b"message" or kind == b"smessage":  # noqa: PLR1714
                    on_message(reply[1], reply[2])
                elif kind == b"subscribe" or kind == b"ssubscribe":  # noqa: PLR1714
                    self._on_subscribed(reply[1])
                elif kind == b"pong":
                    self._on_pong()
                elif kind == b"sunsubscribe" and self._on_sunsubscribed is not None:
                    self._on_sunsubscribed(reply[1])
        except (hiredis.ProtocolError, IndexError) as exc:  # not RESP, or a short array
            raise BrokerUnavailable(f"redis unavailable: bad reply from redis: {exc}") from None


class PubSubConnection(asyncio.Protocol):
    """One subscriber connection: ``PubSubReader`` on what arrives, ``send`` for commands.

    ``ended`` resolves, once, to why the connection is of no more use: lost, closed by
    ``close``, or a reply ``receive`` refused (the connection is then aborted).
    """

    def __init__(
        self,
        on_message: Callable[[bytes, bytes], None],
        on_subscribed: Callable[[bytes], None],
        on_pong: Callable[[], None],
        on_sunsubscribed: Callable[[bytes], None] | None = None,
    ) -> None:
        self.ended: asyncio.Future[BrokerUnavailable] = asyncio.get_running_loop().create_future()
        reader = PubSubReader(on_message, on_subscribed, on_pong, on_sunsubscribed)
        self._receive = reader.receive
        self._transport: asyncio.Transport | None = None

    @property
    def is_open(self) -> bool:
        """True while a command written now can still reach Redis and be answered."""
        transport = self._transport
        return transport is not None and not self.ended.done() and not transport.is_closing()

    def send(self, commands: Sequence[Sequence[bytes]]) -> None:
        """Write ``commands`` in one write (RESP arrays of bulk strings); needs ``is_open``."""
        assert self._transport is not None
        self._transport.write(b"".join([pack(*command) for command in commands]))

    def close(self) -> None:
        """Close the connection at once, dropping unsent bytes (idempotent)."""
        self._end(BrokerUnavailable("redis unavailable: subscriber connection closed"))
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost ({exc or 'closed by redis'})"
        self._end(BrokerUnavailable(f"redis unavailable: {reason}"))

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        except BrokerUnavailable as exc:
            self._end(exc)
            if self._transport is not None:
                self._transport.abort()

    def _end(self, why: BrokerUnavailable) -> None:
        if not self.ended.done():
            self.ended.set_result(why)
