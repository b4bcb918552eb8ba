"""``/metrics``: Prometheus text exposition (format 0.0.4) by prometheus-client.

One process: a custom collector (``NodeCollector``) reads the node's plain counters
(``node.Counters``, ``metrics.ServerStats``) and live state (sessions, subscriptions) at
scrape time, beside prometheus-client's process and GC collectors. Nothing on the
delivery or publish path touches prometheus-client (see ``tidings/metrics.py``).

Several processes (``tidings serve --workers N``): the parent gives the workers a private
``PROMETHEUS_MULTIPROC_DIR`` (cli.py). Custom collectors are not aggregated in
prometheus-client's multiprocess mode, so each worker copies what those collectors
report into its own memory-mapped files (``MultiprocessMirror``): every second, and
before it answers a scrape. The worker that takes a scrape answers with every worker's
files merged by ``MultiProcessCollector``: counters and histograms summed, live gauges
summed over the workers alive (``livesum``; ``broker_ready`` is the minimum). What
another worker reports is at most ``SYNC_INTERVAL_S`` old (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.values import MultiProcessValue

from tidings.metrics import Histogram, ServerStats
from tidings.stomp.connection import State

if TYPE_CHECKING:
    from tidings.server.session import SessionContext

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SYNC_INTERVAL_S = 1.0
# How a gauge of several workers merges (prometheus-client's multiprocess modes); the
# "live" modes forget a worker once the parent marks it dead. Default: livesum.
GAUGE_MODES = {
    "tidings_broker_ready": "livemin",
    "process_start_time_seconds": "livemin",
    "process_max_fds": "livemax",
}


class NodeCollector(Collector):
    """The node's families, read from its plain counters and live state at scrape time.

    Every family carries ``node``: the node id, or with ``--workers`` the id the workers
    share (so their series merge into one).
    """

    def __init__(self, server: SessionContext) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        node = server.node
        counters = node.counters
        stats = server.stats
        label = server.config.metrics_node or node.id
        connected = sum(1 for s in server.sessions if s.conn.state is State.CONNECTED)

        def family(kind: type[Any], name: str, help_text: str, *labels: str) -> Any:
            return kind(f"tidings_{name}", help_text, labels=["node", *labels])

        def single(kind: type[Any], name: str, help_text: str, value: float) -> Metric:
            metric = family(kind, name, help_text)
            metric.add_metric([label], value)
            return metric  # type: ignore[no-any-return]

        yield single(
            GaugeMetricFamily,
            "connections",
            "Open STOMP connections, every transport",
            len(server.sessions),
        )
        yield single(GaugeMetricFamily, "sessions", "Connected STOMP sessions", connected)
        yield single(
            GaugeMetricFamily,
            "subscriptions",
            "Live STOMP subscriptions",
            node.hub.subscription_count,
        )
        yield single(
            GaugeMetricFamily,
            "broker_channels",
            "Broker channels this node subscribes to",
            len(node.hub.channels),
        )
        yield single(
            GaugeMetricFamily, "broker_ready", "1 while the broker takes publishes", int(node.ready)
        )
        yield single(
            CounterMetricFamily,
            "messages_published",
            "Messages this node handed to the broker",
            counters.published,
        )
        received = family(
            CounterMetricFamily,
            "broker_messages_received",
            "Messages this node received from the broker, by channel kind",
            "kind",
        )
        for kind, value in counters.received.items():
            received.add_metric([label, kind], value)
        yield received
        yield single(
            CounterMetricFamily,
            "frames_delivered",
            "MESSAGE frames queued to clients",
            counters.delivered,
        )
        yield single(
            CounterMetricFamily,
            "slow_consumer_disconnects",
            "Clients disconnected for not reading",
            counters.slow_consumers,
        )
        yield single(
            CounterMetricFamily,
            "broker_reconnects",
            "Broker subscriber reconnections",
            getattr(node.broker, "reconnects", 0),
        )
        catchup = node.catchup.counters
        for name, help_text, value in (
            (
                "catchup_messages",
                "Stored messages missed live and delivered from the inbox by a catch-up",
                catchup.messages,
            ),
            (
                "catchup_runs",
                "Catch-ups that read channels' streams (after a broker break or a check)",
                catchup.runs,
            ),
            (
                "catchup_gaps",
                "Channels found trimmed past what this node had delivered",
                catchup.gaps,
            ),
            (
                "catchup_checks",
                "Safety-net passes comparing every channel with its stream",
                catchup.passes,
            ),
        ):
            yield single(CounterMetricFamily, name, help_text, value)
        responses = family(
            CounterMetricFamily,
            "http_responses",
            "HTTP responses (101: WebSocket handshakes) by route template and status",
            "route",
            "status",
        )
        for route, by_status in sorted(stats.responses.items()):
            for status, value in sorted(by_status.items()):
                responses.add_metric([label, route, str(status)], value)
        yield responses
        auth = family(
            CounterMetricFamily, "auth_failures", "Refused credentials, by reason", "reason"
        )
        for reason, value in sorted(stats.auth_failures.items()):
            auth.add_metric([label, reason], value)
        yield auth
        opened = family(
            CounterMetricFamily,
            "connections_opened",
            "STOMP connections opened, by transport (websocket, sockjs-<transport>)",
            "transport",
        )
        for transport, value in sorted(stats.connections_opened.items()):
            opened.add_metric([label, transport], value)
        yield opened
        yield _histogram(
            "tidings_publish_latency_seconds",
            "HTTP publish: request in to stored and announced by the broker (2xx answers)",
            label,
            stats.publish_latency,
        )
        yield _histogram(
            "tidings_delivery_lag_seconds",
            "Stored (inbox id time, 1 ms resolution) to MESSAGE frames written to the "
            "sockets; once per message per node",
            label,
            counters.delivery_lag,
        )


def _histogram(name: str, help_text: str, label: str, histogram: Histogram) -> Metric:
    metric = HistogramMetricFamily(name, help_text, labels=["node"])
    metric.add_metric([label], histogram.cumulative(), histogram.sum)
    return metric


def local_collectors(server: SessionContext) -> list[Collector]:
    """What this process reports: the node's families, the process's and the GC's."""
    registry = CollectorRegistry(auto_describe=False)  # GCCollector insists on registering
    return [NodeCollector(server), ProcessCollector(registry=None), GCCollector(registry=registry)]


