"""The ``/api/v1/me`` routes' part of the OpenAPI document (issue 16; server/me_api.py).

Kept beside ``openapi.py``, which merges ``me_paths`` and ``ME_SECURITY_SCHEME`` in.
"""

from typing import Any

from tidings.publish_rules import INBOX_ID_PATTERN, MAX_NAME, USER_PATTERN

Json = dict[str, Any]

ME_SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "The user's own JWT (`--auth jwt`), as the STOMP CONNECT carries it: its"
    " `sub` is the user whose inbox is read. Under `--auth none` (development) no token is"
    " taken and `?user=` names the user; under `--auth webhook` these routes answer 401.",
}
_USER_PARAMETER = {
    "name": "user",
    "in": "query",
    "description": "`--auth none` only (development): the user, believed as a CONNECT"
    " `login` is. Under `--auth jwt` it may be given and must then be the token's `sub`"
    " (403 otherwise).",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": USER_PATTERN},
}
INBOX_PAGE_PARAMETERS = [
    {
        "name": "after",
        "in": "query",
        "description": "Inbox id (`<ms>-<seq>`, STOMP `tidings-id`) to list after; `0`"
        " (default) lists from the oldest.",
        "schema": {"type": "string", "pattern": INBOX_ID_PATTERN, "default": "0"},
    },
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
]
"""A page of an inbox listing: this ``/me/inbox`` and openapi.py's ``/users/{user}/inbox``."""
_CORS = (
    " A browser page may call it from any `--allowed-origin`: the answer then carries"
    " `Access-Control-Allow-Origin` with that origin (403 for another origin)."
)
_ERRORS = {
    "400": "BadRequest",
    "401": "Unauthorized",
    "403": "Forbidden",
    "503": "BrokerUnavailable",
}


def me_paths() -> Json:
    inbox, unread, read = "/api/v1/me/inbox", "/api/v1/me/inbox/unread", "/api/v1/me/inbox/read"
    return {
        inbox: {"get": _inbox(), "options": _preflight("meInboxPreflight", "GET", inbox)},
        unread: {"get": _unread(), "options": _preflight("meUnreadPreflight", "GET", unread)},
        read: {"post": _read(), "options": _preflight("meReadPreflight", "POST", read)},
    }


def _operation(operation_id: str, summary: str, description: str, statuses: Json) -> Json:
    return {
        "operationId": operation_id,
        "tags": ["inbox"],
        "summary": summary,
        "description": description + _CORS,
        "security": [{"userToken": []}, {}],
        "parameters": [_USER_PARAMETER],
        "responses": statuses
        | {status: _ref("responses", name) for status, name in _ERRORS.items()},
    }


def _inbox() -> Json:
    operation = _operation(
        "meInbox",
        "The caller's retained messages after an id, with read flags",
        "As `GET /api/v1/users/{user}/inbox`, for the user the caller's credentials name.",
        {"200": {"description": "One page.", "content": _json("InboxPage")}},
    )
    operation["parameters"] = [_USER_PARAMETER, *INBOX_PAGE_PARAMETERS]
    return operation


def _unread() -> Json:
    return _operation(
        "meUnread",
        "How many retained messages the caller has not read",
        "A bell's first count, before a STOMP session tells it the changes.",
        {"200": {"description": "The unread count.", "content": _json("Unread")}},
    )


def _read() -> Json:
    operation = _operation(
        "meMarkRead",
        "Mark the caller's messages read (by id, or everything up to an id)",
        "As `POST /api/v1/users/{user}/inbox/read`: every session of the user receives an"
        " event on `/user/queue/inbox-state` with the new count.",
        {
            "200": {"description": "The unread count after.", "content": _json("Unread")},
            "413": _ref("responses", "TooLarge"),
        },
    )
    operation["requestBody"] = {"required": True, "content": _json("ReadRequest")}
    return operation


def _preflight(operation_id: str, method: str, path: str) -> Json:
    return {
        "operationId": operation_id,
        "tags": ["inbox"],
        "summary": f"CORS preflight of {method} {path}",
        "description": "With `Origin` and `Access-Control-Request-Method` (Fetch standard"
        " §3.2.2): an `--allowed-origin` gets the allowed method, the headers"
        " `Authorization, Content-Type` and `Access-Control-Max-Age`; another origin gets"
        " 403. Without them: 204 with `Allow`.",
        "security": [],
        "responses": {
            "204": {"description": "Allowed (or not a preflight: see `Allow`)."},
            "403": _ref("responses", "Forbidden"),
        },
    }


def _json(schema: str) -> Json:
    return {"application/json": {"schema": _ref("schemas", schema)}}


def _ref(section: str, name: str) -> Json:
    return {"$ref": f"#/components/{section}/{name}"}
