"""``tidings serve`` as an operator meets it: real processes, their exit codes, stderr and logs.

Option rules without a process are in tests/test_options.py; these run ``python -m
tidings`` and look at what it prints, how it exits, and what a real server logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest

from tidings import __version__

from .conftest import StartServer, TidingsServer, http_status, worker_health, worker_pids
from .ports import free_port
from .redis_fixture import RedisServer
from .stompws import StompWs

JWT_SECRET = "a-test-secret-that-is-long-enough-for-hs256"
API_KEY = "api-key-that-must-never-be-logged"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m tidings *args`` to its end, with ``env`` added to a clean environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
    )


async def wait_for_log(server: TidingsServer, text: str, within: float = 5.0) -> str:
    """The server's log once it holds ``text`` (the log is a file the process writes)."""
    deadline = time.monotonic() + within
    while text not in (log := server.log()):
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not logged within {within}s; log tail:\n{server.log_tail()}")
        await asyncio.sleep(0.02)
    return log


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag: str) -> None:
    result = run_cli(flag)
    assert result.returncode == 0
    assert result.stdout.strip() == f"tidings {__version__}"


@pytest.mark.parametrize(
    ("args", "env", "error"),
    [
        (["--port", "99999"], {}, "argument --port: must be between 1 and 65535, got 99999"),
        (["--log-level", "loud"], {}, "argument --log-level: expected one of debug, info,"),
        (["--max-frame-bytes", "0"], {}, "argument --max-frame-bytes: must be at least 1, got 0"),
        (["--broker", "http://h"], {}, "argument --broker: expected a memory://, redis://"),
        (["--broker", "amqps://u:p@h/v"], {}, "--broker amqp:// routes messages between nodes"),
        (["--broker", "amqp://h/?exchange="], {}, "argument --broker: ?exchange= must name"),
        ([], {"TIDINGS_APIKEY": "k"}, "unknown environment variable TIDINGS_APIKEY (did you"),
        ([], {"TIDINGS_HEAD_TIMEOUT": "-1"}, "TIDINGS_HEAD_TIMEOUT: must be a positive number"),
        (
            ["--inbox-idempotency-ttl", "0"],
            {},
            "argument --inbox-idempotency-ttl: must be a positive number, got 0.0",
        ),
        (
            [],
            {"TIDINGS_INBOX_IDEMPOTENCY_TTL": "a day"},
            "TIDINGS_INBOX_IDEMPOTENCY_TTL: expected a number, got 'a day'",
        ),
        (["--config", "/nonexistent/tidings.toml"], {}, "cannot read config file"),
        (
            ["--sockjs-test-services", "--auth", "jwt", "--jwt-secret", JWT_SECRET],
            {},
            "--sockjs-test-services serves echo endpoints that no token guards",
        ),
        (
            ["--endpoint", "/echo"],
            {"TIDINGS_SOCKJS_TEST_SERVICES": "true"},
            "--sockjs-test-services needs /echo for itself",
        ),
    ],
    ids=[
        *("port", "log-level", "size", "broker", "amqp-without-inbox", "amqp-exchange"),
        "env-typo",
        *("env-timeout", "idempotency-ttl", "env-idempotency-ttl", "config-missing"),
        *("test-services-with-jwt", "test-services-endpoint"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    args: list[str], env: dict[str, str], error: str
) -> None:
    result = run_cli("serve", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "usage: tidings serve [--config FILE] [OPTION ...]"
    assert len(lines) == 2 and lines[1].startswith("tidings serve: error: ")
    assert error in lines[1]


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (
            ["--api-key", "my key"],
            {},
            "--api-key: this key can never authenticate: it has "
            "characters a bearer token cannot carry: ' '",
        ),
        (
            [],
            {"TIDINGS_API_KEY": "k\u00e9y,1"},
            "TIDINGS_API_KEY: this key can never "
            "authenticate: it has characters a bearer token cannot carry: ',' '\u00e9'",
        ),
        (["--api-key", "a=b"], {}, "'='"),
        (["--trusted-proxy", "proxy.example"], {}, "--trusted-proxy: expected an address or CIDR"),
        (["--trusted-proxy", "none", "--trusted-proxy", "::1"], {}, "'none' trusts no proxy"),
    ],
    ids=["space", "env-comma-accent", "inner-equals", "proxy-name", "none-and-more"],
)
def test_an_api_key_that_can_never_authenticate_stops_the_start_with_exit_2(
    args: list[str], env: dict[str, str], named: str
) -> None:
    """RFC 6750 §2.1's b64token set: a key outside it can never arrive as a bearer token."""
    result = run_cli("serve", "--port", str(free_port()), *args, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("tidings serve: error: "), lines
    assert named in lines[1]


def test_config_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('port = "9908"\n')
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}: port: expected an integer, got a string ('9908')" in result.stderr


def test_a_busy_port_is_one_line_naming_it_and_exit_1() -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = run_cli("serve", "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr
    assert "listening" not in result.stderr and "Running on" not in result.stdout


async def test_startup_line_says_what_runs_and_hides_secrets(
    tidings_server: StartServer,
) -> None:
    server = await tidings_server(
        "--auth", "jwt", "--api-key", API_KEY, env={"TIDINGS_JWT_SECRET": JWT_SECRET}
    )
    log = await wait_for_log(server, "listening on")
    startup = [line for line in log.splitlines() if "listening on" in line]
    assert len(startup) == 1
    assert " INFO tidings: " in startup[0]
    for part in (
        f"tidings {__version__} node ",
        f"listening on http://127.0.0.1:{server.port}",
        "broker memory://",
        "auth jwt (HS256)",
        "API key set",
        "trusted proxies 127.0.0.0/8,::1/128",
        "endpoints /publicServer,/privateServer,/stomp",
        "workers 1",
    ):
        assert part in startup[0]
    assert API_KEY not in log and JWT_SECRET not in log
    assert "======== Running on" not in log


async def test_config_file_environment_and_flag_precedence_end_to_end(
    tidings_server: StartServer, tmp_path: Path
) -> None:
    """The API key from the file, then the environment's over it, then the flag's."""
    path = tmp_path / "tidings.toml"
    path.write_text('api-key = "from-file"\nsend_allow = ["/app/**"]\n')

    async def accepted_keys(server: TidingsServer) -> set[str]:
        accepted = set()
        async with aiohttp.ClientSession() as http:
            for key in ("from-file", "from-env", "from-flag"):
                async with http.post(
                    f"{server.http_url}/api/v1/topics/t/messages",
                    json={"body": "x"},
                    headers={"Authorization": f"Bearer {key}"},
                ) as reply:
                    assert reply.status in (202, 401)
                    if reply.status == 202:
                        accepted.add(key)
        return accepted

    from_file = await tidings_server("--config", str(path))
    assert await accepted_keys(from_file) == {"from-file"}
    env = {"TIDINGS_CONFIG": str(path), "TIDINGS_API_KEY": "from-env"}
    from_env = await tidings_server(env=env)
    assert await accepted_keys(from_env) == {"from-env"}
    from_flag = await tidings_server("--api-key", "from-flag", env=env)
    assert await accepted_keys(from_flag) == {"from-flag"}


async def test_redis_down_at_start_serves_not_ready_then_recovers(
    tidings_server: StartServer, tmp_path: Path
) -> None:
    """The node starts, says the broker is unreachable, answers /readyz 503 and publishes
    503, and becomes ready by itself once Redis comes (docs/deploy.md)."""
    redis = RedisServer(tmp_path, ["--requirepass", "s3cret-pass"])
    url = f"redis://:s3cret-pass@127.0.0.1:{redis.port}/0"
    server = await tidings_server("--broker", url)
    try:
        log = await wait_for_log(server, "listening on")
        assert f"broker redis://:***@127.0.0.1:{redis.port}/0 (unreachable: retrying" in log
        assert "redis unreachable" in log
        assert "Traceback" not in log and "s3cret-pass" not in log
        assert await http_status(server.port, "/readyz") == 503
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{server.http_url}/api/v1/users/1/messages", json={"body": "x"}) as reply,
        ):
            assert reply.status == 503
        await redis.start()
        deadline = time.monotonic() + 15
        while await http_status(server.port, "/readyz") != 200:
            assert time.monotonic() < deadline, f"not ready after Redis came:\n{server.log()}"
            await asyncio.sleep(0.05)
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{server.http_url}/api/v1/users/1/messages", json={"body": "x"}) as reply,
        ):
            assert reply.status == 202
        assert "Traceback" not in server.log()
    finally:
        await server.stop()
        await redis.stop()


