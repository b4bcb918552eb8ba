"""The application's webhook back end for the webhook tests: a real aiohttp server.

It stands in for the application behind ``--connect-webhook`` (tests/test_connect_webhook.py)
and ``--app-webhook`` (tests/test_app_webhook.py); it is not part of Tidings. It records
every call (its JSON body and its ``Authorization`` header) and how many were in flight at
once, and answers with the test's ``handler``, else with the test file's usual answer.

Example::

    @pytest.fixture
    async def back_end() -> AsyncIterator[BackEnd]:
        async with serve_back_end("/connect", admit_by_login) as state:
            yield state

    back_end.handler = back_end.hang  # no answer until the test ends
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .ports import free_port

Handler = Callable[[dict[str, Any]], Awaitable[web.StreamResponse]]


@dataclass
class BackEnd:
    """The application's webhook: answers with ``handler`` (else ``usual``), records every
    call."""

    url: str
    usual: Handler
    calls: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    handler: Handler | None = None
    in_flight: int = 0
    most_in_flight: int = 0
    busy_at: int = 0  # ``busy`` is set once this many calls are in flight at once
    busy: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # hung calls may end

    async def hang(self, call: dict[str, Any]) -> web.StreamResponse:
        """A handler that answers only once ``released`` is set (at the latest when the
        test ends): far longer than any node waits."""
        await self.released.wait()
        return web.json_response({})

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        call = await request.json()
        self.calls.append(call)
        self.authorizations.append(request.headers.get("Authorization"))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.busy_at and self.in_flight >= self.busy_at:
            self.busy.set()
        try:
            return await (self.handler or self.usual)(call)
        finally:
            self.in_flight -= 1


@contextlib.asynccontextmanager
async def serve_back_end(path: str, usual: Handler) -> AsyncIterator[BackEnd]:
    """A back end taking POSTs to ``path`` on a free port of 127.0.0.1, until the block
    ends (which releases the calls still hanging)."""
    port = free_port()
    state = BackEnd(f"http://127.0.0.1:{port}{path}", usual)
    app = web.Application()
    app.router.add_post(path, state._serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield state
    finally:
        state.released.set()
        await runner.cleanup()


def answer_with(status: int, body: bytes) -> Handler:
    """A handler that answers every call with ``status`` and ``body`` as JSON."""

    async def handler(call: dict[str, Any]) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type="application/json")

    return handler
