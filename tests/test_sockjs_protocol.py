"""SockJS 0.3 over real HTTP against real server processes.

The behaviours are those the SockJS protocol's own test suite (sockjs/sockjs-protocol)
specifies, written anew for Tidings: where that suite uses an "echo" and a "close"
service, these tests speak STOMP (CONNECT answers CONNECTED, a publish or a SEND comes back
as MESSAGE, DISCONNECT closes the session).

Two nodes serve the whole module: `node` with small limits (4 KiB streaming responses,
1 s session timeout) and `strict` with every option switched away from its default.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from .sockjs_support import (
    ANOTHER_CONNECTION,
    Node,
    RawHttp,
    XhrSession,
    connect_frame,
    holding,
    messages_of,
    node_fixture,
    once_released,
    parse_stomp,
    publish,
    refused,
    running_node,
    sockjs_frames,
    stomp,
)

ENDPOINTS = ("/publicServer", "/privateServer", "/stomp")
STREAM_LIMIT = 4096
SESSION_TIMEOUT = 1.0
STRICT_HEARTBEAT = 0.4
NOT_CACHED = "no-store, no-cache, must-revalidate, max-age=0"
ALLOWED = "https://app.example.com"


node = node_fixture(
    "sockjs",
    *("--sockjs-stream-limit", str(STREAM_LIMIT)),
    *("--sockjs-session-timeout", str(SESSION_TIMEOUT)),
    *("--send-allow", "/topic/**"),
)


strict = node_fixture(
    "sockjs-strict",
    "--sockjs-cookie-needed",
    *("--sockjs-disable-transport", "websocket"),
    *("--sockjs-disable-transport", "jsonp-polling"),
    *("--sockjs-heartbeat", str(STRICT_HEARTBEAT)),
    *("--heartbeat", "150,0"),
    *("--max-outbound-bytes", "30000"),
    *("--sockjs-allowed-origin", ALLOWED),
    *("--sockjs-allowed-origin", "https://*.trusted.test"),
    *("--sockjs-client-url", "https://cdn.example.com/sockjs.min.js"),
)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(
    http: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
    async with http.get(url, headers=headers) as reply:
        return reply.status, reply.headers, await reply.read()


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes = b"", **headers: str
) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
    async with http.post(url, data=body, headers=headers) as reply:
        return reply.status, reply.headers, await reply.read()


async def options(
    http: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
    async with http.options(url, headers=headers) as reply:
        return reply.status, reply.headers, await reply.read()


def assert_not_cached(headers: aiohttp.typedefs.LooseHeaders) -> None:
    assert headers["Cache-Control"] == NOT_CACHED
    assert "Expires" not in headers
    assert "Last-Modified" not in headers


def assert_cors(headers: aiohttp.typedefs.LooseHeaders, origin: str | None) -> None:
    if origin and origin != "null":
        assert headers["Access-Control-Allow-Origin"] == origin
        assert headers["Access-Control-Allow-Credentials"] == "true"
    else:
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in headers


def assert_strongly_cached(headers: aiohttp.typedefs.LooseHeaders) -> None:
    assert "public" in headers["Cache-Control"]
    assert re.search(r"max-age=[1-9][0-9]{6}", headers["Cache-Control"])
    assert headers["Expires"]


# -- greeting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_greeting(node: Node, http: aiohttp.ClientSession, endpoint: str) -> None:
    for path in (endpoint, endpoint + "/"):
        status, headers, body = await get(http, node.url(path))
        assert status == 200
        assert headers["Content-Type"] == "text/plain;charset=UTF-8"
        assert body == b"Welcome to SockJS!\n"
        assert "Set-Cookie" not in headers


@pytest.mark.parametrize("suffix", ["/a", "/a.html", "//", "///", "/a/a", "/a/a/", "/a/"])
async def test_other_urls_are_not_found(
    node: Node, http: aiohttp.ClientSession, suffix: str
) -> None:
    status, _, _ = await get(http, node.url("/stomp" + suffix))
    assert status == 404


# -- info -------------------------------------------------------------------------------------


async def test_info(node: Node, http: aiohttp.ClientSession) -> None:
    status, headers, body = await get(http, node.url("/stomp/info"), Origin="test")
    assert status == 200
    assert headers["Content-Type"] == "application/json;charset=UTF-8"
    assert "Set-Cookie" not in headers
    assert_not_cached(headers)
    assert_cors(headers, "test")
    info = orjson.loads(body)
    assert info["websocket"] is True
    assert info["cookie_needed"] is False
    assert info["origins"] == ["*:*"]
    assert isinstance(info["entropy"], int)
    assert 0 <= info["entropy"] < 2**32


async def test_info_entropy_differs_each_time(node: Node, http: aiohttp.ClientSession) -> None:
    entropies = {orjson.loads((await get(http, node.url("/stomp/info")))[2])["entropy"]}
    entropies.add(orjson.loads((await get(http, node.url("/stomp/info")))[2])["entropy"])
    assert len(entropies) == 2


async def verify_options(
    http: aiohttp.ClientSession, url: str, methods: str, *, cookie: bool = False
) -> None:
    """A CORS preflight: 204/200, cacheable for a year, the methods, no body."""
    for origin in ("test", "null"):
        status, headers, body = await options(
            http, url, **{"Access-Control-Request-Method": methods, "Origin": origin}
        )
        assert status in (200, 204)
        assert_strongly_cached(headers)
        assert int(headers["Access-Control-Max-Age"]) > 1_000_000
        for method in methods.split(","):
            assert method.strip() in headers["Access-Control-Allow-Methods"]
        assert body == b""
        assert_cors(headers, origin)
        assert ("Set-Cookie" in headers) is cookie


async def test_info_options(node: Node, http: aiohttp.ClientSession) -> None:
    await verify_options(http, node.url("/stomp/info"), "OPTIONS, GET")


async def test_info_options_for_the_null_origin_of_file_pages(
    node: Node, http: aiohttp.ClientSession
) -> None:
    headers = {"Origin": "null", "Access-Control-Request-Method": "POST"}
    status, reply_headers, body = await options(http, node.url("/stomp/info"), **headers)
    assert status in (200, 204)
    assert body == b""
    assert reply_headers["Access-Control-Allow-Origin"] == "*"


async def test_info_of_a_node_without_websocket_and_with_cookies(
    strict: Node, http: aiohttp.ClientSession
) -> None:
    status, headers, body = await get(http, strict.url("/publicServer/info"))
    assert status == 200
    assert "Set-Cookie" not in headers
    info = orjson.loads(body)
    assert info["websocket"] is False
    assert info["cookie_needed"] is True


# -- iframe -----------------------------------------------------------------------------------

IFRAME_PAGE = re.compile(
    r"""<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script>
    document.domain = document.domain;
    _sockjs_onload = function\(\)\{SockJS.bootstrap_iframe\(\);\};
  </script>
  <script src="(?P<url>[^"]*)"></script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"""
)


