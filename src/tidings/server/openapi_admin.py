"""The admin API's part of the OpenAPI document (issue 17; docs/admin.md).

Kept beside ``openapi.py`` (which merges ``admin_paths`` and ``admin_schemas`` in) so
that the operator's routes read as one piece.
"""

from typing import Any

from tidings.publish_rules import INBOX_ID_PATTERN, MAX_NAME, USER_PATTERN

Json = dict[str, Any]

MAX_LIST = 1000
"""The most channels or users one listing returns (server/admin.py checks it)."""
MAX_REASON = 200
"""The longest disconnect reason (it becomes an ERROR frame's ``message`` header)."""

_ADMIN_DESCRIPTION = (
    " Cluster-wide: any node answers for every live node (the node registry and a request"
    " over the broker to each node, answered within 2 s; nodes that did not answer are"
    " listed in `unanswered`). Every call writes one audit log line."
)
_USER_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME,
    "pattern": USER_PATTERN,
    "description": "A user id: text without control characters or `/`, not only white space.",
}
_ERRORS = {
    "400": "BadRequest",
    "401": "Unauthorized",
    "403": "Forbidden",
    "413": "TooLarge",
    "503": "BrokerUnavailable",
}
_UNANSWERED = {
    "type": "array",
    "items": {"type": "string"},
    "description": "Live nodes that did not answer within 2 s: their part is missing.",
}
_COMPLETE = {
    "type": "boolean",
    "description": "False when a node had more matches than `limit` or did not answer:"
    " the list may then miss entries or undercount them.",
}


def admin_paths() -> Json:
    return {
        "/api/v1/admin/nodes": {"get": _nodes()},
        "/api/v1/admin/users": {"get": _users()},
        "/api/v1/admin/users/{user}/sessions": {"get": _sessions()},
        "/api/v1/admin/channels": {"get": _channels()},
        "/api/v1/users/{user}/disconnect": {"post": _disconnect()},
        "/admin": {"get": _console()},
    }


def admin_inbox_delete() -> Json:
    """``DELETE /api/v1/users/{user}/inbox`` (the path's GET is the inbox listing)."""
    operation = _operation(
        "inboxDelete",
        "Delete the user's stored messages: all, or up to an id",
        "InboxDeleted",
        statuses=("400", "401", "403", "503"),
        user=True,
    )
    operation["tags"] = ["inbox", "admin"]
    operation["description"] = (
        "The oldest messages go, up to `up_to` (all without it), on every node at once"
        " (the inbox is shared storage); their read and acknowledged marks go with them."
        " Every session of the user subscribed to `/user/queue/inbox-state` receives"
        " `{unread, last, read: [], up_to: null, deleted[, deleted_up_to]}` (`last`: the"
        " newest id the count took in). A resume from a"
        " deleted id reports `tidings-gap`. Writes an audit log line."
    )
    operation["parameters"].append(
        {
            "name": "up_to",
            "in": "query",
            "description": "Delete the messages with ids up to and including this one.",
            "schema": {"type": "string", "pattern": INBOX_ID_PATTERN},
        }
    )
    return operation


def _operation(
    operation_id: str, summary: str, schema: str, *, statuses: tuple[str, ...], user: bool
) -> Json:
    parameters = []
    if user:
        parameters.append(
            {
                "name": "user",
                "in": "path",
                "required": True,
                "description": "The user id.",
                "schema": _USER_ID,
            }
        )
    return {
        "operationId": operation_id,
        "tags": ["admin"],
        "summary": summary,
        "description": summary + "." + _ADMIN_DESCRIPTION,
        "security": [{"bearer": []}, {}],
        "parameters": parameters,
        "responses": {"200": {"description": summary, "content": _json("schemas", schema)}}
        | {status: _ref("responses", _ERRORS[status]) for status in statuses},
    }


def _limit() -> Json:
    return {
        "name": "limit",
        "in": "query",
        "description": "How many to list at most.",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST, "default": 100},
    }


def _nodes() -> Json:
    operation = _operation(
        "adminNodes",
        "Every live node with its numbers",
        "AdminNodes",
        statuses=("401", "403", "503"),
        user=False,
    )
    del operation["parameters"]
    return operation


def _users() -> Json:
    operation = _operation(
        "adminUsers",
        "Users online on any node, most sessions first",
        "AdminUsers",
        statuses=("400", "401", "403", "503"),
        user=False,
    )
    operation["parameters"] = [_limit()]
    return operation


def _sessions() -> Json:
    return _operation(
        "adminUserSessions",
        "Each session of one user on any node",
        "AdminSessions",
        statuses=("400", "401", "403", "503"),
        user=True,
    )


def _channels() -> Json:
    operation = _operation(
        "adminChannels",
        "The channels with the most subscriptions, cluster-wide",
        "AdminChannels",
        statuses=("400", "401", "403", "503"),
        user=False,
    )
    operation["parameters"] = [
        {
            "name": "prefix",
            "in": "query",
            "description": "Only channels whose name starts with this: `t:` topics, `u:` users"
            " (`u:42` is user 42's channel, `t:news` the topic news).",
            "schema": {"type": "string", "maxLength": MAX_NAME + 2, "default": ""},
        },
        _limit(),
    ]
    return operation


