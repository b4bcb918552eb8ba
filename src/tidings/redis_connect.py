"""Opening a Redis connection for one of our own asyncio Protocols, as redis-py would open it.

Two hot paths skip redis-py and speak RESP2 with hiredis on connections of their own: the
publish script's (``inbox/resp.py``) and the broker's subscriber (``brokers/redis_pubsub.py``).
Both take their settings from a redis-py pool, so that one URL configures every connection
of a node: ``redis://``, ``rediss://`` (the pool's TLS context) or a unix socket; the connect
and socket timeouts; TCP_NODELAY and keepalive; AUTH (user and password, or the pool's
credential provider), CLIENT SETNAME and SELECT. ``open_connection`` does all of that, then
hands the connection to the caller's protocol, which never sees the handshake's replies.
A pool of a ``redis+sentinel://`` URL (``tidings.redis_sentinel``) has no fixed address:
the sentinels are asked for the master's at each connect, and ``ROLE`` joins the
handshake to check that the server reached is the master.

RESP2 only: no HELLO is sent, whatever ``protocol`` the pool asks for.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from typing import Any, cast

import hiredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.credentials import UsernamePasswordCredentialProvider
from redis.exceptions import NoScriptError, RedisError, ResponseError

from tidings.errors import BrokerUnavailable, TidingsError
from tidings.redis_sentinel import (
    CheckedMasterConnection,
    CheckedMasterSSLConnection,
    check_role,
    master_address,
)

SUPPORTED = (
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    CheckedMasterConnection,
    CheckedMasterSSLConnection,
)
"""The redis-py connection classes whose settings ``open_connection`` knows how to follow."""

MORE = object()
"""What ``hiredis.Reader.gets`` returns while no complete reply is buffered (pass it as
``notEnoughData``); every lean connection's reader uses this one."""


def pack(*parts: str | bytes | int) -> bytes:
    """One command as a RESP array of bulk strings (str as UTF-8, int in decimal)."""
    packed: bytes = hiredis.pack_command(parts)  # type: ignore[arg-type]  # stub: a 1-tuple
    return packed


def bulk(part: str | bytes | int) -> bytes:
    """One bulk string of a command (``pack``'s parts), for commands packed piece by piece."""
    data = part if isinstance(part, bytes) else str(part).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def reply_error(message: str) -> ResponseError:
    """An error reply as the exception a lean reader returns for it (pass it as
    ``replyError``): NoScriptError for NOSCRIPT, else ResponseError; the text as Redis
    sent it, error code included."""
    if message.startswith("NOSCRIPT "):
        return NoScriptError(message)
    return ResponseError(message)


def connection_params(pool: ConnectionPool, **overrides: Any) -> AbstractConnection:
    """A connection of ``pool``'s class and settings (``overrides`` replacing some), built
    only to read them as redis-py parsed them: it is never connected.

    TidingsError for a class ``open_connection`` does not follow (e.g. redis-py's own
    Sentinel one, which does not check ROLE).
    """
    params: AbstractConnection = pool.connection_class(**{**pool.connection_kwargs, **overrides})
    if type(params) not in SUPPORTED:
        raise TidingsError(f"cannot open a lean redis connection over a {type(params).__name__}")
    return params


