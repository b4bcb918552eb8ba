"""The publish connection (tidings/inbox/resp.py), each test on its own redis-server.

Publishes go through ``tidings.publisher``, which shares the node's ``InboxWriter``.
Faults are made on the real server: a key of the wrong type (an error reply for one
call), ``SCRIPT FLUSH`` (NOSCRIPT), ``CLIENT PAUSE WRITE`` (EVALSHA waits unanswered)
with ``CLIENT KILL`` or a short socket timeout.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import hiredis
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from tidings.errors import BrokerUnavailable
from tidings.inbox.resp import ScriptConnection
from tidings.message import Message
from tidings.publisher import Publisher
from tidings.redis_connect import MORE, reply_error

from .ports import free_port
from .redis_fixture import RedisServer

PASSWORD = "s3cret"


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = redis_server.client()
    yield client
    await client.aclose()


def connection_of(pub: Publisher) -> ScriptConnection:
    return pub._writer._publisher


async def stored(client: Redis, user: str) -> list[tuple[str, bytes]]:
    """(id, body) of every message in ``user``'s inbox, oldest first."""
    entries = await client.xrange(f"tidings:inbox:u:{user}")
    return [(i.decode(), Message.decode(fields[b"m"]).body) for i, fields in entries]


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` until true (5 s at most)."""
    for _ in range(500):
        if await condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"not within 5 s: {what}")


async def test_the_publishes_of_one_loop_turn_go_out_in_one_write(
    redis_server: RedisServer, admin: Redis
) -> None:
    async with Publisher.from_url(redis_server.url) as pub:
        conn = connection_of(pub)
        await pub.to_user("1", "connects")
        before = conn.writes
        ids = await asyncio.gather(*(pub.to_user("7", f"m{n}") for n in range(100)))
        assert conn.writes == before + 1
        # each caller got the id of its own message, in the order of the calls
        assert await stored(admin, "7") == [(i, f"m{n}".encode()) for n, i in enumerate(ids)]

        # at most 128 calls await their replies: 300 at once need three writes or more
        before = conn.writes
        ids = await asyncio.gather(*(pub.to_user("8", f"m{n}") for n in range(300)))
        assert conn.writes >= before + 3
        assert await stored(admin, "8") == [(i, f"m{n}".encode()) for n, i in enumerate(ids)]


async def test_an_error_reply_fails_only_its_own_publish(
    redis_server: RedisServer, admin: Redis
) -> None:
    await admin.hset("tidings:idem:3:u:7:bad", "not", "a string")  # GET of it fails
    async with Publisher.from_url(redis_server.url) as pub:
        first, bad, last = await asyncio.gather(
            pub.to_user("7", "first"),
            pub.to_user("7", "bad", idempotency_key="bad"),
            pub.to_user("7", "last"),
            return_exceptions=True,
        )
    assert isinstance(bad, BrokerUnavailable)
    assert str(bad).startswith("redis unavailable: WRONGTYPE Operation against a key")
    assert await stored(admin, "7") == [(first, b"first"), (last, b"last")]


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("NOSCRIPT No matching script. Please use EVAL.", NoScriptError),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", ResponseError),
        ("ERR value is not an integer or out of range", ResponseError),
    ],
    ids=["NOSCRIPT", "WRONGTYPE", "ERR"],
)
def test_reply_error_reads_an_error_reply_keeping_its_text(
    reply: str, kind: type[ResponseError]
) -> None:
    reader = hiredis.Reader(replyError=reply_error, notEnoughData=MORE)
    reader.feed(f"-{reply}\r\n".encode())
    error = reader.gets()
    assert type(error) is kind
    assert str(error) == reply
    assert reader.gets() is MORE


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ("return redis.call('GET', KEYS[1])", "WRONGTYPE"),
        ("return redis.call('INCR', KEYS[1])", "ERR"),
    ],
    ids=["WRONGTYPE", "ERR"],
)
async def test_error_replies_keep_the_text_redis_sent(admin: Redis, script: str, code: str) -> None:
    """The message is Redis' reply whole: redis-py's text, with the error code redis-py
    drops for the codes it maps to classes of its own (ERR)."""
    await admin.hset("hash", "field", "value")
    await admin.set("text", "not a number")
    key = "hash" if "GET" in script else "text"
    with pytest.raises(ResponseError) as by_redis_py:
        await admin.register_script(script)(keys=[key])
    conn = ScriptConnection(admin, script)
    try:
        with pytest.raises(BrokerUnavailable) as by_us:
            await conn.call([key], [])
    finally:
        await conn.close()
    text = str(by_redis_py.value).removeprefix(f"{code} ")
    assert str(by_us.value) == f"redis unavailable: {code} {text}"


async def test_after_a_script_flush_the_publishes_load_it_and_succeed(
    redis_server: RedisServer, admin: Redis
) -> None:
    async with Publisher.from_url(redis_server.url) as pub:
        first = await pub.to_user("7", "first")
        await admin.script_flush()
        ids = await asyncio.gather(*(pub.to_user("7", f"m{n}") for n in range(50)))
    expected = [(first, b"first"), *[(i, f"m{n}".encode()) for n, i in enumerate(ids)]]
    assert await stored(admin, "7") == expected


async def paused_publish_client(admin: Redis) -> int:
    """The id of the client whose EVALSHA waits for CLIENT UNPAUSE (flag ``b``)."""
    found: list[int] = []

    async def waiting() -> bool:
        clients = await admin.client_list()
        found[:] = [int(c["id"]) for c in clients if c["cmd"] == "evalsha" and "b" in c["flags"]]
        return bool(found)

    await until(waiting, "a publish waiting in redis")
    return found[0]


async def test_a_killed_connection_fails_its_pending_publishes_and_the_next_reconnects(
    redis_server: RedisServer, admin: Redis
) -> None:
    async with Publisher.from_url(redis_server.url) as pub:
        await pub.to_user("7", "before")
        await admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        try:
            calls = [asyncio.ensure_future(pub.to_user("7", f"lost {n}")) for n in range(20)]
            await admin.client_kill_filter(_id=await paused_publish_client(admin))
            for call in calls:
                with pytest.raises(BrokerUnavailable, match="redis unavailable: connection lost"):
                    await call
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
        after = await pub.to_user("7", "after")
    # killed before they ran: nothing of them is stored (at least once: it could have been)
    assert [body for _, body in await stored(admin, "7")] == [b"before", b"after"]
    assert (await stored(admin, "7"))[1][0] == after


async def test_no_reply_within_the_socket_timeout_fails_pending_publishes(
    redis_server: RedisServer, admin: Redis
) -> None:
    client = Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=0.2)
    pub = Publisher(client)
    try:
        await pub.to_user("7", "before")
        await admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        try:
            with pytest.raises(BrokerUnavailable, match=r"no reply within 0\.2s"):
                await pub.to_user("7", "unanswered")
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
        assert await pub.to_user("7", "after")
    finally:
        await pub.aclose()
        await client.aclose()


async def test_closing_the_publisher_closes_its_connection(
    redis_server: RedisServer, admin: Redis
) -> None:
    async def publish_connections() -> int:
        clients = await admin.client_list()
        return sum(c["name"] == "tidings-publisher" and c["cmd"] == "evalsha" for c in clients)

    pub = Publisher.from_url(redis_server.url)
    await pub.start()
    await pub.to_user("7", "hi")
    assert await publish_connections() == 1
    await pub.aclose()
    await until(lambda: _is_zero(publish_connections()), "publish connection closed")


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def test_password_acl_user_and_db_from_the_url(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, ["--requirepass", PASSWORD])
    await server.start()
    admin = Redis(host="127.0.0.1", port=server.port, password=PASSWORD, db=3)
    try:
        async with Publisher.from_url(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/3") as pub:
            first = await pub.to_user("7", "hi")
        assert await stored(admin, "7") == [(first, b"hi")]

        await admin.acl_setuser(
            "pub", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all"]
        )
        async with Publisher.from_url(f"redis://pub:pw@127.0.0.1:{server.port}/3") as pub:
            second = await pub.to_user("7", "as pub")
        assert await stored(admin, "7") == [(first, b"hi"), (second, b"as pub")]
        await admin.select(0)  # type: ignore[attr-defined]
        assert await admin.keys("*") == []  # all of it went to db 3

        async with Publisher.from_url(f"redis://:wrong@127.0.0.1:{server.port}/3") as pub:
            with pytest.raises(BrokerUnavailable, match="invalid username-password pair"):
                await pub.to_user("7", "refused")
    finally:
        await admin.aclose()
        await server.stop()


async def test_a_client_on_a_unix_socket(tmp_path: Path) -> None:
    """Through the caller's own client: ``from_url("unix://...")`` is refused by redis-py
    (``command_client`` sets TCP keepalive, which its unix connections do not take)."""
    path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path, ["--unixsocket", str(path), "--unixsocketperm", "700"])
    await server.start()
    client = Redis(unix_socket_path=str(path), db=2)
    try:
        async with Publisher(client) as pub:
            first = await pub.to_user("7", "over a unix socket")
        assert await stored(client, "7") == [(first, b"over a unix socket")]
    finally:
        await client.aclose()
        await server.stop()


async def test_a_tls_url(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a certificate with")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_cert = await asyncio.create_subprocess_exec(
        *[openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"],
        *["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"],
        *["-addext", "subjectAltName=IP:127.0.0.1"],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await make_cert.wait() == 0
    tls_port = free_port()
    server = RedisServer(
        tmp_path,
        [
            *["--tls-port", str(tls_port), "--tls-auth-clients", "no"],
            *["--tls-cert-file", str(cert), "--tls-key-file", str(key)],
            *["--tls-ca-cert-file", str(cert)],
        ],
    )
    await server.start()  # also on its plain port, which tells when it is up
    admin = server.client()
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"
        async with Publisher.from_url(url) as pub:
            first = await pub.to_user("7", "over TLS")
        assert await stored(admin, "7") == [(first, b"over TLS")]
    finally:
        await admin.aclose()
        await server.stop()
