"""The aiohttp application of one node: STOMP WebSocket endpoints, publish API, health.

``Server`` holds what the request handlers share; ``create_app`` wires it into aiohttp.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from tidings import __version__
from tidings.app_webhook import AppWebhook
from tidings.brokers import (
    AMQP_NEEDS_INBOX,
    AMQP_SCHEMES,
    REDIS_SCHEMES,
    Broker,
    MemoryBroker,
    broker_from_url,
)
from tidings.config import Config
from tidings.connect_webhook import ConnectWebhook
from tidings.inbox.base import Inbox
from tidings.inbox.memory import MemoryInbox
from tidings.inbox.pg_schema import PG_SCHEMES
from tidings.metrics import ServerStats
from tidings.node import Node
from tidings.presence import MemoryPresence, Presence
from tidings.send_budget import SendBudget
from tidings.server.admin import AdminApi
from tidings.server.admin_access import client_address, forwarded_for_of
from tidings.server.api import PublishApi, client_max_size, error_response, json_errors
from tidings.server.edge import ORIGIN_NOT_ALLOWED, STOMP_SUBPROTOCOLS, Edge, start_websocket
from tidings.server.me_api import MeApi
from tidings.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tidings.server.metrics import UPGRADED, Metrics, response_counter
from tidings.server.openapi import openapi_document
from tidings.server.openapi_yaml import to_yaml
from tidings.server.session import (
    CLOSE_GOING_AWAY,
    RESUME_HEADER,
    ConnectDeadlines,
    SessionContext,
    StompSession,
)
from tidings.server.sockjs import add_sockjs_routes, greeting_response
from tidings.server.sockjs_test_services import add_sockjs_test_services
from tidings.trust import TrustPolicy, join_field_lines
from tidings.wshandshake import HandshakeError, accept_handshake, is_websocket_upgrade

if TYPE_CHECKING:
    from tidings.server.api_edge import ApiConnection

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/tidings, or an installed one
STATIC_DIR = Path(__file__).parent / "static"
GC_YOUNG_THRESHOLD = 10_000  # tracked allocations between young collections (default 700)
# The browser bundles the package ships (static/vendor/manifest.json: npm package, version,
# license, sha256; copied from node_modules by `./run vendor`, tests/test_vendor.py).
VENDOR_DIR = STATIC_DIR / "vendor"
VENDOR_FILES = frozenset({"stomp.umd.min.js", "sockjs.min.js"})
JAVASCRIPT = "text/javascript; charset=utf-8"
# The body of the ERROR that ends every session at SIGTERM: what the client should do.
SHUTDOWN_ADVICE = (
    "This node is stopping. Reconnect now (another node takes the connection) and "
    f"SUBSCRIBE with {RESUME_HEADER}: <last tidings-id received> to receive what was "
    "sent meanwhile."
)


def build_inbox(config: Config, broker: Broker) -> Inbox | None:
    """The inbox ``--inbox`` names when it is not the broker's own store (issue 20), else
    None. Combinations that cannot work are refused (ValueError; the CLI says it first)."""
    scheme = urlsplit(config.inbox_url).scheme
    if scheme in PG_SCHEMES:
        if config.legacy_channel:
            raise ValueError("--legacy-channel needs the Redis inbox, not --inbox postgresql://")
        from tidings.inbox.postgresql import PostgresInbox  # noqa: PLC0415 - optional

        return PostgresInbox(config.inbox_url, broker, config.inbox, migrate=config.migrate)
    if config.migrate:
        raise ValueError("--migrate applies the schema of a --inbox postgresql:// database")
    if not config.inbox_url or config.inbox_url == config.broker:
        return None
    if scheme == "memory":
        raise ValueError("--inbox memory:// needs --broker memory:// (one node)")
    raise ValueError("--inbox redis://... must be the broker's own Redis (the same URL)")


def database_presence(inbox: Inbox, node_id: str, ttl_s: float) -> Presence:
    """Presence in the PostgreSQL inbox's database (issue 20); the inbox's own otherwise."""
    from tidings.inbox.postgresql import PostgresInbox  # noqa: PLC0415 - optional dependency

    if isinstance(inbox, PostgresInbox):
        from tidings.inbox.pg_presence import PostgresPresence  # noqa: PLC0415

        return PostgresPresence(inbox, node_id, ttl_s=ttl_s)
    return MemoryPresence(node_id)


def build_node(config: Config) -> Node:
    """The node and its broker, presence and inbox, as the URLs' schemes say."""
    node_id = config.node_id or secrets.token_hex(4)
    scheme = urlsplit(config.broker).scheme
    if scheme in REDIS_SCHEMES:
        from tidings.brokers.redis import redis_broker  # noqa: PLC0415 - optional dependency
        from tidings.brokers.redis_presence import RedisPresence  # noqa: PLC0415
        from tidings.inbox.redis import RedisInbox  # noqa: PLC0415

        legacy = config.legacy_channel
        broker = redis_broker(config.broker, raw_channels=(legacy,) if legacy else ())
        presence: Presence = RedisPresence(broker.redis, node_id, ttl_s=config.presence_ttl_s)
        inbox = build_inbox(config, broker) or RedisInbox(
            broker, config.inbox, legacy_channel=legacy
        )
        bridge = None
        if legacy and isinstance(inbox, RedisInbox):
            from tidings.inbox.redis_legacy import LegacyStore  # noqa: PLC0415
            from tidings.legacy import SpringBridge  # noqa: PLC0415

            store = LegacyStore(broker.redis, inbox)
            bridge = SpringBridge(legacy, store, max_bytes=config.max_message_bytes)
        return Node(
            broker,
            presence,
            inbox,
            node_id=node_id,
            bridge=bridge,
            catchup_interval_s=config.catchup_interval_s,
        )
    if config.legacy_channel:
        raise ValueError("--legacy-channel needs a redis:// broker")
    if scheme in AMQP_SCHEMES:
        amqp = broker_from_url(config.broker)
        stored = build_inbox(config, amqp)
        if stored is None:
            raise ValueError(AMQP_NEEDS_INBOX)
        return Node(
            amqp,
            database_presence(stored, node_id, config.presence_ttl_s),
            stored,
            node_id=node_id,
            catchup_interval_s=config.catchup_interval_s,
        )
    memory = broker_from_url(config.broker)  # ValueError naming the supported schemes
    assert isinstance(memory, MemoryBroker)
    return Node(
        memory,
        MemoryPresence(node_id),
        build_inbox(config, memory) or MemoryInbox(memory, config.inbox),
        node_id=node_id,
        catchup_interval_s=config.catchup_interval_s,
    )