@pytest.mark.parametrize(
    "suffix",
    [
        "/iframe.html",
        "/iframe-a.html",
        "/iframe-.html",
        "/iframe-0.1.2.html",
        "/iframe-0.1.2abc-dirty.2144.html",
        "/iframe-a.html?t=1234",
        "/iframe-0.1.2.html?t=123414",
        "/iframe-0.1.2abc-dirty.2144.html?t=qweqweq123",
    ],
)
async def test_iframe_page(node: Node, http: aiohttp.ClientSession, suffix: str) -> None:
    status, headers, body = await get(http, node.url("/privateServer" + suffix))
    assert status == 200
    assert headers["Content-Type"] == "text/html;charset=UTF-8"
    assert_strongly_cached(headers)
    assert headers["ETag"]
    assert "Last-Modified" not in headers
    assert "Set-Cookie" not in headers
    match = IFRAME_PAGE.fullmatch(body.decode().strip())
    assert match is not None, body.decode()
    assert match["url"] == "/vendor/sockjs.min.js"


@pytest.mark.parametrize(
    "suffix",
    ["/iframe.htm", "/iframe", "/IFRAME.HTML", "/IFRAME", "/iframe.HTML", "/iframe.xml"],
)
async def test_malformed_iframe_urls_are_not_found(
    node: Node, http: aiohttp.ClientSession, suffix: str
) -> None:
    assert (await get(http, node.url("/stomp" + suffix)))[0] == 404
    assert (await get(http, node.url("/stomp/iframe-/.html")))[0] == 404


async def test_iframe_etag_and_304(node: Node, http: aiohttp.ClientSession) -> None:
    _, first, _ = await get(http, node.url("/stomp/iframe.html"))
    _, second, _ = await get(http, node.url("/stomp/iframe.html"))
    assert first["ETag"] == second["ETag"]
    status, headers, body = await get(
        http, node.url("/stomp/iframe.html"), **{"If-None-Match": first["ETag"]}
    )
    assert status == 304
    assert "Content-Type" not in headers
    assert body == b""


async def test_iframe_page_loads_a_client_that_is_served(
    node: Node, http: aiohttp.ClientSession
) -> None:
    status, headers, body = await get(http, node.url("/vendor/sockjs.min.js"))
    assert status == 200
    assert "javascript" in headers["Content-Type"]
    assert b"SockJS" in body


