"""Regression tests for the API contract findings of issue 19, against a real node.

Each case was a mismatch between the OpenAPI document and the server that schemathesis
found (tests/test_api_contract.py finds the next ones): a 500, a request the document
allows and the server refused, one it forbids and the server took, plain-text errors.
"""

from __future__ import annotations

import asyncio
import json
import re
import string

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.publish_rules import (
    IDEMPOTENCY_KEY_PATTERN,
    TOPIC_PATTERN,
    USER_PATTERN,
    valid_user,
)
from tidings.server.openapi import openapi_document

from .sockjs_support import Node, node_fixture

node = node_fixture("api-rules")


async def call(
    node: Node, method: str, path: str, body: str | bytes | None = None, **headers: str
) -> tuple[int, str, object]:
    """(status, content type, JSON body or text)."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, node.url(path), data=body, headers=headers) as response,
    ):
        if response.content_type == "application/json":
            return response.status, response.content_type, await response.json()
        return response.status, response.content_type, await response.text()


async def test_an_empty_up_to_is_a_400_not_a_500(node: Node) -> None:
    status, _, body = await call(
        node, "POST", "/api/v1/users/00/inbox/read", '{"ids": [], "up_to": ""}'
    )
    assert status == 400, body
    assert isinstance(body, dict) and body["error"] == "invalid_field" and "''" in body["message"]


async def test_an_empty_ids_list_marks_nothing_and_answers_the_unread_count(node: Node) -> None:
    await call(node, "POST", "/api/v1/users/rules-empty/messages", '{"body": "x"}')
    status, _, body = await call(
        node, "POST", "/api/v1/users/rules-empty/inbox/read", '{"ids": []}'
    )
    assert (status, body) == (200, {"unread": 1})


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # null is "no key" / "no headers" / "no up_to", as the document now says
        ("/api/v1/users/rules-null/messages", '{"body": 1, "id": null, "headers": null}'),
        ("/api/v1/topics/rules-null/messages", '{"body": 1, "id": null, "headers": null}'),
        ("/api/v1/messages", '{"messages": [{"topic": "t", "body": 1, "id": null}]}'),
        ("/api/v1/users/rules-null/inbox/read", '{"ids": [], "up_to": null}'),
        # Spring's lenient binding: code and form are never read; 'to' may be a number
        ("/pushToOneTest", '{"code": {}, "form": [1], "to": 0, "content": "x"}'),
        ("/pushToOneTest", '{"to": 7.0, "content": "x"}'),
        # any text without control characters is a user id or topic, as the pattern says
        ("/api/v1/users/%C3%B6%20%E2%80%A8x/messages", '{"body": 1}'),
        ("/api/v1/presence/query", '{"users": ["\\u00f6", "a b"]}'),
    ],
)
async def test_what_the_document_allows_is_accepted(node: Node, path: str, body: str) -> None:
    status, _, answer = await call(node, "POST", path, body)
    assert status in (200, 202), answer


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        # a body id past maxLength, even when the Idempotency-Key header wins
        (
            "/api/v1/topics/t/messages",
            '{"body": 1, "id": "' + "0" * 201 + '"}',
            {"Idempotency-Key": "k"},
        ),
        # a header key that is not text (an undecodable byte arrives as a lone surrogate)
        ("/api/v1/topics/t/messages", '{"body": 1}', {"Idempotency-Key": "a\x85"}),
        # a batch item's destination belongs to a user's message only
        ("/api/v1/messages", '{"messages": [{"topic": "t", "body": 1, "destination": ""}]}', {}),
        ("/api/v1/messages", '{"messages": [{"user": "u", "topic": "t", "body": 1}]}', {}),
        # control characters in names, ids and destinations (a header injection otherwise)
        ("/api/v1/users/%C2%8F/messages", '{"body": 1}', {}),
        ("/api/v1/users/u/messages", '{"body": 1, "destination": "/a\\nb"}', {}),
        ("/api/v1/users/u/messages", '{"body": 1, "destination": "/a\\u0000"}', {}),
        ("/api/v1/messages", '{"messages": [{"user": "u", "body": 1, "destination": "/\\n"}]}', {}),
        ("/api/v1/topics/t/messages", '{"body": 1, "headers": {"tidings-id": "1-0"}}', {}),
        ("/api/v1/topics/%2Fa/messages", '{"body": 1}', {}),
        ("/api/v1/users/u/inbox/read", '{"up_to": "\\u0661-0"}', {}),
        ("/api/v1/presence/query", '{"users": ["\\u0085"]}', {}),
        ("/api/v1/presence/query", '{"users": ["ok", ""]}', {}),
        ("/pushToOneTest", '{"to": 1e300, "content": "x"}', {}),
    ],
)
async def test_what_the_document_forbids_is_refused_with_json(
    node: Node, path: str, body: str, headers: dict[str, str]
) -> None:
    if any(not value.isascii() for value in headers.values()):
        status, answer = await raw_post(node, path, body, headers)
    else:
        status, _, answer = await call(node, "POST", path, body, **headers)
    assert status == 400, answer
    assert isinstance(answer, dict) and answer["error"] == "invalid_field", answer


async def raw_post(node: Node, path: str, body: str, headers: dict[str, str]) -> tuple[int, object]:
    """A POST whose header values go out as Latin-1 bytes, as a client may send them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    payload = body.encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head += f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode("latin-1") + payload)
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


