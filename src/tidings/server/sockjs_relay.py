"""SockJS without sticky sessions: a request for a session another node holds goes there.

An HTTP session lives on the node that got its first receiving request: its *owner*.
Behind a plain round-robin balancer the session's later requests land on any node. A node
that gets one for a session it does not hold looks the owner up in a directory (one Redis
key per session, with a TTL the owner keeps fresh) and relays the request over the broker,
to the owner's node channel ``n:<node id>``; answers come back on the asking node's::

    asking node (the "edge")                 owner
    send    {rid, from, sid, messages}  ──▶  hands them to the STOMP session
            ◀── sent {rid, found}
    receive {rid, from, sid, transport, ──▶  attaches a receiver, as for a local request
             callback}
            ◀── data {rid, data} ...         each chunk that receiver writes
            ◀── end {rid}                    the receiver is done
            ◀── missing {rid}                no such session: the edge opens one itself
    detach  {rid}                       ──▶  the edge's client went away: interrupt

The client never sees the difference: the edge writes the same bytes the owner would have.
Chunks are UTF-8 text (SockJS frames are JSON), so messages are JSON.

Every node keeps a liveness key (``NODE_TTL_S``). A session whose owner's key is gone is
taken over by the next node that gets a receiving request for it (the client then gets a
new ``o`` frame, which sockjs-client reports as "Server lost session", and reconnects);
an owner that hangs is given up after a heartbeat interval plus ``SILENCE_GRACE_S`` (the
edge ends the request with ``c[1002,"Connection interrupted"]``); an edge that dies while
the owner writes through it interrupts the session as a vanished client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from tidings.errors import BrokerUnavailable
from tidings.server.sockjs import (
    RECEIVING,
    HttpSession,
    Link,
    Write,
    pump,
    wrap_and_prelude,
)
from tidings.sockjs.framing import close_frame
from tidings.sockjs.session import INTERRUPTED, Receiver

if TYPE_CHECKING:
    from tidings.node import Node
    from tidings.server.sockjs import SockJSService

log = logging.getLogger(__name__)

SUBSCRIBE_RETRY_MAX_S = 1.0  # Redis down at start: retry the node channel this often at most

DIRECTORY_TTL_S = 60.0
"""Life of a directory entry; its owner refreshes it every third of that."""
NODE_TTL_S = 10.0
"""Life of a node's liveness key; the node refreshes it every third of that."""
REPLY_TIMEOUT_S = 10.0
"""How long a relayed send waits for the owner's answer."""
SILENCE_GRACE_S = 10.0
"""A relayed receive whose owner is silent for a heartbeat interval plus this has failed."""
CLIENT_CHECK_S = 1.0
"""How often the edge looks whether the client of a relayed receive is still there (the
owner learns it only from the edge)."""

