"""The local registry of a node: which sessions subscribe to what (centrifuge's hub).

Subscriptions are indexed by broker channel, then by the key messages match on, so a
message from the broker finds its local subscribers in two dict lookups. The parts of a
MESSAGE frame common to all subscribers are encoded once per message (DESIGN.md §3);
each subscriber adds only its own ``destination``, ``subscription`` and ``message-id``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tidings.destinations import Route
from tidings.message import Message
from tidings.stomp.frames import escape_header
from tidings.wsframe import OP_BINARY, OP_TEXT


class SendFrame(Protocol):
    """Queue one STOMP frame to a client; False when it was not taken (slow or closed)."""

    def __call__(self, frame: bytes, opcode: int = OP_TEXT, /) -> bool: ...


class Subscriber(Protocol):
    """What the hub needs of a session."""

    id: str
    version: str
    send_frame: SendFrame

    def next_message_id(self) -> str: ...

    def expect_ack(self, message_id: str, sub: LocalSubscription, message: Message) -> None:
        """Remember a message sent on a ``client``/``client-individual`` subscription."""


@dataclass(eq=False, slots=True)
class LocalSubscription:
    """One STOMP subscription of one local session (identity semantics: eq is ``is``)."""

    session: Subscriber
    id: str
    destination: str
    route: Route
    ack: str = "auto"
    prefix: bytes = field(init=False)
    # Stored messages (those with an inbox id) arrive here, not to the client, while the
    # session replays history for this subscription (DESIGN.md §5, hand-over on resume).
    replay_buffer: list[Message] | None = None
    # Order key of the last stored message sent: nothing at or before it is sent again.
    last_order: tuple[int, int] = (0, 0)

    # (version, prefix): subscriptions with equal keys get byte-identical auto-ack frames.
    frame_key: tuple[str, bytes] = field(init=False)

    def __post_init__(self) -> None:
        version = self.session.version
        self.prefix = (
            f"MESSAGE\ndestination:{escape_header(self.destination, version)}\n"
            f"subscription:{escape_header(self.id, version)}\nmessage-id:"
        ).encode()
        self.frame_key = (version, self.prefix)


_CONTENT_LINES: dict[tuple[str, str], str] = {}  # (content type, version): escaped, up to ":"
_CONTENT_LINES_KEPT = 256
# Left in a header after escaping, these end it early: STOMP 1.0 escapes nothing, 1.1 no CR,
# no version a NUL (§Value Encoding). Publishes refuse them; a message stored before they
# did (or sent by an older node) may still hold one, and loses that header instead of
# forging one in a 1.0 subscriber's stream (issue 14).
_UNSAFE = re.compile("[\r\n\0]")


def encode_tail(message: Message, version: str) -> bytes:
    """The frame after ``message-id``: content headers, custom headers, body, NUL (§MESSAGE).

    Headers are escaped for the subscriber's ``version``; one that cannot be represented
    in it is left out (see ``_UNSAFE``). Checked once per content type, not per message.
    """
    key = (message.content_type, version)
    content = _CONTENT_LINES.get(key)
    if content is None:  # a handful of content types make nearly every message
        if len(_CONTENT_LINES) >= _CONTENT_LINES_KEPT:
            _CONTENT_LINES.clear()
        escaped = escape_header(message.content_type, version)
        content = (
            "\ncontent-length:"
            if _UNSAFE.search(escaped)
            else (f"\ncontent-type:{escaped}\ncontent-length:")
        )
        _CONTENT_LINES[key] = content
    lines = [content, str(len(message.body))]
    if message.order is not None:
        lines.append(f"\ntidings-id:{message.id}")
    for raw_name, raw_value in message.headers:
        name, value = escape_header(raw_name, version), escape_header(raw_value, version)
        if not (_UNSAFE.search(name) or _UNSAFE.search(value) or ":" in name or not name):
            lines.append(f"\n{name}:{value}")
    lines.append("\n\n")
    return "".join(lines).encode() + message.body + b"\0"


class Hub:
    def __init__(self, new_message_id: Callable[[], str]) -> None:
        self._new_message_id = new_message_id
        self._by_channel: dict[str, dict[str, set[LocalSubscription]]] = {}
        self._count = 0

    def add(self, sub: LocalSubscription) -> bool:
        """Register; True when this is the channel's first local subscription."""
        keys = self._by_channel.get(sub.route.channel)
        first = keys is None
        if keys is None:
            keys = self._by_channel[sub.route.channel] = {}
        subs = keys.setdefault(sub.route.key, set())
        if sub not in subs:
            subs.add(sub)
            self._count += 1
        return first

    def remove(self, sub: LocalSubscription) -> bool:
        """Unregister; True when the channel has no local subscription left."""
        keys = self._by_channel.get(sub.route.channel)
        if keys is None:
            return False
        subs = keys.get(sub.route.key)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self._count -= 1
            if not subs:
                del keys[sub.route.key]
        if keys:
            return False
        del self._by_channel[sub.route.channel]
        return True

    def has_channel(self, channel: str) -> bool:
        return channel in self._by_channel

    def keys_of(self, channel: str) -> list[str]:
        """The destinations subscribed on ``channel`` (the keys messages match on)."""
        return list(self._by_channel.get(channel, ()))

    @property
    def channels(self) -> list[str]:
        return list(self._by_channel)

    @property
    def channel_count(self) -> int:
        return len(self._by_channel)

    def subscriber_counts(self, prefix: str = "") -> list[tuple[str, int]]:
        """``(channel, local subscriptions)`` of every channel starting with ``prefix``:
        a walk over all channels, for the admin API only (never per message)."""
        return [
            (channel, sum(len(subs) for subs in keys.values()))
            for channel, keys in self._by_channel.items()
            if channel.startswith(prefix)
        ]

    @property
    def subscription_count(self) -> int:
        return self._count

    def deliver(self, message: Message) -> int:
        """Send a MESSAGE frame to every local match; returns the number of frames queued.

        An ``auto`` subscription's frame has no per-session part: its ``message-id`` is
        minted once per message on this node (unique, as STOMP 1.2 §MESSAGE asks), so
        subscriptions alike in version, destination and id (every @stomp/stompjs client's
        first one is ``sub-0``) share one encoded frame (DESIGN.md §3).
        """
        keys = self._by_channel.get(message.channel)
        subs = keys.get(message.destination) if keys else None
        if not subs:
            return 0
        opcode = opcode_for(message)
        order = message.order
        message_id = self._new_message_id().encode()
        tails: dict[str, bytes] = {}
        frames: dict[tuple[str, bytes], bytes] = {}
        delivered = 0
        for sub in tuple(subs):
            if order is not None:
                if sub.replay_buffer is not None:
                    sub.replay_buffer.append(message)
                    continue
                if order <= sub.last_order:
                    continue  # already sent by a replay
                sub.last_order = order
            auto = sub.ack == "auto"
            frame = frames.get(sub.frame_key) if auto else None
            if frame is None:  # an ack-mode subscription, or the first of its frame key
                version = sub.session.version
                tail = tails.get(version)
                if tail is None:
                    tail = tails[version] = encode_tail(message, version)
                if not auto:
                    delivered += send_message(sub, message, tail, opcode)
                    continue
                frame = frames[sub.frame_key] = sub.prefix + message_id + tail
            delivered += sub.session.send_frame(frame, opcode)
        return delivered


def opcode_for(message: Message) -> int:
    """WebSocket opcode of a MESSAGE frame: text unless the body is not UTF-8 (RFC 6455 §5.6)."""
    return OP_TEXT if _is_utf8(message.body) else OP_BINARY


def send_message(sub: LocalSubscription, message: Message, tail: bytes, opcode: int) -> bool:
    """Queue one MESSAGE frame to ``sub``; in an ack mode, with ``ack`` and tracked."""
    session = sub.session
    message_id = session.next_message_id()
    if sub.ack == "auto":
        frame = sub.prefix + message_id.encode() + tail
    else:
        # STOMP 1.2 §ACK: the client ACKs with id = the MESSAGE's ack header.
        frame = sub.prefix + f"{message_id}\nack:{message_id}".encode() + tail
        session.expect_ack(message_id, sub, message)
    return session.send_frame(frame, opcode)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
