"""``--auth jwt`` end to end: who may connect, what they may subscribe to, and for how long."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import pytest

from tidings.stomp.frames import Frame

from .conftest import StartServer, TidingsServer
from .stompws import HEARTBEAT, Closed, StompWs

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
POLICY_VIOLATION = 1008
JWT = ("--auth", "jwt")
JWT_ENV = {"TIDINGS_JWT_SECRET": SECRET}


def token(sub: str = "42", *, secret: str = SECRET, expires_in: float = 300) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + expires_in)}, secret, "HS256")


def signed(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, SECRET, "HS256")


@pytest.fixture
async def server(tidings_server: StartServer) -> TidingsServer:
    return await tidings_server(*JWT, env=JWT_ENV)


async def refused(
    server: TidingsServer, headers: dict[str, str], reason: str, url: str = ""
) -> None:
    client = await StompWs.open(url or server.ws_url())
    try:
        await client.send_frame("CONNECT", {"accept-version": "1.2", **headers})
        error = await client.expect_error_and_close(reason, POLICY_VIOLATION)
        assert (error.get("message") or "").startswith("authentication failed")
    finally:
        await client.close()


async def connects(server: TidingsServer, headers: dict[str, str], url: str = "") -> Frame:
    client = await StompWs.open(url or server.ws_url())
    try:
        return await client.connect(**headers)
    finally:
        await client.close()


@pytest.mark.parametrize("carrier", ["authorization", "passcode", "query"])
async def test_a_valid_token_connects_and_names_the_user(
    tidings_server: StartServer, carrier: str
) -> None:
    extra = ("--allow-query-token",) if carrier == "query" else ()
    server = await tidings_server(*JWT, *extra, env=JWT_ENV)
    headers: dict[str, str] = {}
    url = server.ws_url()
    if carrier == "authorization":
        headers["Authorization"] = f"Bearer {token()}"
    elif carrier == "passcode":
        headers.update(login="ignored", passcode=token())
    else:
        url += f"?access_token={token()}"
    client = await StompWs.open(url)
    try:
        connected = await client.connect(**headers)
        assert connected.get("user-name") == "42"
        await client.subscribe("own", "/user/42/message")
        await client.subscribe("principal", "/user/queue/alerts")
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "no token"),
        ({"login": "42"}, "no token"),
        ({"Authorization": f"Bearer {token(expires_in=-60)}"}, "token expired"),
        (
            {"Authorization": f"Bearer {token(secret='another-secret-just-as-long-as-the-real')}"},
            "invalid token signature",
        ),
        ({"Authorization": "Bearer not.a.jwt"}, "malformed token"),
    ],
    ids=["none", "login-only", "expired", "wrong-signature", "malformed"],
)
async def test_bad_credentials_are_refused(
    server: TidingsServer, headers: dict[str, str], reason: str
) -> None:
    client = await StompWs.open(server.ws_url())
    try:
        await client.send_frame("CONNECT", {"accept-version": "1.2", **headers})
        error = await client.expect_error_and_close(reason, POLICY_VIOLATION)
        assert (error.get("message") or "").startswith("authentication failed")
    finally:
        await client.close()


async def test_a_user_cannot_subscribe_to_another_users_messages(server: TidingsServer) -> None:
    client = await StompWs.open(server.ws_url())
    try:
        await client.connect(Authorization=f"Bearer {token('42')}")
        await client.send_frame("SUBSCRIBE", {"id": "1", "destination": "/user/43/message"})
        await client.expect_error_and_close("may not subscribe", POLICY_VIOLATION)
    finally:
        await client.close()


# --- issue 14 item 4 ------------------------------------------------------------------------
async def test_a_token_in_the_url_is_refused_by_default(server: TidingsServer) -> None:
    """URLs reach proxy and browser logs: only --allow-query-token takes a token there."""
    url = f"{server.ws_url()}?access_token={token()}"
    await refused(server, {}, "tokens in the URL are not accepted", url)
    # One sent on CONNECT still works when the URL carries another.
    connected = await connects(server, {"Authorization": f"Bearer {token('7')}"}, url)
    assert connected.get("user-name") == "7"


async def test_a_token_in_a_sockjs_url_is_refused_by_default(server: TidingsServer) -> None:
    url = f"{server.ws_url()}/000/jwtquery/websocket?access_token={token()}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        assert (await ws.receive_str(timeout=5)) == "o"
        await ws.send_str('["CONNECT\\naccept-version:1.2\\n\\n\\u0000"]')
        frame = await ws.receive_str(timeout=5)
        assert frame.startswith('a["ERROR') and "tokens in the URL are not accepted" in frame


async def test_exp_is_required_unless_allowed(tidings_server: StartServer) -> None:
    server = await tidings_server(*JWT, env=JWT_ENV)
    no_exp = signed({"sub": "42"})
    await refused(server, {"Authorization": f"Bearer {no_exp}"}, "token has no exp claim")
    relaxed = await tidings_server(*JWT, "--jwt-allow-no-exp", env=JWT_ENV)
    connected = await connects(relaxed, {"Authorization": f"Bearer {no_exp}"})
    assert connected.get("user-name") == "42"


async def test_audience_and_issuer_are_checked_when_set(tidings_server: StartServer) -> None:
    server = await tidings_server(
        *JWT, "--jwt-audience", "tidings", "--jwt-issuer", "https://idp.example", env=JWT_ENV
    )
    exp = int(time.time()) + 300
    good = {"sub": "42", "exp": exp, "aud": "tidings", "iss": "https://idp.example"}
    assert (await connects(server, {"Authorization": f"Bearer {signed(good)}"})).get(
        "user-name"
    ) == "42"
    for claims, reason in [
        ({**good, "aud": "another-api"}, "token audience not accepted"),
        ({**good, "iss": "https://evil.example"}, "token issuer not accepted"),
        ({"sub": "42", "exp": exp, "iss": "https://idp.example"}, "token has no aud claim"),
        ({"sub": "42", "exp": exp, "aud": "tidings"}, "token has no iss claim"),
    ]:
        await refused(server, {"Authorization": f"Bearer {signed(claims)}"}, reason)


@pytest.mark.parametrize(
    "sub",
    ["42\r\nforged:yes", "42\n", "4\x002", "x" * 201, "a/b"],
    ids=["crlf", "lf", "nul", "too-long", "slash"],
)
async def test_a_sub_that_is_not_a_user_id_is_refused(server: TidingsServer, sub: str) -> None:
    """Was close 1011 and a traceback for CR, LF and NUL; now a clear ERROR and 1008."""
    bad = token(sub)
    await refused(server, {"Authorization": f"Bearer {bad}"}, "token sub is not a valid user id")
    assert "Traceback" not in server.log_path.read_text()


async def next_non_message(client: StompWs, received: list[str]) -> Frame:
    """The first frame that is not a MESSAGE; the MESSAGEs' tidings-ids go to ``received``."""
    while True:
        frame = await client.next(timeout=10)
        if frame == HEARTBEAT:
            continue
        assert isinstance(frame, Frame), frame
        if frame.command != "MESSAGE":
            return frame
        received.append(frame.get("tidings-id") or "")


