"""The WebSocket edge of a real server process, byte by byte.

A raw TCP client (``Raw``) sends exactly the bytes a test chooses: handshakes split or
pipelined, masked frames built by ``masked_frame``, frames the server must refuse. It
reads the server's HTTP responses and unmasked frames back. aiohttp's WebSocket client
(``StompWs``) plays the well-behaved bystander.

The servers are shared by the tests of this module (one process per set of options),
which keeps it fast; tests isolate themselves with their own users and topics.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import jwt
import pytest

from tidings.stomp.frames import SERVER_COMMANDS, Frame, FrameParser, Limits
from tidings.wsframe import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    parse_close,
)

from .sockjs_support import Node, node_fixture
from .stompws import StompWs
from .test_wsframe import RFC_ACCEPT, RFC_KEY, RFC_UNMASKED_HELLO, masked_frame

TIMEOUT = 5.0
MAX_FRAME_BYTES = 4096  # --max-frame-bytes; the edge refuses WebSocket frames over 4x this
JWT_SECRET = "a-test-secret-that-is-long-enough-for-hs256"

PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
TOO_BIG = 1009


node = node_fixture(
    "edge", "--send-allow", "/topic/chat/**", "--max-frame-bytes", str(MAX_FRAME_BYTES)
)


# A node only the connection-counting test talks to.
quiet_node = node_fixture("edge-quiet")


jwt_node = node_fixture(
    "edge-jwt", "--auth", "jwt", "--jwt-secret", JWT_SECRET, "--allow-query-token"
)


# -- a raw client ------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> dict[str, object]:
        assert self.headers.get("content-type", "").startswith("application/json"), self
        parsed: dict[str, object] = json.loads(self.body)
        return parsed


def upgrade_request(
    path: str = "/stomp",
    *,
    key: str | None = RFC_KEY,
    version: str = "13",
    protocols: str | None = "v12.stomp, v11.stomp, v10.stomp",
) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Version: {version}",
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if protocols is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def stomp(command: str, body: bytes = b"", **headers: str) -> bytes:
    head = "".join(f"{name.replace('_', '-')}:{value}\n" for name, value in headers.items())
    return f"{command}\n{head}\n".encode() + body + b"\0"


CONNECT = stomp("CONNECT", accept_version="1.2", heart_beat="0,0")


def close_frame(code: int | None, reason: bytes = b"") -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason
    return masked_frame(payload, OP_CLOSE)


class Raw:
    """One TCP connection to a node, read and written byte by byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = FrameParser(
            Limits(max_frame_bytes=1 << 24, max_headers=1000), commands=SERVER_COMMANDS
        )
        self.stomp_frames: list[Frame] = []

    @classmethod
    async def open(cls, node: Node) -> Raw:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        return cls(reader, writer)

    async def send(self, *chunks: bytes) -> None:
        """Write each chunk with its own write, draining in between."""
        for chunk in chunks:
            self.writer.write(chunk)
            await self.writer.drain()

    async def response(self) -> Response:
        """The next HTTP response (its body by Content-Length)."""
        async with asyncio.timeout(TIMEOUT):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
            version, status, *_ = status_line.split(" ")
            assert version == "HTTP/1.1", status_line
            headers: dict[str, str] = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            assert "chunked" not in headers.get("transfer-encoding", ""), headers
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Response(int(status), headers, body)

    async def handshake(self, request: bytes | None = None, *extra: bytes) -> Response:
        """Send an upgrade (and ``extra`` in the same write); the 101 must come back."""
        await self.send((request or upgrade_request()) + b"".join(extra))
        response = await self.response()
        assert response.status == 101, response
        return response

    async def frame(self) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload); server frames are unmasked."""
        async with asyncio.timeout(TIMEOUT):
            first, second = await self.reader.readexactly(2)
            assert first & 0x80, "the server sends no fragments"
            assert not first & 0x70, "no extension was agreed"
            assert not second & 0x80, "server frames are never masked (§5.1)"
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(await self.reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await self.reader.readexactly(8), "big")
            return first & 0x0F, await self.reader.readexactly(length)

    async def stomp(self) -> Frame:
        """The next STOMP frame the server sends in text/binary WebSocket frames."""
        while not self.stomp_frames:
            opcode, payload = await self.frame()
            assert opcode in (OP_TEXT, OP_BINARY), (opcode, payload)
            self.stomp_frames.extend(self.parser.feed(payload))
        return self.stomp_frames.pop(0)

    async def expect(self, command: str, **headers: str) -> Frame:
        frame = await self.stomp()
        assert frame.command == command, frame
        for name, value in headers.items():
            assert frame.get(name.replace("_", "-")) == value, frame
        return frame

    async def expect_close(self, code: int | None) -> str:
        """A close frame with ``code``, then the end of the TCP stream; returns the reason."""
        opcode, payload = await self.frame()
        assert opcode == OP_CLOSE, (opcode, payload)
        got, reason = parse_close(payload)
        assert got == code, (got, reason)
        await self.expect_eof()
        return reason

    async def expect_eof(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            rest = await self.reader.read()
        assert rest == b"", rest

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def raw(node: Node) -> AsyncIterator[Raw]:
    client = await Raw.open(node)
    try:
        yield client
    finally:
        await client.close()


async def http_get(node: Node, path: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(node.url(path)) as reply:
        assert reply.status == 200, await reply.text()
        return await reply.text()


async def connection_count(node: Node) -> int:
    for line in (await http_get(node, "/metrics")).splitlines():
        if line.startswith("tidings_connections{"):
            return int(float(line.rsplit(" ", 1)[1]))
    raise AssertionError("no tidings_connections in /metrics")


async def wait_for_connection_count(node: Node, expected: int) -> None:
    """Poll /metrics until tidings_connections is ``expected`` (5 s at most)."""
    count = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TIMEOUT):
            while True:
                count = await connection_count(node)
                if count == expected:
                    return
                await asyncio.sleep(0.02)  # a poll interval, not synchronisation
    raise AssertionError(f"tidings_connections is {count}, expected {expected}")


async def listener(node: Node, destination: str) -> StompWs:
    client = await StompWs.open(node.url("/stomp").replace("http", "ws", 1))
    await client.connect()
    await client.subscribe("l", destination)
    return client


def topic() -> str:
    return f"/topic/chat/{uuid.uuid4().hex}"


# -- handshakes --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/stomp", "/publicServer/websocket"])
async def test_raw_handshake_then_stomp_over_masked_frames(node: Node, path: str) -> None:
    async with raw(node) as client:
        response = await client.handshake(upgrade_request(path, protocols="chat, v11.stomp"))
        assert response.headers["upgrade"].lower() == "websocket"
        assert response.headers["connection"].lower() == "upgrade"
        assert response.headers["sec-websocket-accept"] == RFC_ACCEPT
        assert response.headers["sec-websocket-protocol"] == "v11.stomp"
        assert response.body == b""
        await client.send(masked_frame(stomp("CONNECT", accept_version="1.1", heart_beat="0,0")))
        connected = await client.expect("CONNECTED", version="1.1")
        assert connected.get("server", "").startswith("Tidings/")
        # A fresh key gets its own accept value.
        key = base64.b64encode(os.urandom(16)).decode()
    async with raw(node) as other:
        response = await other.handshake(upgrade_request(key=key))
        assert response.headers["sec-websocket-accept"] != RFC_ACCEPT
        assert response.headers["sec-websocket-protocol"] == "v12.stomp"


async def test_a_head_larger_than_the_edge_reads_is_upgraded_by_aiohttp(node: Node) -> None:
    """Over the edge's 16 KB a head goes to aiohttp unread; its route upgrades it alike."""
    cookies = "".join(f"Cookie: c{i}={'x' * 6000}\r\n" for i in range(3))  # ~18 KB
    request = upgrade_request().replace(b"\r\n\r\n", b"\r\n" + cookies.encode() + b"\r\n")
    assert len(request) > 16 * 1024
    async with raw(node) as client:
        response = await client.handshake(request)
        assert response.headers["sec-websocket-accept"] == RFC_ACCEPT
        await client.send(masked_frame(CONNECT))
        await client.expect("CONNECTED", version="1.2")


