"""The publish API: JSON in, JSON out, and a clear 4xx for everything wrong.

Errors are ``{"error": <machine code>, "message": <human text>}`` (see openapi.py).
The publish routes have two servers: aiohttp's router, and the edge (server/api_edge.py),
which serves them without aiohttp on connections that start with a publish. Both run
the same code here (``PublishApi.start`` and what it calls) and write its ``Answer``, at
once or when the ``Pending`` publish it started has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from tidings import publish_rules
from tidings.config import Config
from tidings.errors import BrokerUnavailable, InvalidPublish, ReplicasUnavailable
from tidings.inbox.base import Stored
from tidings.inbox.read_state import parse_read_request
from tidings.logs import RateLimited
from tidings.message import Message, user_channel
from tidings.server.openapi import LEGACY_ANSWER, MAX_PRESENCE_QUERY, MAX_SAFE_INTEGER
from tidings.trust import Refusal, join_field_lines

if TYPE_CHECKING:
    from tidings.metrics import ServerStats
    from tidings.node import Node
    from tidings.trust import TrustPolicy

log = logging.getLogger(__name__)
# Refused publishers: one line per reason every 10 s, however many requests are refused.
throttled = RateLimited(log)

MAX_INBOX_PAGE = 1000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A publish route's handler: (its path parameter, the JSON body, the request's fields) ->
# its answer, or the publish it started. Invalid requests raise one of FAILURES.
Publish = Callable[[str, dict[str, object], Mapping[str, str]], "Answer | Pending"]

# The publish routes' paths as aiohttp's router matches them: ``{user}`` is [^{}/]+.
_USER_ROUTE = re.compile(r"/api/v1/users/([^{}/]+)/messages")
_TOPIC_ROUTE = re.compile(r"/api/v1/topics/([^{}]+)/messages")
_BATCH_ROUTE = "/api/v1/messages"
_LIMIT = re.compile(r"[0-9]{1,4}")
_USER_RULE = (
    f"a user id is 1-{publish_rules.MAX_NAME} characters of text: no control character, no '/'"
)
# The publish routes' templates, as aiohttp's router spells them (``canonical``): the route
# label of their response counts.
PUBLISH_TEMPLATES = (
    "/pushToOneTest",
    "/api/v1/users/{user}/messages",
    "/api/v1/topics/{topic}/messages",
    _BATCH_ROUTE,
)


def client_max_size(config: Config) -> int:
    """The largest request body taken: two messages' worth of JSON-escaped text, and more."""
    return 2 * config.max_message_bytes + 64 * 1024


@dataclass(slots=True)  # not frozen: a frozen one costs ~1 µs more to make
class Answer:
    """An API response before a server writes it; its text is always UTF-8."""

    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, data: object, status: int = 200) -> Answer:
        # json.dumps, as aiohttp's json_response: the same bytes from either server.
        return cls(status, json.dumps(data).encode())

    def response(self) -> web.Response:
        return web.Response(
            body=self.body, status=self.status, content_type=self.content_type, charset="utf-8"
        )


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


Failure = ApiError | InvalidPublish | BrokerUnavailable | web.HTTPRequestEntityTooLarge
FAILURES = (ApiError, InvalidPublish, BrokerUnavailable, web.HTTPRequestEntityTooLarge)


def failure_answer(exc: Failure) -> Answer:
    """The JSON error answer of a failure the caller is told about."""
    status, code, message = _failure(exc)
    return Answer.json({"error": code, "message": message}, status)


def _failure(exc: Failure) -> tuple[int, str, str]:
    """A failure's HTTP status, error code and message."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message
    if isinstance(exc, InvalidPublish):
        return 413 if exc.code == "too_large" else 400, exc.code, exc.message
    if isinstance(exc, ReplicasUnavailable):
        return 503, "replicas_unavailable", f"not enough replicas: {exc}"
    if isinstance(exc, BrokerUnavailable):
        return 503, "broker_unavailable", f"broker unavailable: {exc}"
    return 413, "too_large", exc.text or "request body too large"


LEGACY_ANSWER_OK = Answer(200, LEGACY_ANSWER.encode(), "text/plain")


@dataclass(slots=True)  # not frozen: a frozen one costs ~1 µs more to make
class Pending:
    """A publish under way: ``answer`` turns its outcome's result into the Answer.

    The edge answers from a done callback, aiohttp's handlers await ``finished``: no
    task and no chain of coroutines per request (docs/decisions.md).
    """

    outcome: asyncio.Future[Any]
    answer: Callable[[Any], Answer]

    def settled(self) -> Answer:
        """The answer once ``outcome`` is done: a failure's own answer if it failed."""
        try:
            result = self.outcome.result()
        except FAILURES as exc:
            return failure_answer(exc)
        return self.answer(result)


