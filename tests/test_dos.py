"""Denial of service by one unauthenticated client, end to end against real nodes (issue 14).

Each test is an attack from the issue, made with raw sockets so that the client does
exactly what an attacker would: a STOMP flood of CR LF frames, pings never read,
request heads never finished, a WebSocket or SockJS session that never sends CONNECT,
idle kept-alive connections, too many connections from one address. The nodes run
with short timeouts so that the tests are quick; ``test_timeouts_have_bounded_defaults``
checks the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from tidings.config import Config
from tidings.wsframe import OP_BINARY, OP_PING, OP_TEXT

from .sockjs_support import Node, node_fixture
from .test_websocket_edge import CONNECT, Raw, raw, stomp, upgrade_request
from .test_wsframe import masked_frame

TIMEOUT = 10.0
HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
CONNECT_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 2.0
OUTBOUND_LIMIT = 64 * 1024

node = node_fixture(
    "dos",
    "--head-timeout",
    str(HEAD_TIMEOUT),
    "--body-timeout",
    str(BODY_TIMEOUT),
    "--connect-timeout",
    str(CONNECT_TIMEOUT),
    "--keepalive-timeout",
    str(KEEPALIVE_TIMEOUT),
    "--max-outbound-bytes",
    str(OUTBOUND_LIMIT),
)
capped_node = node_fixture("dos-capped", "--max-connections-per-ip", "3")


async def read_all(reader: asyncio.StreamReader, within: float = TIMEOUT) -> bytes:
    """Everything until the server closes the connection."""
    async with asyncio.timeout(within):
        return await reader.read()


def status_and_json(response: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"application/json" in head.lower(), response
    parsed: dict[str, object] = json.loads(body)
    return status, parsed


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def metric(node: Node, name: str) -> float:
    async with (
        aiohttp.ClientSession() as http,
        http.get(node.url("/metrics")) as reply,
    ):
        text = await reply.text()
    for line in text.splitlines():
        if line.startswith(f"tidings_{name}{{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


def test_timeouts_have_bounded_defaults() -> None:
    """Issue 14: a request head and a CONNECT get at most 10 s by default, an idle
    kept-alive connection minutes, not aiohttp's hour."""
    config = Config()
    assert 0 < config.head_timeout_s <= 10
    assert 0 < config.body_timeout_s <= 10
    assert 0 < config.connect_timeout_s <= 10
    assert 0 < config.keepalive_timeout_s <= 120


# -- CPU: a flood of CR LF frames ------------------------------------------------------------


async def test_a_crlf_frame_flood_does_not_stall_the_node(node: Node) -> None:
    """3 WebSocket messages of 256 KB of tiny CR LF frames stalled a node ~6.5 s, and
    /healthz with it, where LF frames took 0.07 s; they now take about as long as LF
    frames. Measured against LF frames on the same node just before, not against a fixed
    time, so that a busy machine (the suite's other workers) slows both alike."""
    async with raw(node) as client:
        lf_health_s, lf_flood_s = await flood_frames(node, client, b"\n")
    async with raw(node) as client:
        health_s, flood_s = await flood_frames(node, client, b"\r\n")
    bound = 4 * lf_flood_s + 1.0
    assert health_s < bound, (
        f"/healthz took {health_s:.2f} s behind the flood (LF: {lf_health_s:.2f})"
    )
    assert flood_s < bound, f"the flood took {flood_s:.2f} s (LF: {lf_flood_s:.2f} s)"


