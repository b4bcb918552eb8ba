"""The OpenAPI 3.1 description of the Tidings HTTP API, served at ``/api/v1/openapi.json``.

Written against OpenAPI 3.1.0 (https://spec.openapis.org/oas/v3.1.0), whose schemas are
JSON Schema 2020-12. The STOMP-over-WebSocket endpoint ``/stomp`` is not an HTTP
operation and is only mentioned in ``info.description``.
"""

from typing import Any

from tidings.publish_rules import (
    DESTINATION_PATTERN,
    HEADER_NAME_PATTERN,
    HEADER_VALUE_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    INBOX_ID_PATTERN,
    MAX_BATCH,
    MAX_IDEMPOTENCY_KEY,
    MAX_NAME,
    RESERVED_HEADERS,
    TOPIC_PATTERN,
    USER_PATTERN,
)
from tidings.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tidings.server.openapi_admin import admin_inbox_delete, admin_paths, admin_schemas
from tidings.server.openapi_me import INBOX_PAGE_PARAMETERS, ME_SECURITY_SCHEME, me_paths

__all__ = ["OPENAPI_VERSION", "RESERVED_HEADERS", "openapi_document"]

OPENAPI_VERSION = "3.1.0"
MAX_SAFE_INTEGER = 2**53 - 1
"""The largest integer every JSON parser reads exactly (ECMA-262 Number.MAX_SAFE_INTEGER)."""
MAX_PRESENCE_QUERY = 10_000
"""Most users one presence query asks about."""

Json = dict[str, Any]

ERROR_CODES = (
    "invalid_json",
    "missing_field",
    "invalid_field",
    "unauthorized",
    "forbidden",
    "too_large",
    "broker_unavailable",
    "replicas_unavailable",
    "not_found",
)
LEGACY_ANSWER = "发送成功"  # the Spring Boot service's exact 200 body ("sent successfully")

_DESCRIPTION = """\
Real-time notifications over STOMP 1.2 on WebSocket (`/stomp`). These HTTP endpoints
publish messages to connected STOMP subscribers. Bodies are JSON in, JSON out (except
the legacy `/pushToOneTest` answer, kept byte-for-byte from the Spring Boot service
Tidings replaces)."""

_SECURITY_DESCRIPTION = """\
The API key configured on the server, sent as `Authorization: Bearer <key>`.
When an API key is configured it is required from every caller (401 otherwise).
When none is configured, publishing is allowed from loopback clients only
(127.0.0.0/8, ::1) and answered 403 for any other caller. The client is the TCP peer,
or behind a trusted proxy the rightmost X-Forwarded-For address that is not one."""

_BODY_DESCRIPTION = """\
The message body. A JSON string is delivered as-is with content-type
`text/plain;charset=UTF-8`; any other JSON value is serialized and delivered with
content-type `application/json;charset=UTF-8`."""

_IDEMPOTENCY_KEY = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_IDEMPOTENCY_KEY,
    "pattern": IDEMPOTENCY_KEY_PATTERN,
}
_IDEMPOTENCY_DESCRIPTION = (
    "Idempotency key (as the Idempotency-Key header): a retried publish with the same key"
    " within the server's --inbox-idempotency-ttl (24 h by default) is stored once and"
    " answers the first id. Text without control characters."
)
_IDEMPOTENCY_FIELD = _IDEMPOTENCY_KEY | {
    "type": ["string", "null"],
    "description": _IDEMPOTENCY_DESCRIPTION + " `null` is the same as no key. When the"
    " Idempotency-Key header is given too, both must be valid and the header's is used.",
}
_USER_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME,
    "pattern": USER_PATTERN,
    "description": "A user id: text without control characters or `/`, not only white space.",
}
_TOPIC_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME,
    "pattern": TOPIC_PATTERN,
    "description": "A topic name: text without control characters, in `/`-separated"
    " segments (`a/b`), none empty.",
}
_INBOX_ID = {
    "type": "string",
    "pattern": INBOX_ID_PATTERN,
    "description": "An inbox id, `<ms>-<seq>` (STOMP `tidings-id`); `0` is before the first.",
}

