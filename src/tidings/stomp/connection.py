"""Server side of one STOMP session, sans-I/O.

:class:`ServerConnection` turns received bytes into events and builds the frames
the server sends back. It keeps the session state (negotiated version and
heart-beats, subscriptions, open transactions) and enforces the session rules of
STOMP 1.0, 1.1 and 1.2; the I/O edge does the work each event asks for.

Receipts (STOMP 1.2 §Header receipt, §RECEIPT): each client frame's ``receipt`` is
surfaced exactly once, in event order, and the edge answers it with
:meth:`ServerConnection.receipt` once the work is done:

* an event that stands for work (subscribe, unsubscribe, send, ack, nack,
  disconnect) carries the frame's ``receipt``;
* a frame the connection completes by itself yields :class:`ReceiptDue` instead:
  BEGIN, ABORT, COMMIT (after the events it releases), and SEND/ACK/NACK held in
  a transaction (the events released on COMMIT then carry no receipt).

An ERROR caused by the work of an event names the receipt the client asked for:
:func:`error_receipt` gives it (the frame's own ``receipt``, or for a frame released
by COMMIT the COMMIT's).

Errors: on any violation the session is CLOSED and
:meth:`ServerConnection.receive_data` raises :class:`StompProtocolError`; the edge
sends :meth:`ServerConnection.error` and closes. Frames before the bad one in the
same data are acted on first, as RabbitMQ does (issue 14): ``receive_data`` returns
their events and the next call (``receive_data(b"")``) raises. So a SUBSCRIBE with a
receipt, then a malformed frame in one WebSocket message, gets its RECEIPT, then the
ERROR. Nothing after the bad frame is parsed. In state CLOSED (after an error or a
DISCONNECT) received data is ignored.

User-defined headers (STOMP 1.2 §SEND: "any user-defined headers ... MUST be passed
through"): :class:`SendRequested` carries every header of the SEND but the ones STOMP
defines for SEND (``destination``, ``transaction``, ``receipt``, ``content-type``,
``content-length``), the first entry of each name only, within ``max_user_headers``
and ``max_user_header_bytes``. Which names the server refuses is the edge's rule.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tidings.errors import StompLimitExceeded, StompProtocolError
from tidings.stomp.frames import DEFAULT_LIMITS, VERSIONS, Frame, FrameParser, Limits, serialize

__all__ = [
    "AckReceived",
    "ConnectRequested",
    "DisconnectRequested",
    "Event",
    "NackReceived",
    "ReceiptDue",
    "SendRequested",
    "ServerConnection",
    "State",
    "SubscribeRequested",
    "Subscription",
    "UnsubscribeRequested",
    "error_receipt",
    "negotiate_heartbeat",
    "negotiate_version",
    "parse_heartbeat",
]

ACK_MODES = ("auto", "client", "client-individual")
_HEARTBEAT = re.compile(r" *([0-9]{1,9}) *, *([0-9]{1,9}) *")
_LINE_BREAKS = re.compile(r"[\r\n\0]+")
SEND_HEADERS = frozenset(
    {"destination", "transaction", "receipt", "content-type", "content-length"}
)
"""What STOMP defines for SEND (1.2 §SEND, §Standard Headers): used here, not passed on."""


class State(enum.Enum):
    """Session states; the only moves are AWAITING_CONNECT → CONNECTING → CONNECTED → CLOSED,
    and to CLOSED from anywhere."""

    AWAITING_CONNECT = "awaiting CONNECT"
    CONNECTING = "CONNECT received, awaiting accept()"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Subscription:
    """An open subscription (STOMP 1.2 §SUBSCRIBE)."""

    id: str
    destination: str
    ack: str


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """A CONNECT or STOMP frame arrived; authenticate, then call ``accept()`` or ``error()``."""

    version: str
    login: str | None
    passcode: str | None = field(repr=False)
    host: str | None
    client_heartbeat: tuple[int, int]
    frame: Frame = field(repr=False)  # e.g. for an Authorization header


@dataclass(frozen=True, slots=True)
class SubscribeRequested:
    """A SUBSCRIBE frame (STOMP 1.2 §SUBSCRIBE); already recorded in ``subscriptions``."""

    subscription_id: str
    destination: str
    ack: str
    receipt: str | None
    frame: Frame


@dataclass(frozen=True, slots=True)
class UnsubscribeRequested:
    """An UNSUBSCRIBE frame (STOMP 1.2 §UNSUBSCRIBE); already removed from ``subscriptions``."""

    subscription_id: str
    destination: str
    receipt: str | None


@dataclass(frozen=True, slots=True)
class SendRequested:
    """A SEND frame (STOMP 1.2 §SEND), outside a transaction or released by COMMIT."""

    destination: str
    body: bytes
    content_type: str | None
    receipt: str | None
    frame: Frame
    headers: tuple[tuple[str, str], ...] = ()
    """User-defined headers, to pass through to the MESSAGE (see the module docstring)."""
    error_receipt: str | None = None
    """``receipt`` of the SEND, or of the COMMIT that released it."""


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK frame (STOMP 1.2 §ACK). ``id`` is 1.2's ``id`` or 1.0/1.1's ``message-id``."""

    id: str
    subscription_id: str | None
    receipt: str | None
    error_receipt: str | None = None
    """``receipt`` of the ACK, or of the COMMIT that released it."""