async def flood_frames(node: Node, raw: Raw, eol: bytes) -> tuple[float, float]:
    """Seconds until /healthz answered and until the flood's last frame was handled."""
    await raw.handshake()
    await raw.send(masked_frame(CONNECT))
    await raw.expect("CONNECTED")
    frame = b"ACK" + eol + b"id:x" + eol + eol + b"\0"
    frames = frame * (256 * 1024 // len(frame))
    flood = masked_frame(frames, OP_BINARY) * 3
    receipt = masked_frame(
        b"ACK" + eol + b"id:x" + eol + b"receipt:flood-done" + eol * 2 + b"\0", OP_BINARY
    )
    started = time.monotonic()
    await raw.send(flood + receipt)
    async with aiohttp.ClientSession() as http, http.get(node.url("/healthz")) as reply:
        assert reply.status == 200
    health_s = time.monotonic() - started
    await raw.expect("RECEIPT", receipt_id="flood-done")
    return health_s, time.monotonic() - started


# -- memory: pings never read ----------------------------------------------------------------


async def test_pings_never_read_cut_the_client_as_a_slow_consumer(node: Node) -> None:
    """PONGs went out ahead of the outbound bound: 150 MB of pings never read grew the
    node by 212 MB. They now count against --max-outbound-bytes like any frame."""
    slow_before = await metric(node, "slow_consumer_disconnects_total")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up soon
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", node.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    raw = Raw(reader, writer)
    await raw.handshake()
    await raw.send(masked_frame(CONNECT))
    await raw.expect("CONNECTED")
    rss_before = rss_bytes(node.proc.pid)
    batch = masked_frame(b"p" * 125, OP_PING) * 1000  # 131 KB of pings, never a read
    sent = 0
    cut = False
    try:
        while sent < 64 * 1024 * 1024:
            writer.write(batch)
            async with asyncio.timeout(TIMEOUT):
                await writer.drain()
            sent += len(batch)
    except ConnectionError:
        cut = True
    grown = rss_bytes(node.proc.pid) - rss_before
    await raw.close()
    assert cut, f"still connected after {sent} bytes of pings never read"
    assert grown < 16 * 1024 * 1024, f"the node grew by {grown} bytes"
    assert await metric(node, "slow_consumer_disconnects_total") == slow_before + 1


# -- time: heads never finished, CONNECT never sent, idle connections ------------------------


async def partial_request(node: Node, data: bytes) -> tuple[float, bytes]:
    """Send ``data`` and nothing more; the seconds until the server closed, and its answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    started = time.monotonic()
    writer.write(data)
    answer = await read_all(reader)
    await close(writer)
    return time.monotonic() - started, answer


async def test_half_sent_request_heads_are_answered_408_and_closed(node: Node) -> None:
    """A head incomplete --head-timeout after its first byte: 408 with a JSON body, closed.
    Before, a GET went to aiohttp after the timeout and other methods at once, where it
    waited an hour; a POST waited the hour in the edge's own reader."""
    for head in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        b"POST /api/v1/topics/t/messages HTTP/1.1\r\nHost: x\r\n",
        b"PUT /x HTTP/1.1\r\nHost: x\r\n",
        b"G",
    ):
        elapsed, answer = await partial_request(node, head)
        status, body = status_and_json(answer)
        assert status == 408, answer
        assert "head" in str(body["error"]), body
        assert HEAD_TIMEOUT * 0.9 <= elapsed < HEAD_TIMEOUT + 3, (head, elapsed)