_DESTINATION_FIELD = {
    "type": "string",
    "pattern": DESTINATION_PATTERN,
    "default": "/message",
    "description": "User-relative destination: starts with `/`, no empty segment, no control"
    " character.",
}

_BATCH_DESCRIPTION = f"""\
Publishes 1 to {MAX_BATCH} messages, each to a user or on a topic, in one request (and one
round trip to the broker). Each message is checked exactly as the single routes check it,
and a batch must fit in the request size limit. If any message is invalid, nothing is
published: the error's `index` names the first invalid message and its `message` starts
with `messages[<index>]: `. Otherwise all are published at once and `ids` answers them in
item order. The messages of one user or topic are stored and delivered in item order.
503 (`broker_unavailable`) carries `ids` too, `null` for each message not stored: retry
those (with an `id` per message, a retry stores nothing twice). The Idempotency-Key header
is refused here (400): give each message its own `id`."""

_ERRORS = {
    "400": ("BadRequest", "Invalid JSON, or a missing or invalid field."),
    "401": ("Unauthorized", "An API key is configured and the bearer key is missing or wrong."),
    "403": ("Forbidden", "No API key is configured and the caller is not on loopback."),
    "413": ("TooLarge", "The request body or the message body exceeds the configured size limit."),
    "503": (
        "BrokerUnavailable",
        "The broker cannot take the message right now (`broker_unavailable`), or, with "
        "`--inbox-min-replicas`, fewer Redis replicas than required acknowledged it in time "
        "(`replicas_unavailable`: the message may still be delivered; retry with the same "
        "Idempotency-Key or `id`, nothing is stored twice).",
    ),
}


def openapi_document(*, version: str) -> dict[str, object]:
    """Return a fresh OpenAPI 3.1 document; ``version`` is the Tidings version (``info``)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Tidings", "version": version, "description": _DESCRIPTION},
        "tags": [
            {"name": "messages", "description": "Publish to STOMP subscribers."},
            {
                "name": "legacy",
                "description": "Spring's contract (the Spring Boot service Tidings replaces),"
                " kept as-is.",
            },
            {"name": "presence", "description": "Who is online, across every node."},
            {"name": "inbox", "description": "Each user's durable inbox and read state."},
            {"name": "operations", "description": "Probes and this document."},
            {"name": "demo", "description": "The demo page and the files it loads."},
            {"name": "admin", "description": "Operate a cluster: nodes, sessions, disconnects."},
        ],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": _error_responses(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": _SECURITY_DESCRIPTION,
                },
                "userToken": ME_SECURITY_SCHEME,
            },
        },
    }


# --- paths ------------------------------------------------------------------------


def _paths() -> Json:
    return {
        "/pushToOneTest": {"post": _legacy_push()},
        "/api/v1/users/{user}/messages": {"post": _user_publish()},
        "/api/v1/topics/{topic}/messages": {"post": _topic_publish()},
        "/api/v1/messages": {"post": _batch_publish()},
        "/api/v1/users/{user}/inbox": {"get": _inbox_listing(), "delete": admin_inbox_delete()},
        "/api/v1/users/{user}/inbox/unread": {"get": _inbox_unread()},
        "/api/v1/users/{user}/inbox/read": {"post": _inbox_read()},
        "/api/v1/users/{user}/presence": {"get": _user_presence()},
        "/api/v1/presence/query": {"post": _presence_query()},
        "/healthz": {"get": _healthz()},
        "/readyz": {"get": _readyz()},
        "/metrics": {"get": _metrics()},
        "/api/v1/openapi.json": {"get": _openapi_json()},
        "/api/v1/openapi.yaml": {"get": _openapi_yaml()},
        "/api/v1/docs": {"get": _api_docs()},
        "/": {"get": _demo_page()},
        "/favicon.ico": {"get": _favicon()},
        "/vendor/{name}": {"get": _vendor_file()},
        "/tidings.js": {"get": _sdk()},
        **admin_paths(),
        **me_paths(),
    }


def _api_get(
    operation_id: str, summary: str, schema: str, *, statuses: tuple[str, ...], tag: str = "inbox"
) -> Json:
    """A GET under the API's rules (bearer key or loopback) for one user."""
    return {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "security": [{"bearer": []}, {}],
        "parameters": [_path_parameter("user", "The user id.", _USER_ID)],
        "responses": {"200": {"description": summary, "content": _json_content(schema)}}
        | {status: _ref("responses", _ERRORS[status][0]) for status in statuses},
    }


