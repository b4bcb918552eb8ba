"""/metrics (server/metrics.py): each family moves when its event happens.

Real `tidings serve` processes, real clients (aiohttp WebSocket, SockJS over HTTP); the
exposition is read with prometheus-client's own parser, so a malformed one fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tidings.config import Config
from tidings.message import Message, topic_channel
from tidings.outbound import loop_flusher
from tidings.server.app import Server

from .conftest import StartServer, TidingsServer, worker_pids
from .sockjs_support import Node, XhrSession, node_fixture, publish
from .stompws import StompWs
from .test_gc_pressure import subscribed_sessions

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
MAX_OUTBOUND = 30_000
USER_ROUTE = "/api/v1/users/{user}/messages"
TIMEOUT = 10.0

node = node_fixture("metrics", "--max-outbound-bytes", str(MAX_OUTBOUND))
jwt_node = node_fixture("metrics-jwt", "--auth", "jwt", "--jwt-secret", SECRET)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(node: Node) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(node.url("/metrics")) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse(await reply.text())


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples carrying ``labels`` (0 if there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_every_family_is_exposed_with_the_node_label(node: Node) -> None:
    samples = await scrape(node)
    names = {name for name, _ in samples}
    for name in (
        # today's names, kept
        "tidings_connections",
        "tidings_sessions",
        "tidings_subscriptions",
        "tidings_broker_channels",
        "tidings_broker_ready",
        "tidings_messages_published_total",
        "tidings_broker_messages_received_total",
        "tidings_frames_delivered_total",
        "tidings_slow_consumer_disconnects_total",
        "tidings_broker_reconnects_total",
        # new
        "tidings_publish_latency_seconds_count",
        "tidings_delivery_lag_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "python_gc_collections_total",
    ):
        assert name in names, name
    node_labels = {
        dict(labels).get("node") for name, labels in samples if name.startswith("tidings_")
    }
    assert len(node_labels) == 1 and None not in node_labels
    assert value(samples, "tidings_broker_ready") == 1


async def test_a_publish_moves_the_latency_histogram_and_the_http_counter_on_both_servers(
    node: Node, http: aiohttp.ClientSession
) -> None:
    before = await scrape(node)
    # A connection that starts with a POST is served by the edge (server/api_edge.py).
    await publish(node, "/api/v1/users/metrics-a/messages", "one")
    # One that starts with a GET goes to aiohttp, which then serves its POST too.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as kept:
        async with kept.get(node.url("/healthz")) as reply:
            assert reply.status == 200
        path = node.url("/api/v1/users/metrics-b/messages")
        async with kept.post(path, json={"body": "two"}) as reply:
            assert reply.status == 202
        async with kept.post(path, data=b"not json") as reply:
            assert reply.status == 400
    async with http.post(node.url("/api/v1/users/metrics-c/messages"), data=b"{") as reply:
        assert reply.status == 400  # the edge's answer
    after = await scrape(node)
    assert moved(before, after, "tidings_publish_latency_seconds_count") == 2  # 2xx only
    assert moved(before, after, "tidings_publish_latency_seconds_sum") > 0
    assert moved(before, after, "tidings_publish_latency_seconds_bucket", le="+Inf") == 2
    assert moved(before, after, "tidings_messages_published_total") == 2
    responses = "tidings_http_responses_total"
    assert moved(before, after, responses, route=USER_ROUTE, status="202") == 2
    assert moved(before, after, responses, route=USER_ROUTE, status="400") == 2
    assert moved(before, after, responses, route="/healthz", status="200") == 1
    # The route label is the template: no label value per user.
    assert not any("metrics-a" in str(labels) for _, labels in after)


async def test_unmatched_paths_share_one_route_label(
    node: Node, http: aiohttp.ClientSession
) -> None:
    before = await scrape(node)
    for path in ("/no-such-page", f"/{uuid.uuid4().hex}"):
        async with http.get(node.url(path)) as reply:
            assert reply.status == 404
    after = await scrape(node)
    responses = "tidings_http_responses_total"
    assert moved(before, after, responses, route="unmatched", status="404") == 2


async def test_a_delivery_moves_the_lag_histogram_once_per_message(node: Node) -> None:
    user = uuid.uuid4().hex
    clients = [await StompWs.open(node.url("/stomp").replace("http", "ws", 1)) for _ in range(2)]
    try:
        for client in clients:
            await client.connect(login=user)
            await client.subscribe("s", f"/user/{user}/message")
        before = await scrape(node)
        await publish(node, f"/api/v1/users/{user}/messages", "lagging")
        for client in clients:
            message = await client.expect("MESSAGE")
            assert message.body == b"lagging"
        after = await scrape(node)
    finally:
        for client in clients:
            await client.close()
    assert moved(before, after, "tidings_frames_delivered_total") == 2  # two frames ...
    assert moved(before, after, "tidings_delivery_lag_seconds_count") == 1  # ... one message
    assert 0 <= moved(before, after, "tidings_delivery_lag_seconds_sum") < 5


async def test_connections_count_under_their_transport(
    node: Node, http: aiohttp.ClientSession
) -> None:
    before = await scrape(node)
    client = await StompWs.open(node.url("/stomp").replace("http", "ws", 1))
    try:
        await client.connect(login="ws-user")
        during = await scrape(node)
        assert moved(before, during, "tidings_connections") == 1
        assert moved(before, during, "tidings_sessions") == 1
    finally:
        await client.close()
    xhr = XhrSession(http, node.session_url())
    await xhr.open()
    await xhr.connect("xhr-user")
    async with http.ws_connect(node.session_url().replace("http", "ws", 1) + "/websocket") as ws:
        assert (await ws.receive_str()) == "o"
    async with http.post(node.session_url() + "/xhr_streaming") as reply:
        await reply.content.readuntil(b"o\n")
    after = await scrape(node)
    opened = "tidings_connections_opened_total"
    assert moved(before, after, opened, transport="websocket") == 1
    assert moved(before, after, opened, transport="sockjs-xhr-polling") == 1
    assert moved(before, after, opened, transport="sockjs-websocket") == 1
    assert moved(before, after, opened, transport="sockjs-xhr-streaming") == 1
    responses = "tidings_http_responses_total"
    assert moved(before, after, responses, route="/stomp", status="101") == 1


async def test_a_slow_consumer_moves_its_counter(node: Node, http: aiohttp.ClientSession) -> None:
    user = uuid.uuid4().hex
    session = XhrSession(http, node.session_url())
    await session.open()
    await session.connect(user)
    await session.subscribe("s", f"/user/{user}/message")
    before = await scrape(node)
    for index in range(20):  # 20 x 2 KB > --max-outbound-bytes 30000, nobody polling
        await publish(node, f"/api/v1/users/{user}/messages", f"{index:04d}" + "x" * 2000)
    error = await session.expect("ERROR")
    assert error.headers["message"] == "slow consumer"
    after = await scrape(node)
    assert moved(before, after, "tidings_slow_consumer_disconnects_total") == 1


def token(sub: str, expires_in: float) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + expires_in)}, SECRET, "HS256")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_token"),
        ({"Authorization": f"Bearer {token('42', -60)}"}, "expired_token"),
        ({"Authorization": "Bearer not.a.jwt"}, "invalid_token"),
    ],
    ids=["missing", "expired", "malformed"],
)
async def test_a_bad_jwt_moves_auth_failures_by_reason(
    jwt_node: Node, headers: dict[str, str], reason: str
) -> None:
    before = await scrape(jwt_node)
    client = await StompWs.open(jwt_node.url("/stomp").replace("http", "ws", 1))
    try:
        await client.send_frame("CONNECT", {"accept-version": "1.2", **headers})
        await client.expect_error_and_close("authentication failed", 1008)
    finally:
        await client.close()
    after = await scrape(jwt_node)
    assert moved(before, after, "tidings_auth_failures_total", reason=reason) == 1
    assert moved(before, after, "tidings_auth_failures_total") == 1


async def test_subscribing_to_another_user_and_a_remote_publisher_are_auth_failures(
    jwt_node: Node, http: aiohttp.ClientSession
) -> None:
    before = await scrape(jwt_node)
    client = await StompWs.open(jwt_node.url("/stomp").replace("http", "ws", 1))
    try:
        await client.connect(Authorization=f"Bearer {token('42', 300)}")
        await client.send_frame("SUBSCRIBE", {"id": "1", "destination": "/user/43/message"})
        await client.expect_error_and_close("may not subscribe", 1008)
    finally:
        await client.close()
    # No --api-key: a caller a loopback proxy names as remote may not publish.
    url = jwt_node.url("/api/v1/users/42/messages")
    async with http.post(url, json={"body": "x"}, headers={"X-Forwarded-For": "192.0.2.7"}) as r:
        assert r.status == 403
    after = await scrape(jwt_node)
    failures = "tidings_auth_failures_total"
    assert moved(before, after, failures, reason="forbidden_destination") == 1
    assert moved(before, after, failures, reason="not_loopback") == 1


# -- tidings serve --workers N: one view from every worker ---------------------------------


async def scrape_with_pid(server: TidingsServer) -> tuple[int, Samples]:
    """A scrape, and the pid of the worker that answered it (asked on the same connection)."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(f"{server.http_url}/metrics") as reply:
            assert reply.status == 200
            samples = parse(await reply.text())
        async with http.get(f"{server.http_url}/healthz") as reply:
            pid = (await reply.json())["pid"]
    return pid, samples