async def test_frames_in_the_handshake_write_are_not_lost(node: Node) -> None:
    async with raw(node) as client:
        await client.handshake(upgrade_request(protocols=None), masked_frame(CONNECT))
        await client.expect("CONNECTED", version="1.2")


async def test_version_8_gets_426_json_naming_the_version(node: Node) -> None:
    async with raw(node) as client:
        await client.send(upgrade_request(version="8"))
        response = await client.response()
    assert response.status == 426
    assert response.headers["sec-websocket-version"] == "13"
    body = response.json()
    assert body["error"] == "bad_handshake"
    assert "Sec-WebSocket-Version" in str(body["message"])


@pytest.mark.parametrize("key", [None, "AAAA", "not base64 at all!!!!!="], ids=str)
async def test_bad_key_gets_400_json(node: Node, key: str | None) -> None:
    async with raw(node) as client:
        await client.send(upgrade_request(key=key))
        response = await client.response()
    assert response.status == 400
    body = response.json()
    assert body["error"] == "bad_handshake"
    assert "Sec-WebSocket-Key" in str(body["message"])


async def test_upgrade_to_a_non_stomp_path_is_not_upgraded(node: Node) -> None:
    async with raw(node) as client:
        await client.send(upgrade_request("/healthz"))
        response = await client.response()
    assert response.status == 200
    assert "sec-websocket-accept" not in response.headers
    assert response.json()["status"] == "ok"