async def test_json_logs_with_connect_and_disconnect_at_debug(
    tidings_server: StartServer,
) -> None:
    server = await tidings_server("--log-format", "json", "--log-level", "debug")
    client = await StompWs.open(server.ws_url())
    try:
        connected = await client.connect(login="42")
        session = connected.get("session")
        await client.send_frame("DISCONNECT", {"receipt": "bye"})
        await client.expect("RECEIPT")
    finally:
        await client.close()
    await wait_for_log(server, f"session {session} disconnected")
    assert await server.stop() == 0
    entries: list[dict[str, Any]] = [orjson.loads(line) for line in server.log().splitlines()]
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry)
    by_message = {entry["message"].split(":")[0]: entry for entry in entries}
    up = by_message[f"session {session} connected"]
    assert up["level"] == "debug" and up["user"] == "42" and up["session"] == session
    down = by_message[f"session {session} disconnected"]
    assert down["level"] == "debug" and "client disconnected" in down["message"]
    startup = next(entry for entry in entries if "listening on" in entry["message"])
    assert startup["level"] == "info" and startup["broker"] == "memory://"
    assert startup["endpoints"] == ["/publicServer", "/privateServer", "/stomp"]
    assert startup["api_key_set"] is False and startup["workers"] == 1
    messages = [entry["message"] for entry in entries]
    assert any(m.startswith("node ") and " draining: " in m for m in messages)
    assert messages[-1].endswith(" stopped")