@dataclass(frozen=True, slots=True)
class NackReceived:
    """A NACK frame (STOMP 1.2 §NACK); fields as in :class:`AckReceived`."""

    id: str
    subscription_id: str | None
    receipt: str | None
    error_receipt: str | None = None
    """``receipt`` of the NACK, or of the COMMIT that released it."""


@dataclass(frozen=True, slots=True)
class DisconnectRequested:
    """A DISCONNECT frame (STOMP 1.2 §DISCONNECT): send the receipt if any, then close."""

    receipt: str | None


@dataclass(frozen=True, slots=True)
class ReceiptDue:
    """Send ``receipt(receipt)`` now: the frame asking for it needs no further work."""

    receipt: str


Event = (
    ConnectRequested
    | SubscribeRequested
    | UnsubscribeRequested
    | SendRequested
    | AckReceived
    | NackReceived
    | DisconnectRequested
    | ReceiptDue
)
_Held = SendRequested | AckReceived | NackReceived


def error_receipt(event: Event) -> str | None:
    """The ``receipt-id`` for an ERROR that ``event``'s work causes (STOMP 1.2 §ERROR: "if
    the error is related to a specific frame sent from the client, the server SHOULD add
    additional headers ... such as receipt-id")."""
    if isinstance(event, (SendRequested, AckReceived, NackReceived)):
        return event.error_receipt
    if isinstance(event, ConnectRequested):
        return None  # CONNECT takes no receipt (§Header receipt)
    return event.receipt


def negotiate_version(accept_version: str | None) -> str:
    """The highest version both sides support (STOMP 1.2 §Protocol Negotiation).

    No ``accept-version`` header means the client speaks 1.0 only.
    """
    if accept_version is None:
        return "1.0"
    offered = {version.strip() for version in accept_version.split(",")}
    common = [version for version in VERSIONS if version in offered]
    if not common:
        raise StompProtocolError(
            f"Supported protocol versions are {','.join(VERSIONS)}",
            detail=f"The client accepts {accept_version[:100]!r}.",
        )
    return common[-1]


def parse_heartbeat(value: str | None) -> tuple[int, int]:
    """Parse ``heart-beat: x,y`` (STOMP 1.2 §Heart-beating); absent means ``0,0``."""
    if value is None:
        return (0, 0)
    match = _HEARTBEAT.fullmatch(value)
    if match is None:
        raise StompProtocolError(f"invalid heart-beat header {value[:40]!r}")
    return (int(match[1]), int(match[2]))


def negotiate_heartbeat(client: tuple[int, int], server: tuple[int, int]) -> tuple[int, int]:
    """Return ``(send_ms, expect_ms)`` for the server (STOMP 1.2 §Heart-beating).

    With the client's ``cx,cy`` and the server's ``sx,sy``: the server sends every
    ``max(sx, cy)`` ms and expects the client every ``max(cx, sy)`` ms; 0 on either
    side of a pair switches that direction off.
    """
    (cx, cy), (sx, sy) = client, server
    send = max(sx, cy) if sx and cy else 0
    expect = max(cx, sy) if cx and sy else 0
    return (send, expect)


def _required(frame: Frame, name: str) -> str:
    value = frame.get(name)
    if not value:
        raise StompProtocolError(f"{frame.command} frame needs a '{name}' header")
    return value


def _one_line(text: str) -> str:
    return _LINE_BREAKS.sub(" ", text)


