"""tidings.js and the notification-center demo page in Chromium, against real nodes.

The bell's count (the node's initial inbox state, then reads and new messages), mark-read,
resume after a node restart with messages published while no node was up (none lost, none
shown twice), a reload resuming after the last notification shown, and the SockJS fallback.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tidings.publisher import Publisher

from .browser import Browser
from .conftest import StartServer, TidingsServer
from .redis_fixture import RedisServer

ITEMS = "[...document.querySelectorAll('#inbox li pre')].map((e) => e.textContent).reverse()"


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    started = await Browser.start(tmp_path / "chromium-profile")
    yield started
    await started.close()


async def publish(node: TidingsServer, user: str, body: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{node.http_url}/api/v1/users/{user}/messages", json={"body": body}) as reply,
    ):
        assert reply.status == 202, await reply.text()
        return str((await reply.json())["id"])


async def open_demo(browser: Browser, node: TidingsServer, user: str) -> None:
    await browser.goto(f"{node.http_url}/?user={user}")
    await browser.wait(f"document.getElementById('status').textContent === 'connected as {user}'")


async def shown(browser: Browser) -> list[str]:
    items: list[str] = await browser.eval(ITEMS)
    return items


async def wait_shown(browser: Browser, count: int) -> list[str]:
    await browser.wait(f"document.querySelectorAll('#inbox li').length >= {count}")
    return await shown(browser)


async def unread_badge(browser: Browser, count: int) -> None:
    await browser.wait(f"document.getElementById('unread').textContent === '{count}'")


async def test_the_bell_counts_what_is_unread_and_mark_read_lowers_it(
    browser: Browser, tidings_server: StartServer
) -> None:
    node = await tidings_server()
    user = uuid.uuid4().hex[:8]
    for n in range(3):
        await publish(node, user, f"offline {n}")
    await open_demo(browser, node, user)
    # A first visit gets what the user has not acknowledged, and the node's count.
    assert await wait_shown(browser, 3) == [f"offline {n}" for n in range(3)]
    await unread_badge(browser, 3)
    await browser.click("#inbox li:first-child .meta button")  # the newest one
    await unread_badge(browser, 2)
    await publish(node, user, "live")
    assert (await wait_shown(browser, 4))[-1] == "live"
    await unread_badge(browser, 3)
    await browser.click("#bell")  # mark all read
    await unread_badge(browser, 0)
    assert await browser.eval("document.querySelectorAll('#inbox li.unread').length") == 0
    # The count is the node's, not the page's: a new tab of the same user agrees.
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{node.http_url}/api/v1/users/{user}/inbox/unread") as reply,
    ):
        assert await reply.json() == {"unread": 0}
    assert not [line for line in browser.console if "[error]" in line], browser.console


async def test_a_state_event_older_than_the_count_shown_is_ignored(
    browser: Browser, tidings_server: StartServer
) -> None:
    """Issue 16's race: a read's inbox-state event may arrive after a newer one (reads on
    two nodes) or after a message stored later. Each carries ``last``, the newest id its
    count took in, and tidings.js ignores one older than the count it shows. The late
    events here are published to the user's /queue/inbox-state, as a back end may, with
    the bodies such late events have."""
    node = await tidings_server()
    user = uuid.uuid4().hex[:8]
    await open_demo(browser, node, user)
    await unread_badge(browser, 0)
    first = await publish(node, user, "a")
    second = await publish(node, user, "b")
    await wait_shown(browser, 2)
    await unread_badge(browser, 2)
    await browser.click("#inbox li:first-child .meta button")  # b read: the state (1, b)
    await unread_badge(browser, 1)
    for late in ({"unread": 2, "last": first}, {"unread": 2, "last": second}):
        state = {"destination": "/queue/inbox-state", "body": {**late, "read": [], "up_to": None}}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{node.http_url}/api/v1/users/{user}/messages", json=state) as reply,
        ):
            assert reply.status == 202, await reply.text()
    await publish(node, user, "c")  # after the late events, on the same channel
    assert (await wait_shown(browser, 3))[-1] == "c"
    # The count moved with the message shown (one task): a and c, the late states ignored.
    assert await browser.eval("document.getElementById('unread').textContent") == "2"
    await browser.click("#bell")  # mark all read: the node's own state, newer, applies
    await unread_badge(browser, 0)
    assert not [line for line in browser.console if "[error]" in line], browser.console


async def test_a_node_restart_mid_stream_loses_nothing_and_shows_nothing_twice(
    browser: Browser, tidings_server: StartServer, redis_server: RedisServer
) -> None:
    args = ("--broker", redis_server.url)
    node = await tidings_server(*args)
    user = uuid.uuid4().hex[:8]
    await open_demo(browser, node, user)
    await unread_badge(browser, 0)  # the initial state came: the subscriptions are live
    expected = [f"before {n}" for n in range(10)]
    for body in expected:
        await publish(node, user, body)
    assert await wait_shown(browser, 10) == expected
    await node.stop()
    async with Publisher.from_url(redis_server.url) as pub:
        for n in range(5):  # while no node is up: only the inbox has them
            await pub.to_user(user, f"while down {n}")
    expected += [f"while down {n}" for n in range(5)]
    node = await tidings_server(*args, port=node.port)
    await browser.wait(
        f"document.getElementById('status').textContent === 'connected as {user}'", timeout=20
    )
    for n in range(5):
        await publish(node, user, f"after {n}")
    expected += [f"after {n}" for n in range(5)]
    assert await wait_shown(browser, 20) == expected
    await unread_badge(browser, 20)
    # A reload resumes after the last one shown: nothing again, then only what is new.
    await open_demo(browser, node, user)
    await unread_badge(browser, 20)
    await publish(node, user, "after the reload")
    assert await wait_shown(browser, 1) == ["after the reload"]


async def test_the_sdk_falls_back_to_sockjs_when_websockets_fail(
    browser: Browser, tidings_server: StartServer
) -> None:
    node = await tidings_server()
    user = uuid.uuid4().hex[:8]
    await browser.goto(f"{node.http_url}/api/v1/docs")  # a page of the node's origin
    await browser.eval(
        f"""import("/tidings.js").then(({{ connect }}) => {{
          window.got = [];
          window.center = connect({{ user: {user!r}, endpoint: "/no-such-endpoint",
                                    reconnectDelay: 200 }});
          window.center.addEventListener("notification", (e) => window.got.push(e.detail.body));
        }})"""
    )
    await browser.wait("window.center.connected", timeout=20)
    assert await browser.eval("window.center.transport") == "sockjs"
    await browser.wait("window.center.unread === 0")
    await publish(node, user, "over sockjs")
    await browser.wait("window.got.includes('over sockjs')")
    await browser.eval("window.center.close()")
