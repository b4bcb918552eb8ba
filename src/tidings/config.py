"""Node configuration: one frozen dataclass, filled by the CLI from flags and ``TIDINGS_*``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tidings.inbox.base import InboxLimits
from tidings.publish_rules import DEFAULT_MAX_MESSAGE_BYTES
from tidings.stomp.frames import Limits

# Loopback: nginx on the same machine (deploy/nginx.conf). Also tidings.trust's default.
DEFAULT_TRUSTED_PROXIES = ("127.0.0.0/8", "::1/128")

DEFAULT_ENDPOINTS = ("/publicServer", "/privateServer", "/stomp")


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a node needs to start; every field has a sane default."""

    host: str = "127.0.0.1"
    port: int = 9908
    broker: str = "memory://"
    # Where messages are stored (issue 20): "" is the broker's own store (memory:// or
    # its Redis); postgresql://... a PostgreSQL database with any broker.
    inbox_url: str = ""
    migrate: bool = False  # apply the PostgreSQL inbox's schema migrations at start
    node_id: str = ""
    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    # Identity: "none" trusts the CONNECT login header; "jwt" verifies a token; "webhook"
    # asks connect_webhook (tidings.connect_webhook).
    auth: str = "none"
    jwt_secret: str | None = None
    jwt_public_key: str | None = None  # PEM text, not a path
    jwt_audience: str | None = None  # required aud claim, when set
    jwt_issuer: str | None = None  # required iss claim, when set
    jwt_allow_no_exp: bool = False  # accept tokens without exp (they never expire)
    allow_query_token: bool = False  # also take the token from ?access_token=
    api_key: str | None = None
    # --auth webhook: CONNECT headers are POSTed here; a 2xx {"user": id} admits the session.
    connect_webhook: str | None = None
    connect_webhook_token: str | None = None
    connect_webhook_timeout_s: float = 5.0  # below connect_timeout_s
    connect_webhook_concurrency: int = 64
    # Proxies whose X-Forwarded-For names the client (tidings.trust); () trusts nobody.
    trusted_proxies: tuple[str, ...] = DEFAULT_TRUSTED_PROXIES
    # Origin patterns a browser page may open a WebSocket or SockJS session from ("*": any).
    allowed_origins: tuple[str, ...] = ("*",)
    # Glob patterns of destinations a client may SEND to (e.g. "/topic/chat/**"); none by default.
    send_allow: tuple[str, ...] = ()
    # STOMP heart-beat the server offers: send every sx ms, expect every sy ms (seed: 10000,10000).
    heartbeat: tuple[int, int] = (10000, 10000)
    # A client is declared dead after this many expected heart-beat intervals of silence.
    heartbeat_grace: float = 3.0
    stomp_limits: Limits = field(default_factory=Limits)
    max_outbound_bytes: int = 1024 * 1024  # per connection; past it: slow consumer, disconnect
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # body of one published message
    # SEND frames one session may publish: per second, and in one burst; 0: no limit.
    send_rate: int = 100
    send_burst: int = 200
    # Bytes the stored SENDs of this node's clients may hold (tidings.send_budget); 0: no cap.
    max_send_stored_bytes: int = 64 * 1024 * 1024
    shutdown_grace_s: float = 5.0
    # Timeouts and caps against one client holding resources (docs/security.md).
    head_timeout_s: float = 5.0  # a request head incomplete this long: 408, closed
    body_timeout_s: float = 10.0  # a request body incomplete this long after its head: 408
    connect_timeout_s: float = 10.0  # a STOMP session without CONNECT this long: ERROR, closed
    keepalive_timeout_s: float = 75.0  # an HTTP connection idle this long is closed
    max_connections_per_ip: int = 0  # open connections per client address; 0: no cap
    access_log: bool = False  # one log line per HTTP request
    gc_log: bool = False  # one log line per garbage collection (tidings.gclog)
    # Client SENDs to app_prefix/... are POSTed to app_webhook (tidings.app_webhook).
    app_webhook: str | None = None
    app_prefix: str = "/app"
    app_webhook_token: str | None = None
    app_webhook_timeout_s: float = 5.0
    app_webhook_concurrency: int = 64
    # Also deliver the seed's {code, form, to, content} JSON published on this Redis channel.
    legacy_channel: str | None = None
    presence_ttl_s: float = 15.0
    # Seconds between two passes of the catch-up safety net (tidings.catchup); 0: none.
    catchup_interval_s: float = 5.0
    inbox: InboxLimits = field(default_factory=InboxLimits)
    workers: int = 1
    # The node label on /metrics when not node_id: the id every worker of one
    # `tidings serve --workers N` shares, so their series merge (server/metrics.py).
    metrics_node: str = ""
    reuse_port: bool = False
    # SockJS (docs/sockjs.md); its Origin check is allowed_origins'.
    # Transports turned off, by sockjs-client's names (websocket, xhr-streaming, ...).
    sockjs_disabled_transports: tuple[str, ...] = ()
    sockjs_heartbeat_s: float = 25.0  # an idle receiving request gets an "h" frame this often
    sockjs_session_timeout_s: float = 5.0  # a session dies this long after its last receiver
    sockjs_client_url: str = "/vendor/sockjs.min.js"  # loaded by the iframe page
    sockjs_cookie_needed: bool = False  # set JSESSIONID, for balancers that stick on it
    sockjs_stream_limit: int = 128 * 1024  # bytes one streaming response carries, then ends
    # The SockJS protocol suite's echo/close services (docs/sockjs.md); never in production.
    sockjs_test_services: bool = False

    def replace(self, **changes: object) -> Config:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