async def test_iframe_client_url_is_configurable_and_origin_lists_turn_the_iframe_off(
    strict: Node, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # The strict node restricts origins: the iframe page cannot check who frames it.
    assert (await get(http, strict.url("/stomp/iframe.html")))[0] == 404
    with running_node(tmp_path, "--sockjs-client-url", "https://cdn.example.com/s.js") as other:
        _, _, body = await get(http, other.url("/stomp/iframe.html"))
        match = IFRAME_PAGE.fullmatch(body.decode().strip())
        assert match is not None
        assert match["url"] == "https://cdn.example.com/s.js"


# -- session URLs and the protocol over xhr-polling -------------------------------------------


@pytest.mark.parametrize(
    "part", ["/a/a", "/_/_", "/1/1", "/abcdefgh_i-j%20/abcdefg_i-j%20", "/000/" + "x" * 64]
)
async def test_session_urls_take_any_server_and_session(
    node: Node, http: aiohttp.ClientSession, part: str
) -> None:
    # Random suffix: the session from a previous run of this test may still be alive.
    status, _, body = await post(http, node.url(f"/stomp{part}{uuid.uuid4().hex[:6]}/xhr"))
    assert (status, body) == (200, b"o\n")


@pytest.mark.parametrize("part", ["//", "/a./a", "/a/a.", "/./.", "/", "///"])
async def test_invalid_session_urls_are_not_found(
    node: Node, http: aiohttp.ClientSession, part: str
) -> None:
    assert (await get(http, node.url(f"/stomp{part}/xhr")))[0] == 404
    assert (await post(http, node.url(f"/stomp{part}/xhr")))[0] == 404


async def test_the_server_id_is_ignored(node: Node, http: aiohttp.ClientSession) -> None:
    session_id = uuid.uuid4().hex
    assert (await post(http, node.url(f"/stomp/000/{session_id}/xhr")))[2] == b"o\n"
    status, _, body = await post(
        http, node.url(f"/stomp/000/{session_id}/xhr_send"), orjson.dumps([connect_frame("7")])
    )
    assert (status, body) == (204, b"")
    _, _, body = await post(http, node.url(f"/stomp/999/{session_id}/xhr"))
    frame = parse_stomp(messages_of(body.decode().strip())[0])
    assert frame is not None and frame.command == "CONNECTED"


async def test_a_simple_session(node: Node, http: aiohttp.ClientSession) -> None:
    url = node.session_url()
    status, _, body = await post(http, url + "/xhr")
    assert (status, body) == (200, b"o\n")
    status, _, body = await post(http, url + "/xhr_send", orjson.dumps([connect_frame("u1")]))
    assert (status, body) == (204, b"")
    status, _, body = await post(http, url + "/xhr")
    assert status == 200
    assert body.startswith(b'a["CONNECTED\\n') and body.endswith(b'"]\n')
    # Sending to a session that does not exist is "not found".
    assert (await post(http, node.url("/stomp/000/bad_session/xhr_send"), b'["a"]'))[0] == 404


async def test_a_second_receiving_request_gets_another_connection_still_open(
    node: Node, http: aiohttp.ClientSession
) -> None:
    session = XhrSession(http, node.session_url())
    await session.open()
    await session.connect("u2")
    second: list[bytes] = []

    async def another() -> bytes:
        second.append(await session.receive())
        return second[-1]

    waiting = await holding(session.receive, another, lambda: send_receipt(session, "wake"))
    assert second[-1] == b'c[2010,"Another connection still open"]\n'
    # The first poll kept its place: it gets what is sent next.
    await send_receipt(session, "next")
    frame = parse_stomp(messages_of((await waiting).decode())[0])
    assert frame is not None and frame.headers["receipt-id"] == "next"


async def send_receipt(session: XhrSession, receipt: str) -> None:
    """A frame the session answers with a RECEIPT: it ends a waiting poll."""
    await session.send(stomp("SEND", {"destination": "/topic/x", "receipt": receipt}))


async def test_a_closed_session_serves_its_close_frame_until_it_expires(
    node: Node, http: aiohttp.ClientSession
) -> None:
    session = XhrSession(http, node.session_url())
    await session.open()
    await session.connect("u3")
    await session.send(stomp("DISCONNECT"))
    for _ in range(3):
        assert await session.poll() == 'c[1000,"client disconnected"]'
    await asyncio.sleep(SESSION_TIMEOUT + 0.5)  # the clock: past the timeout (a lower bound)
    assert await session.poll() == "o"  # expired and forgotten: a new session


async def test_an_empty_send_is_allowed(node: Node, http: aiohttp.ClientSession) -> None:
    session = XhrSession(http, node.session_url())
    await session.open()
    assert await session.post("xhr_send", b"[]") == (204, b"")
    await session.connect("u4")


# -- timeouts ---------------------------------------------------------------------------------


async def presence(node: Node, http: aiohttp.ClientSession, user: str) -> bool:
    _, _, body = await get(http, node.url(f"/api/v1/users/{user}/presence"))
    online: bool = orjson.loads(body)["online"]
    return online


async def test_a_session_expires_after_the_timeout_without_a_receiving_request(
    node: Node, http: aiohttp.ClientSession
) -> None:
    user = uuid.uuid4().hex
    session = XhrSession(http, node.session_url())
    await session.open()
    await session.connect(user)
    assert await presence(node, http, user)
    # The clock is the subject: half the timeout, a send, then past the timeout (lower
    # bounds from the last poll's end: a loaded machine only adds to them).
    await asyncio.sleep(SESSION_TIMEOUT / 2)
    assert (await session.post("xhr_send", b'["\\n"]'))[0] == 204  # sending does not renew
    await asyncio.sleep(SESSION_TIMEOUT / 2 + 0.3)
    assert (await session.post("xhr_send", b'["\\n"]'))[0] == 404
    assert not await presence(node, http, user)  # the STOMP session went with it


async def test_a_session_lives_while_a_request_receives(
    node: Node, http: aiohttp.ClientSession
) -> None:
    user = uuid.uuid4().hex
    session = XhrSession(http, node.session_url())
    await session.open()
    await session.connect(user)
    waiting = asyncio.create_task(session.poll())
    await asyncio.sleep(SESSION_TIMEOUT * 2)  # the clock: twice the timeout, still receiving
    await session.send(stomp("SEND", {"destination": "/topic/x", "receipt": "r"}))
    assert "RECEIPT" in await waiting
    ended = asyncio.get_running_loop().time()  # the timeout restarted before this
    assert await presence(node, http, user)
    # ... and for the timeout after it ended (the clock is the subject; it runs from the
    # poll's end, the presence call included).
    await asyncio.sleep(max(0.0, ended + SESSION_TIMEOUT * 0.6 - asyncio.get_running_loop().time()))
    await session.send(stomp("SEND", {"destination": "/topic/x", "receipt": "r2"}))
    assert (await session.expect("RECEIPT")).headers["receipt-id"] == "r2"


async def test_heartbeat_frames_end_idle_polls_and_keep_streams_alive(
    strict: Node, http: aiohttp.ClientSession
) -> None:
    url = strict.session_url()
    assert (await post(http, url + "/xhr"))[2] == b"o\n"
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await post(http, url + "/xhr"))[2] == b"h\n"
    assert STRICT_HEARTBEAT * 0.8 <= loop.time() - started < STRICT_HEARTBEAT * 3
    async with http.post(strict.session_url() + "/xhr_streaming") as reply:
        await reply.content.readuntil(b"o\n")
        for _ in range(2):
            async with asyncio.timeout(STRICT_HEARTBEAT * 3):
                assert await reply.content.readline() == b"h\n"


async def test_stomp_heartbeats_go_as_messages_and_replace_sockjs_heartbeats(
    strict: Node, http: aiohttp.ClientSession
) -> None:
    """STOMP heart-beats (every 150 ms here) travel as a["\\n"]: STOMP clients see them,
    and they keep the stream busy, so no SockJS "h" (every 400 ms) is needed."""
    url = strict.session_url()
    async with http.post(url + "/xhr_streaming") as reply:
        await reply.content.readuntil(b"o\n")
        await post(http, url + "/xhr_send", orjson.dumps([connect_frame("hb", "0,150")]))
        assert (await reply.content.readline()).startswith(b'a["CONNECTED')
        frames = []
        loop = asyncio.get_running_loop()
        end = loop.time() + STRICT_HEARTBEAT * 3
        while loop.time() < end:
            async with asyncio.timeout(1.0):
                frames.append(await reply.content.readline())
    assert b"h\n" not in frames
    assert frames and set(frames) == {b'a["\\n"]\n'}
    assert len(frames) >= 4