def _inbox_listing() -> Json:
    operation = _api_get(
        "inboxListing",
        "The user's retained messages after an id, with read flags",
        "InboxPage",
        statuses=("400", "401", "403", "503"),
    )
    operation["parameters"] += INBOX_PAGE_PARAMETERS
    return operation


def _inbox_unread() -> Json:
    return _api_get(
        "inboxUnread",
        "How many retained messages the user has not read",
        "Unread",
        statuses=("400", "401", "403", "503"),
    )


def _inbox_read() -> Json:
    operation = _publish_operation(
        operation_id="inboxMarkRead",
        tag="inbox",
        summary="Mark messages read (by id, or everything up to an id)",
        description=(
            "Read state belongs to the user: every session of the user receives an event on"
            " `/user/queue/inbox-state` with the new unread count and `last`, the newest"
            " inbox id that count took in (a client orders events by it)."
        ),
        request_schema="ReadRequest",
        success={
            "200": {"description": "The unread count after.", "content": _json_content("Unread")}
        },
    )
    operation["parameters"] = [_path_parameter("user", "The user id.", _USER_ID)]
    return operation


def _user_presence() -> Json:
    return _api_get(
        "userPresence",
        "Is one user online, on how many sessions and which nodes (cluster-wide)",
        "Presence",
        statuses=("400", "401", "403", "503"),
        tag="presence",
    )


def _presence_query() -> Json:
    return {
        "operationId": "presenceQuery",
        "tags": ["presence"],
        "summary": "Which of these users are online (one broker round trip)",
        "security": [{"bearer": []}, {}],
        "requestBody": {"required": True, "content": _json_content("PresenceQueryRequest")},
        "responses": {
            "200": {
                "description": "Online flag per user.",
                "content": _json_content("PresenceQueryResult"),
            }
        }
        | {status: _ref("responses", name) for status, (name, _) in _ERRORS.items()},
    }


def _metrics() -> Json:
    return {
        "operationId": "metrics",
        "tags": ["operations"],
        "summary": "Prometheus metrics of this node (text exposition format 0.0.4)",
        "description": "Every `tidings_*` family is labelled with the node id; with "
        "`--workers N` any worker answers for all of them (docs/deploy.md). Keep this route "
        "off the public listener: the nginx example refuses it there.",
        "security": [],
        "responses": {
            "200": {
                "description": "Counters, gauges and histograms of the node, its process "
                "(`process_*`) and its garbage collector (`python_gc_*`).",
                "content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}},
            }
        },
    }


def _legacy_push() -> Json:
    return _publish_operation(
        operation_id="pushToOneTest",
        tag="legacy",
        summary="Send content to one user (Spring's contract, kept as-is)",
        description="Delivers `content` to the STOMP destination `/user/{to}/message`.",
        request_schema="LegacyPushRequest",
        success={
            "200": {
                "description": "Delivered to the broker; the body is the Spring service's"
                " exact answer.",
                "content": {
                    "text/plain": {
                        "schema": {"type": "string", "const": LEGACY_ANSWER},
                        "example": LEGACY_ANSWER,
                    }
                },
            }
        },
    )


def _idempotency_header() -> Json:
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": _IDEMPOTENCY_KEY,
        "description": _IDEMPOTENCY_DESCRIPTION,
    }


