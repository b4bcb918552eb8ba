"""Client SENDs, end to end against real nodes (issue 14): ``--send-rate``/``--send-burst``.

A flooding client is ended with ``ERROR message:SEND rate limit exceeded`` (its
``receipt-id`` the SEND that found the bucket empty) and close 1008, every SEND before
it answered; a bystander on the same node keeps receiving meanwhile. A client within the
defaults (a burst of 200, then 100 a second) is never refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

import aiohttp
import redis.asyncio

from tidings.config import Config
from tidings.stomp.frames import Frame
from tidings.wsframe import OP_BINARY

from .redis_fixture import RedisServer
from .sockjs_support import Node, node_fixture, running_node
from .stompws import StompWs
from .test_dos import metric, rss_bytes
from .test_websocket_edge import CONNECT, raw, stomp
from .test_wsframe import masked_frame

TIMEOUT = 10.0
RATE, BURST = 50, 100

limited = node_fixture(
    "send-limited",
    "--send-allow",
    "/topic/**",
    "--send-rate",
    str(RATE),
    "--send-burst",
    str(BURST),
)
defaults = node_fixture("send-defaults", "--send-allow", "/topic/**")


def ws_url(node: Node) -> str:
    return node.url("/stomp").replace("http", "ws", 1)


def sends(destination: str, first: int, count: int) -> bytes:
    """``count`` SEND frames with receipts r<first>.. in one masked WebSocket frame."""
    frames = b"".join(
        stomp("SEND", b"hi", destination=destination, receipt=f"r{n}")
        for n in range(first, first + count)
    )
    return masked_frame(frames, OP_BINARY)


async def test_a_send_flood_is_ended_with_an_error_naming_the_refused_send(
    limited: Node,
) -> None:
    destination = f"/topic/flood-{uuid.uuid4().hex}"
    before = await metric(limited, "send_rate_disconnects_total")
    async with raw(limited) as client:
        await client.handshake()
        await client.send(masked_frame(CONNECT))
        await client.expect("CONNECTED")
        await client.send(sends(destination, 0, 10 * BURST))
        receipts = 0
        while (frame := await client.stomp()).command == "RECEIPT":
            assert frame.get("receipt-id") == f"r{receipts}", frame  # in order, none skipped
            receipts += 1
        assert frame.command == "ERROR", frame
        assert frame.get("message") == "SEND rate limit exceeded", frame
        assert frame.get("receipt-id") == f"r{receipts}", frame  # the first one refused
        await client.expect_close(1008)
    # The burst, and what the rate refilled while it was handled; far from all 1,000.
    assert BURST <= receipts < BURST + RATE, receipts
    assert await metric(limited, "send_rate_disconnects_total") == before + 1


async def test_a_commit_past_the_limit_ends_the_session_midway(limited: Node) -> None:
    """A COMMIT's SENDs take a token each as they are released: the one past the limit
    ends the session (no receipt-id: a held SEND's RECEIPT came when it was held); those
    before it are published, as with any error in a COMMIT."""
    destination = f"/topic/tx-{uuid.uuid4().hex}"
    listener = await StompWs.open(ws_url(limited))
    await listener.connect()
    await listener.subscribe("s", destination)
    async with raw(limited) as client:
        await client.handshake()
        await client.send(masked_frame(CONNECT))
        await client.expect("CONNECTED")
        held = b"".join(
            stomp("SEND", b"t", destination=destination, transaction="t") for _ in range(2 * BURST)
        )
        frames = stomp("BEGIN", transaction="t") + held + stomp("COMMIT", transaction="t")
        await client.send(masked_frame(frames, OP_BINARY))
        error = await client.expect("ERROR")
        assert error.get("message") == "SEND rate limit exceeded", error
        assert error.get("receipt-id") is None, error
        await client.expect_close(1008)
    published = 0
    with contextlib.suppress(TimeoutError):  # a second with nothing more: all are in
        while isinstance(await listener.next(timeout=1.0), Frame):
            published += 1
    await listener.close()
    assert BURST <= published < BURST + RATE, published


async def test_a_bystander_keeps_receiving_while_a_client_floods(limited: Node) -> None:
    """Another client of the same node gets messages published during a flood within
    a bounded time; the flooder is cut, however many connections it keeps opening."""
    news = f"/topic/news-{uuid.uuid4().hex}"
    bystander = await StompWs.open(ws_url(limited))
    await bystander.connect()
    await bystander.subscribe("s", news)
    stop = asyncio.Event()
    cut = 0

    async def flood() -> None:
        nonlocal cut
        while not stop.is_set():
            async with raw(limited) as client:
                await client.handshake()
                await client.send(masked_frame(CONNECT))
                await client.expect("CONNECTED")
                batch = sends(f"/topic/flood-{uuid.uuid4().hex}", 0, 4 * BURST)
                await client.send(batch)
                while (await client.stomp()).command == "RECEIPT":
                    pass
                await client.expect_close(1008)
                cut += 1

    flooder = asyncio.create_task(flood())
    latencies = []
    try:
        async with aiohttp.ClientSession() as http:
            for n in range(20):
                started = time.monotonic()
                url = limited.url(f"/api/v1/topics/{news.rsplit('/', 1)[1]}/messages")
                async with http.post(url, json={"body": f"m{n}"}) as reply:
                    assert reply.status == 202, await reply.text()
                message = await bystander.expect("MESSAGE", timeout=TIMEOUT)
                assert message.body == f"m{n}".encode(), message
                latencies.append(time.monotonic() - started)
    finally:
        stop.set()
        async with asyncio.timeout(TIMEOUT):
            await flooder
        await bystander.close()
    assert cut >= 1
    assert max(latencies) < 1.0, latencies


async def test_the_default_limit_takes_a_burst_of_200_then_100_a_second(
    defaults: Node,
) -> None:
    """What a chat client does (a message every few seconds, a paste of many at once)
    stays far below: 200 SENDs in one write are all taken, and 100 more a second later."""
    assert (Config().send_rate, Config().send_burst) == (100, 200)
    destination = f"/topic/chat-{uuid.uuid4().hex}"
    listener = await StompWs.open(ws_url(defaults))
    await listener.connect()
    await listener.subscribe("s", destination)
    async with raw(defaults) as client:
        await client.handshake()
        await client.send(masked_frame(CONNECT))
        await client.expect("CONNECTED")
        await client.send(sends(destination, 0, 200))
        for n in range(200):
            await client.expect("RECEIPT", receipt_id=f"r{n}")
        await asyncio.sleep(1.0)  # the bucket refills: the time is what is tested
        await client.send(sends(destination, 200, 100))
        for n in range(200, 300):
            await client.expect("RECEIPT", receipt_id=f"r{n}")
    for _ in range(300):
        message = await listener.expect("MESSAGE")
        assert message.body == b"hi"
    await listener.close()


# -- what client SENDs keep stored: --max-send-stored-bytes ----------------------------------

BODY_BYTES = 60_000
STORED_BUDGET = 4 * 1024 * 1024
TOPICS = 200  # 3x what the budget takes: every SEND past it is refused


async def send_to_distinct_topics(node: Node, topics: int, body: bytes) -> tuple[int, int]:
    """One SEND with a receipt to each of ``topics`` new topics, reconnecting after an
    ERROR; returns (SENDs taken, SENDs refused with the storage ERROR)."""
    taken = refused = 0
    prefix = f"/topic/store-{uuid.uuid4().hex}"
    n = 0
    while n < topics:
        async with raw(node) as client:
            await client.handshake()
            await client.send(masked_frame(CONNECT))
            await client.expect("CONNECTED")
            while n < topics:
                frame = stomp("SEND", body, destination=f"{prefix}/{n}", receipt=f"r{n}")
                await client.send(masked_frame(frame, OP_BINARY))
                answer = await client.stomp()
                n += 1
                if answer.command == "RECEIPT":
                    taken += 1
                    continue
                assert answer.get("message") == "SEND storage limit reached", answer
                assert answer.get("receipt-id") == f"r{n - 1}", answer
                await client.expect_close(1008)
                refused += 1
                break
    return taken, refused


async def redis_keys(url: str, pattern: str) -> int:
    client = redis.asyncio.Redis.from_url(url)
    try:
        return len([key async for key in client.scan_iter(match=pattern, count=1000)])
    finally:
        await client.aclose()


async def flood_stored_sends(tmp_path: Path, *broker: str) -> tuple[int, int]:
    """200 SENDs of 60 KB to distinct topics on a node with a 4 MiB SEND budget; the
    SENDs taken, and how much the node grew (RSS bytes)."""
    args = ["--send-allow", "/topic/**", "--send-rate", "0", *broker]
    args += ["--max-send-stored-bytes", str(STORED_BUDGET)]
    with running_node(tmp_path, *args) as node:
        before = rss_bytes(node.proc.pid)
        taken, refused = await send_to_distinct_topics(node, TOPICS, b"x" * BODY_BYTES)
        grown = rss_bytes(node.proc.pid) - before
        refusals = await metric(node, "send_storage_refusals_total")
    most = STORED_BUDGET // BODY_BYTES
    assert most - 2 <= taken <= most, taken
    assert refused == TOPICS - taken
    assert refusals == refused
    return taken, grown


async def test_what_client_sends_keep_stored_is_capped_on_the_memory_broker(
    tmp_path: Path,
) -> None:
    """The memory broker held +60 MB after 1,000 SENDs of 60 KB to distinct topics; with
    a 4 MiB budget the SENDs past it are refused with an ERROR and it holds no more."""
    _, grown = await flood_stored_sends(tmp_path)
    assert grown < 3 * STORED_BUDGET, f"the node grew by {grown} bytes"


async def test_what_client_sends_keep_stored_is_capped_on_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """On Redis the same flood left 1,000 stream keys, each kept 7 days: now one per SEND
    taken, and none for the SENDs refused."""
    taken, _ = await flood_stored_sends(tmp_path, "--broker", redis_server.url)
    assert await redis_keys(redis_server.url, "tidings:inbox:t:*") == taken


async def test_a_send_body_is_capped_like_a_published_one(tmp_path: Path) -> None:
    """--max-message-bytes bounds a SEND's body too, not only --max-frame-bytes."""
    args = ("--send-allow", "/topic/**", "--max-message-bytes", "1000")
    with running_node(tmp_path, *args) as node:
        async with raw(node) as client:
            await client.handshake()
            await client.send(masked_frame(CONNECT))
            await client.expect("CONNECTED")
            frame = stomp("SEND", b"x" * 1001, destination="/topic/big")
            await client.send(masked_frame(frame, OP_BINARY))
            error = await client.expect("ERROR")
            assert error.get("message") == "SEND body too large", error
            await client.expect_close(1002)
