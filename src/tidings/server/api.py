"""The publish API: JSON in, JSON out, and a clear 4xx for everything wrong.

Errors are ``{"error": <machine code>, "message": <human text>}`` (see openapi.py).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from tidings import publish_rules
from tidings.auth import bearer_token
from tidings.errors import BrokerUnavailable, InvalidPublish
from tidings.inbox.base import Stored
from tidings.inbox.read_state import parse_read_request
from tidings.message import Message, id_key, user_channel
from tidings.server.openapi import LEGACY_ANSWER

if TYPE_CHECKING:
    from tidings.server.app import Server

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
    except InvalidPublish as exc:
        return error_response(413 if exc.code == "too_large" else 400, exc.code, exc.message)
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
        if not publish_rules.valid_name(to):
            raise ApiError(400, "invalid_field", "'to' must be a non-empty user id string")
        if "content" not in data:
            raise ApiError(400, "missing_field", "'content' is required")
        message = publish_rules.message(
            user_channel(to), "/message", data["content"], None, max_bytes=self._max_bytes
        )
        await self.server.node.publish(message)
        return web.Response(text=LEGACY_ANSWER, content_type="text/plain", charset="utf-8")

    async def publish_to_user(self, request: web.Request) -> web.Response:
        data = await self._read_object(request)
        message = publish_rules.user_message(
            request.match_info["user"],
            _body(data),
            destination=data.get("destination", "/message"),
            headers=data.get("headers"),
            max_bytes=self._max_bytes,
        )
        return await self._publish(request, data, message)

    async def publish_to_topic(self, request: web.Request) -> web.Response:
        data = await self._read_object(request)
        message = publish_rules.topic_message(
            request.match_info["topic"],
            _body(data),
            headers=data.get("headers"),
            max_bytes=self._max_bytes,
        )
        return await self._publish(request, data, message)

    @property
    def _max_bytes(self) -> int:
        return self.server.config.max_message_bytes

    async def _publish(
        self, request: web.Request, data: dict[str, object], message: Message
    ) -> web.Response:
        """Store and announce; 202 with the inbox id once the message is durably stored.

        The idempotency key is the ``Idempotency-Key`` header, or the body's ``id`` field.
        """
        key = publish_rules.idempotency_key(request.headers.get("Idempotency-Key", data.get("id")))
        message_id = await self.server.node.publish(message, idempotency_key=key)
        return web.json_response({"id": message_id}, status=202)

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


def _body(data: dict[str, object]) -> object:
    if "body" not in data:
        raise ApiError(400, "missing_field", "'body' is required (a string or any JSON value)")
    return data["body"]


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
