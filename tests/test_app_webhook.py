"""Client SENDs to /app/... answered by a back end over HTTP (--app-webhook), end to end.

The back end is a real HTTP server in the test (a stand-in for the application: not part of
Tidings); the clients are the real npm ones, as a Spring page would use them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from tidings.app_webhook import AppWebhook, Failure

from .conftest import JsClientFactory, StartServer, TidingsServer
from .jsclient import JS_LIBS
from .webhook_back_end import BackEnd, serve_back_end

TOKEN = "webhook-secret"


async def reply_hello(call: dict[str, Any]) -> web.StreamResponse:
    """A back end that replies to the sender with who sent what."""
    return web.json_response({"reply": {"hello": call["user"], "said": call["body"]}})


@pytest.fixture
async def back_end() -> AsyncIterator[BackEnd]:
    async with serve_back_end("/stomp-app", reply_hello) as state:
        yield state


async def node_for(tidings_server: StartServer, back_end: BackEnd, *args: str) -> TidingsServer:
    return await tidings_server("--app-webhook", back_end.url, "--app-webhook-token", TOKEN, *args)


@pytest.fixture
async def node(tidings_server: StartServer, back_end: BackEnd) -> TidingsServer:
    """A node on the back end, with its options' defaults."""
    return await node_for(tidings_server, back_end)


@pytest.mark.parametrize("lib", JS_LIBS)
async def test_a_spring_page_sends_to_app_and_gets_the_reply(
    lib: str, node: TidingsServer, back_end: BackEnd, js_client: JsClientFactory
) -> None:
    """stompClient.send('/app/hello', {}, body) + subscribe('/user/queue/reply')."""
    client = await js_client(lib, node.ws_url())
    await client.connect(login="42")
    await client.subscribe("reply", "/user/queue/reply")
    await client.send("/app/hello", '{"name":"Ada"}', headers={"x-trace": "t-1"})
    reply = await client.expect("message", subscription="reply")
    assert orjson.loads(reply["body"]) == {"hello": "42", "said": '{"name":"Ada"}'}
    assert reply["headers"]["content-type"].startswith("application/json")
    [call] = back_end.calls
    assert call["user"] == "42" and call["destination"] == "/app/hello"
    assert call["headers"] == {"x-trace": "t-1"}
    assert isinstance(call["session"], str) and call["session"]
    assert back_end.authorizations == [f"Bearer {TOKEN}"]
    # The session is still there: another SEND works the same.
    await client.send("/app/hello", "again", headers={"receipt": "r2"})
    await client.expect("receipt", id="r2")
    assert orjson.loads((await client.expect("message"))["body"])["said"] == "again"


async def test_an_answer_may_publish_and_its_receipt_comes_after_it(
    node: TidingsServer, back_end: BackEnd, js_client: JsClientFactory
) -> None:
    async def publish_to_friend(call: dict[str, Any]) -> web.StreamResponse:
        item = {"user": "7", "body": f"{call['user']} says {call['body']}"}
        return web.json_response({"reply": "sent", "publish": [item]})

    back_end.handler = publish_to_friend
    sender = await js_client("stompjs7", node.ws_url())
    friend = await js_client("stompjs7", node.ws_url())
    await sender.connect(login="42")
    await friend.connect(login="7")
    await sender.subscribe("reply", "/user/queue/reply")
    await friend.subscribe("in", "/user/7/message")
    await sender.send("/app/chat", "hi", headers={"receipt": "r1"})
    await sender.expect("receipt", id="r1")
    assert (await sender.expect("message", subscription="reply"))["body"] == "sent"
    delivered = await friend.expect("message", subscription="in")
    assert delivered["body"] == "42 says hi" and delivered["headers"]["tidings-id"]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (web.Response(status=500, text="boom"), "webhook_status"),
        (web.Response(status=200, text="not json"), "invalid_answer"),
        (web.json_response(["a list"]), "invalid_answer"),
        (web.json_response({"publish": [{"user": "7"}]}), "invalid_answer"),
        (web.json_response({"reply": 1, "extra": True}), "invalid_answer"),
        (None, "webhook_timeout"),
    ],
)
async def test_failures_go_to_user_queue_errors_and_the_session_stays(
    answer: web.Response | None,
    error: str,
    tidings_server: StartServer,
    back_end: BackEnd,
    js_client: JsClientFactory,
) -> None:
    async def fail(call: dict[str, Any]) -> web.StreamResponse:
        if answer is None:
            return await back_end.hang(call)  # longer than the node waits
        return answer

    back_end.handler = fail
    node = await node_for(tidings_server, back_end, "--app-webhook-timeout", "0.5")
    client = await js_client("stompjs7", node.ws_url())
    await client.connect(login="42")
    await client.subscribe("errors", "/user/queue/errors")
    await client.send("/app/x", "body", headers={"receipt": "r1"})
    failure = orjson.loads((await client.expect("message", subscription="errors"))["body"])
    back_end.released.set()
    assert failure["error"] == error and failure["destination"] == "/app/x"
    assert failure["receipt"] == "r1" and failure["message"]
    if error == "webhook_status":
        assert failure["status"] == 500
    back_end.handler = None  # the back end is fine again: the same session goes on
    await client.subscribe("reply", "/user/queue/reply")  # its receipt comes after r1's
    await client.expect_none("receipt", within=0)  # a failed SEND is not confirmed
    await client.send("/app/x", "ok")
    assert orjson.loads((await client.expect("message", subscription="reply"))["body"])


@pytest.mark.parametrize(("args", "bound"), [(("--app-webhook-concurrency", "3"), 3), ((), 8)])
async def test_calls_are_bounded_per_node_and_per_session_and_nothing_is_dropped(
    args: tuple[str, ...],
    bound: int,
    tidings_server: StartServer,
    back_end: BackEnd,
    js_client: JsClientFactory,
) -> None:
    """At most --app-webhook-concurrency calls per node, MAX_APP_CALLS (8) per session."""
    gate = asyncio.Event()

    async def slow(call: dict[str, Any]) -> web.StreamResponse:
        await gate.wait()
        return web.json_response({"reply": call["body"]})

    back_end.handler = slow
    back_end.busy_at = bound
    node = await node_for(tidings_server, back_end, *args)
    client = await js_client("stompjs7", node.ws_url())
    await client.connect(login="42")
    await client.subscribe("reply", "/user/queue/reply")
    for n in range(12):
        await client.send("/app/work", str(n))
    async with asyncio.timeout(10):
        await back_end.busy.wait()
    # A bounded wait: no event tells that the node will not make one more call.
    await client.expect_none("message", within=0.3)
    assert back_end.most_in_flight == bound
    gate.set()
    replies = [await client.expect("message", subscription="reply") for _ in range(12)]
    assert sorted(int(r["body"]) for r in replies) == list(range(12))
    assert back_end.most_in_flight == bound


async def test_without_a_webhook_app_sends_are_refused_as_before(
    tidings_server: StartServer, js_client: JsClientFactory
) -> None:
    node = await tidings_server()
    client = await js_client("stompjs7", node.ws_url())
    await client.connect(login="42")
    await client.send("/app/hello", "x")
    error = await client.expect("error", fail_on=("fatal",))
    assert "not allowed" in error["headers"]["message"]


async def test_a_body_that_is_not_text_is_refused_before_any_call() -> None:
    hook = AppWebhook("http://127.0.0.1:9/never")
    outcome = await hook.call(
        user="1", session="s", destination="/app/x", headers=(), body=b"\xff\xfe"
    )
    assert outcome == Failure("invalid_request", "the SEND body is not UTF-8 text")