async def finished(outcome: Answer | Pending) -> Answer:
    """The answer of a route's outcome, once its publish (if any) has ended."""
    if isinstance(outcome, Answer):
        return outcome
    with contextlib.suppress(*FAILURES):
        await outcome.outcome
    return outcome.settled()


def _accepted(message_id: str) -> Answer:
    # An inbox id is <ms>-<seq>, nothing to escape: these are the bytes json.dumps makes.
    return Answer(202, b'{"id": "%s"}' % message_id.encode())


def _legacy_ok(_: object) -> Answer:
    return LEGACY_ANSWER_OK


def _same(answer: Answer) -> Answer:
    return answer


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure of an API handler into a JSON error body, and on the API's paths
    (``/api/v1/...``, ``/pushToOneTest``) the router's 404 and 405 too."""
    try:
        return await handler(request)
    except FAILURES as exc:
        return failure_answer(exc).response()
    except web.HTTPMethodNotAllowed as exc:
        if not _is_api_path(request.path):
            raise
        allowed = ", ".join(sorted(exc.allowed_methods))
        answer = Answer.json(
            {
                "error": "method_not_allowed",
                "message": f"{request.method} is not allowed here: use {allowed}",
            },
            405,
        )
        response = answer.response()
        response.headers["Allow"] = allowed
        return response
    except web.HTTPNotFound:
        if not _is_api_path(request.path):
            raise
        return Answer.json(
            {"error": "not_found", "message": f"no API route {request.path}"}, 404
        ).response()


def _is_api_path(path: str) -> bool:
    return path.startswith("/api/") or path == "/pushToOneTest"


