"""Publishes served by the edge without aiohttp, against real server processes.

A connection that starts with a publish is the edge's (server/api_edge.py) until a request
it does not serve, which aiohttp answers from then on. Which of the two answered shows in
the response: aiohttp adds ``Server: Python/... aiohttp/...``, the edge no Server field.
Error answers are compared between the two: the same request sent chunked (which only
aiohttp reads) must get the same status, Content-Type and body.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from tidings.config import Config
from tidings.http1 import RequestHead
from tidings.message import Message
from tidings.server.api import client_max_size
from tidings.server.api_edge import ApiConnection
from tidings.server.app import SERVER_KEY, Server, create_app
from tidings.server.edge import Edge

from .conftest import StartServer
from .redis_fixture import RedisServer
from .sockjs_support import Node, node_fixture
from .stompws import StompWs
from .test_websocket_edge import CONNECT, Raw, Response, listener, raw, topic, upgrade_request
from .test_wsframe import masked_frame

MAX_MESSAGE_BYTES = 1024
MAX_REQUEST_BYTES = client_max_size(Config(max_message_bytes=MAX_MESSAGE_BYTES))
API_KEY = "s3cret-key"
HEAD_TIMEOUT_S = 0.3  # --head-timeout of brisk_node


node = node_fixture("api-edge", "--max-message-bytes", str(MAX_MESSAGE_BYTES))


key_node = node_fixture("api-edge-key", "--api-key", API_KEY)


brisk_node = node_fixture("api-edge-brisk", "--head-timeout", str(HEAD_TIMEOUT_S))


def request(path: str, body: bytes, *fields: str, chunked: bool = False) -> bytes:
    """A POST with a Content-Length body, or the same body in one chunk (RFC 9112 §7.1)."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        body = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join([*lines, *fields]) + "\r\n\r\n").encode() + body


def by_aiohttp(response: Response) -> bool:
    return "aiohttp" in response.headers.get("server", "")


async def answer(node: Node, data: bytes) -> Response:
    async with raw(node) as client:
        await client.send(data)
        return await client.response()


async def both_ways(node: Node, path: str, body: bytes, *fields: str) -> tuple[Response, Response]:
    """The answer of the edge and aiohttp's to the same request, each on a new connection."""
    edge = await answer(node, request(path, body, *fields))
    aiohttp_ = await answer(node, request(path, body, *fields, chunked=True))
    assert by_aiohttp(aiohttp_), aiohttp_
    assert (edge.status, edge.headers["content-type"], edge.body) == (
        aiohttp_.status,
        aiohttp_.headers["content-type"],
        aiohttp_.body,
    )
    return edge, aiohttp_


def user() -> str:
    return f"u{uuid.uuid4().hex[:12]}"


def publish_json(text: str) -> bytes:
    return json.dumps({"body": text}).encode()


# -- serving ------------------------------------------------------------------------------------


async def test_pipelined_publishes_are_answered_in_order_and_delivered(node: Node) -> None:
    destination = topic()
    path = f"/api/v1/topics/{destination.removeprefix('/topic/')}/messages"
    watcher = await listener(node, destination)
    try:
        async with raw(node) as client:
            await client.send(
                request(path, publish_json("one"))
                + request(path, publish_json("two"), "Idempotency-Key: k2")
            )
            first, second = await client.response(), await client.response()
        for response in (first, second):
            assert (response.status, by_aiohttp(response)) == (202, False), response
            assert response.headers["content-type"] == "application/json; charset=utf-8"
            assert response.headers["date"].endswith(" GMT")
        ids = [first.json()["id"], second.json()["id"]]
        one = await watcher.expect("MESSAGE", destination=destination)
        two = await watcher.expect("MESSAGE", destination=destination)
        assert (one.body, two.body) == (b"one", b"two")
        assert [one.get("tidings-id"), two.get("tidings-id")] == ids
    finally:
        await watcher.close()


