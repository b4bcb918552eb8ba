"""tidings.trust asked by a real node: forwarded addresses, the Origin allow-list.

Requests are written byte for byte on raw sockets, as a proxy sends them: HAProxy's
``option forwardfor`` adds an ``X-Forwarded-For`` line of its own after whatever the client
sent, so a forged loopback address arrives as the *first* of two lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from .sockjs_support import Node, node_fixture
from .test_websocket_edge import CONNECT, TIMEOUT, Raw, Response, upgrade_request
from .test_wsframe import masked_frame

node = node_fixture("trust-default")
# Two trusted proxies: one on 127.0.0.2, and a network of them in front of it.
proxied = node_fixture(
    "trust-proxies", "--trusted-proxy", "127.0.0.2", "--trusted-proxy", "198.51.100.0/24"
)
nobody = node_fixture("trust-none", "--trusted-proxy", "none")
origins = node_fixture("trust-origin", "--allowed-origin", "https://app.example")
alias = node_fixture("trust-origin-alias", "--sockjs-allowed-origin", "https://app.example")

BODY = json.dumps({"body": "x"}).encode()


@contextlib.asynccontextmanager
async def connection(node: Node, source: str = "127.0.0.1") -> AsyncIterator[Raw]:
    """A raw connection from ``source`` (any 127/8 address is this machine's)."""
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", node.port, local_addr=(source, 0)
        )
    client = Raw(reader, writer)
    try:
        yield client
    finally:
        await client.close()


def publish(path: str, *fields: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {len(BODY)}",
        *fields,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + BODY


def get(path: str, *fields: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *fields]) + "\r\n\r\n").encode()


async def ask(node: Node, request: bytes, source: str = "127.0.0.1") -> Response:
    async with connection(node, source) as client:
        await client.send(request)
        return await client.response()


def forwarded(*lines: str) -> tuple[str, ...]:
    return tuple(f"X-Forwarded-For: {line}" for line in lines)


PUBLISH = "/api/v1/users/victim/messages"
READS = ("/api/v1/users/victim/inbox", "/api/v1/users/victim/inbox/unread")


# -- forwarded addresses ------------------------------------------------------------------------


async def test_a_forged_first_forwarded_line_is_refused_on_publish_and_inbox_reads(
    node: Node,
) -> None:
    """No --api-key: the client forges 127.0.0.1, HAProxy appends the real address."""
    haproxy = forwarded("127.0.0.1", "203.0.113.9")
    sent = await ask(node, publish(PUBLISH, *haproxy))
    assert (sent.status, sent.json()["error"]) == (403, "forbidden"), sent
    for path in READS:
        read = await ask(node, get(path, *haproxy))
        assert (read.status, read.json()["error"]) == (403, "forbidden"), (path, read)
    # The same requests from a loopback client through the same proxy are served.
    local = forwarded("127.0.0.1", "127.0.0.1")
    assert (await ask(node, publish(PUBLISH, *local))).status == 202
    for path in READS:
        assert (await ask(node, get(path, *local))).status == 200


async def test_the_rightmost_untrusted_entry_is_the_client(node: Node) -> None:
    """Default: loopback proxies only. A client cannot hide behind a trusted entry it
    wrote itself, and the one nginx appends decides."""
    for fields, status in [
        (forwarded("203.0.113.9"), 403),
        (forwarded("127.0.0.1, 203.0.113.9"), 403),
        (forwarded("203.0.113.9, ::1"), 403),  # ::1 is a trusted hop: the client is left of it
        (forwarded("::1"), 202),
        (forwarded("127.0.0.1, garbage"), 403),  # unknown client: no loopback rights
    ]:
        answer = await ask(node, publish(PUBLISH, *fields))
        assert answer.status == status, (fields, answer)