async def open_connection(params: AbstractConnection, protocol: asyncio.Protocol) -> None:
    """Connect as redis-py would with ``params``, then hand the connection to ``protocol``.

    The connect (and TLS handshake) is bounded by ``params.socket_connect_timeout``; then
    AUTH, CLIENT SETNAME and SELECT, as ``params`` ask, go in one write and their replies
    are awaited for up to ``params.socket_timeout``. Only then is ``protocol`` made the
    transport's protocol and its ``connection_made`` called. On failure the connection is
    closed and this raises: OSError or TimeoutError while connecting, BrokerUnavailable for
    an error reply (e.g. a wrong password), a lost connection or no reply in time.

    With a Sentinel pool's ``params`` the sentinels are asked for the master's address
    first (bounded by ``redis_sentinel.discovery_timeout``; BrokerUnavailable if none
    names one) and the handshake ends with ``ROLE``, which must answer master (else
    BrokerUnavailable: a stale sentinel, a failover under way).
    """
    loop = asyncio.get_running_loop()
    setup = _Setup(loop)
    sentinel = isinstance(params, CheckedMasterConnection)
    if isinstance(params, CheckedMasterConnection):
        try:
            host, port = await master_address(params)
        except (RedisError, TimeoutError) as exc:
            why = f"redis unavailable: no master from the sentinels: {exc}"
            raise BrokerUnavailable(why) from exc
    else:
        host, port = getattr(params, "host", ""), getattr(params, "port", 0)
    async with asyncio.timeout(params.socket_connect_timeout):
        if isinstance(params, UnixDomainSocketConnection):
            transport, _ = await loop.create_unix_connection(lambda: setup, params.path)
        elif isinstance(params, Connection):
            ssl = params.ssl_context.get() if isinstance(params, SSLConnection) else None
            transport, _ = await loop.create_connection(lambda: setup, host, port, ssl=ssl)
        else:
            raise TidingsError(f"cannot open a lean redis connection over {params!r}")
    try:
        if isinstance(params, Connection):
            _set_socket_options(transport, params)
        commands = _setup_commands(params)
        if sentinel:
            commands.append(pack("ROLE"))
        timeout = params.socket_timeout
        try:
            async with asyncio.timeout(timeout):
                replies = await setup.run(commands)
            if sentinel:
                check_role(replies[-1], f"{host}:{port}")
        except RedisError as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from None
        except TimeoutError:
            raise BrokerUnavailable(f"redis unavailable: no reply within {timeout}s") from None
        if transport.is_closing():  # lost after the last reply, before we got here
            raise BrokerUnavailable("redis unavailable: connection lost during setup")
    except BaseException:
        transport.abort()
        raise
    transport.set_protocol(protocol)
    protocol.connection_made(transport)


def _set_socket_options(transport: asyncio.BaseTransport, params: Connection) -> None:
    """TCP_NODELAY and keepalive, as redis-py sets them."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    options = params.socket_keepalive_options
    if params.socket_keepalive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in options.items() if isinstance(options, Mapping) else ():
            sock.setsockopt(socket.SOL_TCP, option, value)


def _setup_commands(params: AbstractConnection) -> list[bytes]:
    """AUTH, CLIENT SETNAME and SELECT as ``params`` ask (each only if asked for)."""
    commands: list[bytes] = []
    if params.credential_provider or params.username or params.password:
        provider = params.credential_provider or UsernamePasswordCredentialProvider(
            params.username, params.password
        )
        commands.append(pack("AUTH", *provider.get_credentials()))
    if params.client_name:
        commands.append(pack("CLIENT", "SETNAME", params.client_name))
    if params.db:
        commands.append(pack("SELECT", params.db))
    return commands


class _Setup(asyncio.Protocol):
    """The connection's protocol until the setup commands are answered."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._reader = hiredis.Reader(replyError=reply_error, notEnoughData=MORE)
        self._transport: asyncio.Transport | None = None
        self._replies: list[Any] = []
        self._expected = 0
        # None once every reply is in, else why they will not come
        self._done: asyncio.Future[BrokerUnavailable | None] = loop.create_future()

    async def run(self, commands: list[bytes]) -> list[Any]:
        """Write ``commands`` in one write; return their replies once none is an error,
        else raise."""
        if not commands:
            return []
        assert self._transport is not None
        self._expected = len(commands)
        self._transport.write(b"".join(commands))
        error = await self._done
        if error is not None:
            raise error
        for reply in self._replies:
            if isinstance(reply, Exception):  # an error reply (reply_error)
                raise BrokerUnavailable(f"redis unavailable: {reply}")
        return self._replies

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost ({exc or 'closed'})"
        self._finish(BrokerUnavailable(f"redis unavailable: {reason}"))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not MORE:
                self._replies.append(reply)
        except hiredis.ProtocolError as exc:
            self._finish(BrokerUnavailable(f"redis unavailable: bad reply from redis: {exc!r}"))
            return
        if self._expected and len(self._replies) >= self._expected:
            self._finish(None)

    def _finish(self, error: BrokerUnavailable | None) -> None:
        if not self._done.done():
            self._done.set_result(error)
