"""``tidings serve``: run a node. Options come from flags, ``TIDINGS_*`` and a TOML file.

``OPTIONS`` is the table of every option (tidings/options.py reads it: precedence,
types, ranges); ``config_from_options`` turns the resolved values into a ``Config``.
A new option is one ``Option(...)`` row here and one line there.

Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 1 when the node cannot start (the
port is taken, Redis is too old) or, under ``--workers``, workers keep dying, 2 for a
bad option (argparse's convention), each with a one-line message and no traceback
(docs/deploy.md, Exit codes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import multiprocessing
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

from tidings import __version__, gclog, logs
from tidings.auth import verifier_for
from tidings.brokers import AMQP_NEEDS_INBOX, AMQP_SCHEMES, REDIS_SCHEMES
from tidings.config import DEFAULT_ENDPOINTS, DEFAULT_TRUSTED_PROXIES, Config
from tidings.errors import TidingsError
from tidings.inbox.base import InboxLimits
from tidings.inbox.memory import MAX_REPLICA_TIMEOUT_S
from tidings.inbox.pg_schema import PG_SCHEMES, SchemaNotReady
from tidings.options import (
    CONFIG_ENV,
    BrokerUrl,
    Choice,
    EndpointPath,
    InboxUrl,
    Integer,
    Many,
    Option,
    OptionError,
    Pair,
    Resolved,
    Seconds,
    Switch,
    Text,
    load_toml,
    redact_url,
    resolve,
)
from tidings.server.app import SERVER_KEY, create_app
from tidings.server.edge import EdgeSite
from tidings.server.sockjs import TRANSPORTS
from tidings.server.sockjs_test_services import PATHS as TEST_SERVICES
from tidings.stomp.frames import Limits
from tidings.trust import api_key_problem, parse_networks
from tidings.workers import EXIT_START_FAILED, READY, Supervisor

log = logging.getLogger("tidings")

EXIT_USAGE = 2
PORT_RANGE = Integer(1, 65535, metavar="PORT")
_CONFIG = Config()
_LIMITS = Limits()
_INBOX = InboxLimits()

OPTIONS: tuple[Option, ...] = (
    # -- listening
    Option(
        "host", Text("ADDRESS"), _CONFIG.host, "interface to listen on (0.0.0.0: all)", "listen"
    ),
    Option("port", PORT_RANGE, _CONFIG.port, "TCP port to listen on (1-65535)", "listen"),
    Option(
        "endpoint",
        Many(EndpointPath()),
        list(DEFAULT_ENDPOINTS),
        "URL path of a STOMP WebSocket endpoint, repeatable; each also answers SockJS and "
        "<path>/websocket",
        "listen",
        shown_default=",".join(DEFAULT_ENDPOINTS),
    ),
    Option(
        "workers",
        Integer(1),
        _CONFIG.workers,
        "node processes sharing the port (the kernel spreads connections over them); "
        "more than 1 needs a shared broker (Redis or RabbitMQ)",
        "listen",
    ),
    # -- broker
    Option(
        "broker",
        BrokerUrl(),
        _CONFIG.broker,
        "where nodes meet and messages are stored: memory:// keeps everything in this one "
        "process; redis://[:password@]host:port/db (rediss:// for TLS) shares it between "
        "nodes and survives restarts; redis+sentinel://host:port[,host:port...]/<master>"
        "[?db=&password=&sentinel_password=] finds the master through Redis Sentinel and "
        "follows its failovers; redis+cluster://host:port[,host:port...][?password=] "
        "spreads channels over the masters of a Redis Cluster (rediss+cluster:// for TLS)",
        "broker",
    ),
    Option(
        "inbox",
        InboxUrl(),
        "",
        "where messages are stored, if not in the broker's own store: "
        "postgresql://user:password@host:port/database keeps inboxes in PostgreSQL with any "
        "broker (its schema comes from `tidings migrate`, or --migrate); memory:// only "
        "with --broker memory://, a Redis URL only as the broker's own",
        "broker",
        shown_default="the broker's",
    ),
    Option(
        "migrate",
        Switch(),
        False,
        "apply the PostgreSQL inbox's schema migrations at start (as `tidings migrate`)",
        "broker",
    ),
    Option(
        "node-id",
        Text("NAME"),
        "",
        "name of this node in logs, metrics and presence",
        "broker",
        shown_default="random",
    ),
    Option(
        "legacy-channel",
        Text("CHANNEL"),
        None,
        "bridge to the Spring Boot service through this Redis channel (e.g. "
        "webSocketMsgPush), both ways: the {code, form, to, content} JSON it publishes "
        "there is stored in the inbox of `to` and delivered as POST /pushToOneTest does, "
        "and user messages to /message published to Tidings are also published there "
        "for its instances; needs a Redis broker (redis://, redis+sentinel:// or "
        "redis+cluster://)",
        "broker",
    ),
    Option(
        "presence-ttl",
        Seconds(),
        _CONFIG.presence_ttl_s,
        "seconds after which the users of a node that stopped refreshing count as offline",
        "broker",
    ),
    Option(
        "catchup-interval",
        Seconds(zero_means="never"),
        _CONFIG.catchup_interval_s,
        "seconds between two checks that every channel this node delivers is up to date "
        "with its stored stream (missed live messages are then read from it); 0: never",
        "broker",
    ),
    # -- identity and permissions
    Option(
        "auth",
        Choice(choices=("none", "jwt", "webhook")),
        _CONFIG.auth,
        "who a client is: 'none' trusts the login header of its CONNECT frame; 'jwt' "
        "requires a signed token whose sub claim is the user id; 'webhook' asks "
        "--connect-webhook",
        "auth",
    ),
    Option(
        "connect-webhook",
        Text("URL"),
        None,
        "with --auth webhook: POST every CONNECT's headers, transport and client address to "
        'this URL as JSON; a 2xx {"user": ID} admits the session as that user, anything '
        "else refuses it (docs/security.md)",
        "auth",
    ),
    Option(
        "connect-webhook-token",
        Text("TOKEN"),
        None,
        "sent to --connect-webhook as 'Authorization: Bearer TOKEN'",
        "auth",
    ),
    Option(
        "connect-webhook-timeout",
        Seconds(),
        _CONFIG.connect_webhook_timeout_s,
        "a CONNECT whose webhook call is not answered within this is refused; below "
        "--connect-timeout",
        "auth",
    ),
    Option(
        "connect-webhook-concurrency",
        Integer(),
        _CONFIG.connect_webhook_concurrency,
        "connect webhook calls one node makes at a time; further CONNECTs wait (within "
        "--connect-webhook-timeout)",
        "auth",
    ),
    Option("jwt-secret", Text("SECRET"), None, "HS256 secret (32+ bytes) for --auth jwt", "auth"),
    Option(
        "jwt-public-key",
        Text("PEM_FILE"),
        None,
        "file with the RS256 or ES256 public key (or certificate) for --auth jwt",
        "auth",
    ),
    Option(
        "jwt-audience",
        Text("AUD"),
        None,
        "tokens must name this audience in their aud claim (RFC 7519 §4.1.3)",
        "auth",
    ),
    Option(
        "jwt-issuer",
        Text("ISS"),
        None,
        "tokens must carry this iss claim (RFC 7519 §4.1.1)",
        "auth",
    ),
    Option(
        "jwt-allow-no-exp",
        Switch(),
        False,
        "accept tokens without an exp claim (they never expire); by default exp is required "
        "and a session is ended when its token expires",
        "auth",
    ),
    Option(
        "allow-query-token",
        Switch(),
        False,
        "also take the token from an access_token query parameter (it may end up in proxy "
        "and browser logs); by default only the CONNECT frame carries it",
        "auth",
    ),
    Option(
        "api-key",
        Text("KEY"),
        None,
        "back ends must send 'Authorization: Bearer KEY' to publish; without a key only "
        "callers on this machine (loopback) may publish",
        "auth",
    ),
    Option(
        "trusted-proxy",
        Many(Text("CIDR")),
        [],
        "address or network of a proxy whose X-Forwarded-For names the client, repeatable; "
        "the client is the rightmost entry not in this list (nginx realip); a list replaces "
        "the default; 'none' trusts no proxy (forwarded headers are ignored)",
        "auth",
        shown_default=",".join(DEFAULT_TRUSTED_PROXIES),
    ),
    Option(
        "allowed-origin",
        Many(Text("ORIGIN")),
        [],
        "Origin a browser page may connect from (WebSocket and SockJS), repeatable, '*' "
        "wildcards (e.g. https://*.example.com); same-origin pages and clients sending no "
        "Origin always pass",
        "auth",
        shown_default="*",
    ),
    Option(
        "send-allow",
        Many(Text("GLOB")),
        [],
        "destination clients may SEND to, repeatable ('*' matches one path segment, '**' "
        "any number); clients may SEND nowhere by default",
        "auth",
    ),
    # -- client messages to the back end
    Option(
        "app-webhook",
        Text("URL"),
        None,
        "POST each client SEND to <app-prefix>/... to this URL as JSON {user, session, "
        "destination, headers, body}; its answer's 'reply' goes to the sender's "
        "/user/queue/reply, failures to /user/queue/errors (docs/notification-center.md)",
        "app",
    ),
    Option(
        "app-prefix",
        Text("PREFIX"),
        _CONFIG.app_prefix,
        "the destinations whose SENDs go to --app-webhook (Spring's application prefix)",
        "app",
    ),
    Option(
        "app-webhook-token",
        Text("TOKEN"),
        None,
        "sent to --app-webhook as 'Authorization: Bearer TOKEN'",
        "app",
    ),
    Option(
        "app-webhook-timeout",
        Seconds(),
        _CONFIG.app_webhook_timeout_s,
        "a webhook call not answered within this is reported on /user/queue/errors",
        "app",
    ),
    Option(
        "app-webhook-concurrency",
        Integer(),
        _CONFIG.app_webhook_concurrency,
        "webhook calls one node makes at a time; further SENDs wait (back-pressure)",
        "app",
    ),
    # -- STOMP sessions and limits
    Option(
        "heartbeat",
        Pair(),
        _CONFIG.heartbeat,
        "STOMP heart-beat the server offers: send every SEND_MS, expect every EXPECT_MS",
        "limits",
        shown_default="10000,10000",
    ),
    Option(
        "heartbeat-grace",
        Seconds("INTERVALS"),
        _CONFIG.heartbeat_grace,
        "a client silent for this many expected heart-beat intervals is disconnected",
        "limits",
    ),
    Option(
        "max-frame-bytes",
        Integer(1),
        _LIMITS.max_frame_bytes,
        "largest STOMP frame a client may send",
        "limits",
    ),
    Option("max-headers", Integer(1), _LIMITS.max_headers, "most headers in a frame", "limits"),
    Option(
        "max-header-line",
        Integer(1),
        _LIMITS.max_header_line,
        "longest header line, in bytes",
        "limits",
    ),
    Option(
        "max-subscriptions",
        Integer(1),
        _LIMITS.max_subscriptions,
        "most subscriptions one session may hold",
        "limits",
    ),
    Option(
        "max-outbound-bytes",
        Integer(1),
        _CONFIG.max_outbound_bytes,
        "bytes that may wait to be sent to one client; past this it is disconnected as a "
        "slow consumer",
        "limits",
    ),
    Option(
        "max-message-bytes",
        Integer(1),
        _CONFIG.max_message_bytes,
        "largest message body a back end may publish",
        "limits",
    ),
    Option(
        "send-rate",
        Integer(0),
        _CONFIG.send_rate,
        "SEND frames one STOMP session may publish per second, on average; past it (and "
        "its --send-burst) the session is ended with an ERROR; 0: no limit",
        "limits",
    ),
    Option(
        "send-burst",
        Integer(1),
        _CONFIG.send_burst,
        "SEND frames one STOMP session may publish at once above --send-rate",
        "limits",
    ),
    Option(
        "max-send-stored-bytes",
        Integer(0),
        _CONFIG.max_send_stored_bytes,
        "bytes that client SENDs to this node may keep stored in topic histories and "
        "inboxes; a SEND past it is refused with an ERROR; 0: no cap",
        "limits",
    ),
    Option(
        "head-timeout",
        Seconds(),
        _CONFIG.head_timeout_s,
        "seconds a request head may take to arrive once it has started; a slower one is "
        "answered 408 and the connection closed",
        "limits",
    ),
    Option(
        "body-timeout",
        Seconds(),
        _CONFIG.body_timeout_s,
        "seconds a request body may take to arrive once its head has; a slower one is "
        "answered 408 and the connection closed",
        "limits",
    ),
    Option(
        "connect-timeout",
        Seconds(),
        _CONFIG.connect_timeout_s,
        "seconds a STOMP session (WebSocket or SockJS) has to send CONNECT once open; "
        "then ERROR and close",
        "limits",
    ),
    Option(
        "keepalive-timeout",
        Seconds(),
        _CONFIG.keepalive_timeout_s,
        "seconds an HTTP connection may stay idle (before its first request, between "
        "requests, or with a request never finished) before it is closed",
        "limits",
    ),
    Option(
        "max-connections-per-ip",
        Integer(0),
        _CONFIG.max_connections_per_ip,
        "open connections one client address may hold; 0: no cap (behind a proxy every "
        "client has the proxy's address: cap there instead)",
        "limits",
        shown_default="0",
    ),
    # -- inbox
    Option(
        "inbox-max-messages",
        Integer(1),
        _INBOX.max_messages,
        "messages kept per user inbox; the oldest go first",
        "inbox",
    ),
    Option(
        "inbox-max-age",
        Seconds(),
        _INBOX.max_age_s,
        "seconds a message stays in an inbox or a topic's history",
        "inbox",
    ),
    Option(
        "inbox-idempotency-ttl",
        Seconds(),
        _INBOX.idempotency_ttl_s,
        "seconds an idempotency key (Idempotency-Key, a message's id field) is remembered "
        "per user or topic: a publish repeating it within this stores nothing and gets the "
        "first id; on Redis each key holds ~165 B meanwhile",
        "inbox",
    ),
    Option(
        "topic-history",
        Integer(0),
        _INBOX.topic_history,
        "messages kept per topic, for clients that resume (0: none)",
        "inbox",
    ),
    Option(
        "inbox-min-replicas",
        Integer(0),
        _INBOX.min_replicas,
        "Redis replicas that must hold a published message (Redis WAIT) before it is "
        "answered 2xx; fewer within --inbox-replica-timeout: 503 (the message may exist: "
        "retry with the same Idempotency-Key). Needs a Redis broker",
        "inbox",
    ),
    Option(
        "inbox-replica-timeout",
        Integer(1, int(MAX_REPLICA_TIMEOUT_S * 1000), metavar="MS"),
        int(_INBOX.replica_timeout_s * 1000),
        "milliseconds a publish waits for --inbox-min-replicas replicas (1-10000)",
        "inbox",
    ),
    # -- SockJS
    Option(
        "sockjs-allowed-origin",
        Many(Text("ORIGIN")),
        [],
        "older name of --allowed-origin (both add to one list, which guards WebSocket and "
        "SockJS alike)",
        "sockjs",
        shown_default="*",
    ),
    Option(
        "sockjs-disable-transport",
        Many(Choice(choices=TRANSPORTS, label="TRANSPORT")),
        [],
        f"SockJS transport to turn off, repeatable: {', '.join(TRANSPORTS)}",
        "sockjs",
    ),
    Option(
        "sockjs-heartbeat",
        Seconds(),
        _CONFIG.sockjs_heartbeat_s,
        "seconds between SockJS 'h' frames on an idle receiving request",
        "sockjs",
    ),
    Option(
        "sockjs-session-timeout",
        Seconds(),
        _CONFIG.sockjs_session_timeout_s,
        "seconds a SockJS HTTP session lives after its last receiving request",
        "sockjs",
    ),
    Option(
        "sockjs-client-url",
        Text("URL"),
        _CONFIG.sockjs_client_url,
        "sockjs-client script the SockJS iframe page loads",
        "sockjs",
    ),
    Option(
        "sockjs-cookie-needed",
        Switch(),
        False,
        "set a JSESSIONID cookie on SockJS requests, for balancers that stick on it",
        "sockjs",
    ),
    Option(
        "sockjs-stream-limit",
        Integer(1),
        _CONFIG.sockjs_stream_limit,
        "bytes one SockJS streaming response carries before the client opens another",
        "sockjs",
    ),
    Option(
        "sockjs-test-services",
        Switch(),
        False,
        "also serve /echo, /close, /cookie_needed_echo and /disabled_websocket_echo, the "
        "services the SockJS protocol test suite expects; for conformance testing only, "
        "never in production; refused with --auth jwt",
        "sockjs",
    ),
    # -- logs
    Option("log-level", Choice(choices=logs.LEVELS), "info", "least severe level logged", "logs"),
    Option(
        "log-format",
        Choice(choices=logs.FORMATS),
        "text",
        "text lines, or one JSON object per line (time, level, logger, message, extras)",
        "logs",
    ),
    Option("access-log", Switch(), False, "log every HTTP request", "logs"),
    Option(
        "gc-log",
        Switch(),
        False,
        "log every garbage collection and its pause (to diagnose event-loop stalls)",
        "logs",
    ),
)

GROUPS = {
    "listen": "listening",
    "broker": "broker and scale-out",
    "auth": "identity and permissions",
    "app": "client messages to the back end",
    "limits": "STOMP sessions and limits",
    "inbox": "inbox and topic history",
    "sockjs": "SockJS",
    "logs": "logs",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``tidings`` command line; ``tidings serve`` has every option of ``OPTIONS``."""
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    # A bad option is argparse's error: the usage line, then "tidings serve: error: ...",
    # exit code 2 (EXIT_USAGE).
    parser = argparse.ArgumentParser(
        prog="tidings",
        description="Tidings: real-time notifications over STOMP/WebSocket.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"tidings {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run a node",
        usage="tidings serve [--config FILE] [OPTION ...]",
        description="Run a Tidings node: STOMP over WebSocket (and SockJS) on each endpoint, "
        "the publish API under /api/v1 and POST /pushToOneTest, health at /healthz and "
        "/readyz, metrics at /metrics, a demo page at /. Every option is also an "
        "environment variable (--api-key: TIDINGS_API_KEY) and a key of the --config "
        'file (api-key = "..."); a flag beats the environment, which beats the file.',
        epilog="Exit codes: 0 stopped cleanly, 1 could not start (e.g. port taken), "
        "2 bad option. docs/deploy.md has a config file example.",
    )
    migrate_cmd = commands.add_parser(
        "migrate",
        help="create or update the PostgreSQL inbox's schema",
        usage="tidings migrate --inbox postgresql://...",
        description="Apply the schema migrations of the PostgreSQL inbox (the schema "
        "`tidings`) that the database lacks, in one transaction; a node started without "
        "them refuses to start (exit code 2).",
        epilog="Exit codes: 0 up to date, 1 the database cannot be reached, 2 bad option.",
    )
    migrate_cmd.add_argument(
        "--inbox",
        metavar="URL",
        help="postgresql://user:password@host:port/database [env TIDINGS_INBOX]",
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML file of options, keyed by long option name (port = 9908) [env {CONFIG_ENV}]",
    )
    groups = {key: serve.add_argument_group(title) for key, title in GROUPS.items()}
    for option in OPTIONS:
        _add_flag(groups[option.group], option)
    return parser, serve


def _add_flag(group: argparse._ArgumentGroup, option: Option) -> None:
    """The option's flag; its default is None so that a flag given can be told apart."""
    kind = option.kind
    shown = option.shown_default if option.shown_default is not None else option.default
    default = "" if shown in (None, "", [], False) else f" (default: {shown})"
    help_ = f"{option.help}{default} [env {option.env}]"
    if kind.switch:
        group.add_argument(
            option.flag, dest=option.dest, action=argparse.BooleanOptionalAction, help=help_
        )
        return
    group.add_argument(
        option.flag,
        dest=option.dest,
        metavar=kind.metavar,
        type=_flag_type(option),
        action="append" if kind.many else "store",
        help=help_,
    )


def _flag_type(option: Option) -> Any:
    """argparse's ``type=``: the option's reading of one flag value, errors in its words."""

    def parse(text: str) -> Any:
        try:
            value = option.kind.from_text(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value[0] if option.kind.many else value

    return parse


# -- from options to a Config -----------------------------------------------------------------
def resolve_options(args: argparse.Namespace, environ: Mapping[str, str]) -> Resolved:
    """The value of every option, by precedence; OptionError naming what is wrong."""
    config_path = args.config or environ.get(CONFIG_ENV) or None
    document = load_toml(config_path) if config_path else None
    return resolve(OPTIONS, vars(args), environ, document, config_path or "config file")


def config_from_options(values: Resolved) -> Config:
    """The node's Config; OptionError for combinations that cannot work."""
    v = values.values
    public_key = _read_key(v["jwt-public-key"]) if v["jwt-public-key"] else None
    config = Config(
        host=v["host"],
        port=v["port"],
        broker=v["broker"],
        inbox_url=v["inbox"],
        migrate=v["migrate"],
        node_id=v["node-id"],
        endpoints=tuple(v["endpoint"]) or DEFAULT_ENDPOINTS,
        auth=v["auth"],
        jwt_secret=v["jwt-secret"] or None,
        jwt_public_key=public_key,
        jwt_audience=v["jwt-audience"] or None,
        jwt_issuer=v["jwt-issuer"] or None,
        jwt_allow_no_exp=v["jwt-allow-no-exp"],
        allow_query_token=v["allow-query-token"],
        api_key=v["api-key"] or None,
        connect_webhook=v["connect-webhook"] or None,
        connect_webhook_token=v["connect-webhook-token"] or None,
        connect_webhook_timeout_s=v["connect-webhook-timeout"],
        connect_webhook_concurrency=v["connect-webhook-concurrency"],
        trusted_proxies=tuple(v["trusted-proxy"]) or DEFAULT_TRUSTED_PROXIES,
        allowed_origins=tuple(v["allowed-origin"] + v["sockjs-allowed-origin"]) or ("*",),
        send_allow=tuple(v["send-allow"]),
        heartbeat=v["heartbeat"],
        heartbeat_grace=v["heartbeat-grace"],
        stomp_limits=Limits(
            max_frame_bytes=v["max-frame-bytes"],
            max_headers=v["max-headers"],
            max_header_line=v["max-header-line"],
            max_subscriptions=v["max-subscriptions"],
        ),
        max_outbound_bytes=v["max-outbound-bytes"],
        max_message_bytes=v["max-message-bytes"],
        send_rate=v["send-rate"],
        send_burst=v["send-burst"],
        max_send_stored_bytes=v["max-send-stored-bytes"],
        access_log=v["access-log"],
        head_timeout_s=v["head-timeout"],
        body_timeout_s=v["body-timeout"],
        connect_timeout_s=v["connect-timeout"],
        keepalive_timeout_s=v["keepalive-timeout"],
        max_connections_per_ip=v["max-connections-per-ip"],
        gc_log=v["gc-log"],
        legacy_channel=v["legacy-channel"] or None,
        app_webhook=v["app-webhook"] or None,
        app_prefix=v["app-prefix"],
        app_webhook_token=v["app-webhook-token"] or None,
        app_webhook_timeout_s=v["app-webhook-timeout"],
        app_webhook_concurrency=v["app-webhook-concurrency"],
        presence_ttl_s=v["presence-ttl"],
        catchup_interval_s=v["catchup-interval"],
        inbox=InboxLimits(
            max_messages=v["inbox-max-messages"],
            max_age_s=v["inbox-max-age"],
            idempotency_ttl_s=v["inbox-idempotency-ttl"],
            topic_history=v["topic-history"],
            min_replicas=v["inbox-min-replicas"],
            replica_timeout_s=v["inbox-replica-timeout"] / 1000,
        ),
        workers=v["workers"],
        sockjs_disabled_transports=tuple(v["sockjs-disable-transport"]),
        sockjs_heartbeat_s=v["sockjs-heartbeat"],
        sockjs_session_timeout_s=v["sockjs-session-timeout"],
        sockjs_client_url=v["sockjs-client-url"],
        sockjs_cookie_needed=v["sockjs-cookie-needed"],
        sockjs_stream_limit=v["sockjs-stream-limit"],
        sockjs_test_services=v["sockjs-test-services"],
    )
    check_config(config, values)
    return config


def _read_key(path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OptionError(f"--jwt-public-key: cannot read {path}: {reason}") from None


JWT_ONLY_OPTIONS = (
    *("jwt-secret", "jwt-public-key", "jwt-audience", "jwt-issuer"),
    *("jwt-allow-no-exp", "allow-query-token"),
)
"""Options that mean something only with ``--auth jwt``: refused without it."""


def check_config(config: Config, values: Resolved) -> None:
    """What no single option can check: options that need one another."""
    shared = config.broker.split(":", 1)[0] in REDIS_SCHEMES
    amqp = config.broker.split(":", 1)[0] in AMQP_SCHEMES
    if amqp and config.inbox_url.split(":", 1)[0] not in PG_SCHEMES:
        raise OptionError(AMQP_NEEDS_INBOX)
    if config.api_key is not None and (problem := api_key_problem(config.api_key)):
        # RFC 6750 §2.1: a key outside the b64token set can never arrive as a bearer token.
        raise OptionError(
            f"{values.origins['api-key']}: this key can never authenticate: {problem}"
        )
    try:
        parse_networks(config.trusted_proxies)
    except ValueError as exc:
        raise OptionError(f"{values.origins['trusted-proxy']}: {exc}") from None
    if config.auth == "jwt":
        if not (config.jwt_secret or config.jwt_public_key):
            raise OptionError(
                "--auth jwt needs --jwt-secret (HS256) or --jwt-public-key (RS256/ES256)"
            )
        if config.jwt_secret and config.jwt_public_key:
            raise OptionError("give --jwt-secret or --jwt-public-key, not both")
        key = "--jwt-secret" if config.jwt_secret else "--jwt-public-key"
        try:
            verifier_for(config)
        except ValueError as exc:
            raise OptionError(f"{key}: {exc}") from None
    elif jwt_only := [key for key in JWT_ONLY_OPTIONS if values.values[key]]:
        key = jwt_only[0]
        raise OptionError(
            f"{values.origins[key]} is set but --auth is '{config.auth}', so no token would "
            "be checked: add --auth jwt, or remove it"
        )
    check_connect_webhook(config, values)
    if config.sockjs_test_services and config.auth != "none":
        raise OptionError(
            "--sockjs-test-services serves echo endpoints that no token guards: it is for "
            f"conformance testing and cannot be combined with --auth {config.auth}"
        )
    if config.sockjs_test_services and (taken := set(config.endpoints) & set(TEST_SERVICES)):
        raise OptionError(
            f"--sockjs-test-services needs {', '.join(sorted(taken))} for itself: "
            "choose other --endpoint paths"
        )
    if config.workers > 1 and not (shared or amqp):
        raise OptionError(
            "--workers N needs a shared broker (--broker redis://... or amqp://...): with "
            "memory:// each worker would be a separate island and messages would not cross "
            "between them"
        )
    if config.legacy_channel and not shared:
        raise OptionError(
            "--legacy-channel needs a Redis broker (redis://, redis+sentinel:// or "
            "redis+cluster://)"
        )
    check_inbox(config)
    if config.inbox.min_replicas and not shared:
        raise OptionError(
            "--inbox-min-replicas needs a Redis broker (redis://, redis+sentinel:// or "
            "redis+cluster://): memory:// has no replicas"
        )


def check_inbox(config: Config) -> None:
    """``--inbox`` with ``--broker`` (issue 20; docs/deploy.md, "Where messages are stored"):
    refuse what cannot work."""
    inbox = config.inbox_url.split(":", 1)[0]
    if inbox in PG_SCHEMES:
        if config.legacy_channel:
            raise OptionError(
                "--legacy-channel needs the Redis inbox: its bridge stores and forwards in "
                "one Redis script; leave --inbox out"
            )
        if config.inbox.min_replicas:
            raise OptionError("--inbox-min-replicas waits for Redis replicas, not PostgreSQL's")
        return
    if config.migrate:
        raise OptionError("--migrate applies the schema of a --inbox postgresql:// database")
    if not config.inbox_url or config.inbox_url == config.broker:
        return
    if inbox == "memory":
        raise OptionError(
            "--inbox memory:// keeps messages in this process: with a shared broker every "
            "node would keep its own, and a message stored on one would be missing from "
            "the others' resumes and catch-ups. Use --inbox postgresql://..., or leave "
            "--inbox out (the broker's own store)"
        )
    raise OptionError(
        "--inbox with a Redis URL must be the broker's own Redis (the same URL as "
        "--broker): its store script announces on that Redis. Leave --inbox out, or use "
        "--inbox postgresql://..."
    )


CONNECT_WEBHOOK_OPTIONS = (
    *("connect-webhook", "connect-webhook-token"),
    *("connect-webhook-timeout", "connect-webhook-concurrency"),
)
"""Options that mean something only with ``--auth webhook``: refused without it."""


def check_connect_webhook(config: Config, values: Resolved) -> None:
    """``--auth webhook`` and ``--connect-webhook`` come together (docs/security.md)."""
    if config.auth == "webhook":
        if not config.connect_webhook:
            raise OptionError("--auth webhook needs --connect-webhook URL")
        if config.connect_webhook_timeout_s >= config.connect_timeout_s:
            raise OptionError(
                f"--connect-webhook-timeout ({config.connect_webhook_timeout_s:g} s) must be "
                f"below --connect-timeout ({config.connect_timeout_s:g} s), the time a "
                "session has to be connected"
            )
    elif given := [key for key in CONNECT_WEBHOOK_OPTIONS if values.origins[key] != "default"]:
        raise OptionError(
            f"{values.origins[given[0]]} is set but --auth is '{config.auth}', so no "
            "webhook would be asked: add --auth webhook, or remove it"
        )


# -- main ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    parser, serve_parser = _build()
    args = parser.parse_args(argv)
    if args.command == "migrate":
        sys.exit(run_migrate(args.inbox or (environ or os.environ).get("TIDINGS_INBOX", "")))
    try:
        values = resolve_options(args, os.environ if environ is None else environ)
        config = config_from_options(values)
    except OptionError as exc:
        serve_parser.error(str(exc))
    log_level, log_format = values["log-level"], values["log-format"]
    logs.configure(log_level, log_format)
    if config.workers > 1:
        sys.exit(run_workers(config, log_level, log_format))
    sys.exit(serve(config))


def _worker(
    config: Config, log_level: str, log_format: str, workers: int, ready: Connection
) -> None:
    logs.configure(log_level, log_format)

    def report_ready() -> None:
        with contextlib.suppress(OSError):  # the parent is gone: nothing to tell
            ready.send_bytes(READY)
        ready.close()

    sys.exit(serve(config, workers=workers, on_listening=report_ready))


def run_workers(config: Config, log_level: str = "info", log_format: str = "text") -> int:
    """Start ``config.workers`` node processes on one port and supervise them (workers.py).

    Each worker is a full node with its own id (``<node-id>-w<i>``) bound with
    SO_REUSEPORT, so the kernel spreads connections over them; they meet through the broker.
    If one cannot start, the others are stopped (exit 1); one that dies later is logged and
    started again with backoff, unless workers keep dying (exit 1); SIGINT/SIGTERM drains
    them all. Their /metrics answer for all of them (``<node-id>`` is their ``node``
    label), from prometheus-client multiprocess files in a private directory
    (``_metrics_dir``). Returns 0 when every worker exited cleanly.
    """
    base_id = config.node_id or secrets.token_hex(4)
    context = multiprocessing.get_context("spawn")
    worker_config = config.replace(workers=1, reuse_port=True, metrics_node=base_id)
    names = [f"{base_id}-w{index}" for index in range(config.workers)]

    def make(index: int, ready: Connection) -> BaseProcess:
        return context.Process(
            target=_worker,
            args=(
                worker_config.replace(node_id=names[index]),
                log_level,
                log_format,
                config.workers,
                ready,
            ),
            name=f"tidings-worker-{index}",
        )

    with _metrics_dir() as mark_dead:
        return Supervisor(names, make, mark_dead).run()


@contextlib.contextmanager
def _metrics_dir() -> Iterator[Callable[[int | None], None]]:
    """A private PROMETHEUS_MULTIPROC_DIR for the workers, removed at exit; yields the
    function that marks a worker dead (its live gauges leave /metrics, as the
    prometheus-client docs ask of a multiprocess parent)."""
    from prometheus_client import multiprocess  # noqa: PLC0415 - the parent's only use

    from tidings.server.metrics import MULTIPROC_ENV  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="tidings-metrics-") as path:
        os.environ[MULTIPROC_ENV] = path  # inherited by the spawned workers

        def mark_dead(pid: int | None) -> None:
            if pid is not None:
                multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]

        try:
            yield mark_dead
        finally:
            del os.environ[MULTIPROC_ENV]


class StartFailed(Exception):
    """The node cannot start; the message says why in one line."""

    def __init__(self, message: str, code: int = EXIT_START_FAILED) -> None:
        super().__init__(message)
        self.code = code


def run_migrate(url: str) -> int:
    """``tidings migrate``: apply the PostgreSQL inbox's missing migrations; exit code."""
    if url.split(":", 1)[0] not in PG_SCHEMES:
        print("tidings migrate: error: --inbox postgresql://... is required", file=sys.stderr)
        return EXIT_USAGE
    from tidings.inbox.pg_schema import apply  # noqa: PLC0415 - asyncpg loads only here

    try:
        applied, version = asyncio.run(apply(url))
    except TidingsError as exc:
        print(f"tidings migrate: error: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    done = f"applied {', '.join(map(str, applied))}" if applied else "nothing to apply"
    print(f"tidings migrate: {redact_url(url)}: {done}; schema version {version}")
    return 0


def serve(
    config: Config, *, workers: int = 1, on_listening: Callable[[], None] | None = None
) -> int:
    """Run one node until SIGINT/SIGTERM, then close every session with a reason.

    ``workers``: how many node processes share the port (for the start-up line);
    ``on_listening``: called once the port is bound and the start-up line logged (a worker
    tells its supervisor it started).
    Returns the exit code: 0 after a clean stop, 1 if the node could not start.
    """
    if config.gc_log:
        gclog.install()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    app = create_app(config)
    server = app[SERVER_KEY]
    runner = web.AppRunner(
        app,
        handle_signals=True,  # SIGINT/SIGTERM raise GracefulExit out of the loop
        access_log=logging.getLogger("aiohttp.access") if config.access_log else None,
        shutdown_timeout=config.shutdown_grace_s,
        keepalive_timeout=config.keepalive_timeout_s,  # aiohttp's own: an hour
    )
    code = 0
    try:
        loop.run_until_complete(_start(runner, config))
        ready = server.node.ready
        message, extra = startup_line(config, server.node.id, ready=ready, workers=workers)
        log.info(message, extra=extra)
        if on_listening is not None:
            on_listening()
        loop.run_forever()
    except (web.GracefulExit, KeyboardInterrupt):
        log.info(
            "node %s draining: closing %d sessions, up to %.1f s for requests in flight",
            server.node.id,
            len(server.sessions),
            config.shutdown_grace_s,
        )
    except StartFailed as exc:
        log.error("node %s cannot start: %s", server.node.id, exc)
        code = exc.code
    finally:
        loop.run_until_complete(runner.cleanup())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    if code == 0:
        log.info("node %s stopped", server.node.id)
    return code


async def _start(runner: web.AppRunner, config: Config) -> None:
    try:
        await runner.setup()  # starts the node: broker, inbox, presence
    except SchemaNotReady as exc:
        raise StartFailed(str(exc), EXIT_USAGE) from None  # run `tidings migrate` first
    except TidingsError as exc:
        raise StartFailed(str(exc)) from None
    site = EdgeSite(
        runner, runner.app[SERVER_KEY].edge, config.host, config.port, reuse_port=config.reuse_port
    )
    try:
        await site.start()
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StartFailed(
            f"cannot listen on {config.host}:{config.port}: {reason or exc}"
        ) from None


def startup_line(
    config: Config, node_id: str, *, ready: bool, workers: int = 1
) -> tuple[str, dict[str, Any]]:
    """The one info line a node logs once it listens, and the same facts as JSON extras.

    Never the API key or JWT secret; the broker URL without its password.
    """
    broker = redact_url(config.broker)
    if config.auth == "jwt":
        auth = "jwt (HS256)" if config.jwt_secret else "jwt (public key)"
    else:
        auth = "none (the CONNECT login names the user)"
    api_key = "set" if config.api_key else "not set (only loopback callers may publish)"
    proxies = ",".join(str(net) for net in parse_networks(config.trusted_proxies)) or "none"
    listen = f"http://{config.host}:{config.port}"
    broker_state = "" if ready else " (unreachable: retrying; /readyz answers 503 until then)"
    message = (
        f"tidings {__version__} node {node_id} listening on {listen}; "
        f"broker {broker}{broker_state}; auth {auth}; API key {api_key}; "
        f"trusted proxies {proxies}; endpoints {','.join(config.endpoints)}; workers {workers}"
    )
    extra = {
        "version": __version__,
        "node": node_id,
        "listen": listen,
        "broker": broker,
        "broker_ready": ready,
        "auth": config.auth,
        "api_key_set": bool(config.api_key),
        "trusted_proxies": proxies.split(","),
        "endpoints": list(config.endpoints),
        "workers": workers,
    }
    return message, extra
