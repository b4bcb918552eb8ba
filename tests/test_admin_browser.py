"""The /admin console in a real browser (Debian's Chromium through playwright-core), on
two nodes sharing a real Redis: it loads without a console error, shows both nodes and a
user's sessions on both, and its disconnect button closes them while a bystander stays.

Screenshots for docs/admin.md (docs/admin-console.png, docs/admin-phone.png) are written
when TIDINGS_UPDATE_SCREENSHOT=1 or when they are missing, not on every run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .browser import Browser
from .conftest import JsClientFactory, StartServer
from .redis_fixture import RedisServer
from .test_admin import API_KEY, session

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCREENSHOTS = {"desktop": DOCS / "admin-console.png", "phone": DOCS / "admin-phone.png"}
PHONE = (390, 844)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    browser = await Browser.start(tmp_path / "profile")
    try:
        yield browser
    finally:
        await browser.close()


def _update_screenshots() -> bool:
    return os.environ.get("TIDINGS_UPDATE_SCREENSHOT") == "1" or not all(
        shot.exists() for shot in SCREENSHOTS.values()
    )


async def test_console_shows_both_nodes_and_disconnects_a_user(
    tidings_server: StartServer,
    redis_server: RedisServer,
    js_client: JsClientFactory,
    browser: Browser,
    tmp_path: Path,
) -> None:
    a, b = await asyncio.gather(
        *(
            tidings_server("--broker", redis_server.url, "--node-id", name, "--api-key", API_KEY)
            for name in ("node-a", "node-b")
        )
    )
    on_a = await session(js_client, a, "42", "/user/42/message", "/topic/news")
    on_b = await session(js_client, b, "42", "/user/queue/inbox-state")
    bystander = await session(js_client, a, "43", "/user/43/message")

    await browser.goto(f"{a.http_url}/admin")
    await browser.fill("#key", API_KEY)
    await browser.click("#use-key")
    await browser.wait("document.querySelectorAll('#nodes tbody tr').length === 2")
    nodes = await browser.eval(
        "[...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.node)"
    )
    assert nodes == ["node-a", "node-b"]
    await browser.wait("document.getElementById('users').textContent.includes('on node-a, node-b')")

    # The publish form stores two messages for 42; the lookup shows them and both sessions.
    await browser.fill("#publish-to", "42")
    for text in ("Build 1.4 is done", "Maintenance tonight at 22:00"):
        await browser.fill("#publish-body", text)
        await browser.click("#publish-form button[type=submit]")
        await browser.wait(
            "document.getElementById('publish-answer').textContent.startsWith('stored as')"
        )
        await browser.eval("document.getElementById('publish-answer').textContent = ''")
    await browser.fill("#user", "42")
    await browser.click("#lookup-form button[type=submit]")
    await browser.wait("document.querySelectorAll('#sessions tbody tr[data-session]').length === 2")
    await browser.wait("document.querySelectorAll('#inbox li.unread').length === 2")
    sessions_text = await browser.eval("document.getElementById('sessions').textContent")
    assert "node-a" in sessions_text and "node-b" in sessions_text
    assert "websocket" in sessions_text and "127.0.0.1" in sessions_text
    # A live tail of topic news sees a message published meanwhile.
    await browser.fill("#tail-name", "news")
    await browser.click("#tail-start")
    await browser.wait("document.getElementById('tail-status').textContent.startsWith('watching')")
    await browser.fill("#publish-to", "news")
    await browser.eval("document.getElementById('publish-kind').value = 'topic'")
    await browser.fill("#publish-body", "deploy finished")
    await browser.click("#publish-form button[type=submit]")
    await browser.wait("document.getElementById('tail').textContent.includes('deploy finished')")

    if _update_screenshots():
        desktop = tmp_path / "admin-console.png"
        await browser.eval("window.scrollTo(0, 0)")
        await browser.screenshot(desktop, full_page=True)
        await browser.viewport(*PHONE)
        phone = tmp_path / "admin-phone.png"
        await browser.screenshot(phone, full_page=True)
        await browser.viewport(1000, 760)
        for shot, target in ((desktop, SCREENSHOTS["desktop"]), (phone, SCREENSHOTS["phone"])):
            assert shot.stat().st_size > 10_000
            shutil.copyfile(shot, target)

    # The disconnect button: every session of 42 on both nodes ends, 43 stays.
    await browser.fill("#reason", "token leaked")
    await browser.click("#disconnect")
    await browser.wait("document.getElementById('status').textContent.startsWith('closed 2')")
    for client in (on_a, on_b):
        error = await client.expect("error", fail_on=("fatal",))
        assert error["headers"]["message"] == "token leaked"
        await client.expect("closed")
    await browser.wait("document.getElementById('sessions').textContent.includes('no sessions')")
    await bystander.round_trip()  # a close of 43 would have come before its receipts
    await bystander.expect_none("closed", within=0)
    await bystander.expect_none("error", within=0)

    problems = [
        line
        for line in browser.console
        if line.startswith(("[error]", "[pageerror]", "[fatal]")) or "Failed to load" in line
    ]
    assert problems == [], problems