class PublishApi:
    """The HTTP API's routes: the node to publish on, the policy that says who may."""

    def __init__(
        self, node: Node, trust: TrustPolicy, stats: ServerStats, *, max_message_bytes: int
    ) -> None:
        self.node = node
        self.trust = trust
        self.stats = stats
        self._max_bytes = max_message_bytes
        # Responses by status of each publish route, as publish_route gives them out.
        self._counts = [stats.route_counts(template) for template in PUBLISH_TEMPLATES]

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/pushToOneTest", self._served_by_aiohttp(self.push_to_one_test)),
            web.post(
                "/api/v1/users/{user}/messages",
                self._served_by_aiohttp(self.publish_to_user, "user"),
            ),
            web.post(
                "/api/v1/topics/{topic:[^{}]+}/messages",
                self._served_by_aiohttp(self.publish_to_topic, "topic"),
            ),
            web.post(_BATCH_ROUTE, self._served_by_aiohttp(self.publish_batch)),
            web.get("/api/v1/users/{user}/presence", self.user_presence),
            web.get("/api/v1/users/{user}/inbox", self.inbox_listing),
            web.get("/api/v1/users/{user}/inbox/unread", self.inbox_unread),
            web.post("/api/v1/users/{user}/inbox/read", self.inbox_mark_read),
            web.post("/api/v1/presence/query", self.presence_query),
        ]

    def publish_route(self, path: str) -> tuple[Publish, str, dict[int, int]] | None:
        """The publish route aiohttp's router picks for ``path``, its parameter, and the
        count of its responses by status (``ServerStats.route_counts`` of its template,
        aiohttp's ``canonical``), or None.

        ``path`` must have no %-escapes or dot segments, which aiohttp's router decodes.
        """
        if path == "/pushToOneTest":
            return self.push_to_one_test, "", self._counts[0]
        if match := _USER_ROUTE.fullmatch(path):
            return self.publish_to_user, match[1], self._counts[1]
        if match := _TOPIC_ROUTE.fullmatch(path):
            return self.publish_to_topic, match[1], self._counts[2]
        if path == _BATCH_ROUTE:
            return self.publish_batch, "", self._counts[3]
        return None

    def start(
        self,
        route: Publish,
        param: str,
        headers: Mapping[str, str],
        peer: str | None,
        body: bytes,
    ) -> Answer | Pending:
        """A whole publish request as the edge serves it: its answer, or the publish it
        started; failures found before publishing become their answer."""
        try:
            self.check_caller(headers, peer)
            return route(param, read_object(body), headers)
        except FAILURES as exc:
            return failure_answer(exc)

    def _served_by_aiohttp(self, route: Publish, param: str = "") -> Handler:
        async def handler(request: web.Request) -> web.Response:
            started = time.perf_counter()
            data = await self._read_object(request)
            value = request.match_info[param] if param else ""
            outcome = route(value, data, request.headers)
            answer = await finished(outcome)
            if isinstance(outcome, Pending) and answer.status < 300:
                self.stats.publish_latency.observe(time.perf_counter() - started)
            return answer.response()

        return handler

    # -- the publish routes ----------------------------------------------------------------
    def push_to_one_test(
        self, _: str, data: dict[str, object], headers: Mapping[str, str]
    ) -> Pending:
        """The seed's contract: ``{code, form, to, content}``; ``content`` to /user/{to}/message."""
        to = data.get("to")
        if isinstance(to, float) and to.is_integer():
            to = int(to)  # JSON Schema: 1.0 is an integer
        if isinstance(to, int) and not isinstance(to, bool) and abs(to) <= MAX_SAFE_INTEGER:
            to = str(to)  # as Spring's Jackson binds a JSON number to a String field
        if not publish_rules.valid_user(to):
            raise ApiError(400, "invalid_field", f"'to': {_USER_RULE}")
        if "content" not in data:
            raise ApiError(400, "missing_field", "'content' is required")
        message = publish_rules.message(
            user_channel(to), "/message", data["content"], None, max_bytes=self._max_bytes
        )
        return Pending(self.node.submit(message), _legacy_ok)

    def publish_to_user(
        self, user: str, data: dict[str, object], headers: Mapping[str, str]
    ) -> Pending:
        return self._publish(self._user_message(user, data), data, headers)

    def publish_to_topic(
        self, topic: str, data: dict[str, object], headers: Mapping[str, str]
    ) -> Pending:
        return self._publish(self._topic_message(topic, data), data, headers)

    def _user_message(self, user: object, data: dict[str, object]) -> Message:
        return publish_rules.user_message(
            user,
            _body(data),
            destination=data.get("destination", publish_rules.DEFAULT_DESTINATION),
            headers=data.get("headers"),
            max_bytes=self._max_bytes,
        )

    def _topic_message(self, topic: object, data: dict[str, object]) -> Message:
        return publish_rules.topic_message(
            topic, _body(data), headers=data.get("headers"), max_bytes=self._max_bytes
        )

    def _publish(
        self, message: Message, data: dict[str, object], headers: Mapping[str, str]
    ) -> Pending:
        """Store and announce; 202 with the inbox id once the message is durably stored.

        The idempotency key is the ``Idempotency-Key`` header, or the body's ``id`` field;
        both are checked when both are given, and the header wins.
        """
        key = publish_rules.idempotency_key(data.get("id"))
        if "idempotency-key" in headers:
            key = publish_rules.idempotency_key(headers["idempotency-key"])
        return Pending(self.node.submit(message, idempotency_key=key), _accepted)

    def publish_batch(
        self, _: str, data: dict[str, object], headers: Mapping[str, str]
    ) -> Answer | Pending:
        """``{"messages": [...]}``: every item checked as its single route checks it, then
        all published at once; 202 ``{"ids"}`` in item order, or 503 with the ids stored.

        The first invalid item refuses the whole batch (``index`` names it), nothing stored.
        The publishes start in item order, so their calls reach Redis in one write, in item
        order, and the messages of one channel are stored (and delivered) in item order.
        """
        items = data.get("messages")
        if not isinstance(items, list) or not 1 <= len(items) <= publish_rules.MAX_BATCH:
            raise ApiError(
                400,
                "invalid_field",
                f"'messages' must be a list of 1 to {publish_rules.MAX_BATCH} message objects",
            )
        if "idempotency-key" in headers:
            raise ApiError(
                400,
                "invalid_field",
                "a batch takes no Idempotency-Key header: give each message an 'id'",
            )
        batch: list[tuple[Message, str | None]] = []
        for index, item in enumerate(items):
            try:
                batch.append(self._batch_item(item))
            except (ApiError, InvalidPublish) as exc:
                status, code, text = _failure(exc)
                return Answer.json(
                    {"error": code, "message": f"messages[{index}]: {text}", "index": index},
                    status,
                )
        # Every publish submitted now, in item order: Node.submit queues each call without
        # awaiting, so the calls go to Redis in one write and Redis runs them in that order.
        submit = self.node.submit
        started: list[asyncio.Future[str] | BrokerUnavailable] = []
        for message, key in batch:
            try:
                started.append(submit(message, idempotency_key=key))
            except BrokerUnavailable as exc:  # the node is not running: this item failed
                started.append(exc)
        return Pending(asyncio.ensure_future(_batch_answer(started)), _same)

    def _batch_item(self, item: object) -> tuple[Message, str | None]:
        """One item of a batch: its message and idempotency key, or why not."""
        return publish_rules.batch_item(item, max_bytes=self._max_bytes)

    # -- the other routes (aiohttp only) ---------------------------------------------------
    async def inbox_listing(self, request: web.Request) -> web.Response:
        """The user's retained messages after ``after``, with ids and read flags."""
        self._check_caller(request)
        return web.json_response(await inbox_page(self.node, _user(request), request.query))

    async def inbox_unread(self, request: web.Request) -> web.Response:
        self._check_caller(request)
        unread = await self.node.inbox.unread(_user(request))
        return web.json_response({"unread": unread})

    async def inbox_mark_read(self, request: web.Request) -> web.Response:
        """``{"ids": [...]}`` or ``{"up_to": id}``; the user's sessions get an inbox-state event."""
        data = await self._read_object(request)
        return web.json_response(await mark_read(self.node, _user(request), data))

    async def user_presence(self, request: web.Request) -> web.Response:
        """``{"online", "sessions", "nodes"}`` for one user, cluster-wide."""
        self._check_caller(request)
        presence = await self.node.presence.get(_user(request))
        return web.json_response(
            {"online": presence.online, "sessions": presence.sessions, "nodes": presence.nodes}
        )

    async def presence_query(self, request: web.Request) -> web.Response:
        """``{"users": [...]}`` → ``{"users": {user: online}}`` in one broker round trip."""
        data = await self._read_object(request)
        users = data.get("users")
        if not isinstance(users, list):
            raise ApiError(400, "invalid_field", "'users' must be a list of user ids")
        for index, user in enumerate(users):
            if not publish_rules.valid_user(user):
                raise ApiError(400, "invalid_field", f"'users'[{index}]: {_USER_RULE}")
        if len(users) > MAX_PRESENCE_QUERY:
            raise ApiError(
                400, "invalid_field", f"ask for at most {MAX_PRESENCE_QUERY} users at a time"
            )
        online = await self.node.presence.query(users)
        return web.json_response({"users": online})

    async def _read_object(self, request: web.Request) -> dict[str, object]:
        """The caller checked, then the body read (413 past client_max_size) as an object."""
        self._check_caller(request)
        return read_object(await request.read())

    def _check_caller(self, request: web.Request) -> None:
        # Every X-Forwarded-For line, in order: a proxy may add one of its own (tidings.trust).
        forwarded_for = join_field_lines(request.headers.getall("X-Forwarded-For", ()))
        authorization, peer = request.headers.get("Authorization"), request.remote
        refusal = self.trust.api_refusal(authorization, peer, forwarded_for)
        if refusal is not None:
            self._refuse(refusal, peer, forwarded_for)

    # -- shared by every route and both servers --------------------------------------------
    def check_caller(self, headers: Mapping[str, str], peer: str | None) -> None:
        """ApiError unless the trust policy lets this caller use the API (``--api-key``, or
        a loopback client without one).

        ``headers`` maps lower-case names to values, a repeated field's lines joined by
        ", " in order (the edge's ``RequestHead.headers``).
        """
        forwarded_for = headers.get("x-forwarded-for")
        refusal = self.trust.api_refusal(headers.get("authorization"), peer, forwarded_for)
        if refusal is not None:
            self._refuse(refusal, peer, forwarded_for)

    def _refuse(self, refusal: Refusal, peer: str | None, forwarded_for: str | None) -> None:
        """Count, log (rate-limited) and raise the refusal as the API's error answer."""
        self.stats.auth_failure(refusal.reason)
        client = self.trust.client_address(peer, forwarded_for)
        throttled.warning(
            refusal.log,
            "publish refused: %s, from %s (peer %s)",
            refusal.log,
            client or "an unknown client",
            peer,
        )
        raise ApiError(refusal.status, refusal.code, refusal.message)


