"""A user's own inbox over HTTP: ``/api/v1/me/inbox...`` with the user's JWT, and CORS
for the ``--allowed-origin`` pages (issue 16 item 3). Real node, real tokens, and a real
Chromium page on another origin calling it with fetch()."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from json import dumps
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from .browser import Browser
from .conftest import StartServer, TidingsServer, free_port
from .test_server_jwt import SECRET, token

API_KEY = "me-test-api-key"
AUDIENCE, ISSUER = "bell", "https://login.example"
Json = dict[str, Any]


def user_token(sub: str, **claims: Any) -> str:
    """A token as the node is configured to take (aud, iss), unless ``claims`` say else."""
    base = {"sub": sub, "exp": int(time.time() + 300), "aud": AUDIENCE, "iss": ISSUER}
    return jwt.encode({**base, **claims}, SECRET, "HS256")


@pytest.fixture
async def pages() -> AsyncIterator[tuple[str, str]]:
    """One page served on two ports: an allowed origin and a refused one."""
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>bell</title>", content_type="text/html")

    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ports = free_port(), free_port()
    for port in ports:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
    await runner.cleanup()


@pytest.fixture
async def node(tidings_server: StartServer, pages: tuple[str, str]) -> TidingsServer:
    return await tidings_server(
        *("--auth", "jwt", "--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER),
        *("--api-key", API_KEY, "--allowed-origin", pages[0]),
        env={"TIDINGS_JWT_SECRET": SECRET},
    )


async def call(
    node: TidingsServer,
    method: str,
    path: str,
    *,
    bearer: str | None = None,
    json: Json | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    """Status, JSON body (None if not JSON) and headers of one request."""
    sent = dict(headers or {})
    if bearer is not None:
        sent["Authorization"] = f"Bearer {bearer}"
    url = f"http://127.0.0.1:{node.port}{path}"
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, json=json, headers=sent) as reply,
    ):
        body = await reply.json() if reply.content_type == "application/json" else None
        return reply.status, body, reply.headers


async def publish(node: TidingsServer, user: str, body: str) -> str:
    path = f"/api/v1/users/{user}/messages"
    status, answer, _ = await call(node, "POST", path, bearer=API_KEY, json={"body": body})
    assert status == 202, answer
    return str(answer["id"])


async def test_a_user_reads_and_marks_their_own_inbox_with_their_token(
    node: TidingsServer,
) -> None:
    ids = [await publish(node, "alice", f"for alice {n}") for n in range(3)]
    await publish(node, "bob", "for bob")
    alice = user_token("alice")
    status, mine, _ = await call(node, "GET", "/api/v1/me/inbox", bearer=alice)
    assert status == 200
    assert [m["body"] for m in mine["messages"]] == ["for alice 0", "for alice 1", "for alice 2"]
    # The same answer as the back end's route gives for alice.
    _, theirs, _ = await call(node, "GET", "/api/v1/users/alice/inbox", bearer=API_KEY)
    assert mine == theirs
    status, page, _ = await call(
        node, "GET", f"/api/v1/me/inbox?after={ids[0]}&limit=1", bearer=alice
    )
    assert [m["id"] for m in page["messages"]] == [ids[1]]
    status, unread, _ = await call(node, "GET", "/api/v1/me/inbox/unread", bearer=alice)
    assert (status, unread) == (200, {"unread": 3})
    status, after, _ = await call(
        node, "POST", "/api/v1/me/inbox/read", bearer=alice, json={"ids": [ids[0]]}
    )
    assert (status, after) == (200, {"unread": 2})
    _, unread, _ = await call(node, "GET", "/api/v1/users/alice/inbox/unread", bearer=API_KEY)
    assert unread == {"unread": 2}
    _, bobs, _ = await call(node, "GET", "/api/v1/me/inbox/unread", bearer=user_token("bob"))
    assert bobs == {"unread": 1}


async def test_a_token_reads_no_other_inbox(node: TidingsServer) -> None:
    await publish(node, "bob", "secret of bob")
    alice = user_token("alice")
    status, body, _ = await call(node, "GET", "/api/v1/me/inbox?user=bob", bearer=alice)
    assert (status, body["error"]) == (403, "forbidden")
    status, body, _ = await call(
        node, "POST", "/api/v1/me/inbox/read?user=bob", bearer=alice, json={"up_to": "0"}
    )
    assert status == 403
    # The back ends' routes take the API key, not a user's token.
    status, body, _ = await call(node, "GET", "/api/v1/users/bob/inbox", bearer=alice)
    assert (status, body["error"]) == (401, "unauthorized")
    _, mine, _ = await call(node, "GET", "/api/v1/me/inbox?user=alice", bearer=alice)
    assert mine == {"messages": []}


@pytest.mark.parametrize(
    ("credentials_of", "message"),
    [
        # Made when the test runs: a token made at collection could expire before then.
        (lambda: None, "send 'Authorization: Bearer <jwt>'"),
        (lambda: user_token("alice", exp=int(time.time()) - 60), "token expired"),
        (lambda: user_token("alice", aud="other"), "token audience not accepted"),
        (lambda: user_token("alice", iss="https://evil.example"), "token issuer not accepted"),
        (lambda: user_token("a/b"), "token sub is not a valid user id"),
        (
            lambda: token("alice", secret="another-secret-that-is-long-enough-for-hs256"),
            "signature",
        ),
        (lambda: API_KEY, "malformed token"),
    ],
    ids=["none", "expired", "audience", "issuer", "sub", "signature", "api-key"],
)
async def test_bad_credentials_are_401_json(
    node: TidingsServer, credentials_of: Callable[[], str | None], message: str
) -> None:
    credentials = credentials_of()
    for method, path in (("GET", "/api/v1/me/inbox"), ("GET", "/api/v1/me/inbox/unread")):
        status, body, headers = await call(node, method, path, bearer=credentials)
        assert (status, body["error"]) == (401, "unauthorized")
        assert message in body["message"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = await call(
        node, "POST", "/api/v1/me/inbox/read", bearer=credentials, json={"up_to": "0"}
    )
    assert status == 401


async def test_cors_answers_the_allowed_origin_only(
    node: TidingsServer, pages: tuple[str, str]
) -> None:
    allowed, refused = pages
    for path, method in (("/api/v1/me/inbox", "GET"), ("/api/v1/me/inbox/read", "POST")):
        preflight = {
            "Origin": allowed,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        status, _, headers = await call(node, "OPTIONS", path, headers=preflight)
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == allowed
        assert headers["Vary"] == "Origin"
        assert method in headers["Access-Control-Allow-Methods"]
        assert headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
        assert int(headers["Access-Control-Max-Age"]) > 0
        status, body, headers = await call(
            node, "OPTIONS", path, headers={**preflight, "Origin": refused}
        )
        assert (status, body["error"]) == (403, "forbidden")
        assert not any(name.startswith("Access-Control-") for name in headers)
    alice = user_token("alice")
    status, _, headers = await call(
        node, "GET", "/api/v1/me/inbox/unread", bearer=alice, headers={"Origin": allowed}
    )
    assert (status, headers["Access-Control-Allow-Origin"]) == (200, allowed)
    # An error answer carries them too, or the page could not read why.
    status, _, headers = await call(
        node, "GET", "/api/v1/me/inbox/unread", headers={"Origin": allowed}
    )
    assert (status, headers["Access-Control-Allow-Origin"]) == (401, allowed)
    status, _, headers = await call(
        node, "GET", "/api/v1/me/inbox/unread", bearer=alice, headers={"Origin": refused}
    )
    assert status == 403 and "Access-Control-Allow-Origin" not in headers


FETCH = """async ([url, token, method, body]) => {
  try {
    const init = {method, headers: {Authorization: `Bearer ${token}`}};
    if (body !== null) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const reply = await fetch(url, init);
    return {status: reply.status, body: await reply.json()};
  } catch (error) {
    return {failed: String(error)};
  }
}"""


async def page_fetch(
    browser: Browser, url: str, bearer: str, method: str = "GET", body: Json | None = None
) -> Any:
    args = [url, bearer, method, body]
    return await browser.eval(f"({FETCH})({dumps(args)})")  # JSON is JavaScript


async def test_a_page_on_an_allowed_origin_reads_its_inbox_and_another_cannot(
    node: TidingsServer, pages: tuple[str, str], tmp_path: Path
) -> None:
    allowed, refused = pages
    await publish(node, "alice", "hello from the back end")
    alice = user_token("alice")
    api = f"http://127.0.0.1:{node.port}/api/v1/me/inbox"
    browser = await Browser.start(tmp_path / "profile")
    try:
        await browser.goto(f"{allowed}/")
        listing = await page_fetch(browser, api, alice)
        assert listing["status"] == 200, listing
        assert [m["body"] for m in listing["body"]["messages"]] == ["hello from the back end"]
        [message] = listing["body"]["messages"]
        # A POST with JSON and Authorization: the preflight first, then the request.
        marked = await page_fetch(browser, f"{api}/read", alice, "POST", {"ids": [message["id"]]})
        assert marked == {"status": 200, "body": {"unread": 0}}
        await browser.goto(f"{refused}/")
        blocked = await page_fetch(browser, f"{api}/unread", alice)
        assert "failed" in blocked and "Failed to fetch" in blocked["failed"], blocked
    finally:
        await browser.close()
    # The refused page's preflight never let its request through: still nothing unread.
    _, unread, _ = await call(node, "GET", "/api/v1/me/inbox/unread", bearer=alice)
    assert unread == {"unread": 0}


async def test_under_auth_none_the_user_is_named_and_under_webhook_refused(
    tidings_server: StartServer,
) -> None:
    dev = await tidings_server()
    await publish_plain(dev, "ada")
    status, body, _ = await call(dev, "GET", "/api/v1/me/inbox/unread?user=ada")
    assert (status, body) == (200, {"unread": 1})
    status, body, _ = await call(dev, "GET", "/api/v1/me/inbox/unread")
    assert (status, body["error"]) == (401, "unauthorized") and "?user=" in body["message"]
    status, body, _ = await call(dev, "GET", "/api/v1/me/inbox?user=a%2Fb")
    assert (status, body["error"]) == (400, "invalid_field")
    hooked = await tidings_server(
        "--auth", "webhook", "--connect-webhook", f"http://127.0.0.1:{free_port()}/c"
    )
    status, body, _ = await call(hooked, "GET", "/api/v1/me/inbox?user=ada", bearer="x")
    assert (status, body["error"]) == (401, "unauthorized")
    assert "--auth webhook" in body["message"]


async def publish_plain(node: TidingsServer, user: str, body: str = "hi") -> None:
    path = f"/api/v1/users/{user}/messages"
    status, answer, _ = await call(node, "POST", path, json={"body": body})
    assert status == 202, answer


SDK_PAGE = """import("/tidings.js").then(({ connect }) => {
  window.got = [];
  window.center = connect({ token: %s, reconnectDelay: 200 });
  window.center.addEventListener("notification", (e) => {
    window.got.push([e.detail.body, e.detail.history]);
  });
})"""


async def test_tidings_js_shows_the_history_on_a_first_visit_once(
    tidings_server: StartServer, tmp_path: Path
) -> None:
    """tidings.js with a token: a first visit reads /api/v1/me/inbox, then resumes live
    after it (nothing twice); a later visit resumes from its last id (no history again)."""
    node = await tidings_server("--auth", "jwt", env={"TIDINGS_JWT_SECRET": SECRET})
    for n in range(2):
        await publish_plain(node, "alice", f"old {n}")
    browser = await Browser.start(tmp_path / "profile")
    try:
        await browser.goto(f"http://127.0.0.1:{node.port}/api/v1/docs")  # the node's origin
        await browser.eval(SDK_PAGE % dumps(token("alice")))
        await browser.wait("window.center.connected && window.center.unread === 2")
        await publish_plain(node, "alice", "live")
        await browser.wait("window.got.length >= 3")
        await browser.eval("window.center.close()")
        assert await browser.eval("window.got") == [
            ["old 0", True],
            ["old 1", True],
            ["live", False],
        ]
        await browser.goto(f"http://127.0.0.1:{node.port}/api/v1/docs")  # a later visit
        await browser.eval(SDK_PAGE % dumps(token("alice")))
        await browser.wait("window.center.connected && window.center.unread === 3")
        await publish_plain(node, "alice", "after the reload")
        await browser.wait("window.got.length >= 1")
        assert await browser.eval("window.got") == [["after the reload", False]]
        assert not [line for line in browser.console if "[error]" in line], browser.console
    finally:
        await browser.close()