# The live owner of session KEYS[1] (ARGV[2] .. owner is its liveness key), or, if it has
# none, ARGV[1] after claiming it for ARGV[3] seconds: one round trip, atomic. (The
# liveness key is named at run time, so the directory needs a non-cluster Redis.)
_OWNER_OR_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner and (owner == ARGV[1] or redis.call('EXISTS', ARGV[2] .. owner) == 1) then
  return owner
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return ARGV[1]
"""
# The live owner of session KEYS[1], or nil.
_LIVE_OWNER = """
local owner = redis.call('GET', KEYS[1])
if owner and redis.call('EXISTS', ARGV[1] .. owner) == 1 then return owner end
return false
"""
# Delete the entry only if this node still owns it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SessionDirectory(Protocol):
    """What the relay asks of a directory: ``Directory`` in Redis, or
    ``inbox.pg_presence.PostgresDirectory`` on --broker amqp:// --inbox postgresql://.
    Failures raise one of DIRECTORY_ERRORS."""

    ttl_s: float

    async def owner(self, session_id: str, claimant: str) -> str: ...
    async def live_owner(self, session_id: str) -> str | None: ...
    async def beat(self, node_id: str) -> None: ...
    async def alive(self, node_id: str) -> bool: ...
    async def gone(self, node_id: str) -> None: ...
    async def claim(self, session_id: str, owner: str) -> None: ...
    async def refresh(self, session_ids: list[str]) -> None: ...
    async def release(self, session_id: str, owner: str) -> None: ...


DIRECTORY_ERRORS = (RedisError, OSError, BrokerUnavailable)
"""A directory that cannot answer now (Redis's errors; PostgreSQL's as BrokerUnavailable)."""


def redis_directory(redis: Redis | RedisCluster) -> Directory:
    """The directory in the broker's Redis. On Redis Cluster its keys share one slot (its
    scripts read a session's key and its owner's liveness key together): ``{sockjs}``."""
    if isinstance(redis, RedisCluster):
        return Directory(redis, prefix="tidings:{sockjs}:")
    return Directory(redis)


class Directory:
    """Which node owns which SockJS session: ``<prefix><session id>`` → node id."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        prefix: str = "tidings:sockjs:",
        ttl_s: float = DIRECTORY_TTL_S,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.node_prefix = prefix + "node:"
        self.ttl_s = ttl_s
        self._owner_or_claim = redis.register_script(_OWNER_OR_CLAIM)
        self._live_owner = redis.register_script(_LIVE_OWNER)
        self._release = redis.register_script(_RELEASE)

    def _key(self, session_id: str) -> str:
        return self.prefix + "session:" + session_id

    async def owner(self, session_id: str, claimant: str) -> str:
        """The session's live owner; ``claimant`` becomes it if it has none."""
        owner = await self._owner_or_claim(
            keys=[self._key(session_id)], args=[claimant, self.node_prefix, int(self.ttl_s)]
        )
        return owner.decode() if isinstance(owner, bytes) else str(owner)

    async def live_owner(self, session_id: str) -> str | None:
        owner = await self._live_owner(keys=[self._key(session_id)], args=[self.node_prefix])
        return owner.decode() if isinstance(owner, bytes) else None

    async def beat(self, node_id: str) -> None:
        """``node_id`` is alive for NODE_TTL_S more."""
        await self.redis.set(self.node_prefix + node_id, b"1", ex=int(NODE_TTL_S))

    async def alive(self, node_id: str) -> bool:
        return bool(await self.redis.exists(self.node_prefix + node_id))

    async def gone(self, node_id: str) -> None:
        await self.redis.delete(self.node_prefix + node_id)

    async def claim(self, session_id: str, owner: str) -> None:
        """Take the session over (its recorded owner has gone)."""
        await self.redis.set(self._key(session_id), owner, ex=int(self.ttl_s))

    async def refresh(self, session_ids: list[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.expire(self._key(session_id), int(self.ttl_s))
            await pipe.execute()

    async def release(self, session_id: str, owner: str) -> None:
        await self._release(keys=[self._key(session_id)], args=[owner])


class RelayLink:
    """The Link of a receiving request that another node answers for this one."""

    __slots__ = ("client_gone",)

    def __init__(self) -> None:
        self.client_gone = False

    def gone(self) -> bool:
        return self.client_gone

    def in_flight(self) -> int:
        return 0


class _SessionMissing(Exception):
    """The recorded owner does not hold the session (any more)."""


class Relay:
    """Relays SockJS requests between the nodes that share a Redis broker."""

    def __init__(self, service: SockJSService, node: Node, directory: SessionDirectory) -> None:
        self.service = service
        self.node = node
        self.node_id = node.id
        self.directory = directory
        self._channel = ""
        self._ids = itertools.count(1)
        self._id_prefix = f"{self.node_id}-{secrets.token_hex(4)}-"
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._streams: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._links: dict[str, tuple[RelayLink, HttpSession]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on this node's channel and keep the directory entries fresh."""
        self._channel = self.node.on_node_message(self._on_message)
        try:
            await self.node.broker.subscribe(self._channel)
        except BrokerUnavailable:
            # Redis down at start: the node starts not ready (docs/deploy.md) and the
            # channel is subscribed once Redis is back; the broker keeps it after that.
            self._spawn(self._subscribe_when_back())
        with contextlib.suppress(*DIRECTORY_ERRORS):  # else the refresher retries
            await self.directory.beat(self.node_id)
        self._refresher = asyncio.create_task(self._refresh(), name="tidings-sockjs-directory")

    async def _subscribe_when_back(self) -> None:
        for attempt in itertools.count():
            await asyncio.sleep(min(SUBSCRIBE_RETRY_MAX_S, 0.05 * 2**attempt))
            with contextlib.suppress(BrokerUnavailable):
                await self.node.broker.subscribe(self._channel)
                return

    async def shut_down(self) -> None:
        """End the requests relayed to other nodes, and say this node is gone: its
        sessions go with it, and other nodes take their ids over at once."""
        for queue in self._streams.values():
            queue.put_nowait({"op": "end"})
        with contextlib.suppress(*DIRECTORY_ERRORS):
            await self.directory.gone(self.node_id)

    async def stop(self) -> None:
        self.node.on_node_message(None)
        tasks = [*self._tasks, *([self._refresher] if self._refresher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _refresh(self) -> None:
        sessions_every = max(1, round(self.directory.ttl_s / NODE_TTL_S))
        for beat in itertools.count(1):
            await asyncio.sleep(NODE_TTL_S / 3)
            try:
                await self.directory.beat(self.node_id)
                if beat % sessions_every == 0:
                    await self.directory.refresh(list(self.service.sessions))
            except DIRECTORY_ERRORS as exc:
                log.warning("sockjs: cannot refresh the session directory: %s", exc)

    # -- the edge: requests for sessions held elsewhere ---------------------------------------
    async def owner(self, session_id: str) -> str:
        """Who holds ``session_id``: this node claims it if nobody does."""
        try:
            return await self.directory.owner(session_id, self.node_id)
        except DIRECTORY_ERRORS as exc:
            raise BrokerUnavailable(f"session directory: {exc}") from exc

    def release(self, session_id: str) -> None:
        """This node no longer holds ``session_id``."""
        self._spawn(self._release(session_id))

    async def _release(self, session_id: str) -> None:
        try:
            await self.directory.release(session_id, self.node_id)
        except DIRECTORY_ERRORS as exc:
            log.info("sockjs: cannot release session %s: %s", session_id, exc)

    async def send(self, session_id: str, messages: list[str]) -> bool:
        """Hand ``messages`` to the node that holds the session; False if none does."""
        try:
            owner = await self.directory.live_owner(session_id)
        except DIRECTORY_ERRORS as exc:
            raise BrokerUnavailable(f"session directory: {exc}") from exc
        if owner is None or owner == self.node_id:
            return False
        rid = self._new_id()
        future = self._replies[rid] = asyncio.get_running_loop().create_future()
        try:
            request = {"op": "send", "rid": rid, "from": self.node_id, "sid": session_id}
            await self._publish(owner, {**request, "messages": messages})
            try:
                async with asyncio.timeout(REPLY_TIMEOUT_S):
                    reply = await future
            except TimeoutError:
                raise BrokerUnavailable(f"node {owner} does not answer") from None
        finally:
            self._replies.pop(rid, None)
        return bool(reply.get("found"))

    def receive(
        self,
        owner: str,
        session_id: str,
        *,
        transport: str,
        callback: str,
        client: Link,
        here: Callable[[Write], Awaitable[bool]],
    ) -> Callable[[Write], Awaitable[bool]]:
        """The chunks of a receiving request that ``owner`` answers for this node.

        ``client`` is the request's own connection; ``here`` serves the request on this
        node instead, if the owner turns out not to hold the session: this node then takes
        the session id over.
        """

        async def chunks(write: Write) -> bool:
            try:
                return await self._receive(
                    owner,
                    session_id,
                    transport=transport,
                    callback=callback,
                    client=client,
                    write=write,
                )
            except _SessionMissing:
                try:
                    await self.directory.claim(session_id, self.node_id)
                except DIRECTORY_ERRORS as exc:
                    log.info("sockjs: cannot claim session %s: %s", session_id, exc)
                return await here(write)

        return chunks

    async def _receive(
        self,
        owner: str,
        session_id: str,
        *,
        transport: str,
        callback: str,
        client: Link,
        write: Write,
    ) -> bool:
        rid = self._new_id()
        queue = self._streams[rid] = asyncio.Queue()
        request = {"op": "receive", "rid": rid, "from": self.node_id, "sid": session_id}
        try:
            await self._publish(owner, {**request, "transport": transport, "callback": callback})
            loop = asyncio.get_running_loop()
            silence = self.service.heartbeat_s + SILENCE_GRACE_S
            heard = loop.time()
            while True:
                try:
                    async with asyncio.timeout(CLIENT_CHECK_S):
                        reply = await queue.get()
                except TimeoutError:
                    if client.gone():
                        raise ConnectionResetError("the client went away") from None
                    if loop.time() - heard < silence:
                        continue
                    # The owner hangs: end the request as an interrupted session would.
                    wrap, _ = wrap_and_prelude(transport, callback)
                    await write(wrap(close_frame(*INTERRUPTED)))
                    return True
                heard = loop.time()
                match reply.get("op"):
                    case "data":
                        await write(str(reply["data"]).encode())
                    case "end":
                        return True
                    case "missing":
                        raise _SessionMissing
        except ConnectionError:
            with contextlib.suppress(BrokerUnavailable):
                await self._publish(owner, {"op": "detach", "rid": rid})
            return False
        finally:
            self._streams.pop(rid, None)

    # -- the owner: requests relayed by other nodes ---------------------------------------------
    def _on_message(self, payload: bytes) -> None:
        try:
            message = orjson.loads(payload)
            op, rid = message["op"], message["rid"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("sockjs: ignoring an undecodable relay message: %s", exc)
            return
        match op:
            case "sent":
                future = self._replies.get(rid)
                if future is not None and not future.done():
                    future.set_result(message)
            case "data" | "end" | "missing":
                queue = self._streams.get(rid)
                if queue is not None:
                    queue.put_nowait(message)
            case "send":
                self._spawn(self._serve_send(message))
            case "receive":
                self._spawn(self._serve_receive(message))
            case "detach":
                entry = self._links.get(rid)
                if entry is not None:
                    link, session = entry
                    link.client_gone = True
                    session.wake()

    async def _serve_send(self, message: dict[str, Any]) -> None:
        session = self.service.sessions.get(message["sid"])
        if session is not None:
            await session.deliver([str(text) for text in message["messages"]])
        await self._answer(
            message["from"], {"op": "sent", "rid": message["rid"], "found": bool(session)}
        )

    async def _serve_receive(self, message: dict[str, Any]) -> None:
        edge, rid = message["from"], message["rid"]
        session = self.service.sessions.get(message["sid"])
        transport, callback = message["transport"], message["callback"]
        if session is None or transport not in RECEIVING:
            await self._answer(edge, {"op": "missing", "rid": rid})
            return
        kind = RECEIVING[transport]
        wrap, _ = wrap_and_prelude(transport, callback)
        limit = self.service.stream_limit if kind.streaming else None
        receiver = Receiver(wrap, streaming=kind.streaming, limit=limit)
        link = RelayLink()
        self._links[rid] = (link, session)
        loop = asyncio.get_running_loop()
        checked = loop.time()

        async def write(data: bytes) -> None:
            nonlocal checked
            if loop.time() - checked > NODE_TTL_S / 2:  # is anyone still listening?
                checked = loop.time()
                alive = True
                with contextlib.suppress(*DIRECTORY_ERRORS):
                    alive = await self.directory.alive(edge)
                if not alive:
                    raise ConnectionResetError(f"node {edge} is gone")
            await self._publish(edge, {"op": "data", "rid": rid, "data": data.decode()})

        try:
            first = session.attach(receiver, link)
            if await pump(session, receiver, link, first, write):
                await self._answer(edge, {"op": "end", "rid": rid})
        except BrokerUnavailable as exc:
            log.info("sockjs: relayed receive of %s failed: %s", message["sid"], exc)
        finally:
            self._links.pop(rid, None)

    async def _answer(self, node_id: str, reply: dict[str, Any]) -> None:
        with contextlib.suppress(BrokerUnavailable):
            await self._publish(node_id, reply)

    # -- plumbing -----------------------------------------------------------------------------
    async def _publish(self, node_id: str, message: dict[str, Any]) -> None:
        """Send to ``node_id``'s channel; BrokerUnavailable if the broker cannot take it."""
        await self.node.broker.publish(f"n:{node_id}", orjson.dumps(message))

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids)}"

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sockjs: relay task failed", exc_info=task.exception())
