"""One plain STOMP session's MESSAGE frames, recorded until an end marker.

The no-loss end-to-end tests (test_catchup_e2e.py, test_bridge_e2e.py) publish to each
user, then an end marker: a session is done once the marker came and, where the test
knows what to expect, every expected body too (the marker may overtake messages that
arrive through another path).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from .stompws import Closed, StompWs


@dataclass
class MessageLog:
    """Every MESSAGE body a session shows, with its ``tidings-id`` and gap flags."""

    user: str
    client: StompWs
    end: str  # the end marker's body
    side: str = ""  # which node or instance the session is on, for the report
    expected: Counter[str] = field(default_factory=Counter)
    bodies: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    gaps: int = 0
    ended: str = ""  # why the session ended early, if it did
    end_seen: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            try:
                item = await self.client.next(timeout=3600)
            except Exception as exc:  # reported by the test's assertions
                self.ended = repr(exc)
                self.done.set()
                return
            if isinstance(item, Closed):
                self.ended = f"closed {item}"
                self.done.set()
                return
            if isinstance(item, str) or item.command != "MESSAGE":
                continue
            body = item.body.decode()
            if body == self.end:
                self.end_seen = True
            else:
                self.bodies.append(body)
                self.ids.append(item.get("tidings-id") or "")
                self.gaps += item.get("tidings-gap") == "true"
            if self.end_seen and Counter(self.bodies) >= self.expected:
                self.done.set()