async def until_total(server: TidingsServer, name: str, total: float) -> None:
    """Scrape until ``name`` is ``total``: another worker's values reach its files within
    a second (server/metrics.py, SYNC_INTERVAL_S)."""
    seen = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TIMEOUT):
            while seen != total:
                seen = value((await scrape_with_pid(server))[1], name)
                await asyncio.sleep(0.05)  # a poll interval, not synchronisation
            return
    raise AssertionError(f"{name} is {seen}, expected {total}")


def environ_of(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_text().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def is_dir(path: Path) -> bool:
    return path.is_dir()


async def test_every_worker_answers_a_scrape_for_all_workers(
    tidings_server: StartServer, redis_server: Any
) -> None:
    server = await tidings_server("--workers", "2", "--broker", redis_server.url, "--node-id", "W")
    pids = await worker_pids(server, 2)
    multiproc_dir = Path(environ_of(pids["W-w0"])["PROMETHEUS_MULTIPROC_DIR"])
    assert is_dir(multiproc_dir)
    clients: list[StompWs] = []
    held: dict[str, int] = {"W-w0": 0, "W-w1": 0}
    try:
        async with asyncio.timeout(TIMEOUT):
            while min(held.values()) < 2:  # both workers hold sessions
                client = await StompWs.open(server.ws_url())
                clients.append(client)
                connected = await client.connect(login=f"u{len(clients)}")
                match = re.search(r"\(node ([^)]+)\)", connected.get("server") or "")
                assert match, connected
                held[match[1]] += 1
                await client.subscribe("s", f"/user/u{len(clients)}/message")
        total = len(clients)
        await until_total(server, "tidings_subscriptions", total)
        answered = set()
        for scrape in range(40):
            pid, samples = await scrape_with_pid(server)
            answered.add(pid)
            assert value(samples, "tidings_connections") == total, scrape
            assert value(samples, "tidings_sessions") == total, scrape
            assert value(samples, "tidings_subscriptions") == total, scrape
            opened = value(samples, "tidings_connections_opened_total", transport="websocket")
            assert opened == total, scrape
            assert value(samples, "tidings_broker_ready") == 1
            assert {dict(labels)["node"] for n, labels in samples if n.startswith("tidings_")} == {
                "W"
            }
            if scrape >= 5 and answered == set(pids.values()):
                break
        assert answered == set(pids.values())  # each worker answered for both

        # Histograms and labelled counters merge too (each worker's buckets add up).
        published = 12
        for n in range(published):  # a fresh connection each: both workers take some
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
                http.post(
                    f"{server.http_url}/api/v1/users/u1/messages", json={"body": f"m{n}"}
                ) as reply,
            ):
                assert reply.status == 202
        await until_total(server, "tidings_publish_latency_seconds_count", published)
        samples = (await scrape_with_pid(server))[1]
        buckets = sorted(
            (float(dict(labels)["le"]), v)
            for (n, labels), v in samples.items()
            if n == "tidings_publish_latency_seconds_bucket"
        )
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
        assert buckets[-1] == (float("inf"), published)
        assert value(samples, "tidings_publish_latency_seconds_sum") > 0
        responses = "tidings_http_responses_total"
        assert value(samples, responses, route=USER_ROUTE, status="202") == published
        assert value(samples, "tidings_messages_published_total") == published

        # A worker dies: the parent marks it dead, its live gauges leave the sum; counters
        # stay. Its replacement (a new pid, same node id) holds no connection yet.
        os.kill(pids["W-w1"], signal.SIGKILL)
        replaced = await worker_pids(server, 2, not_pids=frozenset({pids["W-w1"]}))
        assert replaced["W-w0"] == pids["W-w0"] and replaced["W-w1"] != pids["W-w1"]
        await until_total(server, "tidings_connections", held["W-w0"])
        samples = (await scrape_with_pid(server))[1]
        assert value(samples, "tidings_sessions") == held["W-w0"]
        assert value(samples, "tidings_connections_opened_total") == total
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
    await server.stop()
    assert not is_dir(multiproc_dir)  # the parent removed its directory