async def test_a_flood_of_bad_tokens_is_one_warning_line(tidings_server: StartServer) -> None:
    server = await tidings_server(
        "--auth", "jwt", "--api-key", API_KEY, env={"TIDINGS_JWT_SECRET": JWT_SECRET}
    )
    bad = jwt.encode({"sub": "42"}, "another-secret-that-is-also-long-enough!", "HS256")
    started = time.monotonic()
    attempts = 40
    for _ in range(attempts):
        client = await StompWs.open(server.ws_url())
        try:
            await client.send_frame(
                "CONNECT", {"accept-version": "1.2", "Authorization": f"Bearer {bad}"}
            )
            await client.expect_error_and_close("invalid token signature", 1008)
        finally:
            await client.close()
    async with aiohttp.ClientSession() as http:
        for _ in range(attempts):
            async with http.post(
                f"{server.http_url}/api/v1/topics/t/messages",
                json={"body": "x"},
                headers={"Authorization": "Bearer wrong"},
            ) as reply:
                assert reply.status == 401
    windows = 1 + int((time.monotonic() - started) // 10)  # one line per 10 s window at most
    log = await wait_for_log(server, "publish refused: wrong API key")
    auth_lines = [line for line in log.splitlines() if "authentication failed" in line]
    refused = [line for line in log.splitlines() if "publish refused" in line]
    assert 1 <= len(auth_lines) <= windows, auth_lines
    assert 1 <= len(refused) <= windows, refused
    assert " WARNING tidings.server.session: " in auth_lines[0]
    assert "invalid token signature" in auth_lines[0]
    assert bad not in log and API_KEY not in log


def test_workers_that_cannot_start_stop_the_others_and_exit_1(redis_server: Any) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = run_cli(
            "serve", "--port", str(port), "--workers", "2", "--broker", redis_server.url
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr
    assert "Traceback" not in result.stderr and "listening on" not in result.stderr


# -- supervised workers (issue 13, item 5; src/tidings/workers.py) ---------------------------


async def test_a_killed_worker_is_logged_and_replaced_under_the_same_node_id(
    tidings_server: StartServer, redis_server: RedisServer
) -> None:
    server = await tidings_server("--workers", "2", "--broker", redis_server.url, "--node-id", "K")
    pids = await worker_pids(server, 2)
    os.kill(pids["K-w1"], signal.SIGKILL)
    died = f"worker K-w1 (pid {pids['K-w1']}) died (signal 9 (SIGKILL)); 1 of 2 workers still serve"
    await wait_for_log(server, died, within=10)
    replaced = await worker_pids(server, 2, not_pids=frozenset({pids["K-w1"]}))
    assert replaced["K-w0"] == pids["K-w0"]  # the other worker went on
    assert replaced["K-w1"] != pids["K-w1"]
    log = await wait_for_log(server, "starting worker K-w1 again")
    assert log.count("node K-w1 listening on") == 2 and log.count("node K-w0 listening on") == 1

    # Clients reach the new worker and receive what is published through either worker.
    clients: list[StompWs] = []
    try:
        async with asyncio.timeout(20):
            while True:
                client = await StompWs.open(server.ws_url())
                clients.append(client)
                user = f"u{len(clients)}"
                connected = await client.connect(login=user)
                if "(node K-w1)" in (connected.get("server") or ""):
                    break
        await client.subscribe("s", f"/user/{user}/message")
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{server.http_url}/api/v1/users/{user}/messages", json={"body": "after"}
            ) as reply,
        ):
            assert reply.status == 202
        message = await client.expect("MESSAGE", timeout=10)
        assert b"after" in message.body
    finally:
        for each in clients:
            await each.close()
    assert server.running
    assert await server.stop() == 0
    assert "Traceback" not in server.log()