async def test_a_client_that_does_not_read_is_closed_as_a_slow_consumer(
    strict: Node, http: aiohttp.ClientSession
) -> None:
    user = uuid.uuid4().hex
    session = XhrSession(http, strict.session_url())
    await session.open()
    await session.connect(user)
    await session.subscribe("s", f"/user/{user}/message")
    for index in range(20):  # 20 x 2 KB > --max-outbound-bytes 30000, nobody polling
        await publish(strict, f"/api/v1/users/{user}/messages", f"{index:04d}" + "x" * 2000)
    error = await session.expect("ERROR")
    assert error.headers["message"] == "slow consumer"
    assert await session.poll() == 'c[1008,"slow consumer"]'


# -- websocket --------------------------------------------------------------------------------


async def test_websocket_needs_an_upgrade_and_a_get(
    node: Node, http: aiohttp.ClientSession
) -> None:
    status, _, body = await get(http, node.url("/stomp/0/0/websocket"))
    assert status == 400
    assert b'Can "Upgrade" only to "WebSocket".' in body
    status, _, _ = await get(
        http, node.url("/stomp/0/0/websocket"), Upgrade="WebSocket", Connection="close"
    )
    assert status == 400
    for headers in ({"Upgrade": "WebSocket", "Connection": "Upgrade"}, {}):
        status, reply_headers, body = await post(http, node.url("/stomp/0/0/websocket"), **headers)
        assert status == 405
        assert "Content-Type" not in reply_headers
        assert reply_headers["Allow"]
        assert body == b""


async def test_websocket_handshake(node: Node) -> None:
    raw = await RawHttp.open(node.port)
    try:
        status, headers = await raw.request(
            "GET",
            f"/stomp/000/{uuid.uuid4().hex}/websocket",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "x3JJHMbDL1EzLkh9GBhXDw==",
            },
        )
        assert status == 101
        assert headers["sec-websocket-accept"] == "HSmrc0sMlYUkAGmm5OPpG2HaGWk="
        assert headers["connection"].lower() == "upgrade"
        assert headers["upgrade"].lower() == "websocket"
        assert "content-length" not in headers
    finally:
        await raw.close()


def ws_url(node: Node, session: str | None = None) -> str:
    return node.session_url(session=session).replace("http", "ws", 1) + "/websocket"


