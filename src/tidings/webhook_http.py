"""The HTTP client both webhooks share (``--app-webhook``, ``--connect-webhook``; issue 16).

One aiohttp ``ClientSession`` per webhook and node, its connection pool as large as the
calls allowed at once; a semaphore makes further calls wait (back-pressure on whoever
makes them). Each call is one JSON POST, answered within ``timeout_s`` and read up to
``MAX_ANSWER_BYTES``; what goes wrong is a :class:`CallFailed` with a machine code and a
short text that never quotes the answer's body.
"""

from __future__ import annotations

import asyncio

import aiohttp

MAX_ANSWER_BYTES = 1024 * 1024
"""The most of a webhook's answer read; a longer one is a failure (``invalid_answer``)."""


class CallFailed(Exception):
    """A call got no 2xx answer of a sane size: why, in a machine code and a short text."""

    def __init__(self, error: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.error = error  # webhook_status, webhook_timeout, webhook_unreachable, invalid_answer
        self.message = message
        self.status = status


class WebhookClient:
    """POSTs JSON to one URL: at most ``max_in_flight`` at a time, each within ``timeout_s``."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        timeout_s: float,
        max_in_flight: int,
        timeout_covers_wait: bool = False,
    ) -> None:
        """``timeout_covers_wait``: the timeout starts before the wait for a slot (a CONNECT
        has a deadline); otherwise a call waits for a slot as long as it takes (a SEND's
        back-pressure) and its timeout starts with the request."""
        self.url = url
        self.timeout_s = timeout_s
        self._covers_wait = timeout_covers_wait
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._max_in_flight)
        self._http = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def post(self, request: bytes) -> bytes:
        """The body of a 2xx answer to ``request``; CallFailed otherwise."""
        if self._covers_wait:
            try:
                async with asyncio.timeout(self.timeout_s), self._slots:
                    return await self._post(request)
            except TimeoutError:
                raise self._timed_out() from None
        async with self._slots:
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await self._post(request)
            except TimeoutError:
                raise self._timed_out() from None

    def _timed_out(self) -> CallFailed:
        return CallFailed("webhook_timeout", f"the back end did not answer in {self.timeout_s:g} s")

    async def _post(self, request: bytes) -> bytes:
        assert self._http is not None, "start() first"
        try:
            async with self._http.post(self.url, data=request, headers=self._headers) as reply:
                data = await reply.content.read(MAX_ANSWER_BYTES + 1)
                status = reply.status
        except aiohttp.ClientError as exc:
            raise CallFailed(
                "webhook_unreachable", f"the back end could not be reached: {exc}"
            ) from None
        if not 200 <= status < 300:
            raise CallFailed("webhook_status", f"the back end answered {status}", status)
        if len(data) > MAX_ANSWER_BYTES:
            raise CallFailed("invalid_answer", f"the answer is over {MAX_ANSWER_BYTES} bytes")
        return data
