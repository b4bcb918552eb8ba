"""The back end names a session's user at CONNECT (``--auth webhook``; issue 16 item 2).

The back end is a real HTTP server in the test (the application's stand-in, not Tidings);
the clients are the real npm ones, over a WebSocket and over SockJS.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tidings.connect_webhook import user_of
from tidings.errors import AuthError

from .conftest import JsClientFactory, StartServer, TidingsServer, free_port
from .jsclient import JS_LIBS
from .test_cli import run_cli
from .webhook_back_end import BackEnd, answer_with, serve_back_end

TOKEN = "connect-hook-secret"
SECRET_IN_BODY = "internal-detail-never-shown"


async def admit_by_login(call: dict[str, Any]) -> web.StreamResponse:
    """A back end that checks a password and names the user by its login."""
    headers = call["headers"]
    if headers.get("passcode") != "right":
        return web.json_response({"error": SECRET_IN_BODY}, status=403)
    return web.json_response({"user": headers["login"]})


@pytest.fixture
async def back_end() -> AsyncIterator[BackEnd]:
    async with serve_back_end("/connect", admit_by_login) as state:
        yield state


async def node_for(tidings_server: StartServer, back_end: BackEnd, *args: str) -> TidingsServer:
    return await tidings_server(
        *("--auth", "webhook", "--connect-webhook", back_end.url),
        *("--connect-webhook-token", TOKEN, *args),
    )


@pytest.fixture
async def node(tidings_server: StartServer, back_end: BackEnd) -> TidingsServer:
    """A node on the back end, with its options' defaults."""
    return await node_for(tidings_server, back_end)


async def publish(node: TidingsServer, user: str, body: str) -> None:
    url = f"http://127.0.0.1:{node.port}/api/v1/users/{user}/messages"
    async with aiohttp.ClientSession() as http, http.post(url, json={"body": body}) as reply:
        assert reply.status == 202, await reply.text()


@pytest.mark.parametrize("lib", JS_LIBS)
async def test_the_back_end_admits_a_session_as_the_user_it_names(
    lib: str, node: TidingsServer, back_end: BackEnd, js_client: JsClientFactory
) -> None:
    client = await js_client(lib, node.ws_url())
    connected = await client.connect({"x-app-session": "cookie-1"}, login="ada", passcode="right")
    assert connected["headers"]["user-name"] == "ada"
    [call] = back_end.calls
    assert back_end.authorizations == [f"Bearer {TOKEN}"]
    assert call["transport"] == "websocket" and call["address"] == "127.0.0.1"
    assert isinstance(call["session"], str) and call["session"]
    headers = call["headers"]
    assert headers["login"] == "ada" and headers["passcode"] == "right"
    assert headers["x-app-session"] == "cookie-1" and "accept-version" in headers
    # The session is the user's: its /user/queue/... is ada's, and only ada's.
    await client.subscribe("mine", "/user/message")
    await publish(node, "ada", "hello ada")
    assert (await client.expect("message", subscription="mine"))["body"] == "hello ada"
    await client.command("subscribe", id="theirs", destination="/user/bob/message", headers={})
    error = await client.expect("error")
    assert "may not subscribe to messages of user bob" in error["headers"]["message"]


async def test_a_sockjs_session_is_named_too(
    node: TidingsServer, back_end: BackEnd, js_client: JsClientFactory
) -> None:
    url = f"http://127.0.0.1:{node.port}/publicServer"
    client = await js_client("stompjs7", url, transport="xhr-streaming")
    connected = await client.connect(login="7", passcode="right")
    assert connected["headers"]["user-name"] == "7"
    assert back_end.calls[0]["transport"] == "sockjs"