class ServerConnection:
    """The server side of one STOMP session; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        server_heartbeat: tuple[int, int] = (10000, 10000),
        server_name: str = "Tidings/0.1",
    ) -> None:
        if min(server_heartbeat) < 0:
            raise ValueError("heart-beat intervals must be >= 0")
        self.limits = limits
        self.server_heartbeat = server_heartbeat
        self.server_name = server_name
        self.state = State.AWAITING_CONNECT
        self.version: str | None = None
        self.send_heartbeat_ms = 0
        self.expect_heartbeat_ms = 0
        self._parser = FrameParser(limits)
        self._subscriptions: dict[str, Subscription] = {}
        self._transactions: dict[str, list[_Held]] = {}
        self._held_frames = 0
        self._held_bytes = 0
        self._error_receipt: str | None = None
        self._pending_error: StompProtocolError | None = None  # raised by the next call

    @property
    def subscriptions(self) -> Mapping[str, Subscription]:
        """Open subscriptions by id (read-only view)."""
        return MappingProxyType(self._subscriptions)

    @property
    def heartbeats_received(self) -> int:
        """Heart-beat EOLs received so far."""
        return self._parser.heartbeats_received

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse ``data`` and apply every complete frame; return the events in order.

        Raises :class:`StompProtocolError` (the session is then CLOSED); if frames before
        the bad one gave events, they are returned and the next call raises. Data
        received in state CLOSED is ignored.
        """
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        if self.state is State.CLOSED:
            return []
        events: list[Event] = []
        try:
            self._parser.receive_data(data)
            self._handle_frames(events)
        except StompProtocolError as exc:
            self.state = State.CLOSED
            if not events:
                raise
            self._pending_error = exc
        return events

    def _handle_frames(self, events: list[Event]) -> None:
        """Apply buffered frames; stop after a CONNECT until ``accept()`` (or ``error()``).

        Frames behind a CONNECT wait in the parser: they are not applied before the edge
        has accepted the CONNECT (the credentials may be refused). The edge calls
        ``receive_data(b"")`` after ``accept()`` to get them.
        """
        while self.state not in (State.CLOSED, State.CONNECTING):
            self._error_receipt = None
            try:
                frame = self._parser.next_frame()
            except StompProtocolError:
                self._error_receipt = self._parser.receipt_so_far
                raise
            if frame is None:
                break
            self._error_receipt = frame.get("receipt")  # kept if _handle raises
            events.extend(self._handle(frame))

    def _handle(self, frame: Frame) -> list[Event]:
        if self.state is State.AWAITING_CONNECT:
            if frame.command not in ("CONNECT", "STOMP"):
                raise StompProtocolError(f"expected CONNECT or STOMP, got {frame.command}")
            return [self._on_connect(frame)]
        match frame.command:
            case "SUBSCRIBE":
                return [self._on_subscribe(frame)]
            case "UNSUBSCRIBE":
                return [self._on_unsubscribe(frame)]
            case "SEND":
                return self._on_send(frame)
            case "ACK" | "NACK":
                return self._on_ack(frame)
            case "BEGIN":
                return self._on_begin(frame)
            case "COMMIT" | "ABORT":
                return self._on_commit_or_abort(frame)
            case "DISCONNECT":
                return self._on_disconnect(frame)
            case _:  # CONNECT or STOMP
                raise StompProtocolError(f"unexpected {frame.command}: already connected")

    def _on_connect(self, frame: Frame) -> ConnectRequested:
        """STOMP 1.2 §Connecting, §Protocol Negotiation, §Heart-beating.

        ``host`` is optional here although 1.2 requires it (Spring does not check it).
        Heart-beats are negotiated from 1.1 on; 1.0 has none (a 1.0 client that sends
        ``heart-beat`` anyway, like webstomp-client 1.2.6, does not beat; issue 14).
        """
        version = negotiate_version(frame.get("accept-version"))
        client_heartbeat = parse_heartbeat(frame.get("heart-beat"))
        self.version = self._parser.version = version
        if version != "1.0":  # 1.0 has no heart-beating: a 1.0 client sends and expects none
            self.send_heartbeat_ms, self.expect_heartbeat_ms = negotiate_heartbeat(
                client_heartbeat, self.server_heartbeat
            )
        self.state = State.CONNECTING
        return ConnectRequested(
            version=version,
            login=frame.get("login"),
            passcode=frame.get("passcode"),
            host=frame.get("host"),
            client_heartbeat=client_heartbeat,
            frame=frame,
        )

    def _on_subscribe(self, frame: Frame) -> SubscribeRequested:
        """STOMP 1.2 §SUBSCRIBE; in 1.0 ``id`` is optional and defaults to the destination."""
        destination = _required(frame, "destination")
        if self.version == "1.0":
            subscription_id = frame.get("id") or destination
        else:
            subscription_id = _required(frame, "id")
        ack = frame.get("ack", "auto")
        if ack not in ACK_MODES:  # client-individual is 1.1+, accepted in 1.0 too
            raise StompProtocolError(f"invalid ack mode {ack[:40]!r}")
        if subscription_id in self._subscriptions:
            raise StompProtocolError(f"subscription id {subscription_id[:100]!r} already in use")
        if len(self._subscriptions) >= self.limits.max_subscriptions:
            raise StompLimitExceeded(
                f"too many subscriptions (limit {self.limits.max_subscriptions})"
            )
        self._subscriptions[subscription_id] = Subscription(subscription_id, destination, ack)
        return SubscribeRequested(subscription_id, destination, ack, frame.get("receipt"), frame)

    def _on_unsubscribe(self, frame: Frame) -> UnsubscribeRequested:
        """STOMP 1.2 §UNSUBSCRIBE; 1.0 also allows naming the subscription by destination."""
        subscription: Subscription | None
        if self.version == "1.0" and not frame.get("id"):
            destination = _required(frame, "destination")
            subscription = next(
                (s for s in self._subscriptions.values() if s.destination == destination), None
            )
            if subscription is None:
                raise StompProtocolError(f"no subscription to destination {destination[:100]!r}")
        else:
            subscription_id = _required(frame, "id")
            subscription = self._subscriptions.get(subscription_id)
            if subscription is None:
                raise StompProtocolError(f"no subscription with id {subscription_id[:100]!r}")
        del self._subscriptions[subscription.id]
        return UnsubscribeRequested(subscription.id, subscription.destination, frame.get("receipt"))

    def _on_send(self, frame: Frame) -> list[Event]:
        """STOMP 1.2 §SEND."""
        destination = _required(frame, "destination")
        transaction, receipt = frame.get("transaction"), frame.get("receipt")
        own_receipt = receipt if transaction is None else None
        event = SendRequested(
            destination,
            frame.body,
            frame.get("content-type"),
            own_receipt,
            frame,
            self._user_headers(frame),
            own_receipt,
        )
        return self._emit_or_hold(event, transaction, receipt)

    def _user_headers(self, frame: Frame) -> tuple[tuple[str, str], ...]:
        """The SEND's user-defined headers: first entries, not SEND's own, within the caps."""
        if len(frame.headers) <= 1:  # the destination alone: the common case
            return ()
        seen = set(SEND_HEADERS)
        headers = []
        size = 0
        for name, value in frame.headers:
            if name in seen:
                continue
            seen.add(name)
            headers.append((name, value))
            size += len(name.encode()) + len(value.encode())
        limits = self.limits
        if len(headers) > limits.max_user_headers:
            raise StompLimitExceeded(
                f"too many user-defined headers (limit {limits.max_user_headers})"
            )
        if size > limits.max_user_header_bytes:
            raise StompLimitExceeded(
                f"user-defined headers too large (limit {limits.max_user_header_bytes} bytes)"
            )
        return tuple(headers)

    def _on_ack(self, frame: Frame) -> list[Event]:
        """STOMP 1.2 §ACK, §NACK: the id header is ``id`` in 1.2, ``message-id`` before.

        1.1 also requires ``subscription``.
        """
        if self.version == "1.2":
            message_id = _required(frame, "id")
        else:
            message_id = _required(frame, "message-id")
            if self.version == "1.1":
                _required(frame, "subscription")
        transaction, receipt = frame.get("transaction"), frame.get("receipt")
        own_receipt = receipt if transaction is None else None
        kind = AckReceived if frame.command == "ACK" else NackReceived
        event = kind(message_id, frame.get("subscription"), own_receipt, own_receipt)
        return self._emit_or_hold(event, transaction, receipt)

    def _emit_or_hold(
        self, event: _Held, transaction: str | None, receipt: str | None
    ) -> list[Event]:
        """Emit ``event``, or hold it in ``transaction`` until COMMIT (STOMP 1.2 §BEGIN).

        A held frame's receipt is due at once: the frame is processed once held.
        """
        if transaction is None:
            return [event]
        held = self._transaction(transaction)
        size = len(event.body) if isinstance(event, SendRequested) else 0
        if self._held_frames >= self.limits.max_transaction_frames:
            raise StompLimitExceeded(
                f"too many frames in transactions (limit {self.limits.max_transaction_frames})"
            )
        if self._held_bytes + size > self.limits.max_transaction_bytes:
            raise StompLimitExceeded(
                f"too many bytes in transactions (limit {self.limits.max_transaction_bytes} bytes)"
            )
        held.append(event)
        self._held_frames += 1
        self._held_bytes += size
        return [ReceiptDue(receipt)] if receipt is not None else []

    def _transaction(self, transaction: str) -> list[_Held]:
        try:
            return self._transactions[transaction]
        except KeyError:
            raise StompProtocolError(f"no transaction with id {transaction[:100]!r}") from None

    def _on_begin(self, frame: Frame) -> list[Event]:
        """STOMP 1.2 §BEGIN: transaction ids are unique within the session."""
        transaction = _required(frame, "transaction")
        if transaction in self._transactions:
            raise StompProtocolError(f"transaction {transaction[:100]!r} already begun")
        if len(self._transactions) >= self.limits.max_transactions:
            raise StompLimitExceeded(
                f"too many open transactions (limit {self.limits.max_transactions})"
            )
        self._transactions[transaction] = []
        return _receipt_due(frame)

    def _on_commit_or_abort(self, frame: Frame) -> list[Event]:
        """STOMP 1.2 §COMMIT releases the held frames in order; §ABORT drops them."""
        transaction = _required(frame, "transaction")
        held = self._transaction(transaction)
        del self._transactions[transaction]
        self._held_frames -= len(held)
        self._held_bytes -= sum(len(e.body) for e in held if isinstance(e, SendRequested))
        released: list[Event] = []
        if frame.command == "COMMIT":
            receipt = frame.get("receipt")
            if receipt is None:
                released.extend(held)
            else:  # an ERROR a released frame causes answers the COMMIT (rare: a copy is fine)
                released.extend(dataclasses.replace(event, error_receipt=receipt) for event in held)
        return released + _receipt_due(frame)

    def _on_disconnect(self, frame: Frame) -> list[Event]:
        """STOMP 1.2 §DISCONNECT: open transactions are implicitly aborted (§BEGIN)."""
        self._transactions.clear()
        self._held_frames = self._held_bytes = 0
        self.state = State.CLOSED
        return [DisconnectRequested(frame.get("receipt"))]

    # -- output --------------------------------------------------------------

    def accept(self, *, session_id: str, user_name: str | None) -> bytes:
        """CONNECTED frame bytes (STOMP 1.2 §CONNECTED Frame); moves to CONNECTED.

        Headers: ``version``, ``heart-beat`` (the server's ``sx,sy``; not in 1.0, which
        has no heart-beating), ``server``, ``session`` and ``user-name`` when given.
        CONNECTED headers are not escaped, so a value with a line break raises
        :class:`ValueError`.
        """
        if self.state is not State.CONNECTING or self.version is None:
            raise RuntimeError(f"accept() needs a pending CONNECT; state is {self.state.name}")
        headers = [("version", self.version)]
        if self.version != "1.0":
            sx, sy = self.server_heartbeat
            headers.append(("heart-beat", f"{sx},{sy}"))
        headers += [("server", self.server_name), ("session", session_id)]
        if user_name is not None:
            headers.append(("user-name", user_name))
        data = serialize(Frame("CONNECTED", tuple(headers)), self.version)
        self.state = State.CONNECTED
        return data

    def receipt(self, receipt_id: str) -> bytes:
        """RECEIPT frame bytes (STOMP 1.2 §RECEIPT); allowed after DISCONNECT too."""
        frame = Frame("RECEIPT", (("receipt-id", receipt_id),))
        return serialize(frame, self.version or "1.0")

    def error(
        self,
        message: str,
        *,
        detail: str = "",
        receipt: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        """ERROR frame bytes (STOMP 1.2 §ERROR); moves to CLOSED. Close after sending.

        ``message`` is flattened to one line. ``receipt`` defaults to the receipt of
        the frame that made :meth:`receive_data` raise, sent as ``receipt-id``.
        Before a version is negotiated, headers are not escaped and a ``version``
        header lists the supported versions (§Protocol Negotiation). ``extra`` headers
        follow ``message`` (the admin API's ``tidings-reconnect`` advice).
        """
        self.state = State.CLOSED
        receipt = receipt if receipt is not None else self._error_receipt
        headers = [("message", _one_line(message)), *extra]
        if receipt is not None:
            headers.append(("receipt-id", _one_line(receipt)))
        if self.version is None:
            headers.append(("version", ",".join(VERSIONS)))
        headers.append(("content-type", "text/plain"))
        frame = Frame("ERROR", tuple(headers), detail.encode())
        return serialize(frame, self.version or "1.0")

    def remove_subscription(self, subscription_id: str) -> Subscription | None:
        """Forget a subscription, e.g. when the edge could not complete its SUBSCRIBE."""
        return self._subscriptions.pop(subscription_id, None)


def _receipt_due(frame: Frame) -> list[Event]:
    receipt = frame.get("receipt")
    return [ReceiptDue(receipt)] if receipt is not None else []
