"""One STOMP session: the thin asyncio edge around the sans-I/O ServerConnection.

The session does not know how bytes travel: a ``FrameTransport`` (a raw WebSocket
today, a SockJS session next) feeds it with ``receive()`` and carries the frames it
sends. Every protocol error ends the session with an ERROR frame and a close
(STOMP 1.2 §ERROR), and never touches another session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import orjson

from tidings.app_webhook import ERRORS_DESTINATION, REPLY_DESTINATION, AppWebhook
from tidings.app_webhook import Failure as WebhookFailure
from tidings.catchup import GAP_HEADER
from tidings.connect_webhook import ConnectWebhook
from tidings.destinations import route
from tidings.errors import (
    AuthError,
    BrokerUnavailable,
    InvalidPublish,
    StompLimitExceeded,
    StompProtocolError,
)
from tidings.hub import LocalSubscription, SendFrame, encode_tail, opcode_for, send_message
from tidings.inbox.base import InboxLimits
from tidings.inbox.read_state import parse_read_request
from tidings.logs import RateLimited
from tidings.message import APPLICATION_JSON, Message, id_key
from tidings.node import INBOX_STATE_DESTINATION
from tidings.publish_rules import stomp_send_headers
from tidings.ratelimit import TokenBucket
from tidings.send_budget import SendBudget
from tidings.stomp.connection import (
    AckReceived,
    ConnectRequested,
    DisconnectRequested,
    NackReceived,
    ReceiptDue,
    SendRequested,
    ServerConnection,
    SubscribeRequested,
    UnsubscribeRequested,
    error_receipt,
)
from tidings.stomp.frames import Frame, serialize
from tidings.wsframe import OP_TEXT

if TYPE_CHECKING:
    from tidings.config import Config
    from tidings.metrics import ServerStats
    from tidings.node import Node
    from tidings.trust import TrustPolicy

log = logging.getLogger(__name__)
# Auth failures and slow consumers: one line per reason every 10 s (a flood stays one line).
throttled = RateLimited(log)

RESUME_HEADER = "tidings-resume-after"
READ_DESTINATION = "/app/inbox/read"
MAX_APP_CALLS = 8  # webhook calls of one session at a time; past it, its frames wait
# Webhook calls in flight, held so that none is collected before it ends.
_APP_TASKS: set[asyncio.Task[None]] = set()
REPLAY_PAGE = 500
MAX_REPLAY_BUFFER = 10_000  # live messages held while one subscription replays history
MAX_PENDING_ACKS = 10_000  # unacknowledged MESSAGEs one session may have outstanding

CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY_VIOLATION = 1008


class FrameTransport(Protocol):
    """How a session's frames reach its client (RFC 6455 WebSocket, or SockJS)."""

    @property
    def last_write(self) -> float:
        """Loop time of the last write to the client, for heart-beat scheduling."""

    @property
    def send(self) -> SendFrame:
        """Queue one STOMP frame within the outbound bound; False once over it."""

    def send_now(self, frame: bytes) -> None:
        """Send a frame ahead of the bound (ERROR before a close)."""

    def send_heartbeat(self) -> None:
        """Send a STOMP heart-beat EOL (STOMP 1.2 §Heart-beating)."""

    def close(self, code: int, reason: str) -> None:
        """Flush, close with this code and reason; the session is already released."""


class ConnectDeadlines:
    """Ends the sessions that have not sent CONNECT ``timeout`` s after opening (issue 14).

    One timer for all of them, not one per session: a per-session timer, cancelled at the
    CONNECT, cost a loop timer per connect and, on asyncio's loop, stayed in its heap (two
    objects the collector tracks per idle session; tests/test_gc_pressure.py). Sessions
    wait in a dict in opening order, which is deadline order (one timeout, a monotonic
    clock); the timer fires at the oldest deadline, ends every session past its own and
    is set again for the next. A session that connects or closes leaves the dict at once.
    """

    __slots__ = ("_timer", "_waiting", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._waiting: dict[StompSession, float] = {}  # session -> its deadline (loop time)
        self._timer: asyncio.TimerHandle | None = None

    def add(self, session: StompSession) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        self._waiting[session] = deadline
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)

    def discard(self, session: StompSession) -> None:
        self._waiting.pop(session, None)

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        expired = []
        for session, deadline in self._waiting.items():
            if deadline > now:
                break
            expired.append(session)
        for session in expired:
            del self._waiting[session]
            session.connect_timed_out()
        if self._waiting:
            self._timer = loop.call_at(next(iter(self._waiting.values())), self._expire)