def _disconnect() -> Json:
    operation = _operation(
        "userDisconnect",
        "Disconnect every session of a user, on every node",
        "DisconnectResult",
        statuses=("400", "401", "403", "413", "503"),
        user=True,
    )
    operation["tags"] = ["admin"]
    operation["description"] = (
        "Each session of the user gets a STOMP ERROR frame (`message`: the reason;"
        " `tidings-reconnect`: the advice) and is closed: WebSocket close 1001 when it may"
        " reconnect, 1008 when it should not. The user's inbox, read state and other"
        " sessions' users are untouched." + _ADMIN_DESCRIPTION
    )
    operation["requestBody"] = {"required": False, "content": _json("schemas", "DisconnectRequest")}
    return operation


def _console() -> Json:
    return {
        "operationId": "adminConsole",
        "tags": ["admin"],
        "summary": "The operator's console page (it asks for the API key and sends it)",
        "security": [],
        "responses": {
            "200": {"description": "The page.", "content": {"text/html": {"schema": {}}}},
        },
    }


def admin_schemas() -> Json:
    count = {"type": "integer", "minimum": 0}
    rate = {"type": "number", "minimum": 0}
    return {
        "AdminNode": _object(
            {
                "id": {"type": "string"},
                "version": {"type": "string"},
                "pid": {"type": "integer"},
                "started_at": {"type": "number", "description": "Unix time, seconds."},
                "reported_at": {"type": "number", "description": "Unix time of the record."},
                "uptime_s": {"type": "number", "minimum": 0},
                "sessions": count,
                "users_online": count,
                "channels": count,
                "subscriptions": count,
                "published_per_s": rate,
                "messages_in_per_s": rate
                | {"description": "Messages the node received from the broker."},
                "messages_out_per_s": rate
                | {"description": "MESSAGE frames the node queued to its sessions."},
                "broker": _object(
                    {"kind": {"type": "string"}, "ready": {"type": "boolean"}},
                    required=["kind", "ready"],
                ),
            },
            required=["id", "version", "uptime_s", "sessions", "users_online", "broker"],
        ),
        "AdminNodes": _object(
            {
                "answered_by": {"type": "string"},
                "nodes": {"type": "array", "items": _ref("schemas", "AdminNode")},
            },
            required=["answered_by", "nodes"],
        ),
        "AdminUsers": _object(
            {
                "users": {
                    "type": "array",
                    "items": _object(
                        {
                            "user": {"type": "string"},
                            "sessions": count,
                            "nodes": {"type": "array", "items": {"type": "string"}},
                        },
                        required=["user", "sessions", "nodes"],
                    ),
                },
                "complete": _COMPLETE,
                "unanswered": _UNANSWERED,
            },
            required=["users", "complete", "unanswered"],
        ),
        "AdminSession": _object(
            {
                "id": {"type": "string", "description": "The STOMP session id."},
                "node": {"type": "string"},
                "transport": {
                    "type": "string",
                    "examples": ["websocket", "sockjs-websocket", "sockjs-xhr_streaming"],
                },
                "connected_at": {"type": "number", "description": "Unix time of CONNECTED."},
                "remote": {"type": ["string", "null"], "description": "The client's address."},
                "subscriptions": {
                    "type": "array",
                    "items": _object(
                        {
                            "id": {"type": "string"},
                            "destination": {"type": "string"},
                            "ack": {"type": "string"},
                        },
                        required=["id", "destination", "ack"],
                    ),
                },
            },
            required=["id", "node", "transport", "connected_at", "remote", "subscriptions"],
        ),
        "AdminSessions": _object(
            {
                "user": {"type": "string"},
                "sessions": {"type": "array", "items": _ref("schemas", "AdminSession")},
                "unanswered": _UNANSWERED,
            },
            required=["user", "sessions", "unanswered"],
        ),
        "AdminChannels": _object(
            {
                "channels": {
                    "type": "array",
                    "items": _object(
                        {
                            "channel": {"type": "string"},
                            "subscribers": count,
                            "nodes": count | {"description": "Nodes with subscribers."},
                        },
                        required=["channel", "subscribers", "nodes"],
                    ),
                },
                "complete": _COMPLETE,
                "unanswered": _UNANSWERED,
            },
            required=["channels", "complete", "unanswered"],
        ),
        "DisconnectRequest": {
            "type": "object",
            "properties": {
                "reason": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_REASON,
                    "default": "disconnected by an operator",
                    "description": "The ERROR frame's `message`.",
                },
                "reconnect": {
                    "type": "boolean",
                    "default": True,
                    "description": "Whether the client may reconnect (advice to it).",
                },
            },
        },
        "DisconnectResult": _object(
            {
                "user": {"type": "string"},
                "closed": count,
                "nodes": {"type": "object", "additionalProperties": count},
                "unanswered": _UNANSWERED,
            },
            required=["user", "closed", "nodes", "unanswered"],
        ),
        "InboxDeleted": _object(
            {"deleted": count, "unread": count},
            required=["deleted", "unread"],
        ),
    }


def _object(properties: Json, *, required: list[str]) -> Json:
    return {"type": "object", "properties": properties, "required": required}


def _json(section: str, name: str) -> Json:
    return {"application/json": {"schema": _ref(section, name)}}


def _ref(section: str, name: str) -> Json:
    return {"$ref": f"#/components/{section}/{name}"}
