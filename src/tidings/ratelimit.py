"""A token bucket: how many SEND frames one STOMP session may publish (``--send-rate``).

The bucket holds up to ``burst`` tokens and gains ``rate`` tokens a second; a SEND takes
one. A session that has spent its burst and keeps sending faster than ``rate`` is ended
with ``ERROR message:SEND rate limit exceeded`` (server/session.py), never slowed down in
silence and never with a frame dropped (docs/security.md, docs/decisions.md). O(1) time
and two floats of state per session; nothing is allocated per SEND.
"""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held; starts full."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> bool:
        """Spend one token at time ``now`` (a monotonic clock); False if none is left."""
        tokens = self._tokens + (now - self._stamp) * self.rate
        self._stamp = now
        if tokens >= 1.0:
            self._tokens = min(tokens, float(self.burst)) - 1.0
            return True
        self._tokens = tokens
        return False