async def test_several_trusted_hops_and_an_untrusted_peer(proxied: Node) -> None:
    """--trusted-proxy 127.0.0.2 --trusted-proxy 198.51.100.0/24 replaces the default."""
    cases = [
        ("127.0.0.2", forwarded("127.0.0.1, 198.51.100.4, 198.51.100.9"), 202),
        ("127.0.0.2", forwarded("203.0.113.9, 198.51.100.4"), 403),
        ("127.0.0.2", forwarded("127.0.0.1, 203.0.113.9, 198.51.100.4"), 403),
        ("127.0.0.2", forwarded("127.0.0.1", "2001:db8::9"), 403),  # IPv6 client
        ("127.0.0.2", forwarded("198.51.100.4, [::1]:4711"), 202),  # an entry with a port
        ("127.0.0.2", forwarded("127.0.0.1, garbage, 198.51.100.4"), 403),
        # 127.0.0.1 is no longer a trusted proxy: its forwarded header is not read.
        ("127.0.0.1", forwarded("203.0.113.9"), 202),
    ]
    for source, fields, status in cases:
        answer = await ask(proxied, publish(PUBLISH, *fields), source)
        assert answer.status == status, (source, fields, answer)


async def test_trusted_proxy_none_ignores_forwarded_headers(nobody: Node) -> None:
    for fields in (forwarded("203.0.113.9"), forwarded("127.0.0.1", "203.0.113.9")):
        assert (await ask(nobody, publish(PUBLISH, *fields))).status == 202
        assert (await ask(nobody, get(READS[0], *fields))).status == 200


# -- the Origin allow-list ----------------------------------------------------------------------


async def upgrade_answer(
    node: Node, *fields: str, host: str = "127.0.0.1", kept_alive: bool = False
) -> Response:
    """The answer to a STOMP WebSocket upgrade, on a fresh connection (the edge answers)
    or after a request on the same connection (aiohttp's route answers)."""
    request = upgrade_request("/stomp").replace(
        b"Host: 127.0.0.1\r\n", f"Host: {host}\r\n".encode()
    )
    request = request[:-2] + "".join(f"{f}\r\n" for f in fields).encode() + b"\r\n"
    async with connection(node) as client:
        if kept_alive:
            await client.send(get("/healthz"))
            assert (await client.response()).status == 200
        await client.send(request)
        answer = await client.response()
        if answer.status == 101:
            await client.send(masked_frame(CONNECT))
            assert (await client.stomp()).command == "CONNECTED"
        return answer


@pytest.mark.parametrize("kept_alive", [False, True], ids=["edge", "aiohttp"])
async def test_a_raw_websocket_from_a_disallowed_origin_gets_403_json(
    origins: Node, kept_alive: bool
) -> None:
    answer = await upgrade_answer(origins, "Origin: https://evil.example", kept_alive=kept_alive)
    assert answer.status == 403, answer
    assert answer.json()["error"] == "origin_not_allowed"
    for fields in [
        ("Origin: https://app.example",),
        ("Origin: HTTPS://APP.EXAMPLE",),
        (),  # no Origin: not a browser page
        (f"Origin: http://127.0.0.1:{origins.port}",),  # same origin as the Host
    ]:
        host = f"127.0.0.1:{origins.port}"
        answer = await upgrade_answer(origins, *fields, host=host, kept_alive=kept_alive)
        assert answer.status == 101, (fields, answer)


@pytest.mark.parametrize("node_name", ["origins", "alias"])
async def test_sockjs_and_raw_websocket_share_one_list(
    node_name: str, request: pytest.FixtureRequest
) -> None:
    """--sockjs-allowed-origin is an alias of --allowed-origin: both guard both."""
    server: Node = request.getfixturevalue(node_name)
    evil = await ask(server, get("/stomp/info", "Origin: https://evil.example"))
    assert (evil.status, evil.body) == (403, b"Origin not allowed")  # SockJS' own answer
    good = await ask(server, get("/stomp/info", "Origin: https://app.example"))
    assert good.status == 200
    assert good.headers["access-control-allow-origin"] == "https://app.example"
    assert (await upgrade_answer(server, "Origin: https://evil.example")).status == 403
    assert (await upgrade_answer(server, "Origin: https://app.example")).status == 101
