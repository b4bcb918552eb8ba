"""The server side of the WebSocket opening handshake (RFC 6455 §4.2), sans I/O.

``parse_request_head`` reads an HTTP/1.1 request head (RFC 9112 §2-§5) well enough to
recognise an upgrade; ``accept_handshake`` checks the client's handshake (§4.2.1) and
builds the 101 response (§4.2.2). The edge uses both on raw bytes; the aiohttp route
that serves upgrades on kept-alive connections uses ``accept_handshake`` on its headers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str  # origin-form: path and query, as sent
    version: str
    headers: dict[str, str]  # lower-cased names; a repeated field's values joined by ", "

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


def parse_request_head(head: bytes) -> RequestHead | None:
    """The request line and fields of ``head`` (without the final CRLF CRLF).

    None when it is not a plain, well-formed HTTP/1.x request head: the caller then lets
    a full HTTP server answer it (with its own errors).
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return None
    request_line, *lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[1].startswith("/") or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        # RFC 9112 §5.1: no whitespace before the colon; obs-fold (§5.2) is not taken here.
        if not colon or not name or not _TOKEN_CHARS.issuperset(name.encode()):
            return None
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return RequestHead(parts[0], parts[1], parts[2], headers)


def header_tokens(value: str | None) -> list[str]:
    """The comma-separated tokens of a list-valued field, lower-cased (RFC 9110 §5.6.1)."""
    if not value:
        return []
    return [token.strip(" \t").lower() for token in value.split(",") if token.strip(" \t")]


def is_websocket_upgrade(headers: Mapping[str, str]) -> bool:
    """Does the request ask to become a WebSocket (§4.2.1 items 3-4)?"""
    return "websocket" in header_tokens(headers.get("upgrade"))


class HandshakeError(Exception):
    """An upgrade that cannot be accepted: answer with this HTTP status (§4.2.2, §4.4)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True, slots=True)
class Handshake:
    response: bytes  # the whole 101 response head
    protocol: str | None  # the subprotocol chosen, if any


def accept_handshake(
    method: str, http_version: str, headers: Mapping[str, str], protocols: Sequence[str]
) -> Handshake:
    """Check a client's opening handshake (§4.2.1) and build the server's 101 (§4.2.2).

    ``headers`` must look names up case-insensitively (lower-case keys, or a CIMultiDict).
    The first subprotocol the client offers that is in ``protocols`` is chosen.
    """
    if method != "GET" or http_version != "HTTP/1.1":
        raise HandshakeError(400, "a WebSocket handshake is a GET request over HTTP/1.1")
    if not is_websocket_upgrade(headers) or "upgrade" not in header_tokens(
        headers.get("connection")
    ):
        raise HandshakeError(
            400, "a WebSocket handshake needs Upgrade: websocket and Connection: Upgrade"
        )
    version = headers.get("sec-websocket-version")
    if version is None:
        raise HandshakeError(400, "a WebSocket handshake needs Sec-WebSocket-Version: 13")
    if version.strip() != "13":
        raise HandshakeError(
            426,
            "unsupported Sec-WebSocket-Version: this server speaks 13 (RFC 6455)",
            {"Sec-WebSocket-Version": "13"},
        )
    key = headers.get("sec-websocket-key", "").strip()
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        valid_key = False
    if not valid_key:
        raise HandshakeError(400, "Sec-WebSocket-Key must be 16 bytes in base64 (§4.1)")
    # Subprotocol names are compared exactly (§11.3.4), not case-folded.
    offered = [p.strip(" \t") for p in headers.get("sec-websocket-protocol", "").split(",")]
    chosen = next((p for p in offered if p in protocols), None)
    accept = base64.b64encode(
        hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest()
    )  # RFC 6455 §4.2.2
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + accept,
    ]
    if chosen is not None:
        lines.append(b"Sec-WebSocket-Protocol: " + chosen.encode())
    return Handshake(b"\r\n".join(lines) + b"\r\n\r\n", chosen)
