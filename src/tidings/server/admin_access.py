"""Who may use the admin API, and which address a client has (issue 17).

Both are the trust module's answers (``tidings.trust``: the API key or a loopback client,
the address by ``--trusted-proxy``'s rightmost-untrusted rule); this module only adapts
them to what the admin routes and the session listing need.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tidings.auth import bearer_token
from tidings.trust import TrustPolicy, join_field_lines

if TYPE_CHECKING:
    from tidings.server.api import PublishApi


def forwarded_for_of(headers: Mapping[str, str]) -> str | None:
    """Every X-Forwarded-For line in order (a proxy may add its own line: tidings.trust).

    aiohttp's headers keep repeated lines apart (``getall``); the edge's are already joined.
    """
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return join_field_lines(getall("X-Forwarded-For", ()))
    return headers.get("x-forwarded-for")


def client_address(trust: TrustPolicy, peer: str | None, forwarded_for: str | None) -> str | None:
    """The client's address as the trust policy resolves it, as text."""
    address = trust.client_address(peer, forwarded_for)
    return None if address is None else str(address)


def peer_host(peername: object) -> str | None:
    """The host of a transport's ``peername`` extra info (None for a unix socket)."""
    if isinstance(peername, tuple | list) and peername:
        return str(peername[0])
    return None


def admin_caller(api: PublishApi, headers: Mapping[str, str], peer: str | None) -> str:
    """Check that the caller may act as an operator; return who it is, for the audit log.

    The rule is the trust policy's ``may_admin`` (the API key as a bearer token, or a
    loopback client without one), raised as the API's 401/403 (``PublishApi.check_caller``).
    The caller is named by the key's id (the first 12 hex digits of its SHA-256, never
    the key) and the client address.
    """
    forwarded_for = forwarded_for_of(headers)
    authorization = headers.get("authorization") or headers.get("Authorization")
    asked = {"authorization": authorization, "x-forwarded-for": forwarded_for}
    api.check_caller({name: value for name, value in asked.items() if value is not None}, peer)
    address = client_address(api.trust, peer, forwarded_for) or "unknown address"
    token = bearer_token(authorization)
    if api.trust.has_api_key and token:
        key_id = hashlib.sha256(token.encode()).hexdigest()[:12]
        return f"key {key_id} from {address}"
    return f"loopback caller {address}"