def connect_webhook_for(config: Config) -> ConnectWebhook | None:
    """``--auth webhook``'s client of ``--connect-webhook`` (tidings.connect_webhook)."""
    if config.auth != "webhook" or not config.connect_webhook:
        return None
    return ConnectWebhook(
        config.connect_webhook,
        token=config.connect_webhook_token,
        timeout_s=config.connect_webhook_timeout_s,
        max_in_flight=config.connect_webhook_concurrency,
    )


class Server:
    """State shared by every handler of one node.

    The modules it wires never see it: sessions, SockJS and /metrics get its
    ``SessionContext``, the publish API its node and trust policy, the edge those two.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.node = build_node(config)
        self.trust = TrustPolicy.from_config(config)  # every "may they?" (tidings/trust.py)
        self.stats = ServerStats()  # counted by the edges, read by /metrics
        app_webhook: AppWebhook | None = None
        if config.app_webhook:
            app_webhook = AppWebhook(
                config.app_webhook,
                prefix=config.app_prefix,
                token=config.app_webhook_token,
                timeout_s=config.app_webhook_timeout_s,
                max_in_flight=config.app_webhook_concurrency,
                max_message_bytes=config.max_message_bytes,
            )
        self.app_webhook = app_webhook
        self.connect_webhook = connect_webhook_for(config)
        self.context = SessionContext(
            config,
            self.node,
            self.trust,
            self.stats,
            # STOMP 1.2 §CONNECTED: server = name/version *(comment); the comment names the node.
            f"Tidings/{__version__} (node {self.node.id})",
            ConnectDeadlines(config.connect_timeout_s),
            app_webhook,
            self.connect_webhook,
            send_budget=SendBudget(config.max_send_stored_bytes, config.inbox),
        )
        self.exporter = Metrics(self.context)
        self.api = PublishApi(
            self.node, self.trust, self.stats, max_message_bytes=config.max_message_bytes
        )
        self.me = MeApi(self.node, self.trust, self.stats, auth=config.auth)  # /api/v1/me
        self.api_connections: set[ApiConnection] = set()  # publishes served by the edge
        self.admin = AdminApi(self.context, self.api)

    @property
    def sessions(self) -> set[StompSession]:
        return self.context.sessions

    @property
    def shutting_down(self) -> bool:
        return self.context.shutting_down

    def edge(self, http_protocol: Callable[[], asyncio.Protocol]) -> Edge:
        """The first reader of this node's connections (server/edge.py)."""
        return Edge(self.context, self.api, self.api_connections, http_protocol)

    # -- handlers ------------------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """A STOMP endpoint reached through aiohttp: a plain GET, a refused handshake, or an
        upgrade on a kept-alive connection (fresh connections are upgraded by the edge)."""
        if not is_websocket_upgrade(request.headers):
            if request.path in self.config.endpoints:
                return greeting_response()  # SockJS 0.3: GET <endpoint> greets
            return error_response(
                400, "websocket_required", "this is a STOMP endpoint: open a WebSocket here"
            )
        if self.shutting_down:
            return error_response(503, "shutting_down", "the server is shutting down")
        origin = join_field_lines(request.headers.getall("Origin", ()))
        if not self.trust.origin_allowed(origin, request.headers.get("Host")):
            return error_response(403, "origin_not_allowed", ORIGIN_NOT_ALLOWED)
        version = f"HTTP/{request.version.major}.{request.version.minor}"
        try:
            handshake = accept_handshake(
                request.method, version, request.headers, STOMP_SUBPROTOCOLS
            )
        except HandshakeError as exc:
            return error_response(exc.status, "bad_handshake", exc.message, exc.headers)
        transport = request.transport
        assert transport is not None, "a request being handled has a transport"
        # The connection leaves aiohttp: its handler learns of the end when ours does.
        http_protocol = transport.get_protocol()
        ended = asyncio.get_running_loop().create_future()

        def on_lost(exc: BaseException | None) -> None:
            http_protocol.connection_lost(exc if isinstance(exc, Exception) else None)
            if not ended.done():
                ended.set_result(None)

        transport.write(handshake.response)
        request[UPGRADED] = True  # counted as a 101 (server/metrics.py)
        # Frames the client wrote behind its upgrade request (issue 14: they were lost)
        # are what aiohttp's parser read past the head, kept as its message tail.
        handler = request.protocol
        rest, handler._message_tail = handler._message_tail, b""
        token = request.query.get("access_token")
        remote = client_address(self.trust, request.remote, forwarded_for_of(request.headers))
        start_websocket(self.context, transport, token, rest, on_lost=on_lost, remote=remote)
        await ended
        return web.Response()  # not sent: the connection is gone; aiohttp wants a response

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": self.node.id, "pid": os.getpid()})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.shutting_down:
            return web.json_response({"status": "not_ready", "reason": "shutting down"}, status=503)
        if not self.node.ready:
            return web.json_response(
                {"status": "not_ready", "reason": "broker unavailable"}, status=503
            )
        return web.json_response({"status": "ready"})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text exposition format 0.0.4 (server/metrics.py)."""
        body = self.exporter.exposition()
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(version=__version__))

    async def openapi_yaml(self, request: web.Request) -> web.Response:
        """The same document as YAML (media type ``application/yaml``, RFC 9512)."""
        text = to_yaml(openapi_document(version=__version__))
        return web.Response(text=text, content_type="application/yaml", charset="utf-8")

    async def api_docs(self, request: web.Request) -> web.FileResponse:
        """The document rendered for people by a page shipped in the package (no CDN)."""
        return web.FileResponse(STATIC_DIR / "api-docs.html")

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def admin_console(self, request: web.Request) -> web.FileResponse:
        """The operator's console (docs/admin.md): one page, plain JS, no CDN."""
        return web.FileResponse(STATIC_DIR / "admin.html")

    async def favicon(self, request: web.Request) -> web.FileResponse:
        # A 32x32 PNG in an ICO container: what a browser asks for unless a page links an icon.
        return web.FileResponse(
            STATIC_DIR / "favicon.ico", headers={"Content-Type": "image/x-icon"}
        )

    async def sdk(self, request: web.Request) -> web.FileResponse:
        """tidings.js, the browser SDK (an ES module; docs/notification-center.md)."""
        return web.FileResponse(STATIC_DIR / "tidings.js", headers={"Content-Type": JAVASCRIPT})

    async def vendor(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in VENDOR_FILES:
            served = ", ".join(sorted(VENDOR_FILES))
            return error_response(404, "not_found", f"no such client library; served: {served}")
        # RFC 9239's type, not whatever the host's mimetypes table says.
        return web.FileResponse(VENDOR_DIR / name, headers={"Content-Type": JAVASCRIPT})

    # -- lifecycle -----------------------------------------------------------------------
    async def on_startup(self, app: web.Application) -> None:
        await self.node.start()
        if self.app_webhook is not None:
            await self.app_webhook.start()
        if self.connect_webhook is not None:
            await self.connect_webhook.start()
        await self.admin.start()
        self.exporter.start()
        # Modules, classes and the app live as long as the process: keep them out of every
        # later full collection (56k objects here, 18 ms per gen-2 pass that stalls delivery;
        # docs/benchmarks.md found gen-2 pauses behind the S1 tail latency).
        gc.collect()
        gc.freeze()
        # Fewer, larger young collections: a connection storm creates ~26 tracked objects
        # per session, and with the default 700 the full passes over all sessions came
        # every few thousand connects (docs/decisions.md, GC in connection storms).
        gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
        # The start-up line is the CLI's, once the port is bound (cli.startup_line).
        # Which installation runs (a checkout or an installed wheel; tests/test_wheel.py).
        log.debug("tidings %s from %s", __version__, PACKAGE_DIR)

    async def on_shutdown(self, app: web.Application) -> None:
        """The drain at SIGTERM/SIGINT (docs/deploy.md, "Rolling restarts").

        aiohttp's ``runner.cleanup`` has closed the listening socket already, so a proxy's
        new connections are refused and go to another node; then this: /readyz and new
        upgrades on kept-alive connections answer 503, every session gets an ERROR telling
        it to reconnect and resume (WebSocket close 1001), and publishes in flight get up
        to ``Config.shutdown_grace_s`` (5 s) to finish.
        """
        self.context.shutting_down = True
        for session in list(self.sessions):
            session.fail("server shutting down", SHUTDOWN_ADVICE, CLOSE_GOING_AWAY)
        # aiohttp closes its own idle connections and waits for its handlers; these are ours.
        busy = [task for conn in list(self.api_connections) if (task := conn.shut_down())]
        if busy:
            await asyncio.wait(busy, timeout=self.config.shutdown_grace_s)

    async def on_cleanup(self, app: web.Application) -> None:
        self.exporter.stop()
        if self.app_webhook is not None:
            await self.app_webhook.close()
        if self.connect_webhook is not None:
            await self.connect_webhook.close()
        await self.admin.stop()
        await self.node.stop()


SERVER_KEY = web.AppKey("server", Server)


def create_app(config: Config) -> web.Application:
    server = Server(config)
    middlewares = [response_counter(server.stats), json_errors]
    app = web.Application(middlewares=middlewares, client_max_size=client_max_size(config))
    app[SERVER_KEY] = server
    for endpoint in config.endpoints:
        app.router.add_get(endpoint, server.websocket)
        app.router.add_get(f"{endpoint}/websocket", server.websocket)
    app.router.add_get("/healthz", server.healthz)
    app.router.add_get("/readyz", server.readyz)
    app.router.add_get("/metrics", server.metrics)
    app.router.add_get("/api/v1/openapi.json", server.openapi)
    app.router.add_get("/api/v1/openapi.yaml", server.openapi_yaml)
    app.router.add_get("/api/v1/docs", server.api_docs)
    app.router.add_get("/", server.index)
    app.router.add_get("/favicon.ico", server.favicon)
    app.router.add_get("/vendor/{name}", server.vendor)
    app.router.add_get("/tidings.js", server.sdk)
    app.router.add_routes(server.api.routes())
    app.router.add_routes(server.me.routes())
    app.router.add_routes(server.admin.routes())
    app.router.add_get("/admin", server.admin_console)
    app.on_startup.append(server.on_startup)
    app.on_shutdown.append(server.on_shutdown)
    app.on_cleanup.append(server.on_cleanup)
    # Last: its startup needs the node started, its shutdown runs after the sessions'.
    add_sockjs_routes(app, server.context)
    if config.sockjs_test_services:
        add_sockjs_test_services(app, server.context)
    return app