def _user_publish() -> Json:
    operation = _publish_operation(
        operation_id="publishToUser",
        tag="messages",
        summary="Publish a message to one user",
        description=(
            "Delivers to the user's STOMP subscriptions of `/user/{user}<destination>` and,"
            " principal style, `/user<destination>`."
        ),
        request_schema="UserMessageRequest",
        success=_accepted(),
    )
    operation["parameters"] = [
        _path_parameter("user", "The recipient's user id.", _USER_ID),
        _idempotency_header(),
    ]
    return operation


def _topic_publish() -> Json:
    operation = _publish_operation(
        operation_id="publishToTopic",
        tag="messages",
        summary="Broadcast a message on a topic",
        description="Delivers to every STOMP subscriber of `/topic/{topic}`.",
        request_schema="TopicMessageRequest",
        success=_accepted(),
    )
    operation["parameters"] = [
        _path_parameter("topic", "The topic name.", _TOPIC_NAME),
        _idempotency_header(),
    ]
    return operation


def _batch_publish() -> Json:
    return _publish_operation(
        operation_id="publishBatch",
        tag="messages",
        summary=f"Publish up to {MAX_BATCH} messages, to users and topics, in one request",
        description=_BATCH_DESCRIPTION,
        request_schema="BatchRequest",
        success={
            "202": {
                "description": "Every message accepted for delivery.",
                "content": _json_content("BatchAccepted"),
            }
        },
    )


def _publish_operation(
    *,
    operation_id: str,
    tag: str,
    summary: str,
    description: str,
    request_schema: str,
    success: Json,
) -> Json:
    """A POST taking JSON: bearer key or loopback, and the shared error answers."""
    return {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "description": description,
        "security": [{"bearer": []}, {}],
        "requestBody": {"required": True, "content": _json_content(request_schema)},
        "responses": success
        | {status: _ref("responses", name) for status, (name, _) in _ERRORS.items()},
    }


def _accepted() -> Json:
    return {"202": {"description": "Accepted for delivery.", "content": _json_content("Accepted")}}


def _healthz() -> Json:
    return _probe("healthz", "Liveness: the process serves HTTP", {"200": ("Alive.", "Health")})


def _readyz() -> Json:
    return _probe(
        "readyz",
        "Readiness: the broker is reachable and the node takes traffic",
        {"200": ("Ready.", "Ready"), "503": ("Not ready; `reason` says why.", "NotReady")},
    )


def _probe(operation_id: str, summary: str, answers: dict[str, tuple[str, str]]) -> Json:
    return {
        "operationId": operation_id,
        "tags": ["operations"],
        "summary": summary,
        "security": [],
        "responses": {
            status: {"description": text, "content": _json_content(schema)}
            for status, (text, schema) in answers.items()
        },
    }


def _openapi_json() -> Json:
    return _public_get(
        "openapiDocument",
        "This OpenAPI 3.1 document",
        "The OpenAPI document.",
        "application/json",
        schema={"type": "object"},
    )


def _openapi_yaml() -> Json:
    return _public_get(
        "openapiDocumentYaml",
        "This OpenAPI 3.1 document as YAML",
        "The OpenAPI document.",
        "application/yaml",
        schema={"type": "object"},  # what a client reads the YAML as
    )


def _api_docs() -> Json:
    return _public_get(
        "apiDocs",
        "This document rendered for people (an HTML page shipped with the server)",
        "The page; it renders openapi.json in the browser.",
        "text/html",
        schema={"type": "string"},
    )


def _demo_page() -> Json:
    return _static_file(
        "demoPage",
        "The demo page: connects as user 42 over STOMP and shows notifications",
        "The page.",
        "text/html",
    )


def _favicon() -> Json:
    return _static_file("favicon", "The icon browsers ask for", "A 32x32 icon.", "image/x-icon")


def _sdk() -> Json:
    return _static_file(
        "browserSdk",
        "tidings.js, the browser SDK: an ES module exporting connect(options)",
        "The module (resume after reconnects, acks, unread count, markRead).",
        "text/javascript",
    )


