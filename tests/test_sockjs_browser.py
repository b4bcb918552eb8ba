"""A real browser: Debian's Chromium, driven by playwright-core, on SockJS and the demo page.

A test page using sockjs-client 1.6 and @stomp/stompjs 7 (both as the node serves them
under /vendor/) connects with one SockJS transport at a time, subscribes to its user's
destination and to /topic/public, receives what the back end publishes, and SENDs.

The page is loaded from two places:

- cross-origin, from a small HTTP server run by this module: CORS with credentials, and
  the transports made for other origins (iframe-*, which run inside the node's
  /iframe.html, and jsonp-polling);
- same-origin, as if the node served it (the browser driver answers that URL itself): the
  transports a browser uses only on the server's own origin (htmlfile).

Then the demo page at / connects, shows a published notification, and is photographed for
the docs (docs/demo.png, rewritten when TIDINGS_UPDATE_SCREENSHOT=1 or missing).

Every test runs twice: against this checkout (``python -m tidings``), and against the
wheel installed into a virtualenv outside the checkout (tests/wheel_support.py), which
must serve the demo page and both bundles from the package alone.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from .browser import Browser
from .conftest import free_port
from .sockjs_support import Node, running_node
from .wheel_support import InstalledWheel

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEMO_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "demo.png"

CROSS_ORIGIN_TRANSPORTS = (
    "websocket",
    "xhr-streaming",
    "xhr-polling",
    "eventsource",
    "iframe-eventsource",
    "iframe-htmlfile",
    "iframe-xhr-polling",
    "jsonp-polling",
)
SAME_ORIGIN_TRANSPORTS = ("htmlfile", "xhr-streaming", "eventsource")

TEST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>SockJS transports</title>
<script src="__NODE__/vendor/sockjs.min.js"></script>
<script src="__NODE__/vendor/stomp.umd.min.js"></script>
</head><body><h1>SockJS transports</h1>
<script>
"use strict";
const NODE = "__NODE__";
window.runs = {};
window.start = (transport, user) => {
  const run = { transport, used: null, subscribed: false, messages: [], receipts: [],
                errors: [], closed: null };
  window.runs[transport] = run;
  const client = new StompJs.Client({
    webSocketFactory: () => (run.sock = new SockJS(NODE + "/publicServer", null,
                                                   { transports: [transport] })),
    connectHeaders: { login: user },
    reconnectDelay: 0,
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
    onConnect: () => {
      run.used = run.sock.transport;
      const keep = (message) => run.messages.push(message.body);
      client.subscribe(`/user/${user}/message`, keep);
      client.subscribe(`/topic/chat/${user}`, keep);
      client.watchForReceipt("subscribed", () => { run.subscribed = true; });
      client.subscribe("/topic/public", keep, { receipt: "subscribed" });
    },
    onStompError: (frame) => run.errors.push(frame.headers.message),
    onWebSocketClose: (event) => { run.closed = event.code; },
  });
  run.client = client;
  client.activate();
};
window.send = (transport, destination, body) => {
  const run = window.runs[transport];
  run.client.watchForReceipt("sent", () => run.receipts.push("sent"));
  run.client.publish({ destination, body, headers: { receipt: "sent" } });
};
window.stop = (transport) => window.runs[transport].client.deactivate();
</script></body></html>
"""


NODE_ARGS = ("--send-allow", "/topic/chat/**")


@pytest.fixture(scope="module", params=["checkout", "wheel"])
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    """A node of this checkout, or of the installed wheel."""
    program = None
    if request.param == "wheel":
        installed: InstalledWheel = request.getfixturevalue("installed_wheel")
        program = installed.program
    log_dir = tmp_path_factory.mktemp(f"sockjs-browser-{request.param}")
    with running_node(log_dir, *NODE_ARGS, program=program) as started:
        yield started


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def page_url(node: Node) -> AsyncIterator[str]:
    """The test page, served from another origin than the node's."""
    html = TEST_PAGE.replace("__NODE__", node.http_url)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/sockjs.html", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}/sockjs.html"
    await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    started = await Browser.start(tmp_path_factory.mktemp("chromium-profile"))
    yield started
    await started.close()


async def publish(node: Node, path: str, body: object) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(node.url(path), json={"body": body}) as reply,
    ):
        assert reply.status == 202, await reply.text()


