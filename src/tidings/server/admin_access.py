"""Who may use the admin API, and which address a client has (issue 17).

One function each, so that the trust module (DESIGN.md §5b: one module answers every
"may they?" question, ``--trusted-proxy`` resolves the client address) can take both
over in one place: ``admin_caller`` and ``client_address``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tidings.auth import bearer_token
from tidings.server.api import caller_address

if TYPE_CHECKING:
    from tidings.server.api import PublishApi


def client_address(peer: str | None, headers: Mapping[str, str]) -> str | None:
    """The client's address: the peer's, or behind a proxy on this machine the one it
    names (the rightmost X-Forwarded-For entry, the publish API's rule)."""
    return caller_address(peer, headers.get("x-forwarded-for"))


def peer_host(peername: object) -> str | None:
    """The host of a transport's ``peername`` extra info (None for a unix socket)."""
    if isinstance(peername, tuple | list) and peername:
        return str(peername[0])
    return None


def admin_caller(api: PublishApi, headers: Mapping[str, str], peer: str | None) -> str:
    """Check that the caller may act as an operator; return who it is, for the audit log.

    Today the rule is the publish API's (``PublishApi.check_caller``): with ``--api-key``
    the key as a bearer token, else loopback callers only; it raises ApiError 401/403.
    The caller is named by the key's id (the first 12 hex digits of its SHA-256, never
    the key) and the client address.
    """
    api.check_caller(headers, peer)
    address = client_address(peer, headers) or "unknown address"
    token = bearer_token(headers.get("authorization"))
    if api.server.config.api_key and token:
        key_id = hashlib.sha256(token.encode()).hexdigest()[:12]
        return f"key {key_id} from {address}"
    return f"loopback caller {address}"
