"""Node configuration: one frozen dataclass, filled by the CLI from flags and ``TIDINGS_*``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tidings.stomp.frames import Limits

DEFAULT_ENDPOINTS = ("/publicServer", "/privateServer", "/stomp")


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a node needs to start; every field has a sane default."""

    host: str = "127.0.0.1"
    port: int = 9908
    broker: str = "memory://"
    node_id: str = ""
    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    # Identity: "none" trusts the CONNECT login header; "jwt" verifies a token.
    auth: str = "none"
    jwt_secret: str | None = None
    jwt_public_key: str | None = None  # PEM text, not a path
    api_key: str | None = None
    # Glob patterns of destinations a client may SEND to (e.g. "/topic/chat/**"); none by default.
    send_allow: tuple[str, ...] = ()
    # STOMP heart-beat the server offers: send every sx ms, expect every sy ms (seed: 10000,10000).
    heartbeat: tuple[int, int] = (10000, 10000)
    # A client is declared dead after this many expected heart-beat intervals of silence.
    heartbeat_grace: float = 3.0
    stomp_limits: Limits = field(default_factory=Limits)
    max_outbound_bytes: int = 1024 * 1024  # per connection; past it: slow consumer, disconnect
    max_message_bytes: int = 64 * 1024  # body of one published message
    shutdown_grace_s: float = 5.0
    access_log: bool = False  # one log line per HTTP request
    # Also deliver the seed's {code, form, to, content} JSON published on this Redis channel.
    legacy_channel: str | None = None
    presence_ttl_s: float = 15.0
    workers: int = 1
    reuse_port: bool = False

    def replace(self, **changes: object) -> Config:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