@dataclass(eq=False, slots=True)
class SessionContext:
    """What the STOMP sessions of one node share, and all they see of it.

    A session asks ``trust`` every "may they?" (tidings/trust.py) and reaches the rest of
    the node through ``node``; it never sees the aiohttp ``Server`` (server/app.py builds
    this and hands it to the edge, SockJS and /metrics too).
    """

    config: Config
    node: Node
    trust: TrustPolicy
    stats: ServerStats
    server_header: str  # STOMP 1.2 §CONNECTED: server = name/version *(comment)
    connect_deadlines: ConnectDeadlines
    app_webhook: AppWebhook | None = None  # client SENDs to --app-prefix go there
    connect_webhook: ConnectWebhook | None = None  # --auth webhook: it names the user
    # What client SENDs may keep stored (--max-send-stored-bytes); no cap unless given.
    send_budget: SendBudget = field(default_factory=lambda: SendBudget(0, InboxLimits()))
    sessions: set[StompSession] = field(default_factory=set)
    shutting_down: bool = False  # new sessions and publishes are refused


class StompSession:
    """A connected client; implements the hub's Subscriber protocol.

    ``server`` is the node's ``SessionContext`` (the name is older than the class).
    """

    def __init__(self, server: SessionContext, access_token: str | None = None) -> None:
        self.server = server
        self.id = secrets.token_hex(8)
        self.user: str | None = None
        self.version = "1.2"
        self.access_token = access_token
        self.transport: FrameTransport | None = None
        # The transport's own send, bound at attach(): the hub calls it once per delivery.
        self.send_frame: SendFrame = _not_attached
        config = server.config
        self.conn = ServerConnection(
            limits=config.stomp_limits,
            server_heartbeat=config.heartbeat,
            server_name=server.server_header,
        )
        self._last_message_id = 0  # an int, not itertools.count: one object less per session
        self._subscriptions: dict[str, LocalSubscription] = {}
        # message-id -> what was sent, for MESSAGEs awaiting ACK/NACK (delivery order).
        self._pending_acks: dict[str, tuple[LocalSubscription, Message]] = {}
        self._beat_timer: asyncio.TimerHandle | None = None
        self._alive_timer: asyncio.TimerHandle | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None  # --auth jwt: at the token's exp
        self._sends: TokenBucket | None = None  # --send-rate, made at the first SEND
        self._last_read = asyncio.get_running_loop().time()
        self.closed = False
        # What the admin API shows (server/admin.py): set once, never on the hot path.
        self.transport_name = "websocket"  # or sockjs-<transport>, set by the SockJS edge
        self.remote: str | None = None  # the client's address, as admin.client_address has it
        self.connected_at = 0.0  # wall-clock time of CONNECTED

    _app_calls = 0  # webhook calls in flight; an instance attribute only once one is made

    # -- Subscriber protocol ------------------------------------------------------------
    def next_message_id(self) -> str:
        self._last_message_id += 1
        return f"{self.id}-{self._last_message_id}"

    # -- reading ------------------------------------------------------------------------
    def attach(self, transport: FrameTransport) -> None:
        """Give the session its way to the client; call before the first ``receive``.

        The client has ``--connect-timeout`` from now to send CONNECT (issue 14: a
        WebSocket that never did stayed open for good).
        """
        self.transport = transport
        self.send_frame = transport.send
        self.server.sessions.add(self)
        self.server.connect_deadlines.add(self)

    def connect_timed_out(self) -> None:
        """No CONNECT within ``--connect-timeout``: ERROR, then close 1008."""
        timeout = self.server.config.connect_timeout_s
        self.fail(
            "no CONNECT frame",
            f"a STOMP session must start with CONNECT within {timeout:g} s of opening",
            CLOSE_POLICY_VIOLATION,
        )

    async def receive(self, data: bytes) -> None:
        """Act on bytes from the client, in order; the transport must not call concurrently."""
        if self.closed:
            return
        self._last_read = asyncio.get_running_loop().time()
        receipt: str | None = None  # of the frame whose work is under way, for an ERROR
        try:
            events = self.conn.receive_data(data)
            while events:
                for event in events:
                    receipt = error_receipt(event)
                    await self._handle(event)
                    if self.closed:
                        return
                receipt = None
                # Frames behind a CONNECT wait until it is accepted, and an error found
                # behind good frames waits until they are done: take either now.
                events = self.conn.receive_data(b"")
        except StompProtocolError as exc:
            self.fail(exc.message, exc.detail, CLOSE_PROTOCOL_ERROR, receipt=receipt)
        except AuthError as exc:
            self.server.stats.auth_failure(exc.reason)
            throttled.warning(
                f"auth: {exc.reason}",
                "session %s: authentication failed: %s",
                self.id,
                exc,
                session=self.id,
            )
            self.fail(f"authentication failed: {exc}", "", CLOSE_POLICY_VIOLATION)
        except BrokerUnavailable as exc:
            self.fail("broker unavailable", str(exc), CLOSE_GOING_AWAY, receipt=receipt)

    def transport_closed(self) -> None:
        """The client went away (or the transport gave up on it): drop everything.

        The links to the transport go too, so a closed session and its transport are
        freed by reference counting, not left for a full collection (docs/decisions.md).
        """
        if not self.closed:
            self._log_end("connection ended without DISCONNECT")
        self.closed = True
        self._release()
        self.transport = None
        self.send_frame = _closed

    async def _handle(self, event: object) -> None:
        match event:
            case ConnectRequested():
                await self._connect(event)
            case SubscribeRequested():
                await self._subscribe(event)
            case UnsubscribeRequested():
                self._unsubscribe(event.subscription_id)
                self._receipt(event.receipt)
            case SendRequested():
                await self._send(event)
            case AckReceived() | NackReceived():
                await self._acknowledge(event)
            case ReceiptDue():
                self._receipt(event.receipt)
            case DisconnectRequested():
                self._receipt(event.receipt)
                self.close(1000, "client disconnected")

    async def _connect(self, event: ConnectRequested) -> None:
        self.server.connect_deadlines.discard(self)  # the CONNECT came in time
        webhook = self.server.connect_webhook
        if webhook is None:
            identity = self.server.trust.identify(event, self.access_token)
        else:  # within --connect-webhook-timeout, below the CONNECT deadline
            identity = await webhook.identify(
                event.frame.headers,
                session=self.id,
                transport=self.transport_name,
                address=self.remote,
            )
            if self.closed:  # the client left while the back end thought
                return
        self.user = identity.user if identity is not None else None
        self.version = event.version
        if identity is not None and identity.expires_at is not None:
            self._end_at_expiry(identity.expires_at)
        if self.user is not None:
            await self.server.node.presence.add(self.user, self.id)
        self.connected_at = time.time()
        self.send_frame(self.conn.accept(session_id=self.id, user_name=self.user))
        self._start_heartbeats()
        if log.isEnabledFor(logging.DEBUG):
            transport = type(self.transport).__name__
            log.debug(
                "session %s connected: user %s, STOMP %s, %s",
                *(self.id, self.user, self.version, transport),
                extra={"session": self.id, "user": self.user, "transport": transport},
            )

    async def _subscribe(self, event: SubscribeRequested) -> None:
        target = route(event.destination, self.user)
        self.server.trust.authorize_subscription(self.user, target)
        resume_after = event.frame.get(RESUME_HEADER)
        if resume_after is not None:
            _check_inbox_id(resume_after, RESUME_HEADER)
        # An ack-mode subscription to a user's destination first receives what that user
        # has not acknowledged: offline delivery (issue 4).
        offline = event.ack != "auto" and target.user is not None and resume_after is None
        sub = LocalSubscription(self, event.subscription_id, event.destination, target, event.ack)
        if resume_after is not None or offline:
            sub.replay_buffer = []  # live messages wait here until the replay is sent
        if resume_after is not None:
            # The client has it and all before: an announcement of an older message that
            # comes late (a PostgreSQL inbox announces after the commit, and again for a
            # publisher that died between) must not reach it a second time.
            sub.last_order = id_key(resume_after)
        try:
            await self.server.node.subscribe(sub)
        except BrokerUnavailable:
            self.conn.remove_subscription(event.subscription_id)
            raise
        if self.closed:  # the client left while the broker confirmed: release() missed it
            self.server.node.unsubscribe(sub)
            return
        self._subscriptions[sub.id] = sub
        if sub.replay_buffer is None:
            self._receipt(event.receipt)
        elif resume_after is not None:
            await self._replay_history(sub, resume_after, event.receipt)
        else:
            await self._replay_unacked(sub, event.receipt)
        if target.user is not None and target.key == INBOX_STATE_DESTINATION:
            await self._send_inbox_state(sub, target.user)

    async def _send_inbox_state(self, sub: LocalSubscription, user: str) -> None:
        """A new ``/user/queue/inbox-state`` subscriber gets the current state at once, then
        the changes (issue 16): a bell shows the right count without asking the back end.

        ``last`` is the newest id the inbox had given out when the count was taken (as in
        every inbox-state event): a client adds one for each message it receives with a
        greater id, and ignores a later event with a smaller one (tidings.js does).
        """
        unread, last = await self.server.node.inbox.unread_state(user)
        if self.closed or self._subscriptions.get(sub.id) is not sub:
            return
        state = Message(
            id=self.server.node.new_message_id(),
            channel=sub.route.channel,
            destination=INBOX_STATE_DESTINATION,
            body=orjson.dumps({"unread": unread, "read": [], "up_to": None, "last": last}),
            content_type=APPLICATION_JSON,
        )
        send_message(sub, state, encode_tail(state, self.version), opcode_for(state))

    async def _replay_history(
        self, sub: LocalSubscription, after: str, receipt: str | None
    ) -> None:
        """Send what was stored after ``after``, then what arrived live meanwhile (§5)."""
        inbox = self.server.node.inbox
        first_page = True
        while not self.closed:
            page = await inbox.history(sub.route.channel, after, limit=REPLAY_PAGE)
            mine = [s.message for s in page.messages if s.message.destination == sub.route.key]
            if first_page:
                first_page = False
                self._receipt(receipt, gap=page.gap)
                if page.gap and mine:
                    mine[0] = dataclasses.replace(
                        mine[0], headers=(*mine[0].headers, (GAP_HEADER, "true"))
                    )
            self._send_replayed(sub, mine)
            if len(page.messages) < REPLAY_PAGE:
                break
            after = page.messages[-1].message.id
        self._go_live(sub)

    async def _replay_unacked(self, sub: LocalSubscription, receipt: str | None) -> None:
        assert sub.route.user is not None
        inbox = self.server.node.inbox
        stored = await inbox.unacked(sub.route.user, sub.route.key, limit=MAX_PENDING_ACKS)
        self._receipt(receipt)
        self._send_replayed(sub, [s.message for s in stored])
        self._go_live(sub)

    def _send_replayed(self, sub: LocalSubscription, messages: list[Message]) -> None:
        for message in messages:
            if self.closed:
                return
            assert message.order is not None
            if message.order > sub.last_order:
                sub.last_order = message.order
                send_message(sub, message, encode_tail(message, self.version), opcode_for(message))
        if sub.replay_buffer is not None and len(sub.replay_buffer) > MAX_REPLAY_BUFFER:
            self.on_slow_consumer(MAX_REPLAY_BUFFER)

    def _go_live(self, sub: LocalSubscription) -> None:
        """Hand over to live delivery: buffered messages newer than the replay, then live."""
        buffered, sub.replay_buffer = sub.replay_buffer or [], None
        self._send_replayed(sub, buffered)

    # -- acknowledgements (STOMP 1.2 §ACK, §NACK; issue 4) --------------------------------
    def expect_ack(self, message_id: str, sub: LocalSubscription, message: Message) -> None:
        if len(self._pending_acks) >= MAX_PENDING_ACKS:
            asyncio.get_running_loop().call_soon(
                self.fail,
                "too many unacknowledged messages",
                f"ACK or NACK messages: at most {MAX_PENDING_ACKS} may be outstanding",
                CLOSE_POLICY_VIOLATION,
            )
        self._pending_acks[message_id] = (sub, message)

    async def _acknowledge(self, event: AckReceived | NackReceived) -> None:
        """ACK: the user's inbox records it; NACK: send it again now. Unknown ids: ignored."""
        entry = self._pending_acks.get(event.id)
        if entry is None:
            self._receipt(event.receipt)
            return
        sub, message = entry
        if isinstance(event, NackReceived):
            del self._pending_acks[event.id]
            send_message(sub, message, encode_tail(message, self.version), opcode_for(message))
            self._receipt(event.receipt)
            return
        acked = [event.id]
        if sub.ack == "client":  # cumulative: everything sent earlier on this subscription
            for message_id, (other, _) in self._pending_acks.items():
                if message_id == event.id:
                    break
                if other is sub:
                    acked.append(message_id)
        popped = [self._pending_acks.pop(message_id)[1] for message_id in acked]
        ids = [m.id for m in popped if m.order is not None]  # only stored ones are durable
        if sub.route.user is not None and ids:
            await self.server.node.inbox.ack(sub.route.user, ids)
        self._receipt(event.receipt)

    async def _mark_read(self, event: SendRequested) -> None:
        """SEND to /app/inbox/read with ``{"ids": [...]}`` or ``{"up_to": id}`` (issue 4)."""
        if self.user is None:
            raise StompProtocolError(
                f"{READ_DESTINATION} needs an authenticated user",
                "Send a login header on CONNECT (or a token with --auth jwt).",
            )
        try:
            ids, up_to = parse_read_request(orjson.loads(event.body))
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise StompProtocolError(f"bad {READ_DESTINATION} body", str(exc)) from None
        await self.server.node.mark_read(self.user, ids=ids, up_to=up_to)
        self._receipt(event.receipt)

    def _unsubscribe(self, subscription_id: str) -> None:
        sub = self._subscriptions.pop(subscription_id, None)
        if sub is not None:
            self.server.node.unsubscribe(sub)

    async def _send(self, event: SendRequested) -> None:
        if not self._send_allowed_now(event):
            return
        if event.destination == READ_DESTINATION:
            await self._mark_read(event)
            return
        webhook = self.server.app_webhook
        if webhook is not None and webhook.handles(event.destination):
            self._app_calls += 1  # counted now: a task created here starts later
            if self._app_calls >= MAX_APP_CALLS:  # the last one allowed: the session's
                await self._call_app(webhook, event)  # next frames wait for it
            else:
                task = asyncio.create_task(self._call_app(webhook, event))
                _APP_TASKS.add(task)
                task.add_done_callback(_APP_TASKS.discard)
            return
        if not self.server.trust.may_send(event.destination):
            raise StompProtocolError(
                f"SEND to {event.destination} is not allowed",
                "Clients may SEND only to destinations in the server's --send-allow list.",
            )
        target = route(event.destination, self.user)
        try:  # user-defined headers pass through to the MESSAGE (STOMP 1.2 §SEND)
            content_type, headers = stomp_send_headers(event.content_type, event.headers)
        except InvalidPublish as exc:
            raise StompProtocolError(
                exc.message,
                "User-defined SEND headers are passed on to every subscriber, whatever its "
                "STOMP version: names of [A-Za-z0-9_.-], none the server sets, and no CR, LF "
                "or NUL in a value.",
            ) from None
        if not self._send_stored(event, target.channel):
            return
        message = Message(
            id="",  # the inbox assigns it when it stores the message
            channel=target.channel,
            destination=target.key,
            body=event.body,
            content_type=content_type,
            headers=headers,
        )
        await self.server.node.publish(message)
        self._receipt(event.receipt)

    def _send_allowed_now(self, event: SendRequested) -> bool:
        """Take a token of ``--send-rate``; without one, end the session (issue 14).

        A COMMIT's SENDs take one each as they are released: one past the limit ends the
        session there, the SENDs before it published (as any error in a COMMIT does).
        """
        config = self.server.config
        if not config.send_rate:
            return True
        now = asyncio.get_running_loop().time()
        if self._sends is None:
            self._sends = TokenBucket(config.send_rate, config.send_burst, now)
        if self._sends.take(now):
            return True
        self.server.node.counters.send_rate_limited += 1
        throttled.warning(
            "send rate",
            "session %s (user %s): SEND rate limit exceeded, disconnected",
            self.id,
            self.user,
            session=self.id,
        )
        self.fail(
            "SEND rate limit exceeded",
            f"at most {config.send_rate} SEND frames a second (bursts of "
            f"{config.send_burst}) per session",
            CLOSE_POLICY_VIOLATION,
            # A SEND held in a transaction had its RECEIPT then: none here (event.receipt).
            receipt=event.receipt,
        )
        return False

    def _send_stored(self, event: SendRequested, channel: str) -> bool:
        """A SEND body is a published body (``--max-message-bytes``), and what this node's
        clients keep stored is capped (``--max-send-stored-bytes``; tidings.send_budget):
        past it the session ends with an ERROR (issue 14). False if the SEND was refused."""
        server = self.server
        limit = server.config.max_message_bytes
        if len(event.body) > limit:
            raise StompLimitExceeded(
                "SEND body too large", f"a SEND body may be at most {limit} bytes"
            )
        size = len(event.body) + len(event.destination)
        budget = server.send_budget
        if budget.admit(channel, size, asyncio.get_running_loop().time()):
            return True
        server.node.counters.send_store_refused += 1
        throttled.warning(
            "send storage",
            "session %s: SEND refused, --max-send-stored-bytes %d reached",
            self.id,
            budget.limit,
            session=self.id,
        )
        self.fail(
            "SEND storage limit reached",
            "the server keeps no more messages sent by clients for now; try again later",
            CLOSE_POLICY_VIOLATION,
            receipt=event.receipt,
        )
        return False

    async def _call_app(self, webhook: AppWebhook, event: SendRequested) -> None:
        """One SEND to the back end (tidings.app_webhook); its reply, publishes and receipt."""
        try:
            outcome = await webhook.call(
                user=self.user,
                session=self.id,
                destination=event.destination,
                headers=event.frame.headers,
                body=event.body,
            )
        finally:
            self._app_calls -= 1
        if isinstance(outcome, WebhookFailure):
            self._to_own(ERRORS_DESTINATION, outcome.json(event.destination, event.receipt))
            return
        try:
            for message, key in outcome.publish:
                await self.server.node.submit(message, idempotency_key=key)
        except BrokerUnavailable as exc:
            failure = WebhookFailure("publish_failed", f"broker unavailable: {exc}")
            self._to_own(ERRORS_DESTINATION, failure.json(event.destination, event.receipt))
            return
        if outcome.reply is not None:
            reply = outcome.reply
            self._to_own(REPLY_DESTINATION, reply.body, reply.content_type, reply.headers)
        self._receipt(event.receipt)

    def _to_own(
        self,
        key: str,
        body: bytes,
        content_type: str = APPLICATION_JSON,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """A MESSAGE for this session's own ``/user/queue/...`` subscriptions at ``key``."""
        if self.closed:
            return
        mine = [
            sub
            for sub in self._subscriptions.values()
            if sub.route.key == key and sub.route.user is not None and sub.route.user == self.user
        ]
        if not mine:
            throttled.warning(
                "nobody to tell",
                "session %s (user %s) has no subscription to /user%s: a webhook answer dropped",
                *(self.id, self.user, key),
            )
            return
        for sub in mine:
            message = Message(
                id=self.server.node.new_message_id(),
                channel=sub.route.channel,
                destination=key,
                body=body,
                content_type=content_type,
                headers=headers,
            )
            send_message(sub, message, encode_tail(message, self.version), opcode_for(message))

    def _receipt(self, receipt: str | None, *, gap: bool = False) -> None:
        if receipt is None:
            return
        if gap:  # the resume id is older than what is retained: say so (issue 4)
            frame = Frame("RECEIPT", (("receipt-id", receipt), (GAP_HEADER, "true")))
            self.send_frame(serialize(frame, self.version))
        else:
            self.send_frame(self.conn.receipt(receipt))

    # -- token expiry (RFC 7519 §4.1.4; issue 14) ------------------------------------------
    def _end_at_expiry(self, expires_at: float) -> None:
        """One timer per session, set at CONNECT: nothing is checked per message."""
        leeway = self.server.trust.token_leeway_s
        delay = max(0.0, expires_at + leeway - time.time())  # exp is wall-clock time
        self._expiry_timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._expiry_timer = None
        self.fail(
            "token expired",
            f"Reconnect with a fresh token and SUBSCRIBE with {RESUME_HEADER}: <last "
            "tidings-id received> to receive what was sent meanwhile.",
            CLOSE_POLICY_VIOLATION,
        )

    # -- heart-beats (STOMP 1.2 §Heart-beating) -------------------------------------------
    def _start_heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        if self.conn.send_heartbeat_ms:
            self._beat_timer = loop.call_later(self.conn.send_heartbeat_ms / 1000, self._beat)
        if self.conn.expect_heartbeat_ms:
            self._alive_timer = loop.call_later(self._silence_limit_s(), self._check_alive)

    def _silence_limit_s(self) -> float:
        return self.conn.expect_heartbeat_ms / 1000 * self.server.config.heartbeat_grace

    def _beat(self) -> None:
        if self.closed or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        interval = self.conn.send_heartbeat_ms / 1000
        idle = loop.time() - self.transport.last_write
        if idle >= interval * 0.95:
            self.transport.send_heartbeat()
            idle = 0.0
        self._beat_timer = loop.call_later(interval - idle, self._beat)

    def _check_alive(self) -> None:
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        silent = loop.time() - self._last_read
        limit = self._silence_limit_s()
        if silent >= limit:
            self.fail(
                "heart-beat timeout",
                f"no data from the client for {silent:.1f} s "
                f"(expected every {self.conn.expect_heartbeat_ms} ms)",
                CLOSE_POLICY_VIOLATION,
            )
            return
        self._alive_timer = loop.call_later(limit - silent, self._check_alive)

    # -- ending ---------------------------------------------------------------------------
    @property
    def subscriptions(self) -> list[LocalSubscription]:
        """The session's live subscriptions (for the admin API)."""
        return list(self._subscriptions.values())

    def fail(
        self,
        message: str,
        detail: str,
        code: int,
        *,
        receipt: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Send an ERROR frame (STOMP 1.2 §ERROR) and close the WebSocket.

        ``receipt``: of the frame whose work failed, sent as ``receipt-id``; without it, the
        connection names the frame its parser refused, if that asked for a receipt.
        ``extra``: more headers (an operator's disconnect says whether to reconnect).
        """
        if self.closed or self.transport is None:
            return
        self.transport.send_now(
            self.conn.error(message, detail=detail, receipt=receipt, extra=extra)
        )
        self.close(code, message)

    def close(self, code: int, reason: str) -> None:
        """Release the session, then close its transport with ``code`` and ``reason``."""
        if self.closed:
            return
        self._log_end(f"{reason} ({code})")
        self.closed = True
        self._release()
        if self.transport is not None:
            self.transport.close(code, reason)

    def _log_end(self, why: str) -> None:
        if log.isEnabledFor(logging.DEBUG) and self in self.server.sessions:
            log.debug(
                "session %s disconnected: user %s, %s",
                *(self.id, self.user, why),
                extra={"session": self.id, "user": self.user},
            )

    def on_slow_consumer(self, limit: int) -> None:
        """The transport's bound was crossed: end the session, telling the client why."""
        self.server.node.counters.slow_consumers += 1
        throttled.warning(
            "slow consumer",
            "session %s (user %s): slow consumer, disconnected with over %d bytes waiting",
            self.id,
            self.user,
            limit,
            session=self.id,
        )
        self.fail(
            "slow consumer",
            f"more than {limit} bytes were waiting to be sent to this client",
            CLOSE_POLICY_VIOLATION,
        )

    def _release(self) -> None:
        """Drop every subscription and timer; safe to call more than once."""
        for timer in (self._beat_timer, self._alive_timer, self._expiry_timer):
            if timer is not None:
                timer.cancel()
        # A handle holds its bound callback, and with it the session.
        self._beat_timer = self._alive_timer = self._expiry_timer = None
        self.server.connect_deadlines.discard(self)
        for sub in self._subscriptions.values():
            self.server.node.unsubscribe(sub)
        self._subscriptions.clear()
        if self in self.server.sessions:
            self.server.sessions.discard(self)
            if self.user is not None:
                self.server.node.presence.remove(self.user, self.id)


def _not_attached(frame: bytes, opcode: int = OP_TEXT, /) -> bool:
    raise RuntimeError("the session has no transport yet: attach() one first")


def _closed(frame: bytes, opcode: int = OP_TEXT, /) -> bool:
    return False  # the transport is gone: nothing is taken


def _check_inbox_id(value: str, header: str) -> None:
    try:
        id_key(value)
    except ValueError:
        raise StompProtocolError(
            f"bad {header} header",
            f"expected an inbox id like 1700000000000-0, or 0; got {value!r}",
        ) from None