async def test_workers_that_keep_dying_stop_the_server_with_one_clear_line(
    tidings_server: StartServer, redis_server: RedisServer
) -> None:
    server = await tidings_server("--workers", "2", "--broker", redis_server.url, "--node-id", "C")
    killed: set[int] = set()
    async with asyncio.timeout(60):  # every worker that answers is killed, old or new
        while server.running:
            health = await worker_health(server)
            if health is None or health[1] in killed:
                await asyncio.sleep(0.05)  # a poll interval
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(health[1], signal.SIGKILL)
            killed.add(health[1])
        code = await server.proc.wait()
    assert code == 1
    log = server.log()
    crash = [line for line in log.splitlines() if "workers keep dying" in line]
    assert len(crash) == 1, log
    assert re.search(
        r"ERROR tidings: workers keep dying: 5 deaths within 60 s \(the last: C-w\d, "
        r"signal 9 \(SIGKILL\)\); stopping the other \d and exiting$",
        crash[0],
    ), crash
    assert log.count("starting it again in") == 4  # the 5th death is not replaced
    # At most 4 starts: a restart still in its backoff at the 5th death is cancelled.
    assert 3 <= log.count("starting worker C-w") <= 4
    after = log[log.index(crash[0]) :]
    assert "starting worker" not in after  # (one that was starting may still log its start)
    assert len(killed) >= 5
    assert "Traceback" not in log


async def test_sigterm_drains_every_worker_and_exits_0(
    tidings_server: StartServer, redis_server: RedisServer
) -> None:
    server = await tidings_server("--workers", "2", "--broker", redis_server.url, "--node-id", "D")
    pids = await worker_pids(server, 2)
    client = await StompWs.open(server.ws_url())
    await client.connect(login="u1")
    server.proc.send_signal(signal.SIGTERM)
    error = await client.expect("ERROR", timeout=10)
    assert error.get("message") == "server shutting down"
    await client.close()
    assert await asyncio.wait_for(server.proc.wait(), 15) == 0
    log = server.log()
    for node in pids:
        assert f"node {node} draining" in log and f"node {node} stopped" in log
    assert log.count("listening on") == 2
    assert "died" not in log and "starting worker" not in log and "Traceback" not in log
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_worker_that_dies_during_shutdown_is_not_replaced(
    tidings_server: StartServer, redis_server: RedisServer
) -> None:
    server = await tidings_server("--workers", "2", "--broker", redis_server.url, "--node-id", "S")
    pids = await worker_pids(server, 2)
    os.kill(pids["S-w1"], signal.SIGSTOP)  # it cannot drain: SIGTERM waits for it
    server.proc.send_signal(signal.SIGTERM)
    await wait_for_log(server, "node S-w0 stopped", within=10)  # the parent is shutting down
    os.kill(pids["S-w1"], signal.SIGKILL)
    assert await asyncio.wait_for(server.proc.wait(), 15) == 1  # not every worker was clean
    log = server.log()
    assert f"worker S-w1 (pid {pids['S-w1']}) ended during shutdown (signal 9 (SIGKILL))" in log
    assert "starting worker" not in log and log.count("listening on") == 2
    assert "Traceback" not in log