async def test_a_second_head_sent_slowly_is_answered_408(node: Node) -> None:
    """On a kept-alive connection aiohttp serves, a second head dribbled a byte at a time
    held the connection --keepalive-timeout; now --head-timeout from its first byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    started = time.monotonic()
    answer = b""
    with contextlib.suppress(ConnectionError):
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":  # slowloris: never the end
            writer.write(bytes([byte]))
            await writer.drain()
            if await_answer := await _read_within(reader, 0.1):
                answer = await_answer + await read_all(reader)
                break
        else:
            answer = await read_all(reader)
    await close(writer)
    elapsed = time.monotonic() - started
    status, body = status_and_json(answer)
    assert status == 408, answer
    assert body["error"] == "request_head_timeout", body
    assert HEAD_TIMEOUT * 0.9 <= elapsed < HEAD_TIMEOUT + 2, elapsed


async def _read_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sent within ``seconds`` (b"" if nothing): the slowloris's pace."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            return await reader.read(65536)
    return b""


def responses(data: bytes) -> list[tuple[int, bytes]]:
    """The status and body of each response in ``data`` (each framed by Content-Length)."""
    answers: list[tuple[int, bytes]] = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        answers.append((int(head.split(b" ", 2)[1]), rest[:length]))
        data = rest[length:]
    return answers


GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHo"
DECLINED_UPGRADE = (
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
)


@pytest.mark.parametrize(
    ("before", "statuses"),
    [
        pytest.param(GET_HEALTHZ, [200], id="get"),
        pytest.param(  # bodies aiohttp reads (or drains), Content-Length then chunked
            GET_HEALTHZ
            + b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nGET /"
            + b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"5;ext=1\r\nGET /\r\n0\r\nTrailer: GET /\r\n\r\n",
            [200, 405, 405],
            id="bodies",
        ),
        # Upgrades aiohttp declines (/healthz answers as for any GET), one behind the other.
        pytest.param(DECLINED_UPGRADE, [200], id="declined-upgrade"),
        pytest.param(
            DECLINED_UPGRADE + GET_HEALTHZ + DECLINED_UPGRADE, [200] * 3, id="declined-upgrades"
        ),
    ],
)
async def test_a_half_sent_head_behind_a_request_is_answered_408(
    node: Node, before: bytes, statuses: list[int]
) -> None:
    """A head never finished, sent in the same write as complete requests, then silence:
    aiohttp holds it in its parser while it answers them, then waits idle. It held the
    connection --keepalive-timeout; now it is answered 408 --head-timeout after aiohttp
    went idle (the guard looks every quarter of it while aiohttp is busy)."""
    elapsed, answer = await partial_request(node, before + PARTIAL_HEAD)
    *answered, (status, body) = responses(answer)
    assert [status for status, _ in answered] == statuses, answer
    assert status == 408, answer
    assert json.loads(body)["error"] == "request_head_timeout", body
    assert HEAD_TIMEOUT * 0.9 <= elapsed < HEAD_TIMEOUT * 1.25 + 1, elapsed


async def test_a_long_first_head_handed_to_aiohttp_is_answered_408(node: Node) -> None:
    """A first head over the edge's 16 KB goes to aiohttp unfinished (its lines are
    within aiohttp's limits): it held the connection --keepalive-timeout; now 408."""
    field = b"X-Pad: " + b"p" * 1000 + b"\r\n"
    elapsed, answer = await partial_request(node, b"GET /healthz HTTP/1.1\r\n" + field * 17)
    status, body = status_and_json(answer)
    assert status == 408, answer
    assert body["error"] == "request_head_timeout", body
    assert HEAD_TIMEOUT * 0.9 <= elapsed < HEAD_TIMEOUT * 1.25 + 1, elapsed


async def test_pipelined_requests_are_answered_and_kept_alive(node: Node) -> None:
    """Complete requests in one write, bodies among them: each answered in order, and the
    connection then idles until --keepalive-timeout, not the head timeout."""
    requests = (
        GET_HEALTHZ
        + b"\r\n"  # RFC 9112 §2.2: an empty line before a request is ignored
        + b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nGET"
        + b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"3\r\nGET\r\n0\r\n\r\n"
        + GET_HEALTHZ
    )
    elapsed, answer = await partial_request(node, requests)
    assert [status for status, _ in responses(answer)] == [200, 405, 405, 200], answer
    assert KEEPALIVE_TIMEOUT * 0.9 <= elapsed < KEEPALIVE_TIMEOUT + 3, elapsed


