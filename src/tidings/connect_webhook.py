"""Who a session's user is, asked of the back end at CONNECT (``--auth webhook``; issue 16).

Centrifugo's connect proxy as a webhook: at a STOMP CONNECT the node POSTs to
``--connect-webhook`` the JSON ``{"session", "transport", "address", "headers"}``:
``transport`` is ``websocket`` or ``sockjs``, ``address`` the client's address as the trust
policy resolves it (tidings.trust: behind a trusted proxy, its X-Forwarded-For), and
``headers`` every header of the CONNECT frame (the first of repeated ones, STOMP 1.2
§Repeated Header Entries): ``login``, ``passcode``, ``Authorization``, ``accept-version``,
``heart-beat``, ``host`` and whatever the application put there.

A 2xx answer ``{"user": "<id>"}`` admits the session as that user (an id by the rule a
JWT's ``sub`` follows: ``publish_rules.valid_user``). Anything else refuses it: the
:class:`AuthError` says what failed in a few words of ours, never the answer's body.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson

from tidings.auth import Identity
from tidings.errors import AuthError
from tidings.publish_rules import MAX_NAME, valid_user
from tidings.webhook_http import CallFailed, WebhookClient

log = logging.getLogger(__name__)

# What the client is told, by the shared client's failure code (its own text may name
# the webhook's host: that goes to the log only).
_REFUSALS = {
    "webhook_status": "the connect webhook refused the credentials",
    "webhook_timeout": "the connect webhook did not answer in time",
    "webhook_unreachable": "the connect webhook could not be reached",
    "invalid_answer": "the connect webhook's answer is too large",
}


class ConnectWebhook:
    """The node's client of ``--connect-webhook``: one connection pool, bounded calls."""

    def __init__(
        self, url: str, *, token: str | None = None, timeout_s: float = 5.0, max_in_flight: int = 64
    ) -> None:
        # The timeout covers the wait for a slot: a CONNECT has its deadline.
        self._client = WebhookClient(
            url,
            token=token,
            timeout_s=timeout_s,
            max_in_flight=max_in_flight,
            timeout_covers_wait=True,
        )

    async def start(self) -> None:
        await self._client.start()

    async def close(self) -> None:
        await self._client.close()

    async def identify(
        self,
        headers: Sequence[tuple[str, str]],
        *,
        session: str,
        transport: str,
        address: str | None,
    ) -> Identity:
        """The user the back end names for this CONNECT; AuthError saying why not."""
        request = orjson.dumps(
            {
                "session": session,
                "transport": "sockjs" if transport.startswith("sockjs") else "websocket",
                "address": address,
                "headers": first_of_each(headers),
            }
        )
        try:
            data = await self._client.post(request)
        except CallFailed as exc:
            log.info("session %s: connect webhook: %s", session, exc.message)
            text = _REFUSALS.get(exc.error, "the connect webhook failed")
            if exc.status is not None:
                text += f" (HTTP {exc.status})"
            reason = "webhook_refused" if exc.error == "webhook_status" else exc.error
            raise AuthError(text, reason) from None
        return Identity(user_of(data), None)


def user_of(data: bytes) -> str:
    """The ``user`` of a 2xx answer ``{"user": "<id>"}``; AuthError ``invalid_answer``."""
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise AuthError("the connect webhook's answer is not JSON", "invalid_answer") from None
    if not isinstance(answer, dict) or set(answer) != {"user"}:
        raise AuthError(
            "the connect webhook's answer must be an object with one field, user",
            "invalid_answer",
        )
    user = answer["user"]
    if not valid_user(user):
        raise AuthError(
            f"the connect webhook's user is not a valid user id (1-{MAX_NAME} characters of "
            "text, no control character, no '/')",
            "invalid_answer",
        )
    return user


def first_of_each(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Headers as an object: the first of repeated ones counts (STOMP 1.2)."""
    out: dict[str, str] = {}
    for name, value in headers:
        out.setdefault(name, value)
    return out
