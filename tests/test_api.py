"""The publish API over real HTTP: Spring's contract, v1, errors, health, OpenAPI."""

from __future__ import annotations

import socket
import subprocess

import aiohttp
import pytest

from tidings.server.app import VENDOR_DIR

from .conftest import StartServer, TidingsServer, free_port
from .stompws import StompWs


@pytest.fixture
async def server(tidings_server: StartServer) -> TidingsServer:
    return await tidings_server("--max-message-bytes", "1024")


async def post(url: str, data: bytes | str, **headers: str) -> tuple[int, object]:
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=headers) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


async def test_push_to_one_test_keeps_springs_contract(server: TidingsServer) -> None:
    client = await StompWs.open(server.ws_url("/privateServer"))
    try:
        await client.connect()
        await client.subscribe("s", "/user/42/message")
        status, body = await post(
            f"{server.http_url}/pushToOneTest",
            '{"code":"1","form":"admin","to":"42","content":"hello 42"}',
            **{"Content-Type": "application/json"},
        )
        assert (status, body) == (200, "发送成功")
        message = await client.expect("MESSAGE", destination="/user/42/message")
        assert message.body == b"hello 42"
        assert message.get("content-type") == "text/plain;charset=UTF-8"
    finally:
        await client.close()


BAD_REQUESTS = [
    ("/pushToOneTest", "{not json", 400, "invalid_json"),
    ("/pushToOneTest", "[1, 2]", 400, "invalid_json"),
    ("/pushToOneTest", '{"content": "x"}', 400, "invalid_field"),
    ("/pushToOneTest", '{"to": "", "content": "x"}', 400, "invalid_field"),
    ("/pushToOneTest", '{"to": "42"}', 400, "missing_field"),
    ("/api/v1/users/42/messages", "", 400, "invalid_json"),
    ("/api/v1/users/42/messages", '{"destination": "/message"}', 400, "missing_field"),
    ("/api/v1/users/42/messages", '{"body": "x", "destination": "message"}', 400, "invalid_field"),
    ("/api/v1/users/42/messages", '{"body": "x", "destination": 5}', 400, "invalid_field"),
    ("/api/v1/users/42/messages", '{"body": "x", "headers": []}', 400, "invalid_field"),
    (
        "/api/v1/users/42/messages",
        '{"body": "x", "headers": {"destination": "/x"}}',
        400,
        "invalid_field",
    ),
    ("/api/v1/users/42/messages", '{"body": "x", "headers": {"a": "b\\nc"}}', 400, "invalid_field"),
    ("/api/v1/users/42/messages", '{"body": "x", "headers": {"a b": "c"}}', 400, "invalid_field"),
    ("/api/v1/users/42/messages", '{"body": "' + "x" * 2000 + '"}', 413, "too_large"),
    ("/api/v1/topics/public/messages", '{"bodie": 1}', 400, "missing_field"),
    ("/api/v1/topics/public/messages", "x" * 300_000, 413, "too_large"),
]


@pytest.mark.parametrize(("path", "data", "status", "code"), BAD_REQUESTS)
async def test_bad_requests_get_a_clear_json_error(
    server: TidingsServer, path: str, data: str, status: int, code: str
) -> None:
    got_status, body = await post(server.http_url + path, data)
    assert got_status == status, body
    assert isinstance(body, dict) and body["error"] == code and body["message"], body


async def test_bad_requests_do_not_disturb_delivery(server: TidingsServer) -> None:
    client = await StompWs.open(server.ws_url())
    try:
        await client.connect()
        await client.subscribe("s", "/user/42/message")
        for path, data, _, _ in BAD_REQUESTS:
            await post(server.http_url + path, data)
        status, body = await post(f"{server.http_url}/api/v1/users/42/messages", '{"body":"ok"}')
        assert status == 202 and isinstance(body, dict) and body["id"]
        assert (await client.expect("MESSAGE")).body == b"ok"
    finally:
        await client.close()


async def test_api_key_is_required_when_configured(tidings_server: StartServer) -> None:
    server = await tidings_server("--api-key", "s3cret-key")
    url = f"{server.http_url}/api/v1/topics/public/messages"
    assert (await post(url, '{"body": 1}'))[0] == 401
    assert (await post(url, '{"body": 1}', Authorization="Bearer wrong"))[0] == 401
    status, body = await post(url, '{"body": 1}', Authorization="Bearer s3cret-key")
    assert status == 202, body


def non_loopback_address() -> str:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout
    addresses = [a for a in out.split() if ":" not in a and not a.startswith("127.")]
    assert addresses, "this test needs a non-loopback IPv4 address on the machine"
    return addresses[0]


async def test_without_api_key_only_loopback_may_publish(tidings_server: StartServer) -> None:
    address = non_loopback_address()
    port = free_port()
    await tidings_server("--host", "0.0.0.0", port=port)
    with socket.create_connection((address, port)):
        pass  # reachable from outside loopback
    status, body = await post(f"http://{address}:{port}/api/v1/topics/t/messages", '{"body":1}')
    assert status == 403 and isinstance(body, dict) and body["error"] == "forbidden"
    status, _ = await post(f"http://127.0.0.1:{port}/api/v1/topics/t/messages", '{"body":1}')
    assert status == 202


async def test_health_ready_and_openapi(server: TidingsServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}/healthz") as r:
            health = await r.json()
            assert r.status == 200 and health["status"] == "ok"
            assert health["pid"] == server.proc.pid and health["node"]
        async with http.get(f"{server.http_url}/readyz") as r:
            assert r.status == 200 and (await r.json()) == {"status": "ready"}
        async with http.get(f"{server.http_url}/api/v1/openapi.json") as r:
            assert r.status == 200
            document = await r.json()
        # Every documented operation exists on the server (no 404/405).
        for path, operations in document["paths"].items():
            concrete = path.replace("{user}", "42").replace("{topic}", "public")
            concrete = concrete.replace("{name}", "sockjs.min.js")
            for method in operations:
                async with http.request(method, server.http_url + concrete, data="{}") as r:
                    assert r.status not in (404, 405), (method, path, r.status)


async def test_demo_page_and_its_client_libraries(server: TidingsServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}/") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert 'from "/tidings.js"' in await r.text()
        # The page's SDK, from the package; it loads the vendored bundles below.
        async with http.get(f"{server.http_url}/tidings.js") as r:
            assert r.status == 200 and r.content_type == "text/javascript"
            sdk = await r.read()
            assert sdk == (VENDOR_DIR.parent / "tidings.js").read_bytes()
            assert b"/vendor/stomp.umd.min.js" in sdk and b"/vendor/sockjs.min.js" in sdk
        # Served from the package (static/vendor/), byte for byte.
        for name in ("stomp.umd.min.js", "sockjs.min.js"):
            async with http.get(f"{server.http_url}/vendor/{name}") as r:
                assert r.status == 200
                assert r.content_type == "text/javascript"
                assert await r.read() == (VENDOR_DIR / name).read_bytes()
        async with http.get(f"{server.http_url}/favicon.ico") as r:
            assert r.status == 200 and r.content_type == "image/x-icon"
            icon = await r.read()
            assert icon[:4] == b"\0\0\1\0" and icon[22:26] == b"\x89PNG"  # ICO holding a PNG
        for missing in ("nope.js", "manifest.json", "..%2Fvendor%2Fsockjs.min.js"):
            async with http.get(f"{server.http_url}/vendor/{missing}") as r:
                assert r.status == 404
                assert (await r.json())["error"] == "not_found"
