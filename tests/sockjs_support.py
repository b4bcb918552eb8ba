"""Helpers for the SockJS tests: shared server processes, STOMP text frames, raw HTTP.

Protocol tests share a few long-lived `tidings serve` processes (one per set of options,
started once per module by `start_node`) and isolate themselves with fresh session ids,
users and topics, which keeps the suite fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest

from .ports import free_port

START_TIMEOUT = 15.0
START_ATTEMPTS = 3


@dataclass
class Node:
    """One `python -m tidings serve` process shared by the tests of a module."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.http_url + path

    def session_url(self, endpoint: str = "/stomp", session: str | None = None) -> str:
        """A fresh ``<endpoint>/<server>/<session>`` URL."""
        return f"{self.http_url}{endpoint}/000/{session or uuid.uuid4().hex}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass(frozen=True)
class Program:
    """How to start ``tidings``: this checkout's ``python -m tidings`` unless told otherwise
    (tests/wheel_support.py starts an installed wheel's ``tidings`` script)."""

    command: tuple[str, ...] = (sys.executable, "-m", "tidings")
    cwd: Path | None = None
    env: Mapping[str, str] | None = None  # the whole environment; None: this process's


@contextlib.contextmanager
def running_node(log_dir: Path, *args: str, program: Program | None = None) -> Iterator[Node]:
    """Start a node with ``args``, wait for /healthz, and stop it afterwards.

    The machine is shared: if another process takes the free port first, the node is
    started again on another one.
    """
    for attempt in range(START_ATTEMPTS):
        node = _start(log_dir, args, program or Program())
        try:
            if _wait_healthy(node, last_attempt=attempt == START_ATTEMPTS - 1):
                break
        except BaseException:
            _stop(node)
            raise
        _stop(node)
    try:
        yield node
    finally:
        _stop(node)


def node_fixture(name: str, *args: str) -> Callable[..., Iterator[Node]]:
    """A module-scoped fixture: one node started with ``args`` for the module's tests,
    logging under a temporary directory named ``name``. Bind it to the fixture's name:
    ``node = node_fixture("edge", "--send-allow", "/topic/**")``."""

    @pytest.fixture(scope="module")
    def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
        with running_node(tmp_path_factory.mktemp(name), *args) as node:
            yield node

    return started


