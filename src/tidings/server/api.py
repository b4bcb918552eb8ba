"""The publish API: JSON in, JSON out, and a clear 4xx for everything wrong.

Errors are ``{"error": <machine code>, "message": <human text>}`` (see openapi.py).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from tidings.auth import bearer_token
from tidings.destinations import user_destination
from tidings.errors import BrokerUnavailable
from tidings.inbox.base import Stored
from tidings.inbox.read_state import parse_read_request
from tidings.message import Message, encode_body, id_key, topic_channel, user_channel
from tidings.server.openapi import LEGACY_ANSWER, RESERVED_HEADERS

if TYPE_CHECKING:
    from tidings.server.app import Server

_HEADER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_BAD_VALUE_CHARS = re.compile(r"[\r\n\0]")

MAX_PRESENCE_QUERY = 10_000
MAX_INBOX_PAGE = 1000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure of an API handler into a JSON error body."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except BrokerUnavailable as exc:
        return error_response(503, "broker_unavailable", f"broker unavailable: {exc}")
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(413, "too_large", exc.text or "request body too large")


class PublishApi:
    def __init__(self, server: Server) -> None:
        self.server = server

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/pushToOneTest", self.push_to_one_test),
            web.post("/api/v1/users/{user}/messages", self.publish_to_user),
            web.post("/api/v1/topics/{topic:[^{}]+}/messages", self.publish_to_topic),
            web.get("/api/v1/users/{user}/presence", self.user_presence),
            web.get("/api/v1/users/{user}/inbox", self.inbox_listing),
            web.get("/api/v1/users/{user}/inbox/unread", self.inbox_unread),
            web.post("/api/v1/users/{user}/inbox/read", self.inbox_mark_read),
            web.post("/api/v1/presence/query", self.presence_query),
        ]

    async def inbox_listing(self, request: web.Request) -> web.Response:
        """The user's retained messages after ``after``, with ids and read flags."""
        self._check_caller(request)
        user = request.match_info["user"]
        after = request.query.get("after", "0")
        try:
            id_key(after)
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            raise ApiError(
                400, "invalid_field", "'after' must be an inbox id (or 0), 'limit' an integer"
            ) from None
        if not 1 <= limit <= MAX_INBOX_PAGE:
            raise ApiError(400, "invalid_field", f"'limit' must be 1..{MAX_INBOX_PAGE}")
        stored = await self.server.node.inbox.listing(user, after, limit=limit)
        return web.json_response({"messages": [_stored_json(s) for s in stored]})

    async def inbox_unread(self, request: web.Request) -> web.Response:
        self._check_caller(request)
        unread = await self.server.node.inbox.unread(request.match_info["user"])
        return web.json_response({"unread": unread})

    async def inbox_mark_read(self, request: web.Request) -> web.Response:
        """``{"ids": [...]}`` or ``{"up_to": id}``; the user's sessions get an inbox-state event."""
        data = await self._read_object(request)
        try:
            ids, up_to = parse_read_request(data)
        except ValueError as exc:
            raise ApiError(400, "invalid_field", str(exc)) from None
        user = request.match_info["user"]
        unread = await self.server.node.mark_read(user, ids=ids, up_to=up_to)
        return web.json_response({"unread": unread})

    async def user_presence(self, request: web.Request) -> web.Response:
        """``{"online", "sessions", "nodes"}`` for one user, cluster-wide."""
        self._check_caller(request)
        presence = await self.server.node.presence.get(request.match_info["user"])
        return web.json_response(
            {"online": presence.online, "sessions": presence.sessions, "nodes": presence.nodes}
        )

    async def presence_query(self, request: web.Request) -> web.Response:
        """``{"users": [...]}`` → ``{"users": {user: online}}`` in one broker round trip."""
        data = await self._read_object(request)
        users = data.get("users")
        if not isinstance(users, list) or not all(isinstance(u, str) and u for u in users):
            raise ApiError(400, "invalid_field", "'users' must be a list of user id strings")
        if len(users) > MAX_PRESENCE_QUERY:
            raise ApiError(
                400, "invalid_field", f"ask for at most {MAX_PRESENCE_QUERY} users at a time"
            )
        online = await self.server.node.presence.query(users)
        return web.json_response({"users": online})

    async def push_to_one_test(self, request: web.Request) -> web.Response:
        """The seed's contract: ``{code, form, to, content}``; ``content`` to /user/{to}/message."""
        data = await self._read_object(request)
        to = data.get("to")
        if isinstance(to, int) and not isinstance(to, bool):
            to = str(to)
        if not isinstance(to, str) or not _valid_name(to):
            raise ApiError(400, "invalid_field", "'to' must be a non-empty user id string")
        if "content" not in data:
            raise ApiError(400, "missing_field", "'content' is required")
        await self._publish(user_channel(to), "/message", data["content"], {})
        return web.Response(text=LEGACY_ANSWER, content_type="text/plain", charset="utf-8")

    async def publish_to_user(self, request: web.Request) -> web.Response:
        data = await self._read_object(request)
        user = request.match_info["user"]
        if not _valid_name(user):
            raise ApiError(400, "invalid_field", "user id must be non-empty printable text")
        destination = data.get("destination", "/message")
        if not isinstance(destination, str):
            raise ApiError(400, "invalid_field", "'destination' must be a string like /message")
        try:
            destination = user_destination(destination)
        except ValueError as exc:
            raise ApiError(400, "invalid_field", f"'destination': {exc}") from None
        message_id = await self._publish(
            user_channel(user),
            destination,
            _body(data),
            _headers(data),
            _idempotency(request, data),
        )
        return web.json_response({"id": message_id}, status=202)

    async def publish_to_topic(self, request: web.Request) -> web.Response:
        data = await self._read_object(request)
        topic = request.match_info["topic"]
        if not _valid_name(topic) or "//" in topic or topic.endswith("/"):
            raise ApiError(400, "invalid_field", "topic must be a name like 'public' or 'a/b'")
        message_id = await self._publish(
            topic_channel(topic),
            f"/topic/{topic}",
            _body(data),
            _headers(data),
            _idempotency(request, data),
        )
        return web.json_response({"id": message_id}, status=202)

    async def _publish(
        self,
        channel: str,
        destination: str,
        body: object,
        headers: dict[str, str],
        idempotency_key: str | None = None,
    ) -> str:
        """Store and announce; returns the inbox id once the message is durably stored."""
        encoded, content_type = encode_body(body)
        if len(encoded) > self.server.config.max_message_bytes:
            raise ApiError(
                413,
                "too_large",
                f"message body is {len(encoded)} bytes; "
                f"the limit is {self.server.config.max_message_bytes}",
            )
        content_type = headers.pop("content-type", content_type)
        node = self.server.node
        message = Message(
            id="",  # the inbox assigns it when it stores the message
            channel=channel,
            destination=destination,
            body=encoded,
            content_type=content_type,
            headers=tuple(headers.items()),
        )
        return await node.publish(message, idempotency_key=idempotency_key)

    async def _read_object(self, request: web.Request) -> dict[str, object]:
        self._check_caller(request)
        raw = await request.read()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_json", "request body must be a JSON object")
        return data

    def _check_caller(self, request: web.Request) -> None:
        """``--api-key`` set: require it as a bearer token; else accept loopback callers only."""
        api_key = self.server.config.api_key
        if api_key:
            given = bearer_token(request.headers.get("Authorization"))
            if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
                raise ApiError(
                    401, "unauthorized", "missing or wrong 'Authorization: Bearer <api key>'"
                )
            return
        if not _is_loopback(caller_address(request)):
            raise ApiError(
                403, "forbidden", "no --api-key is configured: only loopback callers may publish"
            )


