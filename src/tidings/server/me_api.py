"""The user's own inbox over HTTP, for browser pages (issue 16 item 3).

``GET /api/v1/me/inbox``, ``GET /api/v1/me/inbox/unread`` and ``POST /api/v1/me/inbox/read``
answer as the API-key routes ``/api/v1/users/{user}/inbox...`` do (server/api.py), for the
user the caller's own credentials name:

* ``--auth jwt``: ``Authorization: Bearer <jwt>``, verified as a CONNECT's token is (exp,
  aud, iss, sub; tidings.auth). A ``?user=`` other than the token's ``sub`` is refused (403).
* ``--auth none`` (development): ``?user=<id>``, believed as a CONNECT's ``login`` is.
* ``--auth webhook``: refused (401): only the back end knows its users' credentials, and
  it reads an inbox through the API-key routes.

CORS (Fetch standard §3.2): a request whose ``Origin`` the trust policy allows
(``--allowed-origin``, the list that guards WebSocket and SockJS) gets
``Access-Control-Allow-Origin: <that origin>`` and ``Vary: Origin``; its preflight
(``OPTIONS`` with ``Access-Control-Request-Method``) gets the methods, the headers
``Authorization, Content-Type`` and a max age. Another Origin gets no CORS header and a
403 JSON answer, to a preflight and to a request alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from tidings.auth import bearer_token
from tidings.errors import AuthError
from tidings.publish_rules import valid_user
from tidings.server.api import (
    FAILURES,
    ApiError,
    Handler,
    error_response,
    failure_answer,
    inbox_page,
    mark_read,
    read_object,
)

if TYPE_CHECKING:
    from tidings.metrics import ServerStats
    from tidings.node import Node
    from tidings.trust import TrustPolicy

INBOX = "/api/v1/me/inbox"
UNREAD = "/api/v1/me/inbox/unread"
READ = "/api/v1/me/inbox/read"
CORS_MAX_AGE_S = 600  # a preflight's answer is cached this long (Chromium caps it at 7200)
ALLOW_HEADERS = "Authorization, Content-Type"
ORIGIN_REFUSED = "a page of this Origin may not call this API (--allowed-origin)"
_USER_RULE = "a user id is 1-200 characters of text: no control character, no '/'"


class MeApi:
    """The ``/api/v1/me`` routes: who the caller is, and which pages may ask."""

    def __init__(self, node: Node, trust: TrustPolicy, stats: ServerStats, *, auth: str) -> None:
        self.node = node
        self.trust = trust
        self.stats = stats
        self.auth = auth

    def routes(self) -> list[web.RouteDef]:
        return [
            *self._route("GET", INBOX, self.inbox),
            *self._route("GET", UNREAD, self.unread),
            *self._route("POST", READ, self.read),
        ]

    # -- the routes ------------------------------------------------------------------------
    async def inbox(self, request: web.Request) -> web.Response:
        """The caller's retained messages after ``?after`` (the API-key route's answer)."""
        return web.json_response(await inbox_page(self.node, self.user(request), request.query))

    async def unread(self, request: web.Request) -> web.Response:
        return web.json_response({"unread": await self.node.inbox.unread(self.user(request))})

    async def read(self, request: web.Request) -> web.Response:
        """``{"ids": [...]}`` or ``{"up_to": id}``; every session of the user is told."""
        user = self.user(request)
        data = read_object(await request.read())
        return web.json_response(await mark_read(self.node, user, data))

    # -- who is asking ---------------------------------------------------------------------
    def user(self, request: web.Request) -> str:
        """The caller's user id; ApiError 401 (no or bad credentials), 403 or 400."""
        asked = request.query.get("user")
        verifier = self.trust.verifier
        if self.auth == "jwt" and verifier is not None:
            token = bearer_token(request.headers.get("Authorization"))
            if token is None:
                self.stats.auth_failure("missing_token")
                raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <jwt>'")
            try:
                user = verifier.identity(token).user
            except AuthError as exc:
                self.stats.auth_failure(exc.reason)
                raise ApiError(401, "unauthorized", str(exc)) from None
            if asked is not None and asked != user:
                self.stats.auth_failure("forbidden_destination")
                raise ApiError(403, "forbidden", f"user {user} may read only their own inbox")
            return user
        if self.auth == "none":
            if asked is None:
                raise ApiError(401, "unauthorized", "with --auth none, name the user: ?user=<id>")
            if not valid_user(asked):
                raise ApiError(400, "invalid_field", f"'user': {_USER_RULE}")
            return asked
        raise ApiError(
            401,
            "unauthorized",
            f"the /api/v1/me routes take a user's JWT (--auth jwt), not --auth {self.auth}: "
            "read a user's inbox through /api/v1/users/{user}/inbox with the API key",
        )

    # -- CORS --------------------------------------------------------------------------------
    def _route(self, method: str, path: str, handler: Handler) -> list[web.RouteDef]:
        """``method`` on ``path`` with CORS, and its preflight."""

        async def serve(request: web.Request) -> web.StreamResponse:
            cors = self._cors(request)
            if cors is None:
                return error_response(403, "forbidden", ORIGIN_REFUSED, {"Vary": "Origin"})
            try:
                response = await handler(request)
            except FAILURES as exc:
                response = failure_answer(exc).response()
            if response.status == 401 and self.auth == "jwt":
                response.headers["WWW-Authenticate"] = 'Bearer realm="tidings"'  # RFC 6750 §3
            response.headers.update(cors)
            return response

        async def preflight(request: web.Request) -> web.StreamResponse:
            allow = f"{method}, OPTIONS"
            headers = request.headers
            if "Origin" not in headers or "Access-Control-Request-Method" not in headers:
                return web.Response(status=204, headers={"Allow": allow})  # not a preflight
            cors = self._cors(request)
            if cors is None:
                return error_response(403, "forbidden", ORIGIN_REFUSED, {"Vary": "Origin"})
            cors |= {
                "Access-Control-Allow-Methods": allow,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
            }
            return web.Response(status=204, headers=cors)

        return [web.route(method, path, serve), web.options(path, preflight)]

    def _cors(self, request: web.Request) -> dict[str, str] | None:
        """The CORS headers of an answer to ``request``; None if its Origin is refused."""
        origin = request.headers.get("Origin")
        if origin is None:
            return {"Vary": "Origin"}  # not a page's fetch; a cache must still tell them apart
        if not self.trust.origin_allowed(origin, request.headers.get("Host")):
            return None
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
