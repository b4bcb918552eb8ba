"""Structural tests for the OpenAPI 3.1 document of tidings.server.openapi."""

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest

from tidings.publish_rules import MAX_BATCH, USER_PATTERN
from tidings.server.app import VENDOR_FILES
from tidings.server.openapi import RESERVED_HEADERS, openapi_document

POST_ERRORS = {"400", "401", "403", "413", "503"}
OPERATIONS = {
    ("/pushToOneTest", "post"): {"200"} | POST_ERRORS,
    ("/api/v1/users/{user}/messages", "post"): {"202"} | POST_ERRORS,
    ("/api/v1/topics/{topic}/messages", "post"): {"202"} | POST_ERRORS,
    ("/api/v1/messages", "post"): {"202"} | POST_ERRORS,
    ("/api/v1/users/{user}/presence", "get"): {"200", "400", "401", "403", "503"},
    ("/api/v1/users/{user}/inbox", "get"): {"200", "400", "401", "403", "503"},
    ("/api/v1/users/{user}/inbox/unread", "get"): {"200", "400", "401", "403", "503"},
    ("/api/v1/users/{user}/inbox/read", "post"): {"200"} | POST_ERRORS,
    ("/api/v1/presence/query", "post"): {"200"} | POST_ERRORS,
    ("/metrics", "get"): {"200"},
    ("/healthz", "get"): {"200"},
    ("/readyz", "get"): {"200", "503"},
    ("/api/v1/openapi.json", "get"): {"200"},
    ("/", "get"): {"200"},
    ("/favicon.ico", "get"): {"200"},
    ("/vendor/{name}", "get"): {"200", "404"},
    ("/tidings.js", "get"): {"200"},
    ("/api/v1/openapi.yaml", "get"): {"200"},
    ("/api/v1/docs", "get"): {"200"},
    ("/api/v1/admin/nodes", "get"): {"200", "401", "403", "503"},
    ("/api/v1/admin/users", "get"): {"200", "400", "401", "403", "503"},
    ("/api/v1/admin/users/{user}/sessions", "get"): {"200", "400", "401", "403", "503"},
    ("/api/v1/admin/channels", "get"): {"200", "400", "401", "403", "503"},
    ("/api/v1/users/{user}/disconnect", "post"): {"200"} | POST_ERRORS,
    ("/api/v1/users/{user}/inbox", "delete"): {"200", "400", "401", "403", "503"},
    ("/admin", "get"): {"200"},
    ("/api/v1/me/inbox", "get"): {"200", "400", "401", "403", "503"},
    ("/api/v1/me/inbox/unread", "get"): {"200", "400", "401", "403", "503"},
    ("/api/v1/me/inbox/read", "post"): {"200"} | POST_ERRORS,
    ("/api/v1/me/inbox", "options"): {"204", "403"},
    ("/api/v1/me/inbox/unread", "options"): {"204", "403"},
    ("/api/v1/me/inbox/read", "options"): {"204", "403"},
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture
def doc() -> dict[str, Any]:
    return openapi_document(version="1.2.3")


def walk(node: object) -> Iterator[dict[str, Any]]:
    """Every JSON object inside ``node``, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """Follow a local JSON Pointer ``$ref`` (RFC 6901)."""
    assert ref.startswith("#/"), ref
    node: Any = doc
    for token in ref[2:].split("/"):
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def deref(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = resolve(doc, node["$ref"])
    return node


def operation(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    op: dict[str, Any] = doc["paths"][path][method]
    return op


def request_schema(doc: dict[str, Any], path: str) -> dict[str, Any]:
    body = operation(doc, path, "post")["requestBody"]
    assert body["required"] is True
    return deref(doc, body["content"]["application/json"]["schema"])


def response_schema(doc: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    response = deref(doc, operation(doc, path, method)["responses"][status])
    return deref(doc, response["content"]["application/json"]["schema"])


# --- document shape ---------------------------------------------------------------


def test_document_round_trips_through_json(doc: dict[str, Any]) -> None:
    assert json.loads(json.dumps(doc, ensure_ascii=False)) == doc


def test_header_fields(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"] == "Tidings"
    assert doc["info"]["version"] == "1.2.3"


def test_each_call_returns_an_independent_document() -> None:
    first = openapi_document(version="1")
    first["paths"] = {}
    assert openapi_document(version="1")["paths"]


def test_exactly_the_documented_operations(doc: dict[str, Any]) -> None:
    found = {
        (path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert found == set(OPERATIONS)


@pytest.mark.parametrize(("path", "method"), list(OPERATIONS))
def test_status_codes(doc: dict[str, Any], path: str, method: str) -> None:
    assert set(operation(doc, path, method)["responses"]) == OPERATIONS[(path, method)]


def test_every_response_has_a_description(doc: dict[str, Any]) -> None:
    for path, method in OPERATIONS:
        for response in operation(doc, path, method)["responses"].values():
            assert deref(doc, response)["description"]


def test_operation_ids_are_unique(doc: dict[str, Any]) -> None:
    ids = [operation(doc, path, method)["operationId"] for path, method in OPERATIONS]
    assert len(ids) == len(set(ids))


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = [node["$ref"] for node in walk(doc) if "$ref" in node]
    assert refs
    for ref in refs:
        assert isinstance(resolve(doc, ref), dict), ref


def test_every_component_is_used(doc: dict[str, Any]) -> None:
    refs = {node["$ref"] for node in walk(doc) if "$ref" in node}
    for section in ("schemas", "responses"):
        for name in doc["components"][section]:
            assert f"#/components/{section}/{name}" in refs, name


def test_path_templates_match_path_parameters(doc: dict[str, Any]) -> None:
    for path, method in OPERATIONS:
        declared = {
            p["name"]
            for p in operation(doc, path, method).get("parameters", [])
            if p["in"] == "path"
        }
        assert declared == set(re.findall(r"{(\w+)}", path))
        for parameter in operation(doc, path, method).get("parameters", []):
            if parameter["in"] == "path":
                assert parameter["required"] is True


# --- security ---------------------------------------------------------------------


def test_bearer_scheme_describes_the_loopback_rule(doc: dict[str, Any]) -> None:
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "loopback" in scheme["description"]


def test_api_operations_take_the_bearer_key_or_loopback(doc: dict[str, Any]) -> None:
    for path, method in OPERATIONS:
        security = operation(doc, path, method)["security"]
        if path.startswith("/api/v1/me/"):
            # The user's own token (the dev mode: none); a preflight carries no credentials.
            assert security == ([] if method == "options" else [{"userToken": []}, {}])
        elif method == "post" or path.startswith(("/api/v1/users/", "/api/v1/admin/")):
            assert {"bearer": []} in security and {} in security
        else:
            assert security == []
    assert "security" not in doc


# --- schemas ----------------------------------------------------------------------


def test_legacy_request(doc: dict[str, Any]) -> None:
    schema = request_schema(doc, "/pushToOneTest")
    assert set(schema["required"]) == {"to", "content"}
    assert set(schema["properties"]) == {"code", "form", "to", "content"}
    # Spring's contract is lenient: code and form are never read, so any value is taken.
    assert "type" not in schema["properties"]["code"]
    assert "type" not in schema["properties"]["form"]
    assert schema["properties"]["to"]["type"] == ["string", "integer"]
    assert schema["properties"]["to"]["pattern"] == USER_PATTERN
    assert "type" not in deref(doc, schema["properties"]["content"])  # any JSON value


def test_legacy_answer_is_springs_text(doc: dict[str, Any]) -> None:
    ok = operation(doc, "/pushToOneTest", "post")["responses"]["200"]
    assert set(ok["content"]) == {"text/plain"}
    assert ok["content"]["text/plain"]["schema"]["const"] == "发送成功"


def test_user_message_request(doc: dict[str, Any]) -> None:
    schema = request_schema(doc, "/api/v1/users/{user}/messages")
    assert schema["required"] == ["body"]
    assert set(schema["properties"]) == {"body", "destination", "headers", "id"}
    destination = schema["properties"]["destination"]
    assert destination["default"] == "/message"
    pattern = re.compile(destination["pattern"])
    assert all(pattern.search(d) for d in ["/message", "/queue/alerts", "/a/b/"])
    assert not any(pattern.search(d) for d in ["message", "/", "", "//x", "/a//b"])


def test_message_body_documents_both_content_types(doc: dict[str, Any]) -> None:
    body = doc["components"]["schemas"]["MessageBody"]
    assert "type" not in body
    assert "text/plain;charset=UTF-8" in body["description"]
    assert "application/json;charset=UTF-8" in body["description"]


def test_topic_message_request(doc: dict[str, Any]) -> None:
    schema = request_schema(doc, "/api/v1/topics/{topic}/messages")
    assert schema["required"] == ["body"]
    assert set(schema["properties"]) == {"body", "headers", "id"}


@pytest.mark.parametrize(
    "path", ["/api/v1/users/{user}/messages", "/api/v1/topics/{topic}/messages"]
)
def test_accepted_answer_has_an_id(doc: dict[str, Any], path: str) -> None:
    schema = response_schema(doc, path, "post", "202")
    assert schema["required"] == ["id"]
    assert schema["properties"]["id"]["type"] == "string"


def test_batch_request_and_answer(doc: dict[str, Any]) -> None:
    schema = request_schema(doc, "/api/v1/messages")
    assert schema["required"] == ["messages"]
    messages = schema["properties"]["messages"]
    assert (messages["minItems"], messages["maxItems"]) == (1, MAX_BATCH)
    item = deref(doc, messages["items"])
    assert item["required"] == ["body"]
    # Exactly one of user and topic; destination only with user.
    validator = jsonschema_rs.validator_for({"oneOf": item["oneOf"]})
    assert validator.is_valid({"user": "u"}) and validator.is_valid({"topic": "t"})
    assert validator.is_valid({"user": "u", "destination": "/d"})
    assert not validator.is_valid({"topic": "t", "destination": "/d"})
    assert not validator.is_valid({"user": "u", "topic": "t"})
    assert not validator.is_valid({})
    assert set(item["properties"]) == {"user", "topic", "body", "destination", "headers", "id"}
    destination = request_schema(doc, "/api/v1/users/{user}/messages")["properties"]["destination"]
    assert item["properties"]["destination"]["pattern"] == destination["pattern"]
    accepted = response_schema(doc, "/api/v1/messages", "post", "202")
    assert accepted["required"] == ["ids"]
    assert accepted["properties"]["ids"]["items"] == {"type": "string"}
    error = doc["components"]["schemas"]["Error"]["properties"]
    assert error["index"]["type"] == "integer"
    assert error["ids"]["items"]["type"] == ["string", "null"]


def test_stomp_headers_schema(doc: dict[str, Any]) -> None:
    headers = doc["components"]["schemas"]["StompHeaders"]
    assert headers["type"] == ["object", "null"]
    name = re.compile(headers["propertyNames"]["pattern"])
    assert name.search("x-priority") and name.search("content-type") and name.search("a" * 64)
    assert not any(name.search(n) for n in ["", "a" * 65, "bad name", "x:y", "é"])
    # Reserved names, in any case, are refused by the pattern as by the server.
    for reserved in RESERVED_HEADERS:
        assert not name.search(reserved) and not name.search(reserved.upper())
        assert name.search(reserved + "s")
    assert "content-type" not in RESERVED_HEADERS
    assert not any(name.search(n) for n in ["tidings-id", "Tidings-Gap", "TIDINGS-x"])
    assert name.search("tidings") and name.search("x-tidings-id")
    value = re.compile(headers["additionalProperties"]["pattern"])
    assert value.search("anything: goes, even \\ and é")
    assert not any(value.search(v) for v in ["a\rb", "a\nb", "a\x00b"])


def test_error_schema_is_used_by_every_post_error(doc: dict[str, Any]) -> None:
    error = doc["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "message"}
    assert "broker_unavailable" in error["properties"]["error"]["examples"]
    for path, method in OPERATIONS:
        if method == "post":
            for status in POST_ERRORS:
                assert response_schema(doc, path, method, status) is error


def test_demo_files(doc: dict[str, Any]) -> None:
    favicon = operation(doc, "/favicon.ico", "get")["responses"]["200"]
    assert set(favicon["content"]) == {"image/x-icon"}
    (name,) = operation(doc, "/vendor/{name}", "get")["parameters"]
    assert set(name["schema"]["enum"]) == VENDOR_FILES  # what the server serves
    assert set(operation(doc, "/", "get")["responses"]["200"]["content"]) == {"text/html"}


def test_probe_answers(doc: dict[str, Any]) -> None:
    assert response_schema(doc, "/healthz", "get", "200")["properties"]["status"]["const"] == "ok"
    ready = response_schema(doc, "/readyz", "get", "200")
    assert ready["properties"]["status"]["const"] == "ready"
    not_ready = response_schema(doc, "/readyz", "get", "503")
    assert not_ready["properties"]["status"]["const"] == "not_ready"
    assert set(not_ready["required"]) == {"status", "reason"}