async def test_plain_get_of_an_endpoint_gets_the_sockjs_greeting(node: Node) -> None:
    async with raw(node) as client:
        await client.send(b"GET /stomp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        response = await client.response()
    assert response.status == 200
    assert response.body == b"Welcome to SockJS!\n"


async def test_pipelined_requests_in_one_write_get_two_responses(node: Node) -> None:
    async with raw(node) as client:
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        await client.send(request + request)
        first = await client.response()
        second = await client.response()
    assert (first.status, second.status) == (200, 200)
    assert first.json()["status"] == second.json()["status"] == "ok"


async def test_publish_on_a_fresh_raw_connection(node: Node) -> None:
    destination = topic()
    watcher = await listener(node, destination)
    try:
        body = json.dumps({"body": "posted raw"}).encode()
        async with raw(node) as client:
            await client.send(
                f"POST /api/v1/topics/{destination.removeprefix('/topic/')}/messages HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            response = await client.response()
        assert response.status == 202, response
        assert response.json()["id"]
        message = await watcher.expect("MESSAGE", destination=destination)
        assert message.body == b"posted raw"
    finally:
        await watcher.close()


async def test_upgrade_on_a_kept_alive_connection(node: Node) -> None:
    """The second request of a connection is aiohttp's: its route upgrades it."""
    destination = topic()
    watcher = await listener(node, destination)
    try:
        async with raw(node) as client:
            await client.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            health = await client.response()
            assert health.status == 200
            assert health.headers.get("connection", "").lower() != "close"
            response = await client.handshake(upgrade_request(protocols="v10.stomp"))
            assert response.headers["sec-websocket-accept"] == RFC_ACCEPT
            assert response.headers["sec-websocket-protocol"] == "v10.stomp"
            await client.send(masked_frame(CONNECT))
            await client.expect("CONNECTED", version="1.2")
            await client.send(
                masked_frame(stomp("SEND", b"via aiohttp", destination=destination, receipt="r"))
            )
            await client.expect("RECEIPT", receipt_id="r")
            assert (await watcher.expect("MESSAGE", destination=destination)).body == (
                b"via aiohttp"
            )
            await client.send(masked_frame(b"kept", OP_PING))
            assert await client.frame() == (OP_PONG, b"kept")
            await client.send(close_frame(1000))
            await client.expect_close(1000)
        # The node still serves new connections, upgraded by the edge or not.
        async with raw(node) as again:
            await again.handshake(upgrade_request(), masked_frame(CONNECT))
            await again.expect("CONNECTED")
        assert '"ok"' in await http_get(node, "/healthz")
    finally:
        await watcher.close()


@pytest.mark.parametrize("kept_alive", [False, True], ids=["edge", "aiohttp-route"])
async def test_frames_in_the_same_write_as_the_upgrade_are_read(
    node: Node, kept_alive: bool
) -> None:
    """A client that writes its upgrade request and its first frames at once: on a
    kept-alive connection (aiohttp's route) the frames were lost, and no CONNECTED came."""
    destination = topic()
    async with raw(node) as client:
        if kept_alive:
            await client.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await client.response()).status == 200
        frames = masked_frame(CONNECT) + masked_frame(
            stomp("SUBSCRIBE", id="s", destination=destination, receipt="subscribed")
        )
        await client.handshake(upgrade_request(), frames)
        await client.expect("CONNECTED")
        await client.expect("RECEIPT", receipt_id="subscribed")
        await client.send(masked_frame(stomp("SEND", b"echo", destination=destination)))
        assert (await client.expect("MESSAGE", destination=destination)).body == b"echo"


async def test_refused_upgrade_on_a_kept_alive_connection_gets_json(node: Node) -> None:
    async with raw(node) as client:
        await client.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await client.response()).status == 200
        await client.send(upgrade_request(version="8"))
        response = await client.response()
    assert response.status == 426
    assert response.headers["sec-websocket-version"] == "13"
    assert response.json()["error"] == "bad_handshake"


