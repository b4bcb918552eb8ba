"""What a publish may carry, and the message it becomes.

Shared by the HTTP API (``server/api.py``) and the direct publisher (``publisher.py``), so
both accept and refuse exactly the same things. Every refusal is an InvalidPublish whose
``code`` is the HTTP API's error code; nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeGuard

from tidings.destinations import user_destination
from tidings.errors import InvalidPublish
from tidings.message import Message, build_message, encode_body, topic_channel, user_channel

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
"""Largest encoded body (``--max-message-bytes``)."""
RESERVED_HEADERS = ("destination", "subscription", "message-id", "content-length", "ack", "receipt")
"""Header names the server sets on a MESSAGE; a publish may not (compared case-insensitively)."""
MAX_IDEMPOTENCY_KEY = 200
MAX_BATCH = 100
"""Most messages a batch publish (``POST /api/v1/messages``) takes in one request."""

_HEADER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_BAD_VALUE_CHARS = re.compile(r"[\r\n\0]")


def valid_name(name: object) -> TypeGuard[str]:
    """A user id or topic name: non-empty printable text, not only spaces."""
    return isinstance(name, str) and bool(name) and name.isprintable() and not name.isspace()


def user_message(
    user: object,
    body: object,
    *,
    destination: object = "/message",
    headers: object = None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Message:
    """The message ``POST /api/v1/users/{user}/messages`` publishes.

    ``user`` may not contain ``/`` (it is one segment of ``/user/<id>/...``).
    """
    if not valid_name(user) or "/" in user:
        raise InvalidPublish("invalid_field", "user id must be non-empty printable text, no '/'")
    if not isinstance(destination, str):
        raise InvalidPublish("invalid_field", "'destination' must be a string like /message")
    try:
        user_destination(destination)
    except ValueError as exc:
        raise InvalidPublish("invalid_field", f"'destination': {exc}") from None
    return message(user_channel(user), destination, body, headers, max_bytes=max_bytes)


def topic_message(
    topic: object,
    body: object,
    *,
    headers: object = None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Message:
    """The message ``POST /api/v1/topics/{topic}/messages`` publishes (to ``/topic/<topic>``)."""
    if not valid_name(topic) or "//" in topic or topic.endswith("/"):
        raise InvalidPublish("invalid_field", "topic must be a name like 'public' or 'a/b'")
    return message(topic_channel(topic), f"/topic/{topic}", body, headers, max_bytes=max_bytes)


def message(
    channel: str, destination: str, body: object, headers: object, *, max_bytes: int
) -> Message:
    """A string body goes out as text, any other JSON value as JSON; a ``content-type``
    header overrides that. The inbox assigns the id when it stores the message."""
    checked = checked_headers(headers)
    try:
        encoded, content_type = encode_body(body)
    except TypeError as exc:  # orjson.JSONEncodeError is one
        raise InvalidPublish(
            "invalid_field", f"the body must be a string or a JSON value: {exc}"
        ) from None
    if len(encoded) > max_bytes:
        raise InvalidPublish(
            "too_large", f"message body is {len(encoded)} bytes; the limit is {max_bytes}"
        )
    content_type = checked.pop("content-type", content_type)
    return build_message(
        id="",
        channel=channel,
        destination=destination,
        body=encoded,
        content_type=content_type,
        headers=tuple(checked.items()),
        order=None,
    )


def checked_headers(headers: object) -> dict[str, str]:
    """Extra MESSAGE headers; ``content-type`` (any case) comes back lower-cased."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidPublish("invalid_field", "'headers' must map header names to strings")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise InvalidPublish(
                "invalid_field", f"header name {name!r} must match [A-Za-z0-9_.-]{{1,64}}"
            )
        lowered = name.lower()
        if lowered in RESERVED_HEADERS:
            raise InvalidPublish("invalid_field", f"header {name!r} is set by the server")
        if not isinstance(value, str) or _BAD_VALUE_CHARS.search(value):
            raise InvalidPublish(
                "invalid_field", f"header {name!r} must be a string without CR, LF or NUL"
            )
        checked[lowered if lowered == "content-type" else name] = value
    return checked


def idempotency_key(key: object) -> str | None:
    """The key a retried publish is stored once under (1-200 printable chars), or None."""
    if key is None:
        return None
    if not (isinstance(key, str) and 1 <= len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()):
        raise InvalidPublish(
            "invalid_field",
            f"the idempotency key must be 1-{MAX_IDEMPOTENCY_KEY} printable chars",
        )
    return key