def _start(log_dir: Path, args: tuple[str, ...], program: Program) -> Node:
    port = free_port()
    log_path = log_dir / f"tidings-{port}.log"
    command = [*program.command, "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    env = os.environ if program.env is None else program.env
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=program.cwd,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
    return Node(proc, port, log_path)


def _wait_healthy(node: Node, *, last_attempt: bool) -> bool:
    """True once the node answers /healthz itself; False if its port was taken."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if node.proc.poll() is not None:
            if "address already in use" in node.log() and not last_attempt:
                return False
            pytest.fail(f"node exited with {node.proc.returncode}:\n{node.log()}")
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(node.url("/healthz"), timeout=1) as reply,
        ):
            if reply.status == 200:
                pid = orjson.loads(reply.read()).get("pid", node.proc.pid)
                if pid == node.proc.pid:
                    return True
                if not last_attempt:
                    return False  # a stranger answers on our port
                pytest.fail(f"port {node.port} is served by pid {pid}, not by the node")
        if time.monotonic() > deadline:
            pytest.fail(f"node not healthy after {START_TIMEOUT}s:\n{node.log()}")
        time.sleep(0.05)


def _stop(node: Node) -> None:
    if node.proc.poll() is None:
        node.proc.send_signal(signal.SIGTERM)
        try:
            node.proc.wait(5)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()


# -- STOMP frames as SockJS message text ------------------------------------------------------
def stomp(command: str, headers: Mapping[str, str] | None = None, body: str = "") -> str:
    head = "".join(f"{name}:{value}\n" for name, value in (headers or {}).items())
    return f"{command}\n{head}\n{body}\0"


@dataclass
class Frame:
    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


def parse_stomp(text: str) -> Frame | None:
    """One STOMP frame from one SockJS message; None for a heart-beat (``"\\n"``)."""
    if not text.strip("\r\n"):
        return None
    head, _, rest = text.lstrip("\r\n").partition("\n\n")
    command, *lines = head.split("\n")
    headers = dict(line.split(":", 1) for line in lines)
    length = headers.get("content-length")
    body = rest.encode()[: int(length)].decode() if length else rest.removesuffix("\0")
    return Frame(command, headers, body)


def sockjs_frames(body: bytes) -> list[str]:
    """The SockJS frames of an xhr/xhr_streaming body (one per line)."""
    return [line for line in body.decode().split("\n") if line]


def messages_of(frame: str) -> list[str]:
    """The messages of an ``a[...]`` frame."""
    assert frame.startswith("a["), frame
    messages: list[str] = orjson.loads(frame[1:])
    return messages


def connect_frame(user: str, heartbeat: str = "0,0") -> str:
    return stomp("CONNECT", {"accept-version": "1.2", "login": user, "heart-beat": heartbeat})


ANOTHER_CONNECTION = b'c[2010,"Another connection still open"]'
RELEASE_TIMEOUT = 5.0
HOLD_ATTEMPTS = 6
RETRY_INTERVAL = 0.05


def refused(body: bytes) -> bool:
    """A receiving request's answer says another one holds the session's place."""
    return body.rstrip().endswith(ANOTHER_CONNECTION)


async def once_released(receive: Callable[[], Awaitable[bytes]]) -> bytes:
    """What a receiving request gets once no other request holds the session's place.

    While the holder is there each try is refused with 2010, which changes nothing; the
    first answer that is not a refusal is returned.
    """
    deadline = asyncio.get_running_loop().time() + RELEASE_TIMEOUT
    while refused(body := await receive()):
        assert asyncio.get_running_loop().time() < deadline, "the place is still held"
        await asyncio.sleep(RETRY_INTERVAL)  # a poll interval, not synchronisation
    return body


async def holding(
    hold: Callable[[], Awaitable[bytes]],
    other: Callable[[], Awaitable[bytes]],
    wake: Callable[[], Awaitable[object]],
) -> asyncio.Task[bytes]:
    """A receiving request (``hold``) left waiting, proven to hold the session's place:
    ``other``, made while it waits, is refused with 2010. Returns the waiting request.

    Nothing the server sends tells when a waiting request has been attached, so the two
    race. If ``other`` won the place (``hold`` refused), ``wake`` makes the session send
    something, which ends ``other``, and the race runs again with ``other`` started later:
    a back-off, not a fixed wait; it gives up after ``HOLD_ATTEMPTS`` tries.
    """
    head_start = 0.0
    for _ in range(HOLD_ATTEMPTS):
        held = asyncio.create_task(hold())
        await asyncio.sleep(head_start)  # a back-off between tries, not synchronisation
        second = asyncio.create_task(other())
        done, _ = await asyncio.wait({held, second}, return_when=asyncio.FIRST_COMPLETED)
        if second in done:
            assert refused(second.result()), second.result()
            assert not held.done() or not refused(held.result()), held.result()
            return held
        assert refused(held.result()), held.result()  # ``other`` holds the place
        await wake()
        assert not refused(await second)
        head_start = max(RETRY_INTERVAL, 2 * head_start)
    raise AssertionError(f"the waiting request lost the race {HOLD_ATTEMPTS} times")


class XhrSession:
    """A SockJS session driven over xhr-polling, as sockjs-client does."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.frames: list[Frame] = []

    async def post(self, transport: str, body: bytes = b"") -> tuple[int, bytes]:
        async with self.http.post(f"{self.url}/{transport}", data=body) as reply:
            return reply.status, await reply.read()

    async def open(self) -> None:
        assert await self.post("xhr") == (200, b"o\n")

    async def send(self, *messages: str) -> None:
        status, body = await self.post("xhr_send", orjson.dumps(list(messages)))
        assert (status, body) == (204, b""), (status, body)

    async def receive(self) -> bytes:
        """One xhr poll's body."""
        status, body = await self.post("xhr")
        assert status == 200
        return body

    async def poll(self) -> str:
        return (await self.receive()).decode().removesuffix("\n")

    async def expect(self, command: str, timeout: float = 5.0) -> Frame:  # noqa: ASYNC109
        """Poll until a STOMP frame with this command arrives (skipping heart-beats)."""
        async with asyncio.timeout(timeout):
            while True:
                for index, frame in enumerate(self.frames):
                    if frame.command == command:
                        return self.frames.pop(index)
                sockjs = await self.poll()
                if sockjs.startswith("a["):
                    for text in messages_of(sockjs):
                        parsed = parse_stomp(text)
                        if parsed is not None:
                            self.frames.append(parsed)
                elif sockjs.startswith("c["):
                    raise AssertionError(f"closed while waiting for {command}: {sockjs}")

    async def connect(self, user: str, heartbeat: str = "0,0") -> Frame:
        await self.send(connect_frame(user, heartbeat))
        return await self.expect("CONNECTED")

    async def subscribe(self, sub_id: str, destination: str) -> None:
        receipt = f"sub-{sub_id}"
        await self.send(
            stomp("SUBSCRIBE", {"id": sub_id, "destination": destination, "receipt": receipt})
        )
        frame = await self.expect("RECEIPT")
        assert frame.headers["receipt-id"] == receipt


async def publish(node: Node, path: str, body: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(node.url(path), json={"body": body}) as reply,
    ):
        assert reply.status == 202, await reply.text()


# -- raw HTTP, for what a client library hides ----------------------------------------------
class RawHttp:
    """One TCP connection speaking HTTP by hand (HTTP/1.0, chunking, aborts)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawHttp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(
        self,
        method: str,
        path: str,
        *,
        version: str = "1.1",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> tuple[int, dict[str, str]]:
        """Send a request; return the status and the (lower-cased) response headers."""
        await self.send_request(method, path, version=version, headers=headers, body=body)
        return await self.response_head()

    async def send_request(
        self,
        method: str,
        path: str,
        *,
        version: str = "1.1",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()

    async def response_head(self) -> tuple[int, dict[str, str]]:
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        response_headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            response_headers[name.strip().lower()] = value.strip()
        return status, response_headers

    async def read_chunk(self) -> bytes:
        """One chunk of a chunked body (b"" for the last)."""
        size = int((await self.reader.readline()).strip(), 16)
        data = await self.reader.readexactly(size)
        assert await self.reader.readexactly(2) == b"\r\n"
        return data

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            return await self.reader.read(1) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
