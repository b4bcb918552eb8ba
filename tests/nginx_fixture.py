"""A real nginx in front of Tidings nodes, configured from deploy/nginx.conf.

Example::

    async def test_through_nginx(tidings_server, nginx_proxy, js_client):
        node = await tidings_server()
        proxy = await nginx_proxy([node.port])
        client = await js_client("stompjs7", proxy.ws_url("/publicServer"))

The proxy runs the shipped deploy/nginx.conf with only what cannot work in a test swapped
out (see `render_config`): the upstream `server` lines point at the given ports, it listens
on a free 127.0.0.1 port, and its pid, logs and temp files live in a tmp dir, so it runs as
any user without touching /var. Its access log is one JSON object per request, including
`upstream_addr`, the node that served it.

This module must not import tests/conftest.py: conftest imports the fixture from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from .ports import free_port
from .processes import terminate

DEPLOY_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"
START_TIMEOUT = 10.0
STOP_GRACE = 5.0
POLL_INTERVAL = 0.02

# One JSON object per line; escape=json makes every value a valid JSON string.
ACCESS_LOG_FORMAT = (
    "log_format tidings_test escape=json '{"
    '"request":"$request",'
    '"uri":"$request_uri",'
    '"status":"$status",'
    '"upstream_addr":"$upstream_addr",'
    '"upstream_status":"$upstream_status",'
    '"x_forwarded_for":"$http_x_forwarded_for"'
    "}';"
)

_DROPPED = re.compile(r"(?m)^[ \t]*(?:user|pid|error_log)\b[^;]*;[^\n]*\n")
_ACCESS_LOG = re.compile(r"(?m)^([ \t]*access_log)[ \t]+\S+([^;]*;)")
_LISTEN = re.compile(r"(?m)^([ \t]*)listen\b[^;]*;[^\n]*\n")
_UPSTREAM = re.compile(r"(?ms)^([ \t]*upstream\s+\S+\s*\{)(.*?)(^[ \t]*\})")
_SERVER = re.compile(r"(?m)^([ \t]*)server\s+[^;\s]+([^;\n]*);[^\n]*\n")
_HTTP = re.compile(r"(?m)^http\s*\{[^\n]*\n")


def nginx_binary() -> str:
    """The nginx executable; fails (never skips) the test when it is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    if Path("/usr/sbin/nginx").is_file():
        return "/usr/sbin/nginx"
    pytest.fail("nginx missing: run ./run setup")


def _replace_all_with_one(
    pattern: re.Pattern[str], text: str, make: Callable[[re.Match[str]], str]
) -> str:
    """Replace the first match of `pattern` with make(match) and drop the other matches."""
    seen = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal seen
        seen += 1
        return make(match) if seen == 1 else ""

    result = pattern.sub(substitute, text)
    if not seen:
        raise ValueError(f"no line matches {pattern.pattern!r}")
    return result


def render_config(template: str, *, port: int, upstream_ports: Sequence[int], prefix: Path) -> str:
    """deploy/nginx.conf made runnable in a test; every proxy setting is kept as it is.

    Drops `user` (workers must be able to write `prefix`), `pid` and `error_log`, and adds
    those in `prefix`; keeps each `access_log` in its shipped format but writes it to
    `prefix`/shipped-access.log, and adds the JSON `access.log` the tests parse; replaces
    each `upstream` block's `server` lines with 127.0.0.1:<upstream_ports> (each with the
    parameters of the first shipped line, such as `max_fails=0`) and the
    `listen` lines with 127.0.0.1:<port>; puts the temp paths in `prefix`. Raises
    ValueError if the template lacks any of those parts.
    """
    if not upstream_ports:
        raise ValueError("need at least one upstream port")
    text = _DROPPED.sub("", template)
    text = _ACCESS_LOG.sub(
        lambda match: f"{match.group(1)} {prefix / 'shipped-access.log'}{match.group(2)}", text
    )
    text = _replace_all_with_one(
        _LISTEN, text, lambda match: f"{match.group(1)}listen 127.0.0.1:{port};\n"
    )

    def servers(first: re.Match[str]) -> str:
        # Each test node gets the first shipped line's parameters (max_fails=0 ...).
        indent, parameters = first.group(1), first.group(2)
        return "".join(f"{indent}server 127.0.0.1:{p}{parameters};\n" for p in upstream_ports)

    def upstream(match: re.Match[str]) -> str:
        body = _replace_all_with_one(_SERVER, match.group(2), servers)
        return match.group(1) + body + match.group(3)

    text, upstreams = _UPSTREAM.subn(upstream, text)
    if not upstreams:
        raise ValueError("no upstream block")

    http_settings = "".join(
        f"    {line}\n"
        for line in (
            ACCESS_LOG_FORMAT,
            f"access_log {prefix / 'access.log'} tidings_test;",
            f"client_body_temp_path {prefix / 'client_body_temp'};",
            f"proxy_temp_path {prefix / 'proxy_temp'};",
            f"fastcgi_temp_path {prefix / 'fastcgi_temp'};",
            f"uwsgi_temp_path {prefix / 'uwsgi_temp'};",
            f"scgi_temp_path {prefix / 'scgi_temp'};",
        )
    )
    text, found = _HTTP.subn(lambda match: match.group(0) + http_settings, text, count=1)
    if not found:
        raise ValueError("no 'http {' block")
    main_settings = f"pid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'} info;\n"
    return main_settings + text