async def run_transport(browser: Browser, node: Node, transport: str) -> None:
    """Connect with ``transport``, receive a user and a topic message, SEND, disconnect."""
    user = uuid.uuid4().hex[:10]
    run = f"window.runs[{transport!r}]"
    await browser.eval(f"window.start({transport!r}, {user!r})")
    await browser.wait(f"{run}.subscribed || {run}.errors.length || {run}.closed !== null")
    state = await browser.eval(
        f"({{used: {run}.used, errors: {run}.errors, closed: {run}.closed}})"
    )
    assert state == {"used": transport, "errors": [], "closed": None}
    await publish(node, f"/api/v1/users/{user}/messages", f"to {user}")
    await publish(node, "/api/v1/topics/public/messages", f"all {user}")
    await browser.wait(
        f"{run}.messages.includes('to {user}') && {run}.messages.includes('all {user}')"
    )
    await browser.eval(f"window.send({transport!r}, '/topic/chat/{user}', 'sent by {transport}')")
    await browser.wait(
        f"{run}.receipts.length === 1 && {run}.messages.includes('sent by {transport}')"
    )
    await browser.eval(f"window.stop({transport!r})")
    await browser.wait(f"{run}.closed !== null")


@pytest.mark.parametrize("transport", CROSS_ORIGIN_TRANSPORTS)
async def test_cross_origin_page(
    browser: Browser, node: Node, page_url: str, transport: str
) -> None:
    await browser.goto(page_url)
    await run_transport(browser, node, transport)


@pytest.mark.parametrize("transport", SAME_ORIGIN_TRANSPORTS)
async def test_same_origin_page(browser: Browser, node: Node, transport: str) -> None:
    url = node.url("/tests/sockjs.html")
    await browser.serve(url, TEST_PAGE.replace("__NODE__", ""))
    await browser.goto(url)
    await run_transport(browser, node, transport)


async def test_demo_page(
    browser: Browser, node: Node, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """As the README says: the page connects on load as user 42 and shows what arrives."""
    await browser.goto("about:blank")  # a page left by an earlier test may still reconnect
    browser.console.clear()
    await browser.goto(node.url("/"))
    await browser.wait("document.getElementById('status').textContent === 'connected as 42'")
    # Connected and subscribed are two steps: publish until the page shows it.
    for _ in range(20):
        await publish(
            node, "/api/v1/users/42/messages", {"title": "Build 1.4 is done", "build": 1402}
        )
        shown = await browser.eval(
            "document.getElementById('inbox').textContent.includes('Build 1.4 is done')"
        )
        if shown:
            break
        await browser.wait("true", timeout=0.2)
    else:
        pytest.fail("the demo page never showed the notification")
    await publish(node, "/api/v1/topics/public/messages", "Maintenance tonight at 22:00")
    await browser.wait(
        "document.getElementById('inbox').textContent.includes('Maintenance tonight')"
    )
    shot = tmp_path / "demo.png"
    await browser.screenshot(shot)
    assert shot.stat().st_size > 10_000
    if request.node.callspec.params["node"] == "checkout" and (
        os.environ.get("TIDINGS_UPDATE_SCREENSHOT") == "1" or not DEMO_SCREENSHOT.exists()
    ):
        shutil.copyfile(shot, DEMO_SCREENSHOT)
    # Every resource the page asked for loaded (a 404 favicon or script shows up here).
    failed = [line for line in browser.console if "Failed to load resource" in line]
    assert failed == []


async def test_demo_page_takes_the_user_from_the_address(browser: Browser, node: Node) -> None:
    user = uuid.uuid4().hex[:8]
    await browser.goto(node.url(f"/?user={user}"))
    await browser.wait(f"document.getElementById('status').textContent === 'connected as {user}'")
    assert await browser.eval("document.getElementById('user-destination').textContent") == (
        f"/user/{user}/message"
    )
    for _ in range(20):
        await publish(node, f"/api/v1/users/{user}/messages", "for you")
        if await browser.eval("document.getElementById('inbox').textContent.includes('for you')"):
            break
        await browser.wait("true", timeout=0.2)
    else:
        pytest.fail("the demo page never showed the notification")


async def test_favicon_is_an_icon_chromium_decodes(browser: Browser, node: Node) -> None:
    """A 404 there is what a browser logs on every page; ours is a 32x32 icon it decodes."""
    await browser.goto(node.url("/"))
    # The query: once a context route is set (test_same_origin_page sets one), Playwright
    # fails every page request for exactly /favicon.ico, never reaching the server.
    size = await browser.eval(
        """new Promise((resolve, reject) => {
          const icon = new Image();
          icon.onload = () => resolve([icon.naturalWidth, icon.naturalHeight]);
          icon.onerror = () => reject(new Error("/favicon.ico is not an image Chromium reads"));
          icon.src = "/favicon.ico?probe";
        })"""
    )
    assert size == [32, 32]