async def test_head_split_over_three_writes_still_upgrades(node: Node) -> None:
    request = upgrade_request()
    async with raw(node) as client:
        # "GE" is a prefix of "GET ": the edge must wait for more, not hand over.
        await client.send(request[:2], request[2:40], request[40:])
        response = await client.response()
        assert response.status == 101
        assert response.headers["sec-websocket-accept"] == RFC_ACCEPT
        await client.send(masked_frame(CONNECT))
        await client.expect("CONNECTED")


# -- frames ------------------------------------------------------------------------------------


async def test_fragmented_connect_with_a_ping_between_fragments(node: Node) -> None:
    async with raw(node) as client:
        await client.handshake()
        await client.send(
            masked_frame(CONNECT[:5], fin=False),
            masked_frame(CONNECT[5:20], OP_CONTINUATION, fin=False, mask=b"\x00\x01\x02\x03"),
            masked_frame(b"mid-message", OP_PING, mask=b"\xff\xee\xdd\xcc"),
            masked_frame(CONNECT[20:], OP_CONTINUATION),
        )
        assert await client.frame() == (OP_PONG, b"mid-message")
        await client.expect("CONNECTED", version="1.2")


async def test_unmasked_frame_is_closed_with_1002(node: Node) -> None:
    async with raw(node) as client:
        await client.handshake()
        await client.send(RFC_UNMASKED_HELLO)
        reason = await client.expect_close(PROTOCOL_ERROR)
        assert "mask" in reason


async def test_invalid_utf8_text_is_closed_with_1007(node: Node) -> None:
    async with raw(node) as client:
        await client.handshake()
        await client.send(masked_frame(CONNECT))
        await client.expect("CONNECTED")
        await client.send(masked_frame(b"SEND\ndestination:/topic/chat/x\n\n\xc3\x28\0"))
        await client.expect_close(INVALID_DATA)


async def test_invalid_close_code_is_closed_with_1002(node: Node) -> None:
    async with raw(node) as client:
        await client.handshake()
        await client.send(close_frame(1005))
        await client.expect_close(PROTOCOL_ERROR)


async def test_too_big_frame_is_closed_with_1009_before_its_payload(node: Node) -> None:
    async with raw(node) as client:
        await client.handshake()
        announced = 4 * MAX_FRAME_BYTES + 1
        # The header alone: the payload never comes, the close must come anyway.
        await client.send(struct.pack("!BBH", 0x82, 0xFE, announced) + b"\x01\x02\x03\x04")
        await client.expect_close(TOO_BIG)


async def test_frame_of_the_largest_size_is_taken(node: Node) -> None:
    async with raw(node) as client:
        await client.handshake()
        await client.send(masked_frame(CONNECT))
        await client.expect("CONNECTED")
        # 4x max-frame-bytes of heart-beat EOLs in one WebSocket frame: not too big.
        await client.send(masked_frame(b"\n" * (4 * MAX_FRAME_BYTES), OP_BINARY))
        await client.send(masked_frame(stomp("DISCONNECT", receipt="bye")))
        await client.expect("RECEIPT", receipt_id="bye")