async def test_metrics_stays_in_the_openapi_document_with_its_content_type(node: Node) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(node.url("/api/v1/openapi.json")) as reply,
    ):
        doc = await reply.json()
    ok = doc["paths"]["/metrics"]["get"]["responses"]["200"]
    assert set(ok["content"]) == {"text/plain; version=0.0.4; charset=utf-8"}


async def test_a_queued_delivery_counts_its_lag_after_the_flush_that_writes_it() -> None:
    """In process, with the real node, sessions and ``Outbound``; only the socket is a
    sink (tests/test_gc_pressure.py). Two messages in one loop turn: the second one's
    frames wait for the turn's flush, and so does its lag observation."""
    server = Server(Config())
    await server.node.start()
    try:
        transports = await subscribed_sessions(server, 50, "/topic/news")
        lag = server.node.counters.delivery_lag
        for n in range(2):
            server.node.submit(Message("", topic_channel("news"), "/topic/news", b"%d" % n))
        assert loop_flusher().flush_pending  # the second message's frames are queued
        assert lag.count <= 1
        written = sum(t.sink.writes for t in transports)
        await asyncio.sleep(0)  # the flush
        assert sum(t.sink.writes for t in transports) > written
        assert lag.count == 2  # once per message, not per subscriber
        assert 0 <= lag.sum < 1
        assert server.node.counters.delivered == 100
    finally:
        await server.node.stop()