async def test_a_request_not_served_here_goes_to_aiohttp_with_what_follows(node: Node) -> None:
    """A GET after a publish, and a publish after it: aiohttp's, as is the connection."""
    destination = topic()
    path = f"/api/v1/topics/{destination.removeprefix('/topic/')}/messages"
    watcher = await listener(node, destination)
    try:
        async with raw(node) as client:
            await client.send(request(path, publish_json("edge")))
            published = await client.response()
            await client.send(
                b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                + request(path, publish_json("aiohttp"))
            )
            health, after = await client.response(), await client.response()
        assert (published.status, by_aiohttp(published)) == (202, False)
        assert (health.status, by_aiohttp(health), health.json()["status"]) == (200, True, "ok")
        assert (after.status, by_aiohttp(after)) == (202, True)
        assert (await watcher.expect("MESSAGE")).body == b"edge"
        assert (await watcher.expect("MESSAGE")).body == b"aiohttp"
    finally:
        await watcher.close()


async def test_a_chunked_publish_is_aiohttp_s(node: Node) -> None:
    destination = topic()
    watcher = await listener(node, destination)
    try:
        response = await answer(
            node,
            request(
                f"/api/v1/topics/{destination.removeprefix('/topic/')}/messages",
                publish_json("chunked"),
                chunked=True,
            ),
        )
        assert (response.status, by_aiohttp(response)) == (202, True)
        assert (await watcher.expect("MESSAGE")).body == b"chunked"
    finally:
        await watcher.close()


async def test_answers_match_aiohttp_s(node: Node) -> None:
    """202 and 200 have the same form on both paths (the ids differ)."""
    edge = await answer(node, request(f"/api/v1/users/{user()}/messages", publish_json("a")))
    other = await answer(
        node, request(f"/api/v1/users/{user()}/messages", publish_json("a"), chunked=True)
    )
    assert (edge.status, other.status) == (202, 202)
    assert edge.headers["content-type"] == other.headers["content-type"]
    assert [json.loads(r.body).keys() for r in (edge, other)] == [{"id"}, {"id"}]
    assert edge.body.startswith(b'{"id": "') and other.body.startswith(b'{"id": "')

    legacy, _ = await both_ways(node, "/pushToOneTest", b'{"to": 7, "content": "x", "code": 1}')
    assert (legacy.status, legacy.headers["content-type"]) == (200, "text/plain; charset=utf-8")
    assert legacy.body.decode() == "发送成功"


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/api/v1/users/u1/messages", b'{"bo', 400, "invalid_json"),
        ("/api/v1/users/u1/messages", b"[1, 2]", 400, "invalid_json"),
        ("/api/v1/users/u1/messages", b"", 400, "invalid_json"),
        ("/api/v1/users/u1/messages", b'{"x": 1}', 400, "missing_field"),
        ("/api/v1/users/u1/messages", b'{"body": 1, "destination": "x"}', 400, "invalid_field"),
        (
            "/api/v1/users/u1/messages",
            b'{"body": 1, "headers": {"ack": "1"}}',
            400,
            "invalid_field",
        ),
        ("/api/v1/users/u1/messages", b'{"body": 1, "id": ""}', 400, "invalid_field"),
        ("/api/v1/topics/t/messages", b'{"body": "' + b"x" * 2000 + b'"}', 413, "too_large"),
        ("/pushToOneTest", b'{"to": "", "content": "x"}', 400, "invalid_field"),
        ("/pushToOneTest", b'{"to": "a b\\u0000"}', 400, "invalid_field"),
        ("/pushToOneTest", b'{"to": "ab"}', 400, "missing_field"),
    ],
    ids=[
        "bad-json",
        "not-an-object",
        "no-body",
        "no-body-field",
        "bad-destination",
        "reserved-header",
        "bad-idempotency-key",
        "message-too-large",
        "empty-user-id",
        "unprintable-user-id",
        "no-content",
    ],
)
async def test_errors_are_the_same_on_both_paths(
    node: Node, path: str, body: bytes, status: int, code: str
) -> None:
    edge, _ = await both_ways(node, path, body)
    assert (edge.status, edge.json()["error"], by_aiohttp(edge)) == (status, code, False)