async def test_a_slow_body_aiohttp_reads_is_not_on_the_head_clock(node: Node) -> None:
    """A publish body on a connection aiohttp serves, half sent behind the request before
    it: the head timeout does not cut it (a body is not a head); once whole, answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    body = b'{"body": "slow"}'
    head = b"POST /api/v1/topics/t/messages HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
    writer.write(GET_HEALTHZ + head % len(body) + body[:5])
    async with asyncio.timeout(TIMEOUT):
        first = await reader.readuntil(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200"), first
        length = int(first.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    assert await _read_within(reader, HEAD_TIMEOUT * 1.25 + 0.5) == b""
    writer.write(body[5:])
    async with asyncio.timeout(TIMEOUT):
        second = await reader.readuntil(b"\r\n\r\n")
    await close(writer)
    assert second.startswith(b"HTTP/1.1 202"), second


async def test_a_websocket_aiohttp_switched_to_is_not_on_the_head_clock(node: Node) -> None:
    """A SockJS WebSocket on a connection aiohttp serves (a GET came first): what follows
    the handshake is frames, not heads. A frame left half sent longer than the head
    timeout is no 408, and the session goes on once it is whole."""
    async with raw(node) as client:
        await client.send(GET_HEALTHZ)
        assert (await client.response()).status == 200
        path = node.session_url().removeprefix(node.http_url) + "/websocket"
        await client.handshake(upgrade_request(path, protocols=None))
        assert await client.frame() == (OP_TEXT, b"o")
        await client.send(masked_frame(json.dumps([CONNECT.decode()]).encode()))
        assert (await client.frame())[1].startswith(b'a["CONNECTED')
        subscribe = stomp("SUBSCRIBE", id="s", destination="/topic/t", receipt="r")
        frame = masked_frame(json.dumps([subscribe.decode()]).encode())
        await client.send(frame[:5])
        assert await _read_within(client.reader, HEAD_TIMEOUT * 1.25 + 0.5) == b""
        await client.send(frame[5:])
        assert (await client.frame())[1].startswith(b'a["RECEIPT')


@pytest.mark.parametrize(
    "head",
    [
        b"POST /api/v1/topics/t/messages HTTP/1.1\nHost: x\nContent-Length: 0\n\n",
        b"GET /healthz HTTP/1.1\nHost: x\n\n",
        b"PUT /x HTTP/1.1\nHost: x\n\n",
    ],
)
async def test_a_bare_lf_head_is_answered_at_once(node: Node, head: bytes) -> None:
    """A POST head with bare LF line ends got no answer for an hour: now a bare-LF head
    is answered at once (by aiohttp) rather than waiting for a CRLF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    started = time.monotonic()
    writer.write(head)
    async with asyncio.timeout(TIMEOUT):
        status_line = await reader.readline()
    await close(writer)
    assert status_line.startswith(b"HTTP/1."), status_line
    assert time.monotonic() - started < HEAD_TIMEOUT


@pytest.mark.parametrize("first", [b"", b"POST /api/v1/topics/t/messages HTTP/1.1\r\nHost: x\r\n"])
async def test_a_slow_post_body_is_answered_408(node: Node, first: bytes) -> None:
    """A publish body still incomplete --body-timeout after its head (whole, or the rest
    of a head sent in two parts) held the connection --keepalive-timeout; now 408."""
    head = b"POST /api/v1/topics/t/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    if first:
        writer.write(first)
        await writer.drain()
        assert await _read_within(reader, 0.3) == b""
        head = head[len(first) :]
    started = time.monotonic()
    writer.write(head + b"{")
    answer = await read_all(reader)
    await close(writer)
    elapsed = time.monotonic() - started
    status, body = status_and_json(answer)
    assert status == 408, answer
    assert body["error"] == "request_body_timeout", body
    assert BODY_TIMEOUT * 0.9 <= elapsed < BODY_TIMEOUT + 2, elapsed


