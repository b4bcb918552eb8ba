"""``tidings serve``: every option is a flag and a ``TIDINGS_<NAME>`` environment variable."""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import uvloop
from aiohttp import web

from tidings import __version__, gclog
from tidings.config import DEFAULT_ENDPOINTS, Config
from tidings.inbox.base import InboxLimits
from tidings.server.app import SERVER_KEY, create_app
from tidings.server.edge import EdgeSite
from tidings.stomp.frames import Limits

_ENV_PREFIX = "TIDINGS_"


def _env(dest: str) -> str | None:
    return os.environ.get(_ENV_PREFIX + dest.upper())


def _add(parser: argparse.ArgumentParser, flag: str, help_: str, **kwargs: object) -> None:
    """Add ``flag`` whose default comes from TIDINGS_<FLAG> when that is set."""
    dest = flag.lstrip("-").replace("-", "_")
    env_name = _ENV_PREFIX + dest.upper()
    env_value = _env(dest)
    if env_value is not None:
        if kwargs.get("action") == "store_true":
            kwargs["default"] = env_value.lower() in ("1", "true", "yes", "on")
        elif kwargs.get("action") == "append":
            kwargs["default"] = [item for item in env_value.split(",") if item]
        else:
            kwargs["default"] = env_value
    default = kwargs.get("default")
    shown = "" if default in (None, [], ()) else f" (default: {default})"
    parser.add_argument(flag, dest=dest, help=f"{help_}{shown} [env {env_name}]", **kwargs)  # type: ignore[arg-type]


def _pair(text: str) -> tuple[int, int]:
    try:
        first, second = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two integers like 10000,10000, got {text!r}"
        ) from None
    if first < 0 or second < 0:
        raise argparse.ArgumentTypeError("heart-beat values must not be negative")
    return first, second