class NginxProxy:
    """One nginx process started by the `nginx_proxy` fixture."""

    def __init__(
        self, proc: asyncio.subprocess.Process, port: int, prefix: Path, upstream_ports: list[int]
    ) -> None:
        self.proc = proc
        self.port = port
        self.prefix = prefix
        self.upstream_ports = upstream_ports
        self.http_url = f"http://127.0.0.1:{port}"
        self.config_path = prefix / "nginx.conf"

    def __repr__(self) -> str:
        return f"<NginxProxy pid={self.proc.pid} port={self.port} upstreams={self.upstream_ports}>"

    def ws_url(self, path: str = "/stomp") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def access_log(self) -> str:
        """The access log so far: one JSON object per finished request."""
        path = self.prefix / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def shipped_access_log(self) -> str:
        """What deploy/nginx.conf's own log format wrote so far."""
        path = self.prefix / "shipped-access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def requests(self) -> list[dict[str, Any]]:
        """The access log parsed: request, uri, status, upstream_addr, ... per request."""
        return [json.loads(line) for line in self.access_log().splitlines() if line.strip()]

    async def wait_for_requests(self, count: int, within: float = 5.0) -> list[dict[str, Any]]:
        """The parsed access log once it has `count` entries (nginx logs after responding)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(entries := self.requests()) < count:
            if loop.time() >= deadline:
                pytest.fail(f"{self!r}: {len(entries)} of {count} requests logged:\n{entries}")
            await asyncio.sleep(POLL_INTERVAL)
        return entries

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _output(self) -> str:
        path = self.prefix / "nginx.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def _describe(self, problem: str) -> str:
        tail = "\n".join(self.error_log().splitlines()[-30:])
        return f"{self!r}: {problem}\nnginx output:\n{self._output()}\nerror.log tail:\n{tail}"

    async def wait_listening(self, within: float = START_TIMEOUT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            if self.proc.returncode is not None:
                pytest.fail(self._describe(f"exited with {self.proc.returncode} on start"))
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
            if loop.time() >= deadline:
                pytest.fail(self._describe(f"port {self.port} not accepting after {within}s"))
            await asyncio.sleep(POLL_INTERVAL)

    async def stop(self, *, grace: float = STOP_GRACE) -> int:
        """SIGTERM (nginx's fast shutdown), SIGKILL after `grace` seconds; the exit code."""
        return await terminate(self.proc, grace)


StartNginx = Callable[[Sequence[int]], Awaitable[NginxProxy]]


@pytest.fixture
async def nginx_proxy(tmp_path: Path) -> AsyncIterator[StartNginx]:
    """Factory: `proxy = await nginx_proxy([node.port, ...])`, round robin over the nodes.

    Writes deploy/nginx.conf, made runnable by `render_config`, to a tmp dir, runs
    `nginx -p <tmp> -c <tmp>/nginx.conf -g 'daemon off; master_process off;'` and returns
    once its port accepts connections. Every proxy it started is stopped at teardown.
    """
    binary = nginx_binary()
    proxies: list[NginxProxy] = []

    async def start(upstream_ports: Sequence[int]) -> NginxProxy:
        prefix = tmp_path / f"nginx-{len(proxies)}"
        prefix.mkdir()
        port = free_port()
        try:
            config = render_config(
                DEPLOY_CONF.read_text(), port=port, upstream_ports=upstream_ports, prefix=prefix
            )
        except ValueError as exc:
            pytest.fail(f"{DEPLOY_CONF}: cannot adapt it for a test ({exc}); see render_config")
        (prefix / "nginx.conf").write_text(config)
        args = [binary, "-e", str(prefix / "error.log"), "-p", f"{prefix}/"]
        args += ["-c", str(prefix / "nginx.conf"), "-g", "daemon off; master_process off;"]
        with (prefix / "nginx.out").open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        proxy = NginxProxy(proc, port, prefix, list(upstream_ports))
        proxies.append(proxy)
        await proxy.wait_listening()
        return proxy

    yield start

    for proxy in proxies:
        await proxy.stop()
