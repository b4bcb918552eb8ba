"""Numbers the hot paths keep as plain Python values, read when /metrics is scraped.

prometheus-client's ``Counter.inc`` and ``Histogram.observe`` take a lock (~0.5-1 µs,
more in multiprocess mode, where each writes to a memory-mapped file). A delivery or a
publish here costs a few microseconds in all, so what they count is a plain ``int`` or
a ``Histogram`` below, and ``server/metrics.py`` turns them into Prometheus families at
scrape time (a custom collector, the pattern of ``node.Counters``). This module never
imports prometheus-client: the node and the edges count without it.
"""

from __future__ import annotations

from bisect import bisect_left

# Seconds. Publish: a memory-broker publish takes tens of µs, a Redis one ~0.2-1 ms.
PUBLISH_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
# Seconds. The stored time is an inbox id's millisecond, so nothing finer than 1 ms.
DELIVERY_LAG_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram:
    """Counts per bucket (``le`` bounds, as Prometheus) and a sum, without a lock.

    ``observe`` is a bisection and two additions (~0.2 µs); ``counts`` are per bucket,
    not cumulative, the last one for values above every bound (``+Inf``).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be strictly increasing")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # The hot paths inline these two lines: a Python call costs ~1k instructions more.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, observations <= le)`` for every bound and ``+Inf``, as exposed."""
        total = 0
        buckets = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return buckets


class ServerStats:
    """What the HTTP and session edges count; read by ``server/metrics.py`` at scrape time."""

    __slots__ = ("auth_failures", "connections_opened", "publish_latency", "responses")

    def __init__(self) -> None:
        # route template -> status -> responses (bounded: templates, not raw paths)
        self.responses: dict[str, dict[int, int]] = {}
        self.auth_failures: dict[str, int] = {}  # reason -> failures
        self.connections_opened: dict[str, int] = {}  # transport -> connections
        self.publish_latency = Histogram(PUBLISH_LATENCY_BUCKETS)

    def route_counts(self, route: str) -> dict[int, int]:
        """The responses of ``route`` (a route template) by status, to count into."""
        by_status = self.responses.get(route)
        if by_status is None:
            by_status = self.responses[route] = {}
        return by_status

    def response(self, route: str, status: int) -> None:
        """One HTTP response (or WebSocket handshake, 101) on ``route``, a route template."""
        by_status = self.route_counts(route)
        by_status[status] = by_status.get(status, 0) + 1

    def auth_failure(self, reason: str) -> None:
        self.auth_failures[reason] = self.auth_failures.get(reason, 0) + 1

    def connection_opened(self, transport: str) -> None:
        self.connections_opened[transport] = self.connections_opened.get(transport, 0) + 1