def _positive(text: str) -> float:
    """A positive number of seconds."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidings",
        description="Tidings: real-time notifications over STOMP/WebSocket.",
    )
    parser.add_argument("--version", action="version", version=f"tidings {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run a node",
        description="Run a Tidings node: STOMP over WebSocket on each endpoint, the publish "
        "API under /api/v1 and /pushToOneTest, a demo page at /.",
    )
    limits = Limits()
    defaults = Config()
    _add(serve, "--host", "interface to listen on", default=defaults.host)
    _add(serve, "--port", "TCP port", type=int, default=defaults.port)
    _add(
        serve, "--broker", "broker URL: memory:// (embedded, one process)", default=defaults.broker
    )
    _add(serve, "--node-id", "name of this node in logs and metrics (default: random)", default="")
    _add(
        serve,
        "--endpoint",
        "STOMP WebSocket endpoint path, repeatable; each is also served at <path>/websocket "
        f"(default: {','.join(DEFAULT_ENDPOINTS)})",
        action="append",
    )
    _add(
        serve,
        "--auth",
        "identity: 'none' trusts the CONNECT login header; 'jwt' requires a token",
        choices=["none", "jwt"],
        default=defaults.auth,
    )
    _add(serve, "--jwt-secret", "HS256 secret for --auth jwt")
    _add(serve, "--jwt-public-key", "PEM file with the RS256/ES256 public key for --auth jwt")
    _add(
        serve,
        "--api-key",
        "require 'Authorization: Bearer <key>' on the publish API; without it only loopback "
        "callers may publish",
    )
    _add(
        serve,
        "--send-allow",
        "destination glob clients may SEND to, repeatable ('*' one segment, '**' any depth); "
        "none by default",
        action="append",
    )
    _add(
        serve,
        "--heartbeat",
        "STOMP heart-beat the server offers: send-every-ms,expect-every-ms",
        type=_pair,
        default="10000,10000",
    )
    _add(
        serve,
        "--heartbeat-grace",
        "a client silent for this many expected heart-beat intervals is closed",
        type=float,
        default=defaults.heartbeat_grace,
    )
    _add(
        serve,
        "--max-frame-bytes",
        "largest STOMP frame a client may send",
        type=int,
        default=limits.max_frame_bytes,
    )
    _add(
        serve,
        "--max-headers",
        "most headers in one client frame",
        type=int,
        default=limits.max_headers,
    )
    _add(
        serve,
        "--max-header-line",
        "longest header line, bytes",
        type=int,
        default=limits.max_header_line,
    )
    _add(
        serve,
        "--max-subscriptions",
        "most subscriptions per session",
        type=int,
        default=limits.max_subscriptions,
    )
    _add(
        serve,
        "--max-outbound-bytes",
        "bytes waiting to be sent to one client before it is disconnected as a slow consumer",
        type=int,
        default=defaults.max_outbound_bytes,
    )
    _add(
        serve,
        "--max-message-bytes",
        "largest published message body",
        type=int,
        default=defaults.max_message_bytes,
    )
    _add(
        serve,
        "--legacy-channel",
        "also deliver the seed's {code, form, to, content} JSON published on this Redis "
        "channel (e.g. webSocketMsgPush), as /pushToOneTest does; needs a redis:// broker",
    )
    _add(
        serve,
        "--presence-ttl",
        "seconds after which the sessions of a node that stopped refreshing count as offline",
        type=float,
        default=defaults.presence_ttl_s,
    )
    inbox = defaults.inbox
    _add(
        serve,
        "--inbox-max-messages",
        "messages kept per user inbox (oldest trimmed first)",
        type=int,
        default=inbox.max_messages,
    )
    _add(
        serve,
        "--inbox-max-age",
        "seconds a message stays in an inbox or topic history",
        type=float,
        default=inbox.max_age_s,
    )
    _add(
        serve,
        "--topic-history",
        "messages kept per topic for resume",
        type=int,
        default=inbox.topic_history,
    )
    _add(
        serve,
        "--workers",
        "node processes sharing the port (SO_REUSEPORT) and the broker; needs redis://",
        type=int,
        default=defaults.workers,
    )
    _add(
        serve,
        "--sockjs-allowed-origin",
        "Origin allowed on SockJS requests, repeatable, '*' wildcards "
        "(e.g. https://*.example.com); same-origin requests always pass (default: *)",
        action="append",
    )
    _add(
        serve,
        "--sockjs-disable-transport",
        "SockJS transport to turn off, repeatable: websocket, xhr-streaming, xhr-polling, "
        "eventsource, htmlfile, jsonp-polling, iframe",
        action="append",
    )
    _add(
        serve,
        "--sockjs-heartbeat",
        "seconds between SockJS 'h' frames on an idle receiving request",
        type=float,
        default=defaults.sockjs_heartbeat_s,
    )
    _add(
        serve,
        "--sockjs-session-timeout",
        "seconds a SockJS HTTP session lives after its last receiving request",
        type=float,
        default=defaults.sockjs_session_timeout_s,
    )
    _add(
        serve,
        "--sockjs-client-url",
        "sockjs-client script the SockJS iframe page loads",
        default=defaults.sockjs_client_url,
    )
    _add(
        serve,
        "--sockjs-cookie-needed",
        "set a JSESSIONID cookie on SockJS requests, for balancers that stick on it",
        action="store_true",
    )
    _add(
        serve,
        "--sockjs-stream-limit",
        "bytes one SockJS streaming response carries before the client must open another",
        type=int,
        default=defaults.sockjs_stream_limit,
    )
    _add(
        serve,
        "--head-timeout",
        "seconds a connection's first request head may take to arrive once it has started;"
        " a slower one is answered 408 and the connection closed",
        type=float,
        default=defaults.head_timeout_s,
    )
    _add(
        serve,
        "--connect-timeout",
        "seconds a STOMP session (WebSocket or SockJS) has to send CONNECT once open;"
        " then ERROR and close",
        type=_positive,
        default=defaults.connect_timeout_s,
    )
    _add(
        serve,
        "--keepalive-timeout",
        "seconds an HTTP connection may stay idle (before its first request, between"
        " requests, or with a request never finished) before it is closed",
        type=_positive,
        default=defaults.keepalive_timeout_s,
    )
    _add(
        serve,
        "--max-connections-per-ip",
        "open connections one client address may hold (0: no cap; behind a proxy every"
        " client has the proxy's address, so cap there instead)",
        type=int,
        default=defaults.max_connections_per_ip,
    )
    _add(serve, "--log-level", "debug, info, warning or error", default="info")
    _add(serve, "--access-log", "log every HTTP request", action="store_true")
    _add(
        serve,
        "--gc-log",
        "log every garbage collection and its pause (a diagnostic of loop stalls)",
        action="store_true",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    heartbeat = args.heartbeat if isinstance(args.heartbeat, tuple) else _pair(args.heartbeat)
    public_key = Path(args.jwt_public_key).read_text() if args.jwt_public_key else None
    return Config(
        host=args.host,
        port=int(args.port),
        broker=args.broker,
        node_id=args.node_id,
        endpoints=tuple(args.endpoint) if args.endpoint else DEFAULT_ENDPOINTS,
        auth=args.auth,
        jwt_secret=args.jwt_secret,
        jwt_public_key=public_key,
        api_key=args.api_key or None,
        send_allow=tuple(args.send_allow or ()),
        heartbeat=heartbeat,
        heartbeat_grace=float(args.heartbeat_grace),
        stomp_limits=Limits(
            max_frame_bytes=int(args.max_frame_bytes),
            max_headers=int(args.max_headers),
            max_header_line=int(args.max_header_line),
            max_subscriptions=int(args.max_subscriptions),
        ),
        max_outbound_bytes=int(args.max_outbound_bytes),
        max_message_bytes=int(args.max_message_bytes),
        access_log=bool(args.access_log),
        head_timeout_s=float(args.head_timeout),
        connect_timeout_s=float(args.connect_timeout),
        keepalive_timeout_s=float(args.keepalive_timeout),
        max_connections_per_ip=max(int(args.max_connections_per_ip), 0),
        gc_log=bool(args.gc_log),
        legacy_channel=args.legacy_channel or None,
        presence_ttl_s=float(args.presence_ttl),
        inbox=InboxLimits(
            max_messages=int(args.inbox_max_messages),
            max_age_s=float(args.inbox_max_age),
            topic_history=int(args.topic_history),
        ),
        workers=int(args.workers),
        sockjs_allowed_origins=tuple(args.sockjs_allowed_origin or ("*",)),
        sockjs_disabled_transports=tuple(args.sockjs_disable_transport or ()),
        sockjs_heartbeat_s=float(args.sockjs_heartbeat),
        sockjs_session_timeout_s=float(args.sockjs_session_timeout),
        sockjs_client_url=args.sockjs_client_url,
        sockjs_cookie_needed=bool(args.sockjs_cookie_needed),
        sockjs_stream_limit=int(args.sockjs_stream_limit),
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.auth == "jwt" and not (args.jwt_secret or args.jwt_public_key):
        parser.error("--auth jwt needs --jwt-secret (HS256) or --jwt-public-key (RS256/ES256)")
    try:
        config = config_from_args(args)
    except (OSError, argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))
    if config.workers < 1:
        parser.error("--workers must be at least 1")
    if not config.head_timeout_s > 0:
        parser.error("--head-timeout must be a positive number of seconds")
    if config.workers > 1 and urlsplit(config.broker).scheme not in ("redis", "rediss"):
        parser.error(
            "--workers N needs a shared broker (--broker redis://...): with memory:// each "
            "worker would be a separate island and messages would not cross between them"
        )
    if config.legacy_channel and urlsplit(config.broker).scheme not in ("redis", "rediss"):
        parser.error("--legacy-channel needs a redis:// broker")
    _configure_logging(args.log_level)
    if config.workers > 1:
        sys.exit(run_workers(config, args.log_level))
    serve(config)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _worker(config: Config, log_level: str) -> None:
    _configure_logging(log_level)
    serve(config)


def run_workers(config: Config, log_level: str = "info") -> int:
    """Start ``config.workers`` node processes on one port; forward SIGINT/SIGTERM to them.

    Each worker is a full node with its own id (``<node-id>-w<i>``) bound with
    SO_REUSEPORT, so the kernel spreads connections over them; they meet through the broker.
    Returns 0 when every worker exited cleanly.
    """
    base_id = config.node_id or secrets.token_hex(4)
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(
            target=_worker,
            args=(
                config.replace(node_id=f"{base_id}-w{index}", workers=1, reuse_port=True),
                log_level,
            ),
            name=f"tidings-worker-{index}",
        )
        for index in range(config.workers)
    ]
    for worker in workers:
        worker.start()

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.join()
    return 0 if all(worker.exitcode == 0 for worker in workers) else 1


def serve(config: Config) -> None:
    """Run one node until SIGINT/SIGTERM, then close every session with a reason and exit 0."""
    if config.gc_log:
        gclog.install()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app = create_app(config)
    except ValueError as exc:
        sys.exit(f"tidings: {exc}")
    runner = web.AppRunner(
        app,
        handle_signals=True,  # SIGINT/SIGTERM raise GracefulExit out of the loop
        access_log=logging.getLogger("aiohttp.access") if config.access_log else None,
        shutdown_timeout=config.shutdown_grace_s,
        keepalive_timeout=config.keepalive_timeout_s,  # aiohttp's own: an hour
    )
    try:
        loop.run_until_complete(_start(runner, config))
        print(f"======== Running on http://{config.host}:{config.port} ========", flush=True)
        loop.run_forever()
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        loop.run_until_complete(runner.cleanup())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _start(runner: web.AppRunner, config: Config) -> None:
    await runner.setup()
    site = EdgeSite(
        runner, runner.app[SERVER_KEY], config.host, config.port, reuse_port=config.reuse_port
    )
    await site.start()
