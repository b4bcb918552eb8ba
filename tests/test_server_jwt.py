"""``--auth jwt`` end to end: who may connect, and what they may subscribe to."""

from __future__ import annotations

import time

import jwt
import pytest

from .conftest import StartServer, TidingsServer
from .stompws import StompWs

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
POLICY_VIOLATION = 1008


def token(sub: str = "42", *, secret: str = SECRET, expires_in: float = 300) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + expires_in)}, secret, "HS256")


@pytest.fixture
async def server(tidings_server: StartServer) -> TidingsServer:
    return await tidings_server("--auth", "jwt", env={"TIDINGS_JWT_SECRET": SECRET})


@pytest.mark.parametrize("carrier", ["authorization", "passcode", "query"])
async def test_a_valid_token_connects_and_names_the_user(
    server: TidingsServer, carrier: str
) -> None:
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
