"""Client SENDs to ``/app/...`` answered by the back end over HTTP (``--app-webhook``).

Spring's ``@MessageMapping("/hello")`` + ``@SendToUser("/queue/reply")``, and Centrifugo's
RPC proxy, done as a webhook: a SEND to ``<app-prefix>/<path>`` is POSTed to the back end
as JSON ``{"user", "session", "destination", "headers", "body"}``. A 2xx answer may carry
``"reply"`` (any JSON value; a string is sent as text) for the sending session's
``/user/queue/reply`` and ``"publish"``, a list of items in the batch API's shape. Anything
else (another status, a timeout, a body that is not such an object) becomes a
:class:`Failure` the session reports on ``/user/queue/errors``; the session stays open.

Bounded: at most ``max_in_flight`` calls per node (the HTTP client's connection pool, and
a semaphore that makes further SENDs wait: back-pressure on the sessions that send them),
each within ``timeout_s``, each answer read up to ``MAX_ANSWER_BYTES``
(tidings.webhook_http, shared with ``--connect-webhook``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from tidings import publish_rules
from tidings.errors import InvalidPublish
from tidings.message import Message
from tidings.webhook_http import CallFailed, WebhookClient

# Headers of a SEND that STOMP defines (1.2 §SEND, §Standard Headers); the others are
# the application's and go to the back end.
STOMP_SEND_HEADERS = frozenset(
    {"destination", "content-length", "content-type", "receipt", "transaction"}
)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a 2xx answer asked for: a reply to the sender, messages to publish."""

    reply: Message | None = None
    publish: list[tuple[Message, str | None]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a SEND got no answer: the JSON body of the ``/user/queue/errors`` message."""

    error: str  # webhook_status, webhook_timeout, webhook_unreachable, invalid_answer
    message: str
    status: int | None = None

    def json(self, destination: str, receipt: str | None) -> bytes:
        body: dict[str, object] = {
            "error": self.error,
            "message": self.message,
            "destination": destination,
        }
        if self.status is not None:
            body["status"] = self.status
        if receipt is not None:
            body["receipt"] = receipt
        return orjson.dumps(body)


class AppWebhook:
    """The node's client of ``--app-webhook``: one connection pool, bounded calls."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "/app",
        token: str | None = None,
        timeout_s: float = 5.0,
        max_in_flight: int = 64,
        max_message_bytes: int = publish_rules.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.url = url
        self.prefix = prefix.rstrip("/") + "/"
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self._client = WebhookClient(
            url, token=token, timeout_s=timeout_s, max_in_flight=max_in_flight
        )
        self.calls = 0
        self.failures = 0

    def handles(self, destination: str) -> bool:
        return destination.startswith(self.prefix)

    async def start(self) -> None:
        await self._client.start()

    async def close(self) -> None:
        await self._client.close()

    async def call(
        self,
        *,
        user: str | None,
        session: str,
        destination: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> Answer | Failure:
        """POST one SEND to the back end; its answer, or why there is none."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return Failure("invalid_request", "the SEND body is not UTF-8 text")
        request = orjson.dumps(
            {
                "user": user,
                "session": session,
                "destination": destination,
                "headers": application_headers(headers),
                "body": text,
            }
        )
        self.calls += 1
        outcome = await self._post(request)
        if isinstance(outcome, Failure):
            self.failures += 1
        return outcome

    async def _post(self, request: bytes) -> Answer | Failure:
        try:
            data = await self._client.post(request)
        except CallFailed as exc:
            return Failure(exc.error, exc.message, exc.status)
        try:
            return self._parse(data)
        except InvalidPublish as exc:
            return Failure("invalid_answer", exc.message)

    def _parse(self, data: bytes) -> Answer:
        """``{}``, ``{"reply": ...}``, ``{"publish": [...]}`` or both (an empty body: ``{}``)."""
        if not data.strip():
            return Answer()
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise InvalidPublish("invalid_answer", "the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise InvalidPublish("invalid_answer", 'the answer must be an object: {"reply": ...}')
        unknown = sorted(set(answer) - {"reply", "publish"})
        if unknown:
            raise InvalidPublish("invalid_answer", f"unknown fields in the answer: {unknown}")
        reply = None
        if "reply" in answer:
            reply = publish_rules.message(
                "", REPLY_DESTINATION, answer["reply"], None, max_bytes=self.max_message_bytes
            )
        items = answer.get("publish", [])
        if not isinstance(items, list) or len(items) > publish_rules.MAX_BATCH:
            raise InvalidPublish(
                "invalid_answer",
                f"'publish' must be a list of at most {publish_rules.MAX_BATCH} messages",
            )
        publish = []
        for index, item in enumerate(items):
            try:
                publish.append(publish_rules.batch_item(item, max_bytes=self.max_message_bytes))
            except InvalidPublish as exc:
                raise InvalidPublish("invalid_answer", f"publish[{index}]: {exc.message}") from None
        return Answer(reply, publish)


REPLY_DESTINATION = "/queue/reply"
"""Where a reply goes: the sender's ``/user/queue/reply`` (Spring's ``@SendToUser``)."""
ERRORS_DESTINATION = "/queue/errors"
"""Where a failed call is reported: the sender's ``/user/queue/errors``."""


def application_headers(headers: Sequence[tuple[str, str]]) -> Mapping[str, str]:
    """The SEND's headers STOMP does not define (the first of repeated ones, §1.2)."""
    out: dict[str, str] = {}
    for name, value in headers:
        if name not in STOMP_SEND_HEADERS and name not in out:
            out[name] = value
    return out
