"""The server side of the WebSocket opening handshake (RFC 6455 §4.2), sans I/O.

``accept_handshake`` checks the client's handshake (§4.2.1) and builds the 101 response
(§4.2.2). The edge uses it on heads read by ``http1.parse_request_head``; the aiohttp
route that serves upgrades on kept-alive connections uses it on aiohttp's headers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tidings.http1 import header_tokens

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


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
    ``protocols`` lists the server's subprotocols, favourite first; the first of them
    the client offers is chosen, whatever the client's order (§4.2.2 leaves the choice
    to the server). For STOMP that is the highest version, as RabbitMQ picks it:
    webstomp-client 1.2.6 offers ``v10.stomp`` first and speaks the version chosen
    (issue 14).
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
    offered = {p.strip(" \t") for p in headers.get("sec-websocket-protocol", "").split(",")}
    chosen = next((p for p in protocols if p in offered), None)
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