def _idempotency(request: web.Request, data: dict[str, object]) -> str | None:
    """The ``Idempotency-Key`` header, or the body's ``id`` field (issue 4)."""
    key = request.headers.get("Idempotency-Key", data.get("id"))
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= 200 or not key.isprintable():
        raise ApiError(400, "invalid_field", "the idempotency key must be 1-200 printable chars")
    return key


def _stored_json(stored: Stored) -> dict[str, object]:
    message = stored.message
    body: object = message.body.decode("utf-8", "replace")
    if message.content_type.startswith("application/json"):
        # A client SEND may label any bytes JSON: show those as text rather than fail.
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(message.body)
    return {
        "id": message.id,
        "destination": message.destination,
        "content_type": message.content_type,
        "headers": dict(message.headers),
        "body": body,
        "read": stored.read,
    }


def _valid_name(name: str) -> bool:
    return bool(name) and name.isprintable() and not name.isspace()


def _body(data: dict[str, object]) -> object:
    if "body" not in data:
        raise ApiError(400, "missing_field", "'body' is required (a string or any JSON value)")
    return data["body"]


def _headers(data: dict[str, object]) -> dict[str, str]:
    headers = data.get("headers", {})
    if not isinstance(headers, dict):
        raise ApiError(400, "invalid_field", "'headers' must be an object of strings")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ApiError(
                400, "invalid_field", f"header name {name!r} must match [A-Za-z0-9_.-]{{1,64}}"
            )
        lowered = name.lower()
        if lowered in RESERVED_HEADERS:
            raise ApiError(400, "invalid_field", f"header {name!r} is set by the server")
        if not isinstance(value, str) or _BAD_VALUE_CHARS.search(value):
            raise ApiError(
                400, "invalid_field", f"header {name!r} must be a string without CR, LF or NUL"
            )
        checked[lowered if lowered == "content-type" else name] = value
    return checked


def caller_address(request: web.Request) -> str | None:
    """The peer, or for a request relayed by a local proxy, the client the proxy names.

    nginx's ``$proxy_add_x_forwarded_for`` appends the address it saw, so the rightmost
    X-Forwarded-For entry is the one a client cannot forge. Without this, every request
    through a proxy on the same machine would pass the loopback rule.
    """
    peer = request.remote
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded and _is_loopback(peer):
        return forwarded.split(",")[-1].strip()
    return peer


def _is_loopback(remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False
