"""A Python client that subscribes to Tidings notifications (STOMP 1.2 over a WebSocket).

    async with tidings.client.connect("ws://localhost:9908/stomp", user="42") as client:
        async for note in client.notifications("/user/42/message"):
            print(note.id, note.body)

The client keeps its connection: when it breaks (the node restarted, the network
dropped, a token expired) it reconnects with capped, jittered backoff and subscribes
again, resuming each subscription from the last ``tidings-id`` it received, so
nothing published meanwhile is missed and nothing is handed out twice (docs/client.md).

Ack modes (STOMP 1.2 §SUBSCRIBE ack Header): ``auto`` (the default) resumes from the
last id; ``client-individual`` and ``client`` leave acknowledging to the caller
(``await note.ack()``): after a reconnect the server hands out again what was not
acknowledged, oldest first (at-least-once).

It reads with the project's own sans-I/O STOMP parser; the WebSocket is aiohttp's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import aiohttp

from tidings.errors import TidingsError
from tidings.inbox.base import compare_ids
from tidings.stomp.frames import SERVER_COMMANDS, Frame, FrameParser, Limits, serialize

__all__ = ["Client", "ClientError", "Notification", "Subscription", "UnreadCount", "connect"]

log = logging.getLogger("tidings.client")

ID_HEADER = "tidings-id"
RESUME_HEADER = "tidings-resume-after"
GAP_HEADER = "tidings-gap"
ACK_MODES = ("auto", "client", "client-individual")
MAX_UNCOUNTED = 1000  # new ids an UnreadCount keeps for a later state; past it the oldest go
# ERROR messages after which reconnecting helps; any other ERROR is final (a forbidden or
# unknown destination would only be refused again).
TRANSIENT_ERRORS = frozenset(
    {
        "token expired",
        "heart-beat timeout",
        "slow consumer",
        "broker unavailable",
        "no CONNECT frame",
        "server shutting down",
    }
)
_RECEIVE_LIMITS = Limits(max_frame_bytes=16 * 1024 * 1024, max_headers=256)

TokenSource = str | Callable[[], Awaitable[str]]
"""A JWT, or an async function that returns a fresh one before each (re)connect."""


class ClientError(TidingsError):
    """The server refused the client for good (authentication, a forbidden destination)."""


@dataclass(frozen=True, slots=True)
class Notification:
    """One MESSAGE: ``id`` is its ``tidings-id`` (None for a message that was not stored)."""

    id: str | None
    destination: str
    body: str
    headers: Mapping[str, str]
    raw: bytes = field(repr=False)
    _ack: Callable[[bool], Awaitable[bool]] = field(repr=False, compare=False)

    @property
    def gap(self) -> bool:
        """True when messages before this one were trimmed before they could be delivered."""
        return self.headers.get(GAP_HEADER) == "true"

    async def ack(self) -> bool:
        """Acknowledge it; True once the server stored the acknowledgement.

        False when the connection broke since it arrived: the message is then handed out
        again after the reconnect (at-least-once). Under ``auto`` there is nothing to do.
        """
        return await self._ack(True)

    async def nack(self) -> bool:
        """Refuse it: it stays unacknowledged and comes back on the next connect."""
        return await self._ack(False)


class UnreadCount:
    """The user's unread count from ``/user/queue/inbox-state`` events and new messages.

    Sans-I/O, as tidings.js's ``UnreadCount`` (issue 16). Each state event is ``{"unread":
    n, "last": id | None, ...}``: the count and the newest inbox id it took in. A message
    with a greater id adds one; a state computed before the one applied (a smaller
    ``last``, or the same one with a greater count: reads only lower it) is ignored, so the
    count is right whatever order events and messages arrive in::

        count = UnreadCount()
        count.state(orjson.loads(note.body))  # each note of /user/queue/inbox-state
        count.message(note.id)  # each stored notification of the user
        print(count.value)

    A reconnect needs nothing (the inbox outlives it, its ids only grow); ``reset()`` starts
    over, for an inbox that was lost (a memory-broker node that restarted).
    """

    def __init__(self) -> None:
        self._state: tuple[int, str | None] | None = None  # (unread, last) applied
        self._uncounted: list[str] = []  # ids received that _state does not count

    @property
    def value(self) -> int | None:
        """The count, or None before the first state."""
        if self._state is None:
            return None
        return self._state[0] + len(self._uncounted)

    def state(self, event: Mapping[str, object]) -> bool:
        """Apply an inbox-state event; False if it is older than the one applied."""
        unread, last = event.get("unread"), event.get("last")
        if not isinstance(unread, int) or not (last is None or isinstance(last, str)):
            return False
        if self._state is not None:
            order = _compare_last(last, self._state[1])
            if order < 0 or (order == 0 and unread > self._state[0]):
                return False
        self._state = (unread, last)
        self._uncounted = [i for i in self._uncounted if _compare_last(i, last) > 0]
        return True

    def message(self, message_id: str) -> bool:
        """A stored message of the user arrived; False if the state applied counts it."""
        if self._state is not None and _compare_last(message_id, self._state[1]) <= 0:
            return False
        if message_id in self._uncounted:
            return False
        self._uncounted.append(message_id)
        del self._uncounted[:-MAX_UNCOUNTED]
        return True

    def reset(self) -> None:
        self._state, self._uncounted = None, []


def _compare_last(a: str | None, b: str | None) -> int:
    """``compare_ids`` with None (an inbox that never held a message) before every id."""
    if a is None or b is None:
        return (a is not None) - (b is not None)
    return compare_ids(a, b)


class Subscription:
    """An async iterator over one destination's notifications; ``close()`` ends it."""

    def __init__(self, client: Client, sub_id: str, destination: str, ack: str) -> None:
        self._client = client
        self.id = sub_id
        self.destination = destination
        self.ack_mode = ack
        self.last_id: str | None = None  # the newest tidings-id handed to the queue
        self._queue: asyncio.Queue[Notification | BaseException] = asyncio.Queue(client.max_queued)
        self._closed = False
        self._since_ms: int | None = None  # when first subscribed, for a resume before any id
        self._ready = asyncio.Event()  # the server confirmed this connection's SUBSCRIBE

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Notification:
        if self._closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, StopAsyncIteration):
            self._closed = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._closed = True
            raise item
        return item

    async def subscribed(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once the server confirmed the subscription (again, after a reconnect)."""
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    async def close(self) -> None:
        """Unsubscribe; the iterator then ends."""
        if self._closed:
            return
        self._closed = True
        await self._client._unsubscribe(self)
        self._end(StopAsyncIteration())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _end(self, reason: BaseException) -> None:
        """Wake the reader with ``reason``, even when the queue is full."""
        while True:
            try:
                self._queue.put_nowait(reason)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()  # the iteration ends: what is queued is moot

    @property
    def _redelivered(self) -> bool:
        """Under client acks a user destination gets back, on each SUBSCRIBE without a
        resume id, everything not acknowledged (the server's offline delivery)."""
        return self.ack_mode != "auto" and self.destination.startswith("/user/")

    def _subscribe_headers(self) -> dict[str, str]:
        headers = {"id": self.id, "destination": self.destination, "ack": self.ack_mode}
        if self._redelivered:
            return headers
        if self.last_id is not None:
            headers[RESUME_HEADER] = self.last_id
        elif self._since_ms is not None:  # nothing received yet: what came after SUBSCRIBE
            headers[RESUME_HEADER] = f"{self._since_ms}-0"
        else:
            self._since_ms = int(time.time() * 1000)  # this client's clock (docs/client.md)
        return headers

    def _reconnected(self) -> None:
        """The server hands out again what was not acknowledged: drop the queued copies."""
        if self._redelivered:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if isinstance(item, BaseException):  # keep an end marker
                    self._queue.put_nowait(item)
                    return

    async def _offer(self, frame: Frame, ack: Callable[[bool], Awaitable[bool]]) -> None:
        message_id = frame.get(ID_HEADER)
        if (
            self.ack_mode == "auto"
            and message_id is not None
            and self.last_id is not None
            and compare_ids(message_id, self.last_id) <= 0
        ):
            return  # already handed out before a reconnect
        if message_id is not None:
            self.last_id = message_id
        note = Notification(
            id=message_id,
            destination=frame.get("destination", self.destination),
            body=frame.body.decode("utf-8", errors="replace"),
            headers=dict(reversed(frame.headers)),  # the first of repeated headers wins
            raw=frame.body,
            _ack=ack,
        )
        await self._queue.put(note)  # a full queue pauses reading: back-pressure


class Client:
    """One logical connection to a Tidings node, kept open across reconnects."""

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        token: TokenSource | None = None,
        heartbeat_ms: int = 10_000,
        connect_timeout: float = 10.0,
        reconnect_delay: tuple[float, float] = (0.1, 10.0),
        max_queued: int = 1000,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if user is not None and token is not None:
            raise ValueError("give user= (--auth none) or token= (--auth jwt), not both")
        self.url = url
        self.user = user
        self.token = token
        self.heartbeat_ms = heartbeat_ms
        self.connect_timeout = connect_timeout
        self.reconnect_delay = reconnect_delay
        self.max_queued = max_queued
        self.extra_headers = dict(headers or {})
        self.connects = 0  # successful CONNECTs so far: 1 + the reconnects
        self._subscriptions: dict[str, Subscription] = {}
        self._ids = itertools.count(1)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._version = "1.2"
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._connect_counted = asyncio.Condition()
        self._failure: BaseException | None = None
        self._closing = False
        self._parser = FrameParser(_RECEIVE_LIMITS, commands=SERVER_COMMANDS)
        self._heartbeats: tuple[float, float | None] = (0.0, None)
        # What to do when a RECEIPT comes (True) or the connection breaks first (False).
        self._receipts: dict[str, Callable[[bool], None]] = {}

    # -- public --------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect once (raise if that fails), then keep the connection in the background."""
        self._http = aiohttp.ClientSession()
        try:
            ws, _ = await self._open()
        except BaseException:
            await self._http.close()
            raise
        self._runner = asyncio.create_task(self._run(ws), name="tidings-client")

    async def aclose(self) -> None:
        """DISCONNECT, close the socket, end every subscription's iteration."""
        self._closing = True
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                await ws.send_bytes(serialize(Frame("DISCONNECT"), self._version))
            await ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for sub in list(self._subscriptions.values()):
            sub._end(StopAsyncIteration())
        self._subscriptions.clear()
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def notifications(self, destination: str, *, ack: str = "auto") -> Subscription:
        """Subscribe to ``destination``; iterate the result for its notifications.

        Use it as ``async for`` directly, or ``async with`` to unsubscribe on exit. The
        SUBSCRIBE is sent now if connected, else on the next (re)connect.
        """
        if ack not in ACK_MODES:
            raise ValueError(f"ack must be one of {', '.join(ACK_MODES)}, not {ack!r}")
        if self._failure is not None:
            raise self._failure
        sub = Subscription(self, f"sub-{next(self._ids)}", destination, ack)
        self._subscriptions[sub.id] = sub
        if self._ws is not None and self.connected:
            self._send_soon(self._subscribe_frame(sub))
        return sub

    async def wait_connects(self, count: int, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once ``count`` CONNECTs succeeded in all (1 + reconnects)."""
        async with asyncio.timeout(timeout), self._connect_counted:
            await self._connect_counted.wait_for(lambda: self.connects >= count)

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once connected (again); raise the failure if the client gave up."""
        async with asyncio.timeout(timeout):
            await self._connected.wait()
        if self._failure is not None:
            raise self._failure

    # -- connection ----------------------------------------------------------------------
    async def _open(self) -> tuple[aiohttp.ClientWebSocketResponse, FrameParser]:
        """WebSocket, CONNECT, CONNECTED, SUBSCRIBE each subscription (STOMP 1.2 §CONNECT)."""
        assert self._http is not None
        headers = {
            "accept-version": "1.2",
            "heart-beat": f"{self.heartbeat_ms},{self.heartbeat_ms}",
        }
        headers.update(self.extra_headers)
        if self.user is not None:
            headers["login"] = self.user
        if self.token is not None:
            token = self.token if isinstance(self.token, str) else await self.token()
            headers["Authorization"] = f"Bearer {token}"
        parser = FrameParser(_RECEIVE_LIMITS, commands=SERVER_COMMANDS)
        async with asyncio.timeout(self.connect_timeout):
            ws = await self._http.ws_connect(
                self.url, protocols=("v12.stomp",), autoclose=False, autoping=True
            )
            try:
                await ws.send_bytes(serialize(Frame("CONNECT", tuple(headers.items())), "1.0"))
                connected = await _first_frame(ws, parser)
            except BaseException:
                await ws.close()
                raise
        if connected.command == "ERROR":
            await ws.close()
            raise _error(connected)
        if connected.command != "CONNECTED":
            await ws.close()
            raise ClientError(f"expected CONNECTED, the server sent {connected.command}")
        self._version = connected.get("version", "1.0")
        parser.version = self._version
        self._ws = ws
        self._heartbeats = _negotiate(self.heartbeat_ms, connected.get("heart-beat", "0,0"))
        self.connects += 1
        for sub in self._subscriptions.values():
            if self.connects > 1:
                sub._reconnected()
            await ws.send_bytes(serialize(self._subscribe_frame(sub), self._version))
        self._connected.set()
        self._parser = parser
        async with self._connect_counted:
            self._connect_counted.notify_all()
        return ws, parser

    async def _run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Read until the connection breaks, then reconnect; forever, until closed."""
        attempt = 0
        while not self._closing:
            try:
                await self._read(ws, self._parser)
            except ClientError as exc:  # refused for good: every iterator raises it
                self._give_up(exc)
                return
            except (aiohttp.ClientError, ConnectionError, TimeoutError, TidingsError) as exc:
                log.info("connection to %s lost: %s", self.url, exc or type(exc).__name__)
            self._connected.clear()
            self._ws = None
            self._lost_receipts()
            while not self._closing:
                low, high = self.reconnect_delay
                await asyncio.sleep(min(high, low * 2**attempt) * random.uniform(0.5, 1.0))
                attempt += 1
                try:
                    ws, _ = await self._open()
                except ClientError as exc:
                    self._give_up(exc)
                    return
                except (aiohttp.ClientError, ConnectionError, TimeoutError, TidingsError) as exc:
                    log.info("reconnect to %s failed: %s", self.url, exc or type(exc).__name__)
                    continue
                attempt = 0
                break

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, parser: FrameParser) -> None:
        send_every, expect_within = self._heartbeats
        beat = asyncio.create_task(self._beat(ws, send_every)) if send_every else None
        try:
            while True:
                message = await ws.receive(timeout=expect_within)
                if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    for frame in parser.feed(_payload(message)):
                        await self._dispatch(frame)
                elif message.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    raise ConnectionError(f"closed by the server ({ws.close_code})")
        finally:
            if beat is not None:
                beat.cancel()
            await ws.close()

    async def _dispatch(self, frame: Frame) -> None:
        if frame.command == "MESSAGE":
            sub = self._subscriptions.get(frame.get("subscription", ""))
            if sub is not None:
                await sub._offer(frame, self._acker(sub, frame.get("ack")))
        elif frame.command == "RECEIPT":
            action = self._receipts.pop(frame.get("receipt-id", ""), None)
            if action is not None:
                action(True)
        elif frame.command == "ERROR":
            raise _error(frame)

    def _acker(self, sub: Subscription, ack_id: str | None) -> Callable[[bool], Awaitable[bool]]:
        ws = self._ws

        async def acknowledge(positive: bool) -> bool:
            if sub.ack_mode == "auto":
                return True
            if ack_id is None or ws is None or ws is not self._ws:
                return False  # that connection is gone: the message comes back
            frame = Frame("ACK" if positive else "NACK", (("id", ack_id),))
            return await self._confirmed(ws, frame)

        return acknowledge

    async def _confirmed(self, ws: aiohttp.ClientWebSocketResponse, frame: Frame) -> bool:
        """Send ``frame`` with a receipt: True once it came, False if the connection broke."""
        receipt = f"r-{next(self._ids)}"
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def settle(came: bool) -> None:
            if not waiter.done():
                waiter.set_result(came)

        self._receipts[receipt] = settle
        try:
            await ws.send_bytes(serialize(_with_receipt(frame, receipt), self._version))
            async with asyncio.timeout(self.connect_timeout):
                return await waiter
        except (aiohttp.ClientError, ConnectionError, TimeoutError):
            return False
        finally:
            self._receipts.pop(receipt, None)

    def _subscribe_frame(self, sub: Subscription) -> Frame:
        """SUBSCRIBE with a receipt that marks ``sub`` confirmed (STOMP 1.2 §RECEIPT)."""
        receipt = f"r-{next(self._ids)}"

        def confirmed(came: bool) -> None:
            if came:
                sub._ready.set()

        self._receipts[receipt] = confirmed
        return _with_receipt(Frame("SUBSCRIBE", tuple(sub._subscribe_headers().items())), receipt)

    def _lost_receipts(self) -> None:
        actions, self._receipts = self._receipts, {}
        for action in actions.values():
            action(False)
        for sub in self._subscriptions.values():
            sub._ready.clear()

    async def _beat(self, ws: aiohttp.ClientWebSocketResponse, every_s: float) -> None:
        """Send an EOL every ``every_s`` (STOMP 1.2 §Heart-beating)."""
        while not ws.closed:
            await asyncio.sleep(every_s)
            with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                await ws.send_bytes(b"\n")

    def _send_soon(self, frame: Frame) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return  # the next (re)connect subscribes it
        data = serialize(frame, self._version)
        task = asyncio.create_task(ws.send_bytes(data))
        task.add_done_callback(_ignore_send_failure)

    async def _unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.pop(sub.id, None)
        ws = self._ws
        if ws is not None and not ws.closed:
            frame = Frame("UNSUBSCRIBE", (("id", sub.id),))
            with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                await ws.send_bytes(serialize(frame, self._version))

    def _give_up(self, exc: ClientError) -> None:
        log.warning("%s refused the client: %s", self.url, exc)
        self._failure = exc
        self._connected.set()  # wake wait_connected(), which raises the failure
        for sub in list(self._subscriptions.values()):
            sub._end(exc)


def connect(
    url: str,
    *,
    user: str | None = None,
    token: TokenSource | None = None,
    **options: object,
) -> Client:
    """A :class:`Client` for ``url``; use it as ``async with connect(...) as client``.

    ``user`` is sent as the CONNECT login (``--auth none``); ``token`` as
    ``Authorization: Bearer`` (``--auth jwt``): a string, or an async function called
    before each (re)connect so an expired token can be replaced.
    """
    return Client(url, user=user, token=token, **options)  # type: ignore[arg-type]


async def _first_frame(ws: aiohttp.ClientWebSocketResponse, parser: FrameParser) -> Frame:
    while True:
        message = await ws.receive()
        if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            raise ConnectionError(f"closed before CONNECTED ({ws.close_code})")
        frames = parser.feed(_payload(message))
        if frames:
            return frames[0]


def _with_receipt(frame: Frame, receipt: str) -> Frame:
    return Frame(frame.command, (*frame.headers, ("receipt", receipt)), frame.body)


def _payload(message: aiohttp.WSMessage) -> bytes:
    data = message.data
    return data if isinstance(data, bytes) else str(data).encode()


def _negotiate(ours_ms: int, theirs: str) -> tuple[float, float | None]:
    """(send every s, expect something within s) from CONNECTED's heart-beat (§Heart-beating)."""
    try:
        sx, sy = (int(part) for part in theirs.split(","))
    except ValueError:
        return 0.0, None
    send_ms = max(ours_ms, sy) if ours_ms and sy else 0
    expect_ms = max(ours_ms, sx) if ours_ms and sx else 0
    return send_ms / 1000, (3 * expect_ms / 1000 if expect_ms else None)


def _error(frame: Frame) -> Exception:
    """A ConnectionError (reconnect) or a ClientError (final) for an ERROR frame."""
    message = frame.get("message", "")
    detail = frame.body.decode("utf-8", errors="replace").strip()
    text = f"the server ended the session: {message}" + (f" ({detail})" if detail else "")
    advice = frame.get("tidings-reconnect")  # an operator's disconnect says (docs/admin.md)
    transient = advice == "true" if advice is not None else message in TRANSIENT_ERRORS
    return ConnectionError(text) if transient else ClientError(text)


def _ignore_send_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # a broken socket: the reconnect subscribes again
