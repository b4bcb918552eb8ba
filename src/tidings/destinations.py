"""Map STOMP destinations to broker channels (DESIGN.md §1 and §4).

Destinations understood:

``/topic/<name>``
    broadcast to every subscriber of that exact destination.
``/user/<id>/<rest>``
    the seed's literal form: receives what is published to user ``<id>`` at ``/<rest>``.
``/user/queue/<rest>``, ``/user/topic/<rest>``, ``/user/<single-segment>``
    Spring's principal style, resolved to the session's own user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tidings.errors import StompProtocolError
from tidings.message import topic_channel, user_channel

_PRINCIPAL_PREFIXES = ("/user/queue/", "/user/topic/")


@dataclass(frozen=True, slots=True)
class Route:
    """Where a destination lives: the broker ``channel`` and the ``key`` messages match on."""

    channel: str
    key: str
    user: str | None = None  # set for user destinations: whose messages these are


def route(destination: str, session_user: str | None) -> Route:
    """Resolve a SUBSCRIBE or SEND destination; raise StompProtocolError when it has no meaning."""
    if destination.startswith("/topic/") and len(destination) > len("/topic/"):
        return Route(topic_channel(destination[len("/topic/") :]), destination)
    if destination.startswith("/user/"):
        rest = destination[len("/user") :]  # "/42/message" or "/queue/x" or "/message"
        if destination.startswith(_PRINCIPAL_PREFIXES) or rest.count("/") == 1:
            if session_user is None:
                raise StompProtocolError(
                    f"destination {destination} needs an authenticated user",
                    "Principal-style /user/... destinations resolve to the session's user: "
                    "send a login header on CONNECT (or a token with --auth jwt), "
                    "or subscribe to /user/<id>/... instead.",
                )
            return Route(user_channel(session_user), rest, session_user)
        user, _, suffix = rest[1:].partition("/")
        if user and suffix:
            return Route(user_channel(user), "/" + suffix, user)
    raise StompProtocolError(
        f"unknown destination {destination}",
        "Destinations are /topic/<name>, /user/<id>/<name> or /user/queue/<name>.",
    )


def compile_globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex for a list of destination globs: ``*`` is one path segment, ``**`` any depth."""
    if not patterns:
        return None
    parts = []
    for pattern in patterns:
        escaped = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        parts.append(f"(?:{escaped})")
    return re.compile("|".join(parts))
