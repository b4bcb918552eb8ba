"""What a publish may carry, and the message it becomes.

Shared by the HTTP API (``server/api.py``) and the direct publisher (``publisher.py``), so
both accept and refuse exactly the same things. Every refusal is an InvalidPublish whose
``code`` is the HTTP API's error code; nothing here does I/O.

Each rule on a string is one regular expression, written once here: the server checks
with it and the OpenAPI document (``server/openapi.py``) publishes it as the field's
``pattern``, so the two cannot disagree. The patterns use only syntax that JSON Schema's
ECMA-262 dialect and Python's ``re`` read alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeGuard

from tidings.errors import InvalidPublish
from tidings.message import (
    TEXT_PLAIN,
    Message,
    build_message,
    encode_body,
    topic_channel,
    user_channel,
)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
"""Largest encoded body (``--max-message-bytes``)."""
RESERVED_HEADERS = ("destination", "subscription", "message-id", "content-length", "ack", "receipt")
"""Header names the server sets on a MESSAGE; a publish may not (compared case-insensitively)."""
RESERVED_PREFIX = "tidings-"
"""Header names the server itself uses (``tidings-id``, ``tidings-gap``...) start so: a publish
may not set one either (any case)."""
MAX_IDEMPOTENCY_KEY = 200
MAX_NAME = 200
"""Longest user id or topic name, in characters."""
MAX_BATCH = 100
"""Most messages a batch publish (``POST /api/v1/messages``) takes in one request."""

_TEXT = r"[^\x00-\x1f\x7f-\x9f]"
"""One character of text: no C0 or C1 control, no DEL. (No lone surrogate arrives either:
orjson refuses one in JSON, and a %-escaped one stays escaped in a path.)"""
_SEGMENT = r"[^\x00-\x1f\x7f-\x9f/]"
"""The same, and no ``/``."""
USER_PATTERN = rf"^(?!\s*$){_SEGMENT}{{1,{MAX_NAME}}}$"
"""A user id: 1-200 characters of text, no ``/`` (it is one segment of
``/user/<id>/...``), not only white space."""
TOPIC_PATTERN = rf"^(?!\s*$)(?=.{{1,{MAX_NAME}}}$){_SEGMENT}+(?:/{_SEGMENT}+)*$"
"""A topic name: 1-200 characters of text in ``/``-separated segments, none empty."""
IDEMPOTENCY_KEY_PATTERN = rf"^{_TEXT}{{1,{MAX_IDEMPOTENCY_KEY}}}$"
"""An idempotency key: 1-200 characters of text."""
INBOX_ID_PATTERN = r"^[0-9]{1,19}(?:-[0-9]{1,19})?$"
"""An inbox id ``<ms>-<seq>`` (a Redis stream id; ``0`` sorts first)."""
DESTINATION_PATTERN = rf"^(?!.*//)/{_TEXT}{{1,{MAX_NAME}}}$"
"""A user-relative destination (``/message``): the rest of ``/user/<id>/...``."""


def _any_case(name: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in name)


HEADER_NAME_PATTERN = (
    "^(?!(?:"
    + "|".join(_any_case(name) for name in RESERVED_HEADERS)
    + f")$)(?!{_any_case(RESERVED_PREFIX)})[A-Za-z0-9_.-]{{1,64}}$"
)
"""A MESSAGE header name a publish may set: not one the server sets, in any case."""
HEADER_VALUE_PATTERN = r"^[^\r\n\x00]*$"

DEFAULT_DESTINATION = "/message"
"""Where a user's message goes when the publish names no destination (Spring's contract)."""

_USER = re.compile(USER_PATTERN)
_INBOX_ID = re.compile(INBOX_ID_PATTERN)
_TOPIC = re.compile(TOPIC_PATTERN)
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_DESTINATION = re.compile(DESTINATION_PATTERN)
_SURROGATE = re.compile("[\ud800-\udfff]")
_HEADER_NAME = re.compile(HEADER_NAME_PATTERN)
_BAD_VALUE_CHARS = re.compile(r"[\r\n\x00]")


def matches(value: object, pattern: re.Pattern[str]) -> TypeGuard[str]:
    """``value`` is a string the whole of which ``pattern`` matches.

    ``$`` in Python also matches before a final newline, which ECMA-262's does not: the
    patterns forbid newlines anyway, and ``fullmatch`` makes sure.
    """
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def valid_inbox_id(inbox_id: object) -> TypeGuard[str]:
    """An inbox id as INBOX_ID_PATTERN says (the HTTP API's ``after``, a read request's ids)."""
    return matches(inbox_id, _INBOX_ID)


def valid_user(user: object) -> TypeGuard[str]:
    """A user id as USER_PATTERN says.

    Most ids are short ASCII letters and digits, which USER_PATTERN takes: those skip the
    regex (60 ns instead of 250; the publish path checks one per request).
    """
    if isinstance(user, str) and user.isalnum() and user.isascii() and len(user) <= MAX_NAME:
        return True
    return matches(user, _USER)


def user_message(
    user: object,
    body: object,
    *,
    destination: object = DEFAULT_DESTINATION,
    headers: object = None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Message:
    """The message ``POST /api/v1/users/{user}/messages`` publishes.

    ``user`` may not contain ``/`` (it is one segment of ``/user/<id>/...``).
    """
    if not valid_user(user):
        raise InvalidPublish(
            "invalid_field",
            f"user id must be 1-{MAX_NAME} characters of text: no control character, no '/'",
        )
    if destination != DEFAULT_DESTINATION and not matches(destination, _DESTINATION):
        raise InvalidPublish(
            "invalid_field",
            "'destination' must start with '/' and name a path of text, like /message"
            " (no empty segment, no control character)",
        )
    return message(user_channel(user), destination, body, headers, max_bytes=max_bytes)


def topic_message(
    topic: object,
    body: object,
    *,
    headers: object = None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Message:
    """The message ``POST /api/v1/topics/{topic}/messages`` publishes (to ``/topic/<topic>``)."""
    if not matches(topic, _TOPIC):
        raise InvalidPublish(
            "invalid_field",
            f"topic must be a name like 'public' or 'a/b' (1-{MAX_NAME} characters of text,"
            " no empty segment)",
        )
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
        lowered = name.lower() if isinstance(name, str) else ""
        if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_PREFIX):
            raise InvalidPublish("invalid_field", f"header {name!r} is set by the server")
        if not matches(name, _HEADER_NAME):
            raise InvalidPublish(
                "invalid_field", f"header name {name!r} must match [A-Za-z0-9_.-]{{1,64}}"
            )
        if not isinstance(value, str) or _BAD_VALUE_CHARS.search(value):
            raise InvalidPublish(
                "invalid_field", f"header {name!r} must be a string without CR, LF or NUL"
            )
        checked[lowered if lowered == "content-type" else name] = value
    return checked


def idempotency_key(key: object) -> str | None:
    """The key a retried publish is stored once under, or None (absent or JSON null)."""
    if key is None:
        return None
    # A header's undecodable bytes come as lone surrogates (aiohttp's surrogateescape):
    # not text either, though no JSON string or document pattern can carry one.
    if not matches(key, _IDEMPOTENCY_KEY) or _SURROGATE.search(key):
        raise InvalidPublish(
            "invalid_field",
            f"the idempotency key must be 1-{MAX_IDEMPOTENCY_KEY} characters of text"
            " (no control character)",
        )
    return key


def stomp_send_headers(
    content_type: str | None, headers: tuple[tuple[str, str], ...]
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The content type and extra headers of the message a STOMP SEND publishes.

    The same rules as a publish's ``headers`` (STOMP 1.2 §SEND passes user-defined headers
    through to the MESSAGE): no reserved name, names of ``[A-Za-z0-9_.-]``, and no CR, LF
    or NUL in a value, because STOMP 1.0 has no escaping and a 1.0 subscriber would read
    one as the end of the header (a forged header or frame; issue 14). ``content-type`` is
    checked as a value too; a ``Content-Type`` in another case stands for it, as in a
    publish, unless both are given.
    """
    if content_type is not None and _BAD_VALUE_CHARS.search(content_type):
        raise InvalidPublish(
            "invalid_field", "header 'content-type' must be a string without CR, LF or NUL"
        )
    if not headers:
        return content_type or TEXT_PLAIN, ()
    checked = checked_headers(dict(headers))
    other_case = checked.pop("content-type", None)
    if other_case is not None and content_type is not None:
        raise InvalidPublish("invalid_field", "header 'content-type' is given twice")
    return content_type or other_case or TEXT_PLAIN, tuple(checked.items())


def batch_item(item: object, *, max_bytes: int) -> tuple[Message, str | None]:
    """One item of a batch publish (``{"user"|"topic", "body", ...}``): its message and
    idempotency key. The batch API and the app webhook's ``publish`` answers use it."""
    if not isinstance(item, dict):
        raise InvalidPublish("invalid_field", "each message must be a JSON object")
    if ("user" in item) == ("topic" in item):
        raise InvalidPublish("invalid_field", "give exactly one of 'user' and 'topic'")
    if "body" not in item:
        raise InvalidPublish("missing_field", "'body' is required (a string or any JSON value)")
    if "user" in item:
        destination = item.get("destination", DEFAULT_DESTINATION)
        message = user_message(
            item["user"],
            item["body"],
            destination=destination,
            headers=item.get("headers"),
            max_bytes=max_bytes,
        )
    elif "destination" in item:
        raise InvalidPublish("invalid_field", "'destination' is for a user's message only")
    else:
        message = topic_message(
            item["topic"], item["body"], headers=item.get("headers"), max_bytes=max_bytes
        )
    return message, idempotency_key(item.get("id"))
