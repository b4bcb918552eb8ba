"""The Spring bridge: the legacy Redis channel (``--legacy-channel webSocketMsgPush``), both ways.

The Spring article's service publishes ``{code, form, to, content}`` (fastjson's
``JSON.toJSONString`` of its ``Message``) on one Redis channel; every instance subscribes
to it, parses the JSON (``JSON.parseObject(msgJson, Message.class)``) and calls
``convertAndSendToUser(to, "/message", content)``, which reaches the sessions it holds
that subscribed to ``/user/<to>/message``. During a migration Spring instances and Tidings
nodes share that channel:

* **Inbound** (Spring → Tidings): each node parses what arrives (``parse``: the same
  reading as the Spring code, with reasons for what it cannot deliver) and stores it in
  the inbox of ``to`` like any publish (``inbox/redis_legacy.py``), which announces it on
  the user's channel: resume, acks, offline delivery and unread counts cover it. Every
  node receives every message; ``Occurrences`` and the store script's claim make one of
  them store it (docs/decisions.md, "the Spring bridge").
* **Outbound** (Tidings → Spring): the inbox's publish script also publishes user
  messages to ``/message`` on the channel (``outbound_json``), with an extra first field
  ``tidingsId`` (fastjson ignores unknown fields) by which nodes recognise and skip their
  own (``is_own``).

Nothing here does I/O: bytes in, a message or a reason out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import orjson

from tidings import publish_rules
from tidings.errors import BrokerUnavailable, InvalidPublish
from tidings.logs import RateLimited
from tidings.message import Message, user_channel

log = logging.getLogger(__name__)

SPRING_DESTINATION = "/message"
"""``convertAndSendToUser(to, "/message", content)``: the only destination Spring serves."""

MARK = b'{"tidingsId":"'
"""How a message Tidings wrote on the channel starts (the publish script writes it)."""

CLAIM_WINDOW_S = 30.0
"""How long a node's count of one payload, and its claim in Redis, live after the last
sighting: longer than any node lags behind another on the channel."""

LOCAL_MARGIN_S = 2.0
"""A node forgets a count this much after Redis forgets the claim (see ``Occurrences``)."""

MAX_TRACKED = 100_000
"""Distinct payloads a node counts at once; past that the oldest are forgotten first."""


class MalformedLegacy(ValueError):
    """A legacy message the Spring code could not deliver either; ``reason`` names why
    (a short word for the rate-limited log), the message says what was found."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_own(payload: bytes) -> bool:
    """Whether a Tidings node or publisher wrote ``payload`` (see ``MARK``)."""
    return payload.startswith(MARK)