async def test_idle_kept_alive_connections_are_closed(node: Node) -> None:
    """Nothing sent, or nothing more after an answer (the edge's or aiohttp's): closed
    after --keepalive-timeout."""
    for request in (
        b"",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/v1/topics/t/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    ):
        elapsed, answer = await partial_request(node, request)
        assert KEEPALIVE_TIMEOUT * 0.9 <= elapsed < KEEPALIVE_TIMEOUT + 3, (request, elapsed)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 "), answer


async def test_a_websocket_that_never_sends_connect_is_closed(node: Node) -> None:
    """50 of 50 such WebSockets were still open after 20 s: now ERROR, then close 1008."""
    async with raw(node) as client:
        started = time.monotonic()
        await client.handshake()
        error = await client.expect("ERROR")
        assert "CONNECT" in (error.get("message") or ""), error
        await client.expect_close(1008)
    assert CONNECT_TIMEOUT * 0.9 <= time.monotonic() - started < CONNECT_TIMEOUT + 3


async def test_sessions_opened_at_different_times_each_get_the_whole_timeout(
    node: Node,
) -> None:
    """One timer serves every session's deadline: each is closed at its own."""

    async def opened_then_closed(delay: float) -> tuple[float, float]:
        await asyncio.sleep(delay)  # spaces the openings; not a synchronisation
        async with raw(node) as client:
            await client.handshake()
            opened = time.monotonic()
            await client.expect("ERROR")
            await client.expect_close(1008)
            return opened, time.monotonic()

    spans = await asyncio.gather(*(opened_then_closed(d) for d in (0.0, 0.4, 0.8)))
    for opened, closed in spans:
        assert CONNECT_TIMEOUT * 0.9 <= closed - opened < CONNECT_TIMEOUT + 1.5, spans


async def test_a_sockjs_session_that_never_sends_connect_is_closed(node: Node) -> None:
    url = node.session_url()
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/xhr") as reply:
            assert await reply.text() == "o\n"
        frames = ""
        while not frames.startswith("c["):  # long polls: the ERROR, then the close frame
            async with asyncio.timeout(TIMEOUT), http.post(f"{url}/xhr") as reply:
                frames = await reply.text()
                if frames.startswith("a["):
                    assert "ERROR" in frames and "CONNECT" in frames, frames
    assert frames.startswith("c[1008,"), frames
    assert CONNECT_TIMEOUT * 0.9 <= time.monotonic() - started < CONNECT_TIMEOUT + 3


async def test_a_session_that_connects_in_time_stays(node: Node) -> None:
    async with raw(node) as client:
        await client.handshake()
        await client.send(masked_frame(CONNECT))
        await client.expect("CONNECTED")
        await client.send(masked_frame(b"DISCONNECT\nreceipt:bye\n\n\0"))
        await client.expect("RECEIPT", receipt_id="bye")


# -- descriptors: connections per address ----------------------------------------------------


async def test_connections_past_the_per_address_cap_are_refused(capped_node: Node) -> None:
    """--max-connections-per-ip 3: a fourth connection from 127.0.0.1 gets a 503 with a
    JSON reason and is closed; once one of the three is gone, a new one is taken."""
    held = [await asyncio.open_connection("127.0.0.1", capped_node.port) for _ in range(2)]
    async with raw(capped_node) as websocket:  # a STOMP WebSocket counts too
        await websocket.handshake()
        refused_reader, refused_writer = await asyncio.open_connection(
            "127.0.0.1", capped_node.port
        )
        status, body = status_and_json(await read_all(refused_reader))
        await close(refused_writer)
        assert status == 503
        assert "connections" in str(body["error"]), body
        # The server ends one of the three (it answers, then closes): a place is free.
        reader, writer = held.pop()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await read_all(reader)).startswith(b"HTTP/1.1 200")
        await close(writer)
        reader, writer = await asyncio.open_connection("127.0.0.1", capped_node.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await read_all(reader)).startswith(b"HTTP/1.1 200")
        await close(writer)
        for _, other in held:
            await close(other)