def _vendor_file() -> Json:
    operation = _static_file(
        "vendorFile",
        "A browser client library shipped in the package (@stomp/stompjs, sockjs-client)",
        "The script.",
        "text/javascript",
    )
    operation["parameters"] = [
        {
            "name": "name",
            "in": "path",
            "required": True,
            "description": "The bundle's file name.",
            "schema": {"type": "string", "enum": ["stomp.umd.min.js", "sockjs.min.js"]},
        }
    ]
    operation["responses"]["404"] = {
        "description": "No such file.",
        "content": _json_content("Error"),
    }
    return operation


def _static_file(operation_id: str, summary: str, description: str, media_type: str) -> Json:
    return _public_get(operation_id, summary, description, media_type, schema={}, tag="demo")


def _public_get(
    operation_id: str,
    summary: str,
    description: str,
    media_type: str,
    *,
    schema: Json,
    tag: str = "operations",
) -> Json:
    """A GET anyone may call, answering 200 with one media type."""
    return {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "security": [],
        "responses": {
            "200": {"description": description, "content": {media_type: {"schema": schema}}},
        },
    }


# --- components -------------------------------------------------------------------


def _schemas() -> Json:
    return {
        "MessageBody": {"description": _BODY_DESCRIPTION},
        "StompHeaders": _stomp_headers(),
        "LegacyPushRequest": _object(
            {
                "code": {
                    "description": "Spring contract field; not used, any JSON value is taken.",
                },
                "form": {
                    "description": "Spring contract field (the sender); not used, any JSON"
                    " value is taken.",
                },
                "to": _USER_ID
                | {
                    "type": ["string", "integer"],
                    "minimum": -MAX_SAFE_INTEGER,
                    "maximum": MAX_SAFE_INTEGER,
                    "description": "Recipient user id. Lenient as Spring's Jackson binding:"
                    " an integer is taken as its decimal text.",
                },
                "content": _ref("schemas", "MessageBody"),
            },
            required=["to", "content"],
        ),
        "UserMessageRequest": _object(
            {
                "body": _ref("schemas", "MessageBody"),
                "destination": _DESTINATION_FIELD,
                "headers": _ref("schemas", "StompHeaders"),
                "id": _IDEMPOTENCY_FIELD,
            },
            required=["body"],
        ),
        "BatchRequest": _object(
            {
                "messages": {
                    "type": "array",
                    "items": _ref("schemas", "BatchMessage"),
                    "minItems": 1,
                    "maxItems": MAX_BATCH,
                }
            },
            required=["messages"],
        ),
        "BatchMessage": _batch_message(),
        "BatchAccepted": _object(
            {
                "ids": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "The inbox ids (STOMP `tidings-id`), in item order.",
                }
            },
            required=["ids"],
        ),
        "TopicMessageRequest": _object(
            {
                "body": _ref("schemas", "MessageBody"),
                "headers": _ref("schemas", "StompHeaders"),
                "id": _IDEMPOTENCY_FIELD,
            },
            required=["body"],
        ),
        "Accepted": _object(
            {"id": {"type": "string", "description": "The inbox id (STOMP `tidings-id`)."}},
            required=["id"],
        ),
        "Error": _object(
            {
                "error": {
                    "type": "string",
                    "description": "Machine code.",
                    "examples": list(ERROR_CODES),
                },
                "message": {"type": "string", "description": "Human-readable explanation."},
                "index": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Batch only (400, 413): the first invalid message's index.",
                },
                "ids": {
                    "type": "array",
                    "items": {"type": ["string", "null"]},
                    "description": "Batch only (503): per message its inbox id if it was"
                    " stored, else null.",
                },
            },
            required=["error", "message"],
        ),
        "InboxMessage": _object(
            {
                "id": {
                    "type": "string",
                    "description": "Inbox id, `<ms>-<seq>`, in publish order.",
                },
                "destination": {"type": "string"},
                "content_type": {"type": "string"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "body": {"description": "Text, or the JSON value for a JSON message."},
                "read": {"type": "boolean"},
            },
            required=["id", "destination", "content_type", "headers", "body", "read"],
        ),
        "InboxPage": _object(
            {"messages": {"type": "array", "items": _ref("schemas", "InboxMessage")}},
            required=["messages"],
        ),
        "Unread": _object({"unread": {"type": "integer", "minimum": 0}}, required=["unread"]),
        "ReadRequest": {
            "type": "object",
            "properties": {
                "ids": {
                    "type": "array",
                    "items": _INBOX_ID,
                    "description": "These messages are read (an empty list changes nothing).",
                },
                "up_to": _INBOX_ID
                | {"type": ["string", "null"], "description": "Everything up to this id is read."},
            },
            "anyOf": [{"required": ["ids"]}, {"required": ["up_to"]}],
        },
        "Presence": _object(
            {
                "online": {"type": "boolean"},
                "sessions": {"type": "integer", "minimum": 0},
                "nodes": {"type": "array", "items": {"type": "string"}},
            },
            required=["online", "sessions", "nodes"],
        ),
        "PresenceQueryRequest": _object(
            {
                "users": {
                    "type": "array",
                    "items": _USER_ID,
                    "maxItems": MAX_PRESENCE_QUERY,
                }
            },
            required=["users"],
        ),
        "PresenceQueryResult": _object(
            {"users": {"type": "object", "additionalProperties": {"type": "boolean"}}},
            required=["users"],
        ),
        "Health": _object(
            {
                "status": {"const": "ok"},
                "node": {"type": "string", "description": "This node's id."},
                "pid": {"type": "integer", "description": "The serving process."},
            },
            required=["status", "node", "pid"],
        ),
        "Ready": _object({"status": {"const": "ready"}}, required=["status"]),
        "NotReady": _object(
            {"status": {"const": "not_ready"}, "reason": {"type": "string"}},
            required=["status", "reason"],
        ),
        **admin_schemas(),
    }