async def test_an_escaped_user_id_is_aiohttp_s_to_decode(node: Node) -> None:
    """aiohttp's router decodes %-escapes in the path; the edge leaves such requests to it."""
    slash = await answer(node, request("/api/v1/users/a%2Fb/messages", publish_json("x")))
    assert (slash.status, slash.json()["error"], by_aiohttp(slash)) == (400, "invalid_field", True)
    name = user()
    watcher = await StompWs.open(node.url("/stomp").replace("http", "ws", 1))
    try:
        await watcher.connect()
        await watcher.subscribe("s", f"/user/{name}/message")
        escaped = name[:-1] + f"%{ord(name[-1]):02X}"
        sent = await answer(node, request(f"/api/v1/users/{escaped}/messages", publish_json("y")))
        assert (sent.status, by_aiohttp(sent)) == (202, True)
        assert (await watcher.expect("MESSAGE")).body == b"y"
    finally:
        await watcher.close()


async def test_a_wrong_api_key_gets_401_and_the_right_one_publishes(key_node: Node) -> None:
    path = "/api/v1/topics/public/messages"
    for fields in ((), ("Authorization: Bearer wrong",), (f"Authorization: Basic {API_KEY}",)):
        edge, _ = await both_ways(key_node, path, publish_json("x"), *fields)
        assert (edge.status, edge.json()["error"]) == (401, "unauthorized")
    edge = await answer(
        key_node, request(path, publish_json("x"), f"Authorization: Bearer {API_KEY}")
    )
    assert (edge.status, by_aiohttp(edge)) == (202, False)


async def test_the_forwarded_client_must_be_loopback(node: Node) -> None:
    """Without --api-key: a local proxy's X-Forwarded-For names the caller, the rightmost
    entry that is not a trusted (by default: loopback) proxy (tidings.trust)."""
    path = "/api/v1/topics/public/messages"
    for forwarded in ("203.0.113.9", "127.0.0.1, 203.0.113.9", "192.0.2.1, ::1"):
        edge, _ = await both_ways(node, path, publish_json("x"), f"X-Forwarded-For: {forwarded}")
        assert (edge.status, edge.json()["error"]) == (403, "forbidden"), forwarded
    edge = await answer(node, request(path, publish_json("x"), "X-Forwarded-For: 127.0.0.9, ::1"))
    assert (edge.status, by_aiohttp(edge)) == (202, False)