async def test_a_session_ends_when_its_token_expires_and_resumes_losslessly(
    server: TidingsServer,
) -> None:
    """At exp: ERROR token expired, close 1008, no MESSAGE after it. The client reconnects
    with a fresh token, resumes after the last tidings-id it got, and misses nothing."""
    exp = int(time.time()) + 2  # 1-2 s from now: exp is whole seconds
    published: list[str] = []
    received: list[str] = []
    async with aiohttp.ClientSession() as http:

        async def publish(body: str) -> None:
            url = f"{server.http_url}/api/v1/users/42/messages"
            async with http.post(url, json={"body": body}) as reply:
                assert reply.status == 202, await reply.text()
                published.append((await reply.json())["id"])

        stop = asyncio.Event()

        async def publish_steadily() -> None:
            n = 0
            while not stop.is_set():  # stopped between publishes: each one's id is known
                await publish(f"m{n}")
                n += 1
                await asyncio.sleep(0.02)

        client = await StompWs.open(server.ws_url())
        try:
            await client.connect(Authorization=f"Bearer {signed({'sub': '42', 'exp': exp})}")
            await client.subscribe("s", "/user/42/message")
            publisher = asyncio.create_task(publish_steadily())
            try:
                async with asyncio.timeout(exp - time.time() + 5):  # a session that never ends
                    frame = await next_non_message(client, received)
                ended_at = time.time()
                assert frame.command == "ERROR", frame
                assert frame.get("message") == "token expired"
                assert ended_at >= exp
                closed = await client.next()  # nothing, not even a MESSAGE, after the ERROR
                assert isinstance(closed, Closed) and closed.code == POLICY_VIOLATION, closed
            finally:
                stop.set()
                await publisher
        finally:
            await client.close()
        assert received, "messages flowed before expiry"
        await publish("after")  # sent while the client was away
        resumed = await StompWs.open(server.ws_url())
        try:
            await resumed.connect(Authorization=f"Bearer {token()}")
            await resumed.subscribe(
                "s", "/user/42/message", **{"tidings-resume-after": received[-1]}
            )
            while len(received) < len(published):
                message = await resumed.expect("MESSAGE", subscription="s")
                received.append(message.get("tidings-id") or "")
        finally:
            await resumed.close()
    assert received == published  # every message once, in order
