"""Drive Debian's Chromium through playwright-core (tests/js/browser.mjs) from pytest.

    browser = await Browser.start(tmp_path / "profile")
    await browser.goto("http://127.0.0.1:9908/")
    await browser.click("#connect")
    await browser.wait("document.title !== ''")
    await browser.close()

Every command waits for its answer; a failed one raises AssertionError quoting the page's
console and errors, which is what one needs to see when a browser test fails.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .processes import exit_agent

DRIVER = Path(__file__).resolve().parent / "js" / "browser.mjs"
CHROMIUM = "/usr/bin/chromium"
_STREAM_LIMIT = 16 * 1024 * 1024


class Browser:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.console: collections.deque[str] = collections.deque(maxlen=200)
        self._stderr: collections.deque[str] = collections.deque(maxlen=50)
        self._tasks = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    @classmethod
    async def start(cls, user_data_dir: Path, *, timeout: float = 30.0) -> Browser:  # noqa: ASYNC109
        """Launch Chromium with a fresh profile in ``user_data_dir``."""
        if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - one stat, before any I/O
            raise AssertionError(f"{CHROMIUM} missing: run ./run setup")
        node = shutil.which("node") or "/usr/bin/node"
        proc = await asyncio.create_subprocess_exec(
            node,
            str(DRIVER),
            "--user-data-dir",
            str(user_data_dir),
            "--executable",
            CHROMIUM,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_STREAM_LIMIT,
        )
        browser = cls(proc)
        try:
            async with asyncio.timeout(timeout):
                await browser._ready
        except BaseException:
            await browser.close()
            raise
        return browser

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    self.console.append(f"[driver] {line.decode(errors='replace').rstrip()}")
                    continue
                self._dispatch(event)
        finally:
            failure = AssertionError(self._describe("the browser driver exited"))
            for future in (self._ready, *self._answers.values()):
                if not future.done():
                    future.set_exception(failure)

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "ready":
            if not self._ready.done():
                self._ready.set_result(event)
        elif kind == "console":
            self.console.append(f"[{event['type']}] {event['text']}")
        elif kind in ("pageerror", "fatal"):
            self.console.append(f"[{kind}] {event['message']}")
        else:
            future = self._answers.pop(event.get("id") or 0, None)
            if future is not None and not future.done():
                future.set_result(event)

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self._stderr.append(line.decode(errors="replace").rstrip())

    def _describe(self, problem: str) -> str:
        console = "\n".join(f"    {line[:400]}" for line in self.console) or "    (empty)"
        stderr = "\n".join(f"    {line}" for line in self._stderr) or "    (empty)"
        return f"{problem}\n  page console:\n{console}\n  driver stderr:\n{stderr}"

    async def command(self, op: str, *, within: float = 30.0, **fields: Any) -> Any:
        """Run one command; its value (for eval/wait) or None. Fails after ``within`` s."""
        stdin = self.proc.stdin
        if stdin is None or self.proc.returncode is not None:
            raise AssertionError(self._describe(f"cannot run {op}: the driver is gone"))
        command_id = next(self._ids)
        future = self._answers[command_id] = asyncio.get_running_loop().create_future()
        stdin.write(json.dumps({"op": op, "id": command_id, **fields}).encode() + b"\n")
        await stdin.drain()
        try:
            async with asyncio.timeout(within):
                answer = await future
        except TimeoutError:
            raise AssertionError(self._describe(f"{op} {fields} timed out")) from None
        if answer["event"] == "failed":
            raise AssertionError(self._describe(f"{op} {fields} failed: {answer['message']}"))
        return answer.get("value")

    async def serve(self, url: str, html: str) -> None:
        await self.command("serve", url=url, html=html)

    async def goto(self, url: str) -> None:
        await self.command("goto", url=url)

    async def eval(self, expression: str) -> Any:
        return await self.command("eval", expression=expression)

    async def wait(self, expression: str, *, timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        return await self.command(
            "wait", within=timeout + 5, expression=expression, timeout=int(timeout * 1000)
        )

    async def click(self, selector: str) -> None:
        await self.command("click", selector=selector)

    async def fill(self, selector: str, value: str) -> None:
        await self.command("fill", selector=selector, value=value)

    async def screenshot(self, path: Path, *, full_page: bool = False) -> None:
        await self.command("screenshot", path=str(path), full=full_page)

    async def viewport(self, width: int, height: int) -> None:
        """Resize the page (CSS pixels), e.g. to a phone's 390 x 844."""
        await self.command("viewport", width=width, height=height)

    async def close(self) -> None:
        """Close Chromium (idempotent), killing the driver if it lingers."""
        await exit_agent(self.proc, 10.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