def read_object(raw: bytes) -> dict[str, object]:
    """The request body as a JSON object, or ApiError 400 ``invalid_json``."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    return data


async def _batch_answer(started: list[asyncio.Future[str] | BrokerUnavailable]) -> Answer:
    """A batch's answer once every publish has ended: 202 with the ids in item order, or
    503 with the ids stored and null for the rest."""
    outcomes: list[str | BrokerUnavailable] = []
    error: Exception | None = None
    for outcome in started:  # each awaited: no exception is left unretrieved
        try:
            outcomes.append(outcome if isinstance(outcome, BrokerUnavailable) else await outcome)
        except BrokerUnavailable as exc:
            outcomes.append(exc)
        except Exception as exc:  # a bug: raised once every publish has ended
            error = error or exc
    if error is not None:
        raise error
    stored = [outcome for outcome in outcomes if isinstance(outcome, str)]
    if len(stored) == len(outcomes):
        # Inbox ids are <ms>-<seq>, nothing to escape: the bytes json.dumps makes.
        return Answer(202, b'{"ids": ["%s"]}' % '", "'.join(stored).encode())
    failures = [outcome for outcome in outcomes if not isinstance(outcome, str)]
    return Answer.json(
        {
            "error": "broker_unavailable",
            "message": f"broker unavailable: {failures[0]} ({len(failures)} of"
            f" {len(outcomes)} messages not stored: their ids are null)",
            "ids": [outcome if isinstance(outcome, str) else None for outcome in outcomes],
        },
        503,
    )


async def inbox_page(node: Node, user: str, query: Mapping[str, str]) -> dict[str, object]:
    """``{"messages": [...]}``: ``user``'s retained messages after ``?after`` (``?limit``)."""
    after = query.get("after", "0")
    if not publish_rules.valid_inbox_id(after):
        raise ApiError(400, "invalid_field", "'after' must be an inbox id like 1700000000000-0")
    limit_text = query.get("limit", "100")
    limit = int(limit_text) if _LIMIT.fullmatch(limit_text) else 0
    if not 1 <= limit <= MAX_INBOX_PAGE:
        raise ApiError(400, "invalid_field", f"'limit' must be an integer 1..{MAX_INBOX_PAGE}")
    stored = await node.inbox.listing(user, after, limit=limit)
    return {"messages": [_stored_json(s) for s in stored]}


async def mark_read(node: Node, user: str, data: dict[str, object]) -> dict[str, object]:
    """``{"ids": [...]}`` or ``{"up_to": id}`` marked read; ``{"unread": n}`` after."""
    try:
        ids, up_to = parse_read_request(data)
    except ValueError as exc:
        raise ApiError(400, "invalid_field", str(exc)) from None
    return {"unread": await node.mark_read(user, ids=ids, up_to=up_to)}


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


def _user(request: web.Request) -> str:
    """The ``{user}`` of a route's path, checked as a publish checks it."""
    user = request.match_info["user"]
    if not publish_rules.valid_user(user):
        raise ApiError(400, "invalid_field", f"the user id in the path: {_USER_RULE}")
    return user


def _body(data: dict[str, object]) -> object:
    if "body" not in data:
        raise ApiError(400, "missing_field", "'body' is required (a string or any JSON value)")
    return data["body"]