async def test_the_presence_query_bound_is_a_400(node: Node) -> None:
    users = ",".join(f'"{n}"' for n in range(10_001))
    status, _, body = await call(node, "POST", "/api/v1/presence/query", f'{{"users": [{users}]}}')
    assert status == 400 and isinstance(body, dict) and body["error"] == "invalid_field", body


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/v1/nope", 404, "not_found"),
        ("POST", "/api/v1/users/u/nope", 404, "not_found"),
        ("GET", "/pushToOneTest", 405, "method_not_allowed"),
        ("DELETE", "/api/v1/users/u/messages", 405, "method_not_allowed"),
    ],
)
async def test_router_errors_on_api_paths_are_json(
    node: Node, method: str, path: str, status: int, code: str
) -> None:
    got, content_type, body = await call(node, method, path)
    assert (got, content_type) == (status, "application/json"), body
    assert isinstance(body, dict) and body["error"] == code and body["message"], body


async def test_router_errors_elsewhere_stay_aiohttps(node: Node) -> None:
    status, content_type, _ = await call(node, "GET", "/no-such-page")
    assert (status, content_type) == (404, "text/plain")


def test_the_document_carries_the_servers_own_patterns() -> None:
    """One source: the patterns the server checks with are the document's."""
    doc = openapi_document(version="0")
    text = repr(doc)
    for pattern in (USER_PATTERN, TOPIC_PATTERN, IDEMPOTENCY_KEY_PATTERN):
        assert repr(pattern) in text
        re.compile(pattern)


@settings(max_examples=500, derandomize=True)
@given(st.text(max_size=210) | st.text(alphabet=string.ascii_letters + string.digits, max_size=210))
def test_the_user_id_shortcut_agrees_with_the_pattern(user: str) -> None:
    """valid_user skips the regex for ASCII letters and digits: never a different answer."""
    assert valid_user(user) == bool(re.fullmatch(USER_PATTERN, user))


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("after=0", 200),
        ("after=1700000000000-3&limit=5", 200),
        ("after=%C3%87%0B", 400),  # the document's inbox id pattern refuses it, so must we
        ("after=%D9%A1-0", 400),  # an Arabic-Indic digit: int() reads it, the pattern does not
        ("limit=%2B5", 400),  # "+5": int() reads it, an integer parameter is digits
    ],
)
async def test_the_inbox_listing_takes_what_the_document_says(
    node: Node, query: str, status: int
) -> None:
    got, _, body = await call(node, "GET", f"/api/v1/users/rules-list/inbox?{query}")
    assert got == status, body
    if status == 400:
        assert isinstance(body, dict) and body["error"] == "invalid_field", body


async def test_an_idempotency_key_is_any_text_the_pattern_takes(node: Node) -> None:
    """Printable was too narrow for the document to state: text without controls is the rule."""
    path = "/api/v1/users/rules-key/messages"
    first = await call(node, "POST", path, '{"body": 1, "id": "ö key \\u2028 1"}')
    again = await call(node, "POST", path, '{"body": 2, "id": "ö key \\u2028 1"}')
    assert first[0] == again[0] == 202 and first[2] == again[2], (first, again)