def parse(payload: bytes, *, max_bytes: int) -> Message:
    """The message ``payload`` asks for: ``content`` to ``/user/<to>/message``, as text.

    Read as the Spring code reads it: a JSON object (or a JSON string holding one: a
    template that serialises the string it is given encodes it twice); ``to`` a user id
    (fastjson binds a JSON integer to the String field too); ``content`` a string, sent as
    ``text/plain`` (``convertAndSendToUser`` of a null payload throws). ``code`` and
    ``form`` are not used. MalformedLegacy otherwise.
    """
    try:
        data = orjson.loads(payload)
        if isinstance(data, str):
            data = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedLegacy("not_json", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedLegacy("not_object", f"not a JSON object but {_kind(data)}")
    if "to" not in data:
        raise MalformedLegacy("missing_to", "no 'to' field")
    to = data["to"]
    if isinstance(to, int) and not isinstance(to, bool):
        to = str(to)
    if not publish_rules.valid_user(to):
        raise MalformedLegacy("invalid_to", f"'to' is not a user id: {_shown(to)}")
    content = data.get("content")
    if "content" not in data:
        raise MalformedLegacy("missing_content", "no 'content' field")
    if not isinstance(content, str):
        raise MalformedLegacy("invalid_content", f"'content' is {_kind(content)}, not a string")
    try:
        return publish_rules.message(
            user_channel(to), SPRING_DESTINATION, content, None, max_bytes=max_bytes
        )
    except InvalidPublish as exc:  # over --max-message-bytes
        raise MalformedLegacy(exc.code, str(exc)) from None


def outbound_json(user: str, body: bytes) -> bytes:
    """What the Spring code reads for a Tidings message to ``user`` at ``/message``, but its
    first field: the publish script puts ``{"tidingsId":"<inbox id>",`` before the rest.

    ``content`` is the body as the Tidings sessions get it (JSON text for a JSON body:
    what Spring's String field would hold).
    """
    content = body.decode("utf-8", "replace")
    return orjson.dumps({"code": "", "form": "", "to": user, "content": content})


def digest(payload: bytes) -> str:
    """The claim name of a payload: two sends of the same bytes share it."""
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


class Occurrences:
    """How many times this node saw each payload, each count forgotten after
    ``window_s`` without that payload.

    A node that saw a payload for the k-th time asks Redis to store it only if fewer than
    k were claimed: the k-th copy on every node is the same publish, so exactly one node
    stores each, and two identical publishes are two copies, both stored. A node that
    missed a copy counts low and leaves it to the nodes that did not. Redis forgets a
    claim ``window_s`` after the last node saw the payload; a node forgets its count
    ``margin_s`` later, so no node ever counts from 1 again while a claim is still there.
    O(1) per payload: counts are kept in order of last sighting, expired from the front.
    """

    def __init__(
        self,
        window_s: float = CLAIM_WINDOW_S,
        *,
        margin_s: float = LOCAL_MARGIN_S,
        max_tracked: int = MAX_TRACKED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self._keep_s = window_s + margin_s
        self._max = max_tracked
        self._clock = clock
        self._seen: OrderedDict[str, list[float]] = OrderedDict()  # name -> [count, last]

    def __len__(self) -> int:
        return len(self._seen)

    def count(self, name: str) -> int:
        """Record one more sighting of ``name``; its count within the window."""
        now = self._clock()
        seen = self._seen
        while seen and now - next(iter(seen.values()))[1] >= self._keep_s:
            seen.popitem(last=False)
        entry = seen.get(name)
        if entry is None:
            if len(seen) >= self._max:
                seen.popitem(last=False)
            seen[name] = [1, now]
            return 1
        entry[0] += 1
        entry[1] = now
        seen.move_to_end(name)
        return int(entry[0])


class Store(Protocol):
    """Where a node stores what the channel brings (inbox/redis_legacy.py)."""

    def submit(
        self, message: Message, name: str, occurrence: int
    ) -> asyncio.Future[str | None]: ...

    async def close(self) -> None: ...


OUTCOMES = ("stored", "stored_elsewhere", "own", "malformed", "failed")
"""What became of each message a node received on the channel (``SpringBridge.counts``)."""


class SpringBridge:
    """A node's end of the legacy channel: each message received is skipped (a Tidings
    one), dropped with a logged reason (malformed), or handed to ``store`` with its count.

    The store announces a stored message on its user's channel, so the node delivers it
    as any other: this never delivers anything itself.
    """

    def __init__(
        self,
        channel: str,
        store: Store,
        *,
        max_bytes: int,
        occurrences: Occurrences | None = None,
        warnings: RateLimited | None = None,
    ) -> None:
        self.channel = channel
        self._store = store
        self._max_bytes = max_bytes
        self._occurrences = occurrences if occurrences is not None else Occurrences()
        self._warnings = warnings if warnings is not None else RateLimited(log)
        self.counts = dict.fromkeys(OUTCOMES, 0)

    def received(self, payload: bytes) -> None:
        """Handle one message of the channel (called in the order they arrive)."""
        if is_own(payload):
            self.counts["own"] += 1
            return
        try:
            message = parse(payload, max_bytes=self._max_bytes)
        except MalformedLegacy as exc:
            self.counts["malformed"] += 1
            self._warnings.warning(
                f"legacy_{exc.reason}",
                "dropped a message on the legacy channel %s: %s; it began %s",
                self.channel,
                exc,
                _excerpt(payload),
                channel=self.channel,
            )
            return
        name = digest(payload)
        try:
            future = self._store.submit(message, name, self._occurrences.count(name))
        except BrokerUnavailable as exc:
            self._failed(exc)
            return
        future.add_done_callback(self._stored)

    async def close(self) -> None:
        await self._store.close()

    def _stored(self, future: asyncio.Future[str | None]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._failed(exc)
        else:
            self.counts["stored" if future.result() is not None else "stored_elsewhere"] += 1

    def _failed(self, exc: BaseException) -> None:
        """Not stored by this node (other nodes may have): counted and logged."""
        self.counts["failed"] += 1
        self._warnings.warning(
            "legacy_store_failed",
            "could not store a message of the legacy channel %s: %s",
            self.channel,
            exc,
            channel=self.channel,
        )


def _excerpt(payload: bytes) -> str:
    """The start of ``payload`` for a log line: at most 60 bytes, shown as Python bytes."""
    return repr(payload[:60]) + ("..." if len(payload) > 60 else "")


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def _shown(value: object) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."
