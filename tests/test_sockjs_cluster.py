"""SockJS without sticky sessions: two nodes on one Redis, requests landing on either.

A session lives on the node that got its first receiving request; every other request for
it may reach any node, which relays it to the owner (server/sockjs_relay.py). These tests
send a session's requests to both nodes on purpose, then put real sockjs-client sessions
behind nginx round robin.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import orjson

from tidings.server.sockjs_relay import NODE_TTL_S, Directory

from .conftest import JsClientFactory, StartServer, TidingsServer
from .presence_contract import claim_release_and_take_over
from .sockjs_support import (
    RawHttp,
    XhrSession,
    connect_frame,
    holding,
    messages_of,
    once_released,
    parse_stomp,
    stomp,
)


async def two_nodes(start: StartServer, shared: list[str], *extra: str) -> list[TidingsServer]:
    """Nodes A and B on ``shared_store``'s arguments (conftest.py): one Redis, or RabbitMQ
    with the session directory in the PostgreSQL inbox's database (issue 20)."""
    # One after the other: a node started while the other still starts could be handed
    # the same free port.
    return [await start(*shared, "--node-id", name, *extra) for name in "AB"]


def session_url(node: TidingsServer, session_id: str) -> str:
    return f"{node.http_url}/stomp/000/{session_id}"


async def publish(node: TidingsServer, path: str, body: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(node.http_url + path, json={"body": body}) as reply,
    ):
        assert reply.status == 202, await reply.text()


def node_of(frame_text: str) -> str:
    frame = parse_stomp(frame_text)
    assert frame is not None
    return frame.headers["server"].rsplit(" ", 1)[-1].rstrip(")")


async def test_directory_owner_claim_release_and_takeover(redis_server: Any) -> None:
    client = redis_server.client()
    try:
        directory = Directory(client, prefix="test:")
        await claim_release_and_take_over(directory)
        assert await client.ttl("test:node:A") == -2
        await directory.beat("B")
        assert 0 < await client.ttl("test:node:B") <= NODE_TTL_S
    finally:
        await client.aclose()