class Metrics:
    """The /metrics answer of one node: its own collectors, or every worker's files."""

    def __init__(self, server: SessionContext) -> None:
        self._collectors = local_collectors(server)
        self._registry = CollectorRegistry(auto_describe=False)
        self._mirror: MultiprocessMirror | None = None
        self._timer: asyncio.TimerHandle | None = None
        multiproc_dir = os.environ.get(MULTIPROC_ENV)  # set by `tidings serve --workers N`
        if multiproc_dir:
            self._mirror = MultiprocessMirror()
            MultiProcessCollector(self._registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
        else:
            for collector in self._collectors:
                self._registry.register(collector)

    def start(self) -> None:
        """In multiprocess mode, copy this worker's values to its files every second."""
        if self._mirror is not None:
            self.sync()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def sync(self) -> None:
        """Copy every local family into this worker's files, and again in a second."""
        assert self._mirror is not None
        self._mirror.write(metric for c in self._collectors for metric in c.collect())
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(SYNC_INTERVAL_S, self.sync)

    def exposition(self) -> bytes:
        """The text exposition of this node (of every worker, in multiprocess mode)."""
        if self._mirror is not None:
            self.sync()
        return generate_latest(self._registry)


class MultiprocessMirror:
    """Writes collector samples into this process's prometheus-client multiprocess files.

    A counter's, gauge's or histogram bucket's file value is set to the value the
    collector reports now (each process's file holds its own totals, which
    ``MultiProcessCollector`` sums), so a sync is idempotent and needs no deltas.
    Histogram buckets are stored per bucket, not cumulative, as prometheus-client's own
    ``Histogram`` stores them; ``_count`` and ``_created`` are not stored (the collector
    derives the count; created timestamps are off in multiprocess mode).
    """

    def __init__(self) -> None:
        self._value_class = MultiProcessValue()  # type: ignore[no-untyped-call]
        self._values: dict[tuple[str, str, tuple[tuple[str, str], ...]], Any] = {}

    def write(self, metrics: Iterable[Metric]) -> None:
        for metric in metrics:
            below: dict[tuple[tuple[str, str], ...], float] = {}  # cumulative so far
            for sample in metric.samples:
                name = sample.name
                if name.endswith(("_created", "_count")) and metric.type != "gauge":
                    continue
                labels = sample.labels
                value = sample.value
                if metric.type == "histogram" and name.endswith("_bucket"):
                    rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
                    value, below[rest] = value - below.get(rest, 0.0), value
                self._value(metric, name, labels).set(value)

    def _value(self, metric: Metric, name: str, labels: dict[str, str]) -> Any:
        key = (metric.name, name, tuple(sorted(labels.items())))
        value = self._values.get(key)
        if value is None:
            typ = metric.type if metric.type in ("counter", "gauge", "histogram") else "gauge"
            mode = GAUGE_MODES.get(metric.name, "livesum") if typ == "gauge" else ""
            value = self._values[key] = self._value_class(
                typ,
                metric.name,
                name,
                tuple(labels),
                tuple(labels.values()),
                metric.documentation,
                multiprocess_mode=mode,
            )
        return value


UPGRADED = "tidings.upgraded"
"""Set on an aiohttp request whose connection became a WebSocket: counted as a 101."""


def response_counter(stats: ServerStats) -> Middleware:
    """aiohttp middleware counting every response by route template and status."""

    @web.middleware
    async def count_responses(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            stats.response(route, exc.status)
            raise
        except Exception:
            stats.response(route, 500)  # aiohttp answers an unhandled error with a 500
            raise
        stats.response(route, 101 if request.get(UPGRADED) else response.status)
        return response

    return count_responses