async def test_a_body_over_the_limit_gets_aiohttp_s_413_and_the_connection_goes_on(
    node: Node,
) -> None:
    body = b'{"body": "' + b"x" * MAX_REQUEST_BYTES + b'"}'
    async with raw(node) as client:
        await client.send(
            request("/api/v1/topics/public/messages", body)
            + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        too_large, health = await client.response(), await client.response()
    assert (too_large.status, by_aiohttp(too_large)) == (413, True)
    assert too_large.json() == {
        "error": "too_large",
        "message": f"Maximum request body size {MAX_REQUEST_BYTES} exceeded.",
    }
    assert (health.status, health.json()["status"]) == (200, "ok")


async def test_expect_100_continue_is_left_to_aiohttp_before_the_body(node: Node) -> None:
    body = publish_json("after 100")
    head = request("/api/v1/topics/public/messages", body, "Expect: 100-continue")[: -len(body)]
    async with raw(node) as client:
        await client.send(head)
        async with asyncio.timeout(5):
            interim = await client.reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        await client.send(body)
        response = await client.response()
    assert (response.status, by_aiohttp(response)) == (202, True)


BODY = publish_json("x")
VARIANTS = {  # what becomes of a plain publish request, and the status aiohttp gives it
    "http-1.0": ((b"HTTP/1.1", b"HTTP/1.0"), 202),
    "no-host": ((b"Host: 127.0.0.1\r\n", b""), 400),
    "no-content-length": ((f"Content-Length: {len(BODY)}\r\n".encode(), b""), 400),
    "upgrade": ((b"Host:", b"Connection: upgrade\r\nUpgrade: h2c\r\nHost:"), 202),
    "content-encoding": ((b"Host:", b"Content-Encoding: identity\r\nHost:"), 202),
    "repeated": ((b"Host:", b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-For: ::1\r\nHost:"), 202),
    # Over the edge's 8,190 bytes, each field within aiohttp's limit.
    "long-head": ((b"Host:", b"X-A: %s\r\nX-B: %s\r\nHost:" % (b"a" * 5000, b"b" * 5000)), 202),
}


@pytest.mark.parametrize("variant", VARIANTS)
async def test_requests_aiohttp_may_answer_otherwise_are_its(node: Node, variant: str) -> None:
    (old, new), status = VARIANTS[variant]
    data = request("/api/v1/topics/public/messages", BODY).replace(old, new)
    if variant == "no-content-length":
        data = data[: -len(BODY)]
    async with raw(node) as client:
        await client.send(data)
        async with asyncio.timeout(5):
            head = await client.reader.readuntil(b"\r\n\r\n")
    assert b"\r\nServer: Python/" in head and b" aiohttp/" in head, head
    assert head.split(b" ", 2)[1] == str(status).encode(), head


async def test_with_access_log_every_publish_is_aiohttp_s(tidings_server: StartServer) -> None:
    """aiohttp writes the access log: with --access-log no request bypasses it."""
    server = await tidings_server("--access-log")
    client = Raw(*await asyncio.open_connection("127.0.0.1", server.port))
    try:
        await client.send(request("/api/v1/topics/public/messages", publish_json("logged")))
        response = await client.response()
    finally:
        await client.close()
    assert (response.status, by_aiohttp(response)) == (202, True)


async def test_connection_close_closes_after_the_answer(node: Node) -> None:
    path = "/api/v1/topics/public/messages"
    async with raw(node) as client:
        await client.send(
            request(path, publish_json("last"), "Connection: close")
            + request(path, publish_json("never read"))
        )
        response = await client.response()
        assert (response.status, by_aiohttp(response)) == (202, False)
        assert response.headers["connection"] == "close"
        await client.expect_eof()


async def test_a_connection_quiet_before_its_first_request_is_still_the_edge_s(
    brisk_node: Node,
) -> None:
    """A back end's pool or a browser opens connections ahead of need: however long one
    stays quiet, its first request is the edge's (only a started head has a deadline)."""
    path = f"/api/v1/users/{user()}/messages"
    async with raw(brisk_node) as publisher, raw(brisk_node) as subscriber:
        await asyncio.sleep(3 * HEAD_TIMEOUT_S)  # quiet past the head timeout
        await publisher.send(request(path, publish_json("late")))
        published = await publisher.response()
        upgraded = await subscriber.handshake()
        await subscriber.send(masked_frame(CONNECT))
        await subscriber.expect("CONNECTED", version="1.2")
    assert (published.status, by_aiohttp(published)) == (202, False), published
    assert "server" not in upgraded.headers, upgraded  # aiohttp's 101 names itself


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_head_timeout_that_is_not_positive_is_refused(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--head-timeout", value],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result
    assert "argument --head-timeout: must be a positive number" in result.stderr


async def test_a_handshake_stalled_past_the_head_timeout_is_answered_408(brisk_node: Node) -> None:
    """A GET head that has started and stalls past --head-timeout is answered 408 and the
    connection closed (it went to aiohttp before, which waited for it an hour; issue 14).
    The same head sent in time upgrades."""
    whole = upgrade_request()
    async with raw(brisk_node) as client:
        await client.send(whole[:20])
        response = await client.response()  # no sleep: the deadline answers by itself
        assert response.status == 408, response
        assert response.json()["error"] == "request_head_timeout"
        await client.expect_eof()
    async with raw(brisk_node) as client:
        await client.send(whole[:20])
        upgraded = await client.handshake(whole[20:])
        await client.send(masked_frame(CONNECT))
        await client.expect("CONNECTED", version="1.2")
    assert upgraded.headers["sec-websocket-protocol"] == "v12.stomp", upgraded


async def test_a_client_session_publishes_many_on_one_kept_alive_connection(node: Node) -> None:
    destination = topic()
    url = node.url(f"/api/v1/topics/{destination.removeprefix('/topic/')}/messages")
    watcher = await listener(node, destination)
    count = 200
    try:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def publish(n: int) -> tuple[str, bool]:
                async with http.post(url, json={"body": str(n)}) as reply:
                    assert reply.status == 202, await reply.text()
                    return (await reply.json())["id"], "Server" in reply.headers

            results = await asyncio.gather(*(publish(n) for n in range(count)))
        assert not any(served_by_aiohttp for _, served_by_aiohttp in results)
        assert len({message_id for message_id, _ in results}) == count
        bodies = {(await watcher.expect("MESSAGE")).body for _ in range(count)}
        assert bodies == {str(n).encode() for n in range(count)}
    finally:
        await watcher.close()


async def test_a_client_gone_mid_request_or_mid_publish_breaks_nothing(node: Node) -> None:
    destination = topic()
    path = f"/api/v1/topics/{destination.removeprefix('/topic/')}/messages"
    watcher = await listener(node, destination)
    try:
        # Half a request, then gone: nothing is published.
        async with raw(node) as client:
            await client.send(request(path, publish_json("half"))[:-5])
        # A whole request, then gone before the answer: the publish still happens.
        async with raw(node) as client:
            await client.send(request(path, publish_json("unanswered")))
        assert (await watcher.expect("MESSAGE")).body == b"unanswered"
        response = await answer(node, request(path, publish_json("after")))
        assert (response.status, by_aiohttp(response)) == (202, False)
        assert (await watcher.expect("MESSAGE")).body == b"after"
    finally:
        await watcher.close()


async def test_shutdown_answers_the_publish_in_flight_then_closes(
    tidings_server: StartServer, redis_server: RedisServer
) -> None:
    """A publish waiting on Redis at SIGTERM is answered with Connection: close; idle
    kept-alive connections are closed; the node exits 0."""
    server = await tidings_server("--broker", redis_server.url)
    session = await StompWs.open(server.ws_url())
    redis = redis_server.client()
    idle = Raw(*await asyncio.open_connection("127.0.0.1", server.port))
    busy = Raw(*await asyncio.open_connection("127.0.0.1", server.port))
    try:
        await session.connect()
        await idle.send(request("/api/v1/topics/public/messages", publish_json("early")))
        assert (await idle.response()).status == 202
        await redis.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        await busy.send(request("/api/v1/topics/public/messages", publish_json("in flight")))
        async with asyncio.timeout(5):
            while True:  # until the publish waits on Redis
                if b"cmd=evalsha" in await redis.execute_command("CLIENT", "LIST"):
                    break
                await asyncio.sleep(0.01)  # a poll interval, not synchronisation
        server.proc.send_signal(signal.SIGTERM)
        error = await session.expect("ERROR")  # the node's on_shutdown is running
        assert error.get("message") == "server shutting down"
        await idle.expect_eof()
        await redis.execute_command("CLIENT", "UNPAUSE")
        response = await busy.response()
        assert (response.status, response.headers.get("connection")) == (202, "close")
        await busy.expect_eof()
        assert await asyncio.wait_for(server.proc.wait(), 10) == 0
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")
        await redis.aclose()
        await session.close()
        await idle.close()
        await busy.close()


# -- routing ------------------------------------------------------------------------------------

PATHS = [
    "/api/v1/messages",
    "/api/v1/messages/",
    "/api/v1/Messages",
    "/api/v1/messages?x=1",
    "/pushToOneTest",
    "/pushToOneTest/",
    "/pushtoonetest",
    "/api/v1/users/u1/messages",
    "/api/v1/users/a.b~c-d_e!$&'()*+,;=:@/messages",
    "/api/v1/users/u1/messages/",
    "/api/v1/users/a/b/messages",
    "/api/v1/users/u1/presence",
    "/api/v1/users/u1/inbox/read",
    "/api/v1/users/messages",
    "/api/v1/users//messages",
    "/api/v1/users/./messages",
    "/api/v1/users/%75/messages",
    "/api/v1/topics/t/messages",
    "/api/v1/topics/a/b/c/messages",
    "/api/v1/topics/a/messages/messages",
    "/api/v1/topics/a.b/messages",
    "/api/v1/topics/messages",
    "/api/v1/topics//messages",
    "/api/v1/topics/a/../b/messages",
    "/api/v1/presence/query",
    "/api/v1/topics/t/messages?x=1&y=%20",
    "/api/v1/users/u1/messages?",
]


async def test_the_edge_routes_publishes_as_aiohttp_s_router_does() -> None:
    """Every request the edge takes goes to the route and parameter aiohttp would pick."""
    app = create_app(Config())
    server = app[SERVER_KEY]
    route = server.edge(asyncio.Protocol).api_route
    api = server.api
    names = {
        api.push_to_one_test: "/pushToOneTest",
        api.publish_to_user: "/api/v1/users/{user}/messages",
        api.publish_to_topic: "/api/v1/topics/{topic}/messages",
        api.publish_batch: "/api/v1/messages",
    }
    taken = 0
    for target in PATHS:
        head = RequestHead(
            "POST", target, "HTTP/1.1", {"host": "h", "content-length": "2"}, frozenset()
        )
        ours = route(head)
        if ours is None:
            continue  # aiohttp serves it: nothing to compare
        taken += 1
        match = await app.router.resolve(make_mocked_request("POST", target, app=app))
        resource = match.route.resource
        assert resource is not None, target
        assert names[ours[0]] == resource.canonical, target
        assert ours[1] == next(iter(match.values()), ""), target
    assert taken == 10


# -- the protocol, without sockets ----------------------------------------------------------------


class FakeTransport:
    """What ApiConnection does to its transport, recorded."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.paused = False
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes) -> None:
        assert not self.closed, "a write after close"
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        assert not self.paused
        self.paused = True

    def resume_reading(self) -> None:
        assert self.paused
        self.paused = False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert not self.paused, "aiohttp gets a transport that reads"
        self.protocol = protocol


class Recorder(asyncio.Protocol):
    """Stands in for aiohttp's request handler: keeps what it is given."""

    def __init__(self) -> None:
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data


class Publishes:
    """The node's publishes (``Node.submit``), held at ``gate`` while it is set."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.gate: asyncio.Future[None] | None = None

    def submit(self, message: Message, *, idempotency_key: str | None = None) -> asyncio.Task[str]:
        self.bodies.append(message.body)
        return asyncio.ensure_future(self._stored(f"{len(self.bodies)}-0"))

    async def _stored(self, inbox_id: str) -> str:
        if self.gate is not None:
            await self.gate
        return inbox_id


@pytest.fixture
def edge(monkeypatch: pytest.MonkeyPatch) -> tuple[Server, Publishes, Edge]:
    server = create_app(Config())[SERVER_KEY]
    publishes = Publishes()
    monkeypatch.setattr(server.node, "submit", publishes.submit)
    return server, publishes, server.edge(Recorder)


def connect(edge: Edge) -> tuple[ApiConnection, FakeTransport]:
    transport = FakeTransport()
    connection = ApiConnection(edge)
    connection.connection_made(transport)  # type: ignore[arg-type]
    return connection, transport


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (no I/O here: loop turns, not time)."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


PUBLISH = "/api/v1/topics/t/messages"


async def test_pipelined_requests_wait_their_turn_and_reading_pauses(
    edge: tuple[Server, Publishes, Edge],
) -> None:
    server, publishes, api_edge = edge
    connection, transport = connect(api_edge)
    publishes.gate = asyncio.get_running_loop().create_future()
    first = request(PUBLISH, publish_json("0"))
    connection.data_received(first + first[:10])
    await until(lambda: len(publishes.bodies) == 1)
    assert not transport.paused
    # More than one request of the largest size behind the one in flight: TCP pushes back.
    rest = first[10:] + b"".join(request(PUBLISH, publish_json(str(n))) for n in range(1, 3000))
    connection.data_received(rest)
    assert transport.paused and len(publishes.bodies) == 1 and not transport.written
    publishes.gate.set_result(None)
    await until(lambda: len(transport.written) == 3001)
    ids = [json.loads(answer.partition(b"\r\n\r\n")[2])["id"] for answer in transport.written]
    assert ids == [f"{n}-0" for n in range(1, 3002)]
    assert publishes.bodies == [b"0", b"0"] + [str(n).encode() for n in range(1, 3000)]
    assert not transport.paused and not transport.closed
    assert connection in server.api_connections


async def test_publishes_done_at_once_are_answered_before_the_loop_turns(
    edge: tuple[Server, Publishes, Edge], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory broker stores and delivers within ``submit``: its answers must not wait
    behind the loop turn's other callbacks (a fan-out's flush), or S1 loses a third."""
    server, _, api_edge = edge

    def stored_now(message: Message, *, idempotency_key: str | None = None) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        future.set_result(f"7-{message.body.decode()}")
        return future

    monkeypatch.setattr(server.node, "submit", stored_now)
    connection, transport = connect(api_edge)
    connection.data_received(
        request(PUBLISH, publish_json("1")) + request(PUBLISH, publish_json("2"))
    )
    ids = [json.loads(answer.partition(b"\r\n\r\n")[2])["id"] for answer in transport.written]
    assert ids == ["7-1", "7-2"]  # written within data_received, in order


async def test_the_first_request_not_served_goes_to_aiohttp_with_every_byte_after(
    edge: tuple[Server, Publishes, Edge],
) -> None:
    server, publishes, api_edge = edge
    connection, transport = connect(api_edge)
    publishes.gate = asyncio.get_running_loop().create_future()
    rest = b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n" + request(PUBLISH, b"{}")[:20]
    connection.data_received(request(PUBLISH, publish_json("a")) + rest)
    await until(lambda: len(publishes.bodies) == 1)
    connection.data_received(b"more")
    assert transport.protocol is None  # not before the answer in flight is written
    publishes.gate.set_result(None)
    await until(lambda: transport.protocol is not None)
    assert len(transport.written) == 1 and transport.written[0].startswith(b"HTTP/1.1 202 ")
    assert isinstance(transport.protocol, Recorder)
    assert transport.protocol.data == rest + b"more"
    assert connection not in server.api_connections


async def test_a_client_gone_mid_publish_gets_nothing_written(
    edge: tuple[Server, Publishes, Edge],
) -> None:
    server, publishes, api_edge = edge
    connection, transport = connect(api_edge)
    publishes.gate = asyncio.get_running_loop().create_future()
    connection.data_received(request(PUBLISH, publish_json("a")) + request(PUBLISH, b"{}"))
    await until(lambda: len(publishes.bodies) == 1)
    transport.closed = True
    connection.connection_lost(ConnectionResetError())
    assert connection not in server.api_connections
    publishes.gate.set_result(None)
    await until(lambda: connection.shut_down() is None)  # the publish ran to its end
    assert publishes.bodies == [b"a"] and transport.written == []


async def test_shut_down_closes_idle_connections_and_busy_ones_after_their_answer(
    edge: tuple[Server, Publishes, Edge],
) -> None:
    _, publishes, api_edge = edge
    idle, idle_transport = connect(api_edge)
    busy, busy_transport = connect(api_edge)
    publishes.gate = asyncio.get_running_loop().create_future()
    busy.data_received(request(PUBLISH, publish_json("a")) + request(PUBLISH, b"{}"))
    await until(lambda: len(publishes.bodies) == 1)
    assert idle.shut_down() is None and idle_transport.closed
    in_flight = busy.shut_down()
    assert in_flight is not None and not busy_transport.closed
    publishes.gate.set_result(None)
    await in_flight
    assert len(busy_transport.written) == 1  # the pipelined request is not served
    assert b"\r\nConnection: close\r\n" in busy_transport.written[0]
    assert busy_transport.closed and publishes.bodies == [b"a"]
