"""Heart-beats, slow consumers and shutdown, against a real server process."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import aiohttp

from .conftest import StartServer
from .stompws import HEARTBEAT, Closed, StompWs

POLICY_VIOLATION = 1008
GOING_AWAY = 1001


async def test_server_sends_heartbeats_and_closes_a_silent_client(
    tidings_server: StartServer,
) -> None:
    server = await tidings_server("--heartbeat", "100,100")
    client = await StompWs.open(server.ws_url())
    try:
        connected = await client.connect(**{"heart-beat": "100,100"})
        assert connected.get("heart-beat") == "100,100"
        # The client sends nothing: it hears beats, then an ERROR after 3 x 100 ms of silence.
        beats = 0
        while True:
            item = await client.next(timeout=3.0)
            if item != HEARTBEAT:
                break
            beats += 1
        assert beats >= 1, "the server sent no heart-beat before closing"
        assert item.command == "ERROR" and item.get("message") == "heart-beat timeout"  # type: ignore[union-attr]
        closed = await client.next()
        assert isinstance(closed, Closed) and closed.code == POLICY_VIOLATION
    finally:
        await client.close()


async def test_a_client_that_beats_stays_connected(tidings_server: StartServer) -> None:
    server = await tidings_server("--heartbeat", "100,100")
    client = await StompWs.open(server.ws_url())
    try:
        await client.connect(**{"heart-beat": "100,100"})
        # Beat every 50 ms for 1 s (over three times the 300 ms silence limit).
        for _ in range(20):
            await client.send_raw(b"\n")
            await asyncio.sleep(0.05)
        await client.send_frame("DISCONNECT", {"receipt": "still-alive"})
        await client.expect("RECEIPT", **{"receipt-id": "still-alive"})
    finally:
        await client.close()


async def test_no_heartbeats_when_the_client_asks_for_none(tidings_server: StartServer) -> None:
    server = await tidings_server("--heartbeat", "100,100")
    client = await StompWs.open(server.ws_url())
    try:
        connected = await client.connect(**{"heart-beat": "0,0"})
        assert connected.get("heart-beat") == "100,100"
        item = None
        with contextlib.suppress(TimeoutError):
            item = await client.next(timeout=0.6)
        assert item is None, f"expected silence with heart-beat 0,0, got {item!r}"
    finally:
        await client.close()


async def test_a_client_that_stops_reading_is_disconnected_and_others_get_everything(
    tidings_server: StartServer,
) -> None:
    server = await tidings_server("--max-outbound-bytes", "65536")
    reader = await StompWs.open(server.ws_url())
    stalled = await StompWs.open(server.ws_url())
    body = "x" * 16_000
    count = 600  # 9.6 MB: far beyond the bound plus what the kernel buffers on loopback
    try:
        await reader.connect()
        await reader.subscribe("s", "/topic/firehose")
        await stalled.connect()
        await stalled.subscribe("s", "/topic/firehose")
        # From here on the stalled client reads nothing until every publish is accepted.
        async with aiohttp.ClientSession() as http:
            for _ in range(count):
                async with http.post(
                    f"{server.http_url}/api/v1/topics/firehose/messages", json={"body": body}
                ) as reply:
                    assert reply.status == 202
                # The reader keeps reading as a healthy client does.
                await reader.expect("MESSAGE", destination="/topic/firehose")
        # The stalled client finally reads: some messages, then the slow-consumer verdict.
        received = 0
        while True:
            item = await stalled.next(timeout=10.0)
            if isinstance(item, Closed):
                raise AssertionError(f"closed without an ERROR after {received} messages")
            assert not isinstance(item, str)
            if item.command == "ERROR":
                break
            received += 1
        assert item.get("message") == "slow consumer"
        assert received < count
        closed = await stalled.next()
        assert isinstance(closed, Closed) and closed.code == POLICY_VIOLATION
        # The operator hears of it at warning level (rate-limited: tidings/logs.py).
        warnings = [line for line in server.log().splitlines() if "slow consumer" in line]
        assert len(warnings) == 1 and " WARNING tidings.server.session: " in warnings[0]
    finally:
        await reader.close()
        await stalled.close()


async def test_sigterm_closes_sessions_with_a_reason_and_exits_zero(
    tidings_server: StartServer,
) -> None:
    server = await tidings_server()
    client = await StompWs.open(server.ws_url())
    try:
        await client.connect()
        server.proc.send_signal(signal.SIGTERM)
        error = await client.expect("ERROR")
        assert error.get("message") == "server shutting down"
        closed = await client.next()
        assert isinstance(closed, Closed) and closed.code == GOING_AWAY
        assert await asyncio.wait_for(server.proc.wait(), 10) == 0
    finally:
        await client.close()
