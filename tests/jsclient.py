"""Drive real npm STOMP clients (tests/js/agent.mjs) from pytest.

Each JsClient is one `node tests/js/agent.mjs` process holding at most one STOMP
connection. Commands go to its stdin as JSON lines; the events it prints are queued
here, and `expect()` takes the first queued event that matches, so a test waits for
exactly what it needs and never sleeps::

    client = await JsClient.start("stompjs7", server.ws_url())
    await client.connect(login="42", passcode="secret")
    await client.subscribe("s1", "/user/42/message")
    await client.send("/app/echo", "hi")
    msg = await client.expect("message", subscription="s1")
    await client.close()

The event and command shapes are documented at the top of tests/js/agent.mjs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from .processes import exit_agent

AGENT = Path(__file__).resolve().parent / "js" / "agent.mjs"
JS_LIBS = ("stompjs7", "legacy")
"""The client libraries every client test runs with: @stomp/stompjs 7 and stompjs 2.3.3."""
AGENT_LIBS = (*JS_LIBS, "webstomp")
"""Every library agent.mjs drives; webstomp-client 1.2.6 only over a raw WebSocket."""

Event = dict[str, Any]

_STREAM_LIMIT = 64 * 1024 * 1024  # one JSON line may carry a large message body


def _matches(actual: Any, expected: Any) -> bool:
    """Equality, except that an expected dict only needs to be a subset of the actual one."""
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and _matches(actual[key], value) for key, value in expected.items()
        )
    return bool(actual == expected)


class JsClient:
    """One STOMP client process (`lib` is "stompjs7" or "legacy")."""

    def __init__(self, proc: asyncio.subprocess.Process, lib: str, url: str) -> None:
        self.proc = proc
        self.lib = lib
        self.url = url
        self._queue: list[tuple[int, Event]] = []  # (index in _history, event)
        self._history: list[Event] = []
        self._connection_start = 0  # index in _history when the last `connect` was sent
        self._stderr: collections.deque[str] = collections.deque(maxlen=50)
        self._changed = asyncio.Event()
        self._eof = False
        self._tasks = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    def __repr__(self) -> str:
        return f"<JsClient {self.lib} pid={self.proc.pid} {self.url}>"

    @classmethod
    async def start(
        cls,
        lib: str,
        url: str,
        *,
        protocols: Collection[str] | None = None,
        transport: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> JsClient:
        """Spawn the agent and wait for its `ready` event.

        `protocols` overrides the WebSocket subprotocols it offers (by default those of
        the STOMP versions it accepts). `transport` makes it speak STOMP over SockJS
        (sockjs-client with only that transport; `url` is then the http:// endpoint).
        Set TIDINGS_AGENT_DEBUG=1 in `env` (or in the
        environment) to get the library's frame log on the agent's stderr, which is
        quoted in every failed expectation.
        """
        if lib not in AGENT_LIBS:
            raise ValueError(f"lib must be one of {AGENT_LIBS}, not {lib!r}")
        node = shutil.which("node") or "/usr/bin/node"
        args = [node, str(AGENT), "--lib", lib, "--url", url]
        if protocols is not None:
            args += ["--protocols", ",".join(protocols)]
        if transport is not None:
            args += ["--transport", transport]
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
            limit=_STREAM_LIMIT,
        )
        client = cls(proc, lib, url)
        try:
            await client.expect("ready", timeout=timeout)
        except BaseException:
            await client.close()
            raise
        return client

    # --- plumbing ----------------------------------------------------------------------

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                text = line.decode("utf-8", "replace").strip()
                if not text:
                    continue
                try:
                    event = json.loads(text)
                except ValueError:
                    event = {"event": "fatal", "message": f"non-JSON on agent stdout: {text}"}
                if not isinstance(event, dict) or "event" not in event:
                    event = {"event": "fatal", "message": f"not an event: {text}"}
                self._queue.append((len(self._history), event))
                self._history.append(event)
                self._changed.set()
        finally:
            self._eof = True
            self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self._stderr.append(line.decode("utf-8", "replace").rstrip())

    def _describe(self, problem: str) -> str:
        seen = "\n".join(f"    {json.dumps(e)[:500]}" for e in self._history[-30:]) or "    none"
        queued = len(self._queue)
        stderr = "\n".join(f"    {line}" for line in self._stderr) or "    (empty)"
        status = "running" if self.proc.returncode is None else f"exit {self.proc.returncode}"
        return (
            f"{self!r} ({status}): {problem}\n"
            f"  events received (last 30; {queued} still queued):\n{seen}\n"
            f"  agent stderr (last 50 lines):\n{stderr}"
        )

    # --- API ---------------------------------------------------------------------------

    async def command(self, op: str, **fields: Any) -> None:
        """Send one command (see tests/js/agent.mjs for ops and fields)."""
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing() or self.proc.returncode is not None:
            raise AssertionError(self._describe(f"cannot send {op!r}: the agent is gone"))
        if op == "connect":
            self._connection_start = len(self._history)
        stdin.write(json.dumps({"op": op, **fields}).encode() + b"\n")
        try:
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise AssertionError(self._describe(f"cannot send {op!r}: {exc}")) from exc

    def _take(self, event: str, match: Mapping[str, Any]) -> Event | None:
        for index, (_, candidate) in enumerate(self._queue):
            if candidate.get("event") == event and _matches(candidate, match):
                return self._queue.pop(index)[1]
        return None

    def _failure(self, event: str, fail_on: Collection[str]) -> Event | None:
        for seq, candidate in self._queue:
            kind = candidate.get("event")
            if kind == event or kind not in fail_on:
                continue
            # `error` and `closed` of an earlier connection are no reason to fail now.
            if kind == "fatal" or seq >= self._connection_start:
                return candidate
        return None

    async def expect(
        self,
        event: str,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
        fail_on: Collection[str] | None = None,
        **match: Any,
    ) -> Event:
        """Return (and remove from the queue) the first `event` whose fields match `match`.

        A dict in `match` matches any superset (`headers={"x": "1"}`). Other events stay
        queued for later calls. Raises AssertionError, quoting the events seen and the
        agent's stderr, on timeout, when the agent exits, or as soon as an event whose
        type is in `fail_on` is queued; that event stays queued too, so after `connect()`
        failed on an ERROR a test can still `expect("error")`.

        `fail_on` defaults to `fatal` (a broken command) plus, for the current connection
        (since the last `connect` command), `error` and `closed`: once the connection is
        gone, nothing else will come. When waiting for `closed`, only `fatal` fails.
        """
        if fail_on is None:
            fail_on = ("fatal",) if event == "closed" else ("fatal", "error", "closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        wanted = f"{event!r}" + (f" matching {match!r}" if match else "")
        while True:
            found = self._take(event, match)
            if found is not None:
                return found
            failure = self._failure(event, fail_on)
            if failure is not None:
                raise AssertionError(self._describe(f"got {failure!r} waiting for {wanted}"))
            if self._eof:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 1.0)
                hint = ""
                if any("ERR_MODULE_NOT_FOUND" in line for line in self._stderr):
                    hint = " (npm packages missing: run ./run setup)"
                raise AssertionError(self._describe(f"agent exited waiting for {wanted}{hint}"))
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    self._describe(f"timed out after {timeout}s waiting for {wanted}")
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def round_trip(self, *, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """A SUBSCRIBE and UNSUBSCRIBE, each confirmed by a RECEIPT: whatever the server sent
        this session before it answered them has arrived (one connection, in order). The
        marker for "nothing more arrives" when the server's side is done."""
        marker = f"round-trip-{uuid.uuid4().hex[:8]}"
        await self.subscribe(marker, f"/topic/{marker}", timeout=timeout)
        await self.unsubscribe(marker, timeout=timeout)

    async def expect_none(self, event: str, *, within: float = 0.3, **match: Any) -> None:
        """Assert that no matching `event` arrives within `within` seconds (this one waits).

        A bounded wait: for what no marker can rule out (something another process might
        still start); after ``round_trip()`` it checks what has already arrived, with
        ``within=0``.
        """
        await asyncio.sleep(within)
        found = self._take(event, match)
        if found is not None:
            raise AssertionError(self._describe(f"unexpected {found!r}"))

    def events_of(self, event: str) -> list[Event]:
        """Take (remove and return) every queued event of this type, in arrival order."""
        taken = [e for _, e in self._queue if e.get("event") == event]
        self._queue = [item for item in self._queue if item[1].get("event") != event]
        return taken

    def drain(self) -> list[Event]:
        """Take every queued event."""
        taken, self._queue = self._queue, []
        return [e for _, e in taken]

    @property
    def history(self) -> list[Event]:
        """Every event received so far, taken or not."""
        return list(self._history)

    # --- conveniences ------------------------------------------------------------------

    async def connect(
        self,
        headers: Mapping[str, str] | None = None,
        *,
        heartbeat: tuple[int, int] = (0, 0),
        versions: Collection[str] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
        **more_headers: str,
    ) -> Event:
        """CONNECT and return the `connected` event; fails fast on an ERROR or a close.

        Headers come as keywords (`connect(login="u", passcode="p")`) and/or as a mapping
        for names that are not identifiers (`connect({"client-id": "a"})`). The library
        sets accept-version and heart-beat itself: use `versions` (the STOMP versions
        offered, e.g. ["1.0"]; also picks the WebSocket subprotocols) and `heartbeat`.
        """
        fields: dict[str, Any] = {
            "headers": {**(headers or {}), **more_headers},
            "heartbeat": list(heartbeat),
        }
        if versions is not None:
            fields["versions"] = list(versions)
        await self.command("connect", **fields)
        return await self.expect("connected", timeout=timeout)

    async def subscribe(
        self,
        id: str,
        destination: str,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
        **more_headers: str,
    ) -> None:
        """SUBSCRIBE with a receipt and wait until the server has confirmed it."""
        await self.command(
            "subscribe",
            id=id,
            destination=destination,
            headers={**(headers or {}), **more_headers},
        )
        await self.expect("subscribed", id=id, timeout=timeout)

    async def unsubscribe(
        self,
        id: str,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
        **more_headers: str,
    ) -> None:
        """UNSUBSCRIBE with a receipt and wait until the server has confirmed it."""
        await self.command("unsubscribe", id=id, headers={**(headers or {}), **more_headers})
        await self.expect("unsubscribed", id=id, timeout=timeout)

    async def send(
        self,
        destination: str,
        body: str = "",
        headers: Mapping[str, str] | None = None,
        **more_headers: str,
    ) -> None:
        await self.command(
            "send", destination=destination, body=body, headers={**(headers or {}), **more_headers}
        )

    async def disconnect(self, *, timeout: float = 5.0) -> Event:  # noqa: ASYNC109
        """DISCONNECT and return the `closed` event."""
        await self.command("disconnect")
        return await self.expect("closed", timeout=timeout)

    async def close(self) -> None:
        """Stop the agent (idempotent): `exit`, then SIGKILL if it lingers."""
        await exit_agent(self.proc, 3.0)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 1.0)
