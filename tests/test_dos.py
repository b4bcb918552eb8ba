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

from tidings.wsframe import OP_BINARY, OP_PING

from .sockjs_support import Node, node_fixture
from .test_websocket_edge import CONNECT, Raw, raw
from .test_wsframe import masked_frame

TIMEOUT = 10.0
OUTBOUND_LIMIT = 64 * 1024

node = node_fixture("dos", "--max-outbound-bytes", str(OUTBOUND_LIMIT))


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


# -- CPU: a flood of CR LF frames ------------------------------------------------------------


async def test_a_crlf_frame_flood_does_not_stall_the_node(node: Node) -> None:
    """3 WebSocket messages of 256 KB of tiny CR LF frames stalled a node ~6.5 s, and
    /healthz with it; they now take about as long as LF frames (well under a second)."""
    async with raw(node) as client:
        await flood_crlf_frames(node, client)


async def flood_crlf_frames(node: Node, raw: Raw) -> None:
    await raw.handshake()
    await raw.send(masked_frame(CONNECT))
    await raw.expect("CONNECTED")
    frames = b"ACK\r\nid:x\r\n\r\n\0" * (256 * 1024 // 14)
    flood = masked_frame(frames, OP_BINARY) * 3
    receipt = masked_frame(b"ACK\r\nid:x\r\nreceipt:flood-done\r\n\r\n\0", OP_BINARY)
    started = time.monotonic()
    await raw.send(flood + receipt)
    async with aiohttp.ClientSession() as http, http.get(node.url("/healthz")) as reply:
        assert reply.status == 200
    health_s = time.monotonic() - started
    await raw.expect("RECEIPT", receipt_id="flood-done")
    flood_s = time.monotonic() - started
    assert health_s < 2.5, f"/healthz took {health_s:.2f} s behind the flood"
    assert flood_s < 5.0, f"the flood took {flood_s:.2f} s"


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