def _batch_message() -> Json:
    """A message of a batch: a user's or a topic's request, with its recipient."""
    schema = _object(
        {
            "user": _USER_ID,
            "topic": _TOPIC_NAME,
            "body": _ref("schemas", "MessageBody"),
            "destination": _DESTINATION_FIELD
            | {"description": "With `user` only: " + str(_DESTINATION_FIELD["description"])},
            "headers": _ref("schemas", "StompHeaders"),
            "id": _IDEMPOTENCY_FIELD,
        },
        required=["body"],
    )
    schema["oneOf"] = [
        {"required": ["user"], "not": {"required": ["topic"]}},
        {
            "required": ["topic"],
            "not": {"anyOf": [{"required": ["user"]}, {"required": ["destination"]}]},
        },
    ]
    schema["description"] = (
        "To one user (`user`) or on one topic (`topic`): exactly one; `destination` only"
        " with `user`."
    )
    return schema


def _stomp_headers() -> Json:
    """Extra STOMP MESSAGE headers (STOMP 1.2 §Augmenting, §Value Encoding)."""
    return {
        "type": ["object", "null"],
        "description": (
            "Extra headers for the STOMP MESSAGE frame (`null`: none). Reserved names (compared"
            " case-insensitively) may not be used: "
            + ", ".join(RESERVED_HEADERS)
            + ", and any name starting with `tidings-`."
            " `content-type` (any case) may be given to override the body's default."
        ),
        "propertyNames": {"pattern": HEADER_NAME_PATTERN},
        "additionalProperties": {"type": "string", "pattern": HEADER_VALUE_PATTERN},
    }


def _error_responses() -> Json:
    return {
        name: {"description": text, "content": _json_content("Error")}
        for name, text in _ERRORS.values()
    }


# --- helpers ----------------------------------------------------------------------


def _object(properties: Json, *, required: list[str]) -> Json:
    return {"type": "object", "properties": properties, "required": required}


def _json_content(schema: str) -> Json:
    return {"application/json": {"schema": _ref("schemas", schema)}}


def _path_parameter(name: str, description: str, schema: Json) -> Json:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def _ref(section: str, name: str) -> Json:
    return {"$ref": f"#/components/{section}/{name}"}