@pytest.mark.parametrize(
    "case",
    [
        (403, b'{"error": "%s"}' % SECRET_IN_BODY.encode(), "refused the credentials (HTTP 403)"),
        (500, SECRET_IN_BODY.encode(), "refused the credentials (HTTP 500)"),
        (200, SECRET_IN_BODY.encode(), "answer is not JSON"),
        (200, b'{"user": "a/b"}', "not a valid user id"),
        (200, b'{"user": ""}', "not a valid user id"),
        (200, b'{"user": "x\\nadmin"}', "not a valid user id"),
        (200, b'{"user": 42}', "not a valid user id"),
        (
            200,
            b'{"user": "ok", "%s": 1}' % SECRET_IN_BODY.encode(),
            "must be an object with one field, user",
        ),
        (200, b'["ok"]', "must be an object with one field, user"),
        (None, b"", "did not answer in time"),
    ],
    ids=[
        *("403", "500", "not-json", "slash", "empty", "newline", "number"),
        *("extra-field", "list", "timeout"),
    ],
)
async def test_anything_but_a_user_refuses_the_session_saying_what_failed(
    case: tuple[int | None, bytes, str],
    tidings_server: StartServer,
    back_end: BackEnd,
    js_client: JsClientFactory,
) -> None:
    status, body, message = case
    # The node gives up on a hanging back end long before it answers.
    back_end.handler = back_end.hang if status is None else answer_with(status, body)
    node = await node_for(tidings_server, back_end, "--connect-webhook-timeout", "0.5")
    client = await js_client("stompjs7", node.ws_url())
    await client.command("connect", headers={"login": "ada", "passcode": "x"}, heartbeat=[0, 0])
    error = await client.expect("error", fail_on=("connected",))
    text = error["headers"]["message"]
    assert text.startswith("authentication failed") and message in text, text
    assert SECRET_IN_BODY not in text and SECRET_IN_BODY not in error["body"]
    closed = await client.expect("closed")
    assert closed["code"] == 1008
    assert len(back_end.calls) == 1
    # Counted by a short, fixed reason (a label of tidings_auth_failures_total).
    reason = {403: "webhook_refused", 500: "webhook_refused", None: "webhook_timeout"}
    label = f'reason="{reason.get(status, "invalid_answer")}"'
    counted = {
        name: value
        for name, value in (await node.metrics()).items()
        if name.startswith("tidings_auth_failures_total{")
    }
    assert [value for name, value in counted.items() if label in name] == [1], counted


async def test_an_unreachable_back_end_refuses_without_naming_it(
    tidings_server: StartServer, js_client: JsClientFactory
) -> None:
    url = f"http://127.0.0.1:{free_port()}/connect"  # nobody listens there
    node = await tidings_server("--auth", "webhook", "--connect-webhook", url)
    client = await js_client("legacy", node.ws_url())
    await client.command("connect", headers={"login": "ada"}, heartbeat=[0, 0])
    error = await client.expect("error", fail_on=("connected",))
    text = error["headers"]["message"]
    assert "connect webhook could not be reached" in text and "127.0.0.1" not in text


async def test_calls_are_bounded_per_node_and_wait_within_the_timeout(
    tidings_server: StartServer, back_end: BackEnd, js_client: JsClientFactory
) -> None:
    """--connect-webhook-concurrency 1: a second CONNECT waits for the first call's end."""
    gate = asyncio.Event()

    async def gated(call: dict[str, Any]) -> web.StreamResponse:
        await gate.wait()
        return web.json_response({"user": call["headers"]["login"]})

    back_end.handler = gated
    back_end.busy_at = 1
    node = await node_for(tidings_server, back_end, "--connect-webhook-concurrency", "1")
    first = await js_client("stompjs7", node.ws_url())
    second = await js_client("stompjs7", node.ws_url())
    await first.command("connect", headers={"login": "a"}, heartbeat=[0, 0])
    await second.command("connect", headers={"login": "b"}, heartbeat=[0, 0])
    async with asyncio.timeout(5):
        await back_end.busy.wait()
    # A bounded wait: no event tells that the node will not make the second call now.
    await second.expect_none("connected", within=0.3)
    assert len(back_end.calls) == 1
    gate.set()
    assert (await first.expect("connected"))["headers"]["user-name"] == "a"
    assert (await second.expect("connected"))["headers"]["user-name"] == "b"
    assert back_end.most_in_flight == 1


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--auth", "webhook"], "--auth webhook needs --connect-webhook URL"),
        (
            ["--connect-webhook", "http://127.0.0.1:1/c"],
            "--connect-webhook is set but --auth is 'none'",
        ),
        (
            ["--auth", "jwt", "--jwt-secret", "s" * 32, "--connect-webhook-token", "t"],
            "--connect-webhook-token is set but --auth is 'jwt'",
        ),
        (
            ["--auth", "webhook", "--connect-webhook", "http://h/c", "--jwt-secret", "s" * 32],
            "--jwt-secret is set but --auth is 'webhook'",
        ),
        (
            [
                *("--auth", "webhook", "--connect-webhook", "http://h/c"),
                *("--connect-webhook-timeout", "10", "--connect-timeout", "10"),
            ],
            "--connect-webhook-timeout (10 s) must be below --connect-timeout (10 s)",
        ),
    ],
    ids=["no-url", "no-auth", "with-jwt", "jwt-option", "timeout"],
)
def test_contradictory_options_stop_the_start_with_exit_2(args: list[str], error: str) -> None:
    result = run_cli("serve", *args)
    assert result.returncode == 2, result.stderr
    assert error in result.stderr, result.stderr


def test_an_answer_names_one_valid_user() -> None:
    for data in (b"nope", b"{}", b'{"user": null}'):
        with pytest.raises(AuthError) as raised:
            user_of(data)
        assert raised.value.reason == "invalid_answer"
    assert user_of(orjson.dumps({"user": "ada"})) == "ada"