async def test_websocket_transport(node: Node, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(ws_url(node)) as ws:
        assert await ws.receive_str() == "o"
        await ws.send_str("")  # ignored
        await ws.send_str("[]")  # ignored
        await ws.send_str(orjson.dumps([connect_frame("w1")]).decode())
        reply = await ws.receive_str()
        frame = parse_stomp(messages_of(reply)[0])
        assert frame is not None and frame.command == "CONNECTED"
        assert frame.headers["user-name"] == "w1"
        # A single JSON string is a message too.
        await ws.send_str(
            orjson.dumps(
                stomp("SUBSCRIBE", {"id": "s", "destination": "/topic/w1", "receipt": "r"})
            ).decode()
        )
        assert "RECEIPT" in messages_of(await ws.receive_str())[0]


async def test_websocket_close(node: Node, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(ws_url(node)) as ws:
        assert await ws.receive_str() == "o"
        await ws.send_str(orjson.dumps([connect_frame("w2"), stomp("DISCONNECT")]).decode())
        assert messages_of(await ws.receive_str())[0].startswith("CONNECTED")
        assert await ws.receive_str() == 'c[1000,"client disconnected"]'
        message = await ws.receive()
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_websocket_sessions_may_share_an_id(node: Node, http: aiohttp.ClientSession) -> None:
    session_id = uuid.uuid4().hex
    async with (
        http.ws_connect(ws_url(node, session_id)) as first,
        http.ws_connect(ws_url(node, session_id)) as second,
    ):
        for ws, user in ((first, "a"), (second, "b")):
            assert await ws.receive_str() == "o"
            await ws.send_str(orjson.dumps([connect_frame(user)]).decode())
        for ws, user in ((first, "a"), (second, "b")):
            frame = parse_stomp(messages_of(await ws.receive_str())[0])
            assert frame is not None and frame.headers["user-name"] == user
    async with http.ws_connect(ws_url(node, session_id)) as again:
        assert await again.receive_str() == "o"


async def test_websocket_broken_json_cuts_the_connection(
    node: Node, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(ws_url(node)) as ws:
        assert await ws.receive_str() == "o"
        await ws.send_str('["a')
        message = await ws.receive()
        assert message.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        )


async def test_disabled_websocket_is_not_found(strict: Node, http: aiohttp.ClientSession) -> None:
    assert (await get(http, strict.session_url() + "/websocket"))[0] == 404


async def test_raw_websocket_speaks_stomp_without_sockjs_framing(
    node: Node, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(node.url("/stomp/websocket").replace("http", "ws", 1)) as ws:
        await ws.send_str(connect_frame("raw"))
        reply = await ws.receive()
        text = reply.data if isinstance(reply.data, str) else reply.data.decode()
        assert text.startswith("CONNECTED\n")


# -- xhr-polling ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["xhr", "xhr_send", "xhr_streaming"])
async def test_xhr_options(node: Node, http: aiohttp.ClientSession, transport: str) -> None:
    await verify_options(http, node.url(f"/stomp/abc/abc/{transport}"), "OPTIONS, POST")


async def test_xhr_polling_transport(node: Node, http: aiohttp.ClientSession) -> None:
    url = node.session_url()
    status, headers, body = await post(http, url + "/xhr", Origin="test")
    assert (status, body) == (200, b"o\n")
    assert headers["Content-Type"] == "application/javascript;charset=UTF-8"
    assert_cors(headers, "test")
    assert_not_cached(headers)
    status, headers, body = await post(
        http, url + "/xhr_send", orjson.dumps([connect_frame("x1")]), Origin="test"
    )
    assert (status, body) == (204, b"")
    # text/plain even on a 204, or Firefox shouts that the response is not XML.
    assert headers["Content-Type"] == "text/plain;charset=UTF-8"
    assert_cors(headers, "test")
    assert_not_cached(headers)
    _, headers, body = await post(http, url + "/xhr")
    assert body.startswith(b'a["CONNECTED')
    assert_cors(headers, None)


async def test_xhr_send_errors(node: Node, http: aiohttp.ClientSession) -> None:
    url = node.session_url()
    assert (await post(http, url + "/xhr_send", b'["x"]'))[0] == 404
    await post(http, url + "/xhr")
    status, _, body = await post(http, url + "/xhr_send", b'["x')
    assert status == 500
    assert b"Broken JSON encoding." in body
    status, _, body = await post(http, url + "/xhr_send", b"")
    assert status == 500
    assert b"Payload expected." in body
    assert (await post(http, url + "/xhr_send", orjson.dumps([connect_frame("x2")])))[0] == 204
    assert (await post(http, url + "/xhr"))[2].startswith(b'a["CONNECTED')


async def test_xhr_send_takes_any_content_type(node: Node, http: aiohttp.ClientSession) -> None:
    session = XhrSession(http, node.session_url())
    await session.open()
    await session.connect("x3")
    content_types = [
        "text/plain",
        "T",
        "application/json",
        "application/xml",
        "application/json; charset=utf-8",
        "text/xml; charset=utf-8",
        "text/xml",
    ]
    for index, content_type in enumerate(content_types):
        frame = stomp("SEND", {"destination": "/topic/ct", "receipt": f"r{index}"})
        status, _, _ = await post(
            http, session.url + "/xhr_send", orjson.dumps([frame]), **{"Content-Type": content_type}
        )
        assert status == 204
    body = await session.poll()
    assert [parse_stomp(m).headers["receipt-id"] for m in messages_of(body)] == [  # type: ignore[union-attr]
        f"r{index}" for index in range(len(content_types))
    ]


async def test_cors_echoes_requested_headers(node: Node, http: aiohttp.ClientSession) -> None:
    url = node.session_url() + "/xhr"
    status, headers, _ = await options(
        http,
        url,
        Origin="test",
        **{"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "a, b, c"},
    )
    assert status in (200, 204)
    assert_cors(headers, "test")
    assert headers["Access-Control-Allow-Headers"] == "a, b, c"
    for extra in ({"Access-Control-Request-Headers": ""}, {}):
        _, headers, _ = await options(
            http, url, Origin="test", **{"Access-Control-Request-Method": "POST", **extra}
        )
        assert_cors(headers, "test")
        assert "Access-Control-Allow-Headers" not in headers


# -- xhr-streaming ----------------------------------------------------------------------------


async def test_xhr_streaming_transport(node: Node, http: aiohttp.ClientSession) -> None:
    url = node.session_url()
    async with http.post(url + "/xhr_streaming", headers={"Origin": "test"}) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "application/javascript;charset=UTF-8"
        assert_cors(reply.headers, "test")
        assert_not_cached(reply.headers)
        assert await reply.content.readexactly(2049) == b"h" * 2048 + b"\n"
        assert await reply.content.readline() == b"o\n"
        status, _, _ = await post(http, url + "/xhr_send", orjson.dumps([connect_frame("s1")]))
        assert status == 204
        assert (await reply.content.readline()).startswith(b'a["CONNECTED')


async def test_xhr_streaming_response_ends_after_the_limit(
    node: Node, http: aiohttp.ClientSession
) -> None:
    user = uuid.uuid4().hex
    url = node.session_url()
    async with http.post(url + "/xhr_streaming") as reply:
        await reply.content.readexactly(2049)
        assert await reply.content.readline() == b"o\n"
        session = XhrSession(http, url)
        await session.send(connect_frame(user))
        received = len(await reply.content.readline()) + 2  # CONNECTED, and "o\n"
        await session.send(stomp("SUBSCRIBE", {"id": "s", "destination": "/topic/" + user}))
        frames = 0
        while received < STREAM_LIMIT:
            await publish(node, f"/api/v1/topics/{user}/messages", "x" * 128)
            line = await reply.content.readline()
            assert line.startswith(b'a["MESSAGE') and line.endswith(b'"]\n')
            received += len(line)
            frames += 1
        assert frames > 10
        assert await reply.content.read() == b""  # the response ended
    # The session goes on: the next streaming request takes over.
    await publish(node, f"/api/v1/topics/{user}/messages", "after")
    async with http.post(url + "/xhr_streaming") as reply:
        await reply.content.readexactly(2049)
        assert b"after" in await reply.content.readline()


# -- eventsource ------------------------------------------------------------------------------


async def test_eventsource_transport(node: Node, http: aiohttp.ClientSession) -> None:
    user = uuid.uuid4().hex
    url = node.session_url()
    async with http.get(url + "/eventsource") as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "text/event-stream;charset=UTF-8"
        assert_not_cached(reply.headers)
        assert await reply.content.readexactly(2) == b"\r\n"
        assert await reply.content.readuntil(b"\r\n\r\n") == b"data: o\r\n\r\n"
        session = XhrSession(http, url)
        await session.send(connect_frame(user))
        event = await reply.content.readuntil(b"\r\n\r\n")
        assert event.startswith(b'data: a["CONNECTED')
        await session.send(stomp("SUBSCRIBE", {"id": "s", "destination": "/topic/" + user}))
        # Newlines, NUL and leading spaces cannot break the event framing: they are escaped.
        await publish(node, f"/api/v1/topics/{user}/messages", "  \x00\n\r ")
        event = await reply.content.readuntil(b"\r\n\r\n")
        assert event.startswith(b'data: a["MESSAGE') and b"\\n\\n  \\u0000\\n\\r \\u0000" in event


async def test_eventsource_response_ends_after_the_limit(
    node: Node, http: aiohttp.ClientSession
) -> None:
    user = uuid.uuid4().hex
    url = node.session_url()
    async with http.get(url + "/eventsource") as reply:
        await reply.content.readuntil(b"data: o\r\n\r\n")
        session = XhrSession(http, url)
        await session.send(connect_frame(user))
        await reply.content.readuntil(b"\r\n\r\n")
        await session.send(stomp("SUBSCRIBE", {"id": "s", "destination": "/topic/" + user}))
        await publish(node, f"/api/v1/topics/{user}/messages", "x" * STREAM_LIMIT)
        event = await reply.content.readuntil(b"\r\n\r\n")
        assert b"x" * STREAM_LIMIT in event
        assert await reply.content.read() == b""


# -- htmlfile ---------------------------------------------------------------------------------

HTMLFILE_HEAD = """<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.%s;
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>"""


async def test_htmlfile_transport(node: Node, http: aiohttp.ClientSession) -> None:
    url = node.session_url()
    async with http.get(url + "/htmlfile?c=%63allback") as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "text/html;charset=UTF-8"
        assert_not_cached(reply.headers)
        head = await reply.content.readuntil(b"\r\n\r\n")
        assert len(head) > 1024
        assert head.decode().strip() == HTMLFILE_HEAD % "callback"
        assert await reply.content.readuntil(b"\r\n") == b'<script>\np("o");\n</script>\r\n'
        await post(http, url + "/xhr_send", orjson.dumps([connect_frame("h1")]))
        chunk = await reply.content.readuntil(b"</script>\r\n")
        assert chunk.startswith(b'<script>\np("a[\\"CONNECTED')


@pytest.mark.parametrize("transport", ["htmlfile", "jsonp"])
async def test_callback_is_required_and_checked(
    node: Node, http: aiohttp.ClientSession, transport: str
) -> None:
    status, _, body = await get(http, node.url(f"/stomp/a/a/{transport}"))
    assert status == 500
    assert b'"callback" parameter required' in body
    for callback in ("%20", "*", "abc(", "abc%28"):
        status, _, body = await get(http, node.url(f"/stomp/a/a/{transport}?c={callback}"))
        assert status == 500
        assert b'invalid "callback" parameter' in body


async def test_htmlfile_response_ends_after_the_limit(
    node: Node, http: aiohttp.ClientSession
) -> None:
    user = uuid.uuid4().hex
    url = node.session_url()
    async with http.get(url + "/htmlfile?c=callback") as reply:
        await reply.content.readuntil(b'<script>\np("o");\n</script>\r\n')
        session = XhrSession(http, url)
        await session.send(connect_frame(user))
        await reply.content.readuntil(b"</script>\r\n")
        await session.send(stomp("SUBSCRIBE", {"id": "s", "destination": "/topic/" + user}))
        await publish(node, f"/api/v1/topics/{user}/messages", "x" * STREAM_LIMIT)
        chunk = await reply.content.readuntil(b"</script>\r\n")
        assert b"x" * STREAM_LIMIT in chunk
        assert await reply.content.read() == b""


# -- jsonp-polling ----------------------------------------------------------------------------

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_jsonp_polling_transport(node: Node, http: aiohttp.ClientSession) -> None:
    url = node.session_url()
    status, headers, body = await get(http, url + "/jsonp?c=%63allback")
    assert status == 200
    assert headers["Content-Type"] == "application/javascript;charset=UTF-8"
    assert_not_cached(headers)
    assert body == b'/**/callback("o");\r\n'
    form = (
        b"d="
        + aiohttp.helpers.quote(orjson.dumps([connect_frame("j1")]).decode(), safe="").encode()
    )
    status, headers, body = await post(http, url + "/jsonp_send", form, **FORM)
    # "Konqueror does weird things on 204": 200 "ok".
    assert (status, body) == (200, b"ok")
    assert headers["Content-Type"] == "text/plain;charset=UTF-8"
    assert_not_cached(headers)
    _, _, body = await get(http, url + "/jsonp?c=%63allback")
    assert body.startswith(b'/**/callback("a[\\"CONNECTED')
    assert body.endswith(b'");\r\n')


async def test_jsonp_send_errors_and_content_types(node: Node, http: aiohttp.ClientSession) -> None:
    url = node.session_url()
    assert (await get(http, url + "/jsonp?c=x"))[2] == b'/**/x("o");\r\n'
    status, _, body = await post(http, url + "/jsonp_send", b"d=%5B%22x", **FORM)
    assert status == 500
    assert b"Broken JSON encoding." in body
    for data in (b"", b"d=", b"p=p"):
        status, _, body = await post(http, url + "/jsonp_send", data, **FORM)
        assert status == 500
        assert b"Payload expected." in body
    assert (await post(http, url + "/jsonp_send", b"d=%5B%5D", **FORM))[2] == b"ok"
    # A form field, or the JSON itself with another content type.
    send = stomp("SEND", {"destination": "/topic/j", "receipt": "%61bc"})
    quoted = aiohttp.helpers.quote(orjson.dumps([connect_frame("j2")]).decode(), safe="")
    assert (await post(http, url + "/jsonp_send", b"d=" + quoted.encode(), **FORM))[2] == b"ok"
    assert (
        await post(
            http, url + "/jsonp_send", orjson.dumps([send]), **{"Content-Type": "text/plain"}
        )
    )[2] == b"ok"
    _, _, body = await get(http, url + "/jsonp?c=x")
    frames = orjson.loads(orjson.loads(body.removeprefix(b"/**/x(").removesuffix(b");\r\n"))[1:])
    assert [parse_stomp(f).command for f in frames] == ["CONNECTED", "RECEIPT"]  # type: ignore[union-attr]
    assert "receipt-id:%61bc" in frames[1]


async def test_jsonp_close(node: Node, http: aiohttp.ClientSession) -> None:
    url = node.session_url()
    assert (await get(http, url + "/jsonp?c=x"))[2] == b'/**/x("o");\r\n'
    form = aiohttp.helpers.quote(
        orjson.dumps([connect_frame("j3"), stomp("DISCONNECT")]).decode(), safe=""
    )
    await post(http, url + "/jsonp_send", b"d=" + form.encode(), **FORM)
    assert (await get(http, url + "/jsonp?c=x"))[2].startswith(b'/**/x("a[\\"CONNECTED')
    for _ in range(2):
        assert (await get(http, url + "/jsonp?c=x"))[2] == (
            b'/**/x("c[1000,\\"client disconnected\\"]");\r\n'
        )


async def test_disabled_jsonp_is_not_found(strict: Node, http: aiohttp.ClientSession) -> None:
    url = strict.session_url()
    assert (await get(http, url + "/jsonp?c=x"))[0] == 404
    assert (await post(http, url + "/jsonp_send", b"d=%5B%5D", **FORM))[0] == 404


# -- JSESSIONID cookie ------------------------------------------------------------------------


def assert_cookie(headers: aiohttp.typedefs.LooseHeaders, value: str = "dummy") -> None:
    first, second, *_ = headers["Set-Cookie"].split(";")
    assert first.strip() == f"JSESSIONID={value}"
    assert second.strip().lower() == "path=/"


async def test_cookies_when_cookie_needed(strict: Node) -> None:
    # A fresh client per request: an aiohttp session would send the cookie back itself.
    async def fresh(
        method: str, url: str, body: bytes = b"", **headers: str
    ) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, url, data=body, headers=headers) as reply,
        ):
            return reply.status, reply.headers, await reply.content.read(10)

    url = strict.session_url()
    status, headers, body = await fresh("POST", url + "/xhr")
    assert (status, body) == (200, b"o\n")
    assert_cookie(headers)
    status, headers, _ = await fresh(
        "POST", strict.session_url() + "/xhr", Cookie="JSESSIONID=abcdef"
    )
    assert_cookie(headers, "abcdef")
    _, headers, _ = await fresh("POST", url + "/xhr_send", b"[]")
    assert_cookie(headers)
    for transport in ("xhr_streaming", "eventsource", "htmlfile?c=callback"):
        method = "POST" if transport == "xhr_streaming" else "GET"
        status, headers, _ = await fresh(method, f"{strict.session_url()}/{transport}")
        assert status == 200
        assert_cookie(headers)


async def test_no_cookies_by_default(node: Node, http: aiohttp.ClientSession) -> None:
    url = node.session_url()
    for transport in ("xhr", "xhr_send"):
        _, headers, _ = await post(http, f"{url}/{transport}", b"[]")
        assert "Set-Cookie" not in headers


# -- origins ----------------------------------------------------------------------------------


async def test_allowed_origins(strict: Node, http: aiohttp.ClientSession) -> None:
    info = strict.url("/stomp/info")
    assert (await get(http, info, Origin="https://evil.example"))[0] == 403
    assert (await get(http, info, Origin="null"))[0] == 403
    status, headers, _ = await get(http, info, Origin=ALLOWED)
    assert status == 200
    assert_cors(headers, ALLOWED)
    assert (await get(http, info, Origin="https://api.trusted.test"))[0] == 200
    assert (await get(http, info, Origin=strict.http_url))[0] == 200  # same origin
    assert (await get(http, info))[0] == 200  # not a browser page
    url = strict.session_url()
    assert (await post(http, url + "/xhr", Origin="https://evil.example"))[0] == 403
    assert (await post(http, url + "/xhr", Origin=ALLOWED))[0] == 200
    assert (await post(http, url + "/xhr_send", b"[]", Origin="https://evil.example"))[0] == 403


# -- JSON encoding ----------------------------------------------------------------------------


async def test_server_escapes_characters_browsers_mangle(
    node: Node, http: aiohttp.ClientSession
) -> None:
    user = uuid.uuid4().hex
    ranges = [(0x200C, 0x200F), (0x2028, 0x202F), (0x2060, 0x206F), (0xFFF0, 0xFFFF)]
    text = "".join(chr(c) for low, high in ranges for c in range(low, high + 1))
    session = XhrSession(http, node.session_url())
    await session.open()
    await session.connect(user)
    await session.subscribe("s", f"/user/{user}/message")
    await publish(node, f"/api/v1/users/{user}/messages", text)
    _, _, raw = await post(http, session.url + "/xhr")
    assert raw.isascii()  # every one of them went as \\uXXXX
    for c in (0x200C, 0x2028, 0x206F, 0xFFFF):
        assert f"\\\\u{c:04x}".encode() in raw or f"\\u{c:04x}".encode() in raw
    frame = parse_stomp(messages_of(raw.decode().strip())[0])
    assert frame is not None and frame.body == text


async def test_server_decodes_what_clients_escape(node: Node, http: aiohttp.ClientSession) -> None:
    """sockjs-client sends many characters as \\uXXXX escapes; they arrive as characters."""
    topic = uuid.uuid4().hex
    escaped = [
        *range(0x01, 0x20),  # control characters (not NUL: it ends a STOMP frame)
        *range(0x7F, 0xA0),
        0xAD,
        *range(0x0300, 0x0370),  # combining marks
        *range(0x0600, 0x0605),
        *range(0x2000, 0x2100),  # general punctuation and friends
        0xFEFF,
        *range(0xF900, 0xFA0E),
        *range(0xFFF0, 0x10000),
    ]
    body = "".join(chr(c) for c in escaped)
    session = XhrSession(http, node.session_url())
    await session.open()
    await session.connect(topic)
    await session.subscribe("s", "/topic/" + topic)
    send = stomp("SEND", {"destination": "/topic/" + topic}, body)
    payload = "[" + '"' + "".join(f"\\u{ord(ch):04x}" for ch in send) + '"' + "]"
    assert payload.isascii()
    assert (await session.post("xhr_send", payload.encode()))[0] == 204
    message = await session.expect("MESSAGE")
    assert message.body == body


# -- closing ----------------------------------------------------------------------------------


async def test_a_new_receiver_of_a_closed_session_gets_the_close_frame(
    node: Node, http: aiohttp.ClientSession
) -> None:
    url = node.session_url()
    async with http.post(url + "/xhr_streaming") as first:
        await first.content.readuntil(b"o\n")
        await post(
            http, url + "/xhr_send", orjson.dumps([connect_frame("c1"), stomp("DISCONNECT")])
        )
        assert (await first.content.readline()).startswith(b'a["CONNECTED')
        assert await first.content.readline() == b'c[1000,"client disconnected"]\n'
        async with http.post(url + "/xhr_streaming") as second:
            await second.content.readexactly(2049)
            assert await second.content.readline() == b'c[1000,"client disconnected"]\n'
            assert await second.content.read() == b""
        assert await first.content.read() == b""


async def test_a_second_stream_gets_2010_and_ends(node: Node, http: aiohttp.ClientSession) -> None:
    url = node.session_url()
    async with http.post(url + "/xhr_streaming") as first:
        await first.content.readuntil(b"o\n")
        async with http.post(url + "/xhr_streaming") as second:
            await second.content.readexactly(2049)
            assert await second.content.readline() == (b'c[2010,"Another connection still open"]\n')
            assert await second.content.read() == b""


@pytest.mark.parametrize("transport", ["xhr_streaming", "xhr"])
async def test_an_aborted_receiving_request_interrupts_the_session(
    node: Node, http: aiohttp.ClientSession, transport: str
) -> None:
    user = uuid.uuid4().hex
    url = node.session_url()
    session = XhrSession(http, url)
    await session.open()
    await session.connect(user)
    path = url.removeprefix(node.http_url) + "/" + transport
    raws: list[RawHttp] = []

    async def hold() -> bytes:  # a request whose client goes away while it waits
        raws.append(await RawHttp.open(node.port))
        await raws[-1].send_request("POST", path)
        return await raws[-1].reader.readuntil(ANOTHER_CONNECTION)  # if it lost the race

    async def another() -> bytes:
        return (await session.post(transport))[1]

    if transport == "xhr_streaming":
        # A stream shows it holds the place: what is sent next reaches it, and it stays.
        raws.append(await RawHttp.open(node.port))
        await raws[-1].send_request("POST", path)
        await send_receipt(session, "held")
        async with asyncio.timeout(5):
            await raws[-1].reader.readuntil(b"receipt-id:held")
        assert refused(await another())
    else:
        waiting = await holding(hold, another, lambda: send_receipt(session, "wake"))
        waiting.cancel()
    for raw in raws:
        await raw.close()  # the client goes away while its request waits
    body = await once_released(another)
    assert body.endswith((b"o\n", b'c[1002,"Connection interrupted"]\n'))
    assert not await presence(node, http, user)


# -- HTTP/1.0 and 1.1 -------------------------------------------------------------------------


async def test_http_10_greeting(node: Node) -> None:
    raw = await RawHttp.open(node.port)
    try:
        status, headers = await raw.request(
            "GET", "/stomp", version="1.0", headers={"Connection": "Keep-Alive"}
        )
        assert status == 200
        assert "transfer-encoding" not in headers
        assert int(headers["content-length"]) == 19
        assert await raw.reader.readexactly(19) == b"Welcome to SockJS!\n"
    finally:
        await raw.close()


async def test_http_10_streaming(node: Node) -> None:
    url = node.session_url()
    raw = await RawHttp.open(node.port)
    try:
        path = url.removeprefix(node.http_url) + "/xhr_streaming"
        status, headers = await raw.request(
            "POST", path, version="1.0", headers={"Connection": "Keep-Alive"}
        )
        assert status == 200
        assert "transfer-encoding" not in headers
        assert "content-length" not in headers
        assert (await raw.reader.readexactly(2049))[:1] == b"h"
        assert await raw.reader.readexactly(2) == b"o\n"
        async with aiohttp.ClientSession() as http:
            await post(
                http, url + "/xhr_send", orjson.dumps([connect_frame("v10"), stomp("DISCONNECT")])
            )
        assert (await raw.reader.readline()).startswith(b'a["CONNECTED')
        assert await raw.reader.readline() == b'c[1000,"client disconnected"]\n'
        assert await raw.closed_by_peer()
    finally:
        await raw.close()


async def test_http_11_streaming_is_chunked(node: Node) -> None:
    url = node.session_url()
    raw = await RawHttp.open(node.port)
    try:
        path = url.removeprefix(node.http_url) + "/xhr_streaming"
        status, headers = await raw.request("POST", path, headers={"Connection": "Keep-Alive"})
        assert status == 200
        assert headers["transfer-encoding"].lower() == "chunked"
        assert "content-length" not in headers
        chunk = await raw.read_chunk()
        assert chunk[:1] == b"h"
        if chunk.endswith(b"\n") and len(chunk) == 2049:
            chunk = await raw.read_chunk()
        assert chunk.endswith(b"o\n")
        async with aiohttp.ClientSession() as http:
            await post(
                http, url + "/xhr_send", orjson.dumps([connect_frame("v11"), stomp("DISCONNECT")])
            )
        chunks = []
        while chunk := await raw.read_chunk():  # then the last, empty chunk
            chunks.append(chunk)
        lines = b"".join(chunks).splitlines()
        assert lines[0].startswith(b'a["CONNECTED')
        assert lines[1:] == [b'c[1000,"client disconnected"]']
    finally:
        await raw.close()


# -- STOMP over SockJS, every endpoint ----------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_stomp_over_sockjs_on_every_endpoint(
    node: Node, http: aiohttp.ClientSession, endpoint: str
) -> None:
    user = uuid.uuid4().hex
    session = XhrSession(http, node.session_url(endpoint))
    await session.open()
    connected = await session.connect(user)
    assert connected.headers["user-name"] == user
    await session.subscribe("u", f"/user/{user}/message")
    await publish(node, f"/api/v1/users/{user}/messages", "héllo 😀")
    message = await session.expect("MESSAGE")
    assert message.body == "héllo 😀"
    assert message.headers["destination"] == f"/user/{user}/message"
    assert sockjs_frames(b"o\nh\n") == ["o", "h"]


async def test_the_protocol_suites_services_are_off_by_default(
    node: Node, http: aiohttp.ClientSession
) -> None:
    # tests/test_sockjs_protocol_suite.py runs them under --sockjs-test-services.
    for base in ("/echo", "/close", "/cookie_needed_echo", "/disabled_websocket_echo"):
        assert (await get(http, node.url(base)))[0] == 404
        assert (await get(http, node.url(base + "/info")))[0] == 404
        assert (await post(http, node.url(base + "/000/x/xhr")))[0] == 404