async def test_every_request_of_a_session_may_land_on_either_node(
    tidings_server: StartServer, shared_store: list[str]
) -> None:
    a, b = await two_nodes(tidings_server, shared_store)
    session_id = uuid.uuid4().hex
    async with aiohttp.ClientSession() as http:
        on_a = XhrSession(http, session_url(a, session_id))
        on_b = XhrSession(http, session_url(b, session_id))
        await on_a.open()  # the session lives on A
        await on_b.send(connect_frame("42"))  # relayed send
        reply = await on_b.poll()  # relayed poll
        assert node_of(messages_of(reply)[0]) == "A"
        await on_a.send(stomp("SUBSCRIBE", {"id": "s", "destination": "/user/42/message"}))
        # A poll relayed by B waits on A and holds the session's one receiving place, on A
        # too (a poll on A is refused with 2010) ...
        waiting = await holding(
            on_b.receive,
            on_a.receive,
            lambda: publish(b, "/api/v1/users/42/messages", "wake"),
        )
        # ... and gets what is published later.
        await publish(b, "/api/v1/users/42/messages", "through B")
        frame = parse_stomp(messages_of((await waiting).decode())[0])
        assert frame is not None and frame.body == "through B"

        # Streaming through B, sending through A.
        async with http.post(session_url(b, session_id) + "/xhr_streaming") as stream:
            await stream.content.readexactly(2049)
            await publish(a, "/api/v1/users/42/messages", "streamed")
            line = await stream.content.readline()
            assert b"streamed" in line
            await on_a.send(stomp("DISCONNECT"))
            assert await stream.content.readline() == b'c[1000,"client disconnected"]\n'
            assert await stream.content.read() == b""

        # JSONP through either node.
        jsonp_id = uuid.uuid4().hex
        async with http.get(session_url(a, jsonp_id) + "/jsonp?c=cb") as reply:
            assert await reply.read() == b'/**/cb("o");\r\n'
        form = "d=" + aiohttp.helpers.quote(orjson.dumps([connect_frame("7")]).decode(), safe="")
        async with http.post(
            session_url(b, jsonp_id) + "/jsonp_send",
            data=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as reply:
            assert (reply.status, await reply.read()) == (200, b"ok")
        async with http.get(session_url(b, jsonp_id) + "/jsonp?c=cb") as reply:
            assert (await reply.read()).startswith(b'/**/cb("a[\\"CONNECTED')

        # A session nobody holds is unknown everywhere.
        for node in (a, b):
            async with http.post(
                session_url(node, uuid.uuid4().hex) + "/xhr_send", data=b'["x"]'
            ) as reply:
                assert reply.status == 404


async def test_a_client_gone_behind_the_relaying_node_interrupts_the_session(
    tidings_server: StartServer, shared_store: list[str]
) -> None:
    a, b = await two_nodes(tidings_server, shared_store)
    session_id = uuid.uuid4().hex
    async with aiohttp.ClientSession() as http:
        on_a = XhrSession(http, session_url(a, session_id))
        await on_a.open()
        await on_a.connect("9")
        await on_a.subscribe("s", "/user/9/message")
        raw = await RawHttp.open(b.port)
        status, _ = await raw.request("POST", f"/stomp/000/{session_id}/xhr_streaming")
        assert status == 200
        await raw.reader.readexactly(2049)  # B's prelude: A may not have the request yet
        await publish(a, "/api/v1/users/9/messages", "held")
        async with asyncio.timeout(5):
            await raw.reader.readuntil(b"held")  # now A streams to it
        await raw.close()  # the client goes away; B notices within a second and tells A
        assert await once_released(on_a.receive) == b'c[1002,"Connection interrupted"]\n'


async def test_the_sessions_of_a_stopped_node_are_taken_over(
    tidings_server: StartServer, shared_store: list[str]
) -> None:
    a, b = await two_nodes(tidings_server, shared_store)
    session_id = uuid.uuid4().hex
    async with aiohttp.ClientSession() as http:
        on_a = XhrSession(http, session_url(a, session_id))
        on_b = XhrSession(http, session_url(b, session_id))
        await on_a.open()
        await on_a.connect("5")
        assert await a.stop() == 0
        # The session died with A: sending to it is "not found", and the next receiving
        # request opens a new one (sockjs-client then reports "Server lost session").
        assert (await on_b.post("xhr_send", b'["\\n"]'))[0] == 404
        assert await on_b.poll() == "o"


async def sockjs_client_session(
    js_client: JsClientFactory, url: str, transport: str, user: str
) -> Any:
    client = await js_client("stompjs7", url, transport=transport)
    connected = await client.connect(login=user, timeout=10.0)
    assert connected["transport"] == transport
    await client.subscribe("chat", f"/topic/chat/{user}")
    await client.subscribe("me", f"/user/{user}/message")
    return client


def session_requests(log: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """nginx's access log entries of SockJS session requests, by session id."""
    by_session: dict[str, list[dict[str, str]]] = {}
    for entry in log:
        parts = entry["uri"].split("/")  # /publicServer/<server>/<session>/<transport>
        if len(parts) == 5 and parts[1] == "publicServer":
            by_session.setdefault(parts[3], []).append(entry)
    return by_session


async def test_sockjs_behind_nginx_round_robin(
    tidings_server: StartServer,
    js_client: JsClientFactory,
    shared_store: list[str],
    nginx_proxy: Any,
) -> None:
    """The acceptance test: xhr-polling and xhr-streaming sessions through nginx round
    robin over two nodes (no stickiness) send and receive 200 messages each, in order;
    on Redis, and on RabbitMQ + PostgreSQL (issue 20)."""
    nodes = await two_nodes(tidings_server, shared_store, "--send-allow", "/topic/chat/**")
    proxy = await nginx_proxy([node.port for node in nodes])
    count = 200
    seen: set[str] = set()  # session ids
    for transport in ("xhr-polling", "xhr-streaming"):
        user = uuid.uuid4().hex[:8]
        client = await sockjs_client_session(
            js_client, f"{proxy.http_url}/publicServer", transport, user
        )
        sent = [f"{transport} {n}" for n in range(count)]
        for n, body in enumerate(sent):
            if n % 10 < 9:
                await client.send(f"/topic/chat/{user}", body)
            else:  # sockjs-client batches sends: wait now and then, for more requests
                await client.send(f"/topic/chat/{user}", body, receipt=f"r{n}")
                await client.expect("receipt", id=f"r{n}", timeout=10.0)
        await client.send(f"/topic/chat/{user}", "last", receipt="last")
        await client.expect("receipt", id="last", timeout=10.0)
        received = [(await client.expect("message", subscription="chat"))["body"]]
        while received[-1] != "last":
            received.append((await client.expect("message", subscription="chat"))["body"])
        assert received == [*sent, "last"]

        published = [f"published {n}" for n in range(count)]
        async with aiohttp.ClientSession() as http:
            for body in published:
                async with http.post(
                    f"{proxy.http_url}/api/v1/users/{user}/messages", json={"body": body}
                ) as reply:
                    assert reply.status == 202
        for body in published:
            assert (await client.expect("message", subscription="me"))["body"] == body
        assert [e for e in client.history if e["event"] in ("error", "closed", "fatal")] == []
        # Every request of the session so far succeeded (nginx logs a request once it
        # is answered; the ones open at the DISCONNECT are cut by the client, 499) ...
        entries = session_requests(proxy.requests())
        (session_id,) = set(entries) - seen
        seen.add(session_id)
        requests = entries[session_id]
        assert {e["status"] for e in requests} <= {"200", "204"}, requests
        # ... and they were spread over both nodes.
        assert len({e["upstream_addr"] for e in requests}) == 2
        assert len([e for e in requests if e["uri"].endswith("/xhr_send")]) >= 20
        await client.disconnect(timeout=10.0)