@pytest.mark.parametrize(("sent", "echoed"), [(1000, 1000), (4000, 4000), (None, None)], ids=str)
async def test_client_close_is_echoed_and_the_session_is_gone(
    quiet_node: Node, sent: int | None, echoed: int | None
) -> None:
    before = await connection_count(quiet_node)
    async with raw(quiet_node) as client:
        await client.handshake()
        await client.send(masked_frame(CONNECT))
        await client.expect("CONNECTED")
        await wait_for_connection_count(quiet_node, before + 1)
        await client.send(close_frame(sent, b"done" if sent else b""))
        await client.expect_close(echoed)
    await wait_for_connection_count(quiet_node, before)


async def test_send_then_close_in_one_write_is_delivered(node: Node) -> None:
    destination = topic()
    watcher = await listener(node, destination)
    try:
        async with raw(node) as client:
            await client.handshake()
            await client.send(masked_frame(CONNECT))
            await client.expect("CONNECTED")
            await client.send(
                masked_frame(stomp("SEND", b"last words", destination=destination, receipt="r"))
                + close_frame(1000)
            )
            await client.expect("RECEIPT", receipt_id="r")
            await client.expect_close(1000)
        message = await watcher.expect("MESSAGE", destination=destination)
        assert message.body == b"last words"
    finally:
        await watcher.close()


async def test_data_after_a_close_frame_is_ignored(node: Node) -> None:
    destination = topic()
    watcher = await listener(node, destination)
    try:
        async with raw(node) as client:
            await client.handshake(upgrade_request(), masked_frame(CONNECT))
            await client.expect("CONNECTED")
            await client.send(
                close_frame(1000)
                + masked_frame(stomp("SEND", b"too late", destination=destination))
            )
            await client.expect_close(1000)
        # What the node delivers next on the topic is ours, not the frame after the close.
        async with aiohttp.ClientSession() as http:
            reply = await http.post(
                node.url(f"/api/v1/topics/{destination.removeprefix('/topic/')}/messages"),
                json={"body": "marker"},
            )
            assert reply.status == 202
        assert (await watcher.expect("MESSAGE")).body == b"marker"
    finally:
        await watcher.close()


async def test_close_reason_of_a_long_non_ascii_error_is_utf8(node: Node) -> None:
    """The server's close frames carry UTF-8 reasons (§5.5.1) even when cut short."""
    sub_id = "a" + "é" * 99  # puts the 123-byte cut inside a 2-byte character
    async with raw(node) as client:
        await client.handshake(upgrade_request(), masked_frame(CONNECT))
        await client.expect("CONNECTED")
        subscribe = stomp("SUBSCRIBE", id=sub_id, destination="/topic/public")
        await client.send(masked_frame(subscribe + subscribe))
        error = await client.expect("ERROR")
        assert "already in use" in (error.get("message") or "")
        # parse_close raises WebSocketError(1007) if the reason is not UTF-8.
        reason = await client.expect_close(PROTOCOL_ERROR)
        assert reason.startswith("subscription id")


# -- access token in the query -----------------------------------------------------------------


def access_token(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + 300)}, JWT_SECRET, "HS256")


@pytest.mark.parametrize("kept_alive", [False, True], ids=["edge", "aiohttp-route"])
async def test_access_token_in_the_query_names_the_user(jwt_node: Node, kept_alive: bool) -> None:
    async with raw(jwt_node) as client:
        if kept_alive:
            await client.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await client.response()).status == 200
        await client.handshake(upgrade_request(f"/stomp?access_token={access_token('4711')}"))
        await client.send(masked_frame(CONNECT))  # no credentials on the frame itself
        await client.expect("CONNECTED", user_name="4711")
        await client.send(
            masked_frame(stomp("SUBSCRIBE", id="1", destination="/user/4712/message"))
        )
        error = await client.expect("ERROR")
        assert "may not subscribe" in (error.get("message") or "")


async def test_no_access_token_means_no_user(jwt_node: Node) -> None:
    client = await StompWs.open(jwt_node.url("/stomp").replace("http", "ws", 1))
    try:
        await client.send_frame("CONNECT", {"accept-version": "1.2"})
        closed = await client.expect_error_and_close("no token", 1008)
        assert closed.command == "ERROR"
    finally:
        await client.close()
