"""Every "may they?" of a node in one place, without I/O (DESIGN.md §5b; issue 14 item 1).

``TrustPolicy`` answers, from plain values (strings, a parsed CONNECT), with no aiohttp
and no asyncio:

* **which address is the client** (``client_address``): the TCP peer, or, when the peer
  is a trusted proxy (``--trusted-proxy CIDR``, loopback by default), the rightmost
  untrusted ``X-Forwarded-For`` entry, as nginx's realip module with
  ``real_ip_recursive on`` finds it;
* **may this caller use the HTTP API** (``api_refusal``): the ``--api-key`` as an RFC 6750
  bearer token, compared in constant time; without a key, loopback clients only;
* **may a page of this Origin open a session** (``origin_allowed``): ``--allowed-origin``
  (RFC 6454 §7: a request without ``Origin`` is not from a browser page and passes);
* **who is the session's user** (``identify``), **may it subscribe** (``authorize_subscription``)
  and **SEND** (``may_send``), and **may a caller use the admin routes** (``may_admin``).

Refusals are ``Refusal`` values (HTTP status, machine code, text) or ``AuthError``, so the
HTTP edge, aiohttp's routes and STOMP sessions word them each their own way.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

from tidings.auth import Identity, JwtVerifier, bearer_token, verifier_for
from tidings.config import DEFAULT_TRUSTED_PROXIES, Config
from tidings.destinations import GlobSet, Route, compile_globs
from tidings.errors import AuthError

if TYPE_CHECKING:
    from tidings.stomp.connection import ConnectRequested

__all__ = [
    "DEFAULT_TRUSTED_PROXIES",
    "MAX_FORWARDED_HOPS",
    "Refusal",
    "TrustPolicy",
    "TrustedProxies",
    "api_key_problem",
    "join_field_lines",
    "parse_networks",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

NO_PROXIES = "none"
"""``--trusted-proxy none``: nobody is trusted, forwarded headers are ignored."""
MAX_FORWARDED_HOPS = 32
"""Trusted hops walked at most; a longer chain of trusted entries leaves the client unknown."""

_MAX_KNOWN = 4096  # addresses whose trust is remembered; then the memory starts again

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/")
# An X-Forwarded-For entry with a port: "192.0.2.1:4711" or "[2001:db8::1]:4711".
_V4_WITH_PORT = re.compile(r"([0-9.]+):[0-9]{1,5}")
_V6_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::[0-9]{1,5})?")


class Refusal(NamedTuple):
    """Why an HTTP caller is turned away: status, machine code and text for the caller;
    the reason counted in ``tidings_auth_failures_total``; a few words for the log."""

    status: int
    code: str
    message: str
    reason: str
    log: str


_KEY_TEXT = "missing or wrong 'Authorization: Bearer <api key>'"
MISSING_KEY = Refusal(401, "unauthorized", _KEY_TEXT, "bad_api_key", "API key missing")
WRONG_KEY = Refusal(401, "unauthorized", _KEY_TEXT, "bad_api_key", "wrong API key")
NOT_LOOPBACK = Refusal(
    403,
    "forbidden",
    "no --api-key is configured: only loopback callers may publish",
    "not_loopback",
    "not loopback",
)


# -- parsing what the options give ----------------------------------------------------------
def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``--trusted-proxy`` values as networks: CIDRs or single addresses; ``none`` alone
    trusts nobody. ValueError names the entry that is neither."""
    entries = [entry.strip() for entry in entries]
    if NO_PROXIES in (entry.lower() for entry in entries):
        if len(entries) > 1:
            raise ValueError(f"'{NO_PROXIES}' trusts no proxy: give it alone")
        return ()
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"expected an address or CIDR like 10.0.0.0/8 or ::1, or '{NO_PROXIES}', "
                f"got {entry!r}"
            ) from None
    return tuple(networks)


def api_key_problem(key: str) -> str | None:
    """Why ``key`` can never be sent as a bearer token (RFC 6750 §2.1), or None if it can."""
    if not key:
        return "it is empty"
    body = key.rstrip("=")
    bad = sorted({char for char in body if char not in _B64TOKEN_CHARS})
    if bad:
        shown = " ".join(repr(char) for char in bad)
        return (
            f"it has characters a bearer token cannot carry: {shown} (RFC 6750 §2.1 allows "
            "letters, digits, - . _ ~ + / and '=' at the end)"
        )
    if not body:
        return "it is only '=' (RFC 6750 §2.1: '=' may only end a token)"
    return None


def join_field_lines(lines: Sequence[str]) -> str | None:
    """Several lines of one list-valued field as one value (RFC 9110 §5.3), or None."""
    if not lines:
        return None
    return lines[0] if len(lines) == 1 else ", ".join(lines)


@lru_cache(maxsize=1024)  # a handful of peers and proxies, asked for every request
def _address(text: str) -> Address | None:
    """An address as a peer or an X-Forwarded-For entry gives it, or None if it is none.

    IPv4-mapped IPv6 (a dual-stack socket's view of an IPv4 peer) becomes IPv4; a zone
    (``fe80::1%eth0``) is dropped; a port (``192.0.2.1:80``, ``[::1]:80``) is dropped.
    """
    text = text.strip()
    if (match := _V6_BRACKETED.fullmatch(text)) or (match := _V4_WITH_PORT.fullmatch(text)):
        text = match[1]
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# -- the client address ---------------------------------------------------------------------
class TrustedProxies:
    """The proxies whose ``X-Forwarded-For`` is believed, and the rule that reads it."""

    __slots__ = ("_known", "networks")

    def __init__(self, networks: tuple[Network, ...]) -> None:
        self.networks = networks
        self._known: dict[Address, bool] = {}  # address -> trusted, at most _MAX_KNOWN

    def trusts(self, address: Address) -> bool:
        known = self._known.get(address)
        if known is None:
            if len(self._known) >= _MAX_KNOWN:
                self._known.clear()
            known = self._known[address] = any(address in net for net in self.networks)
        return known

    def client_address(self, peer: str | None, forwarded_for: str | None) -> Address | None:
        """The client's address; None when it cannot be known.

        nginx realip with ``real_ip_recursive on`` (ngx_http_realip_module): forwarded
        addresses count only when the TCP peer is trusted. ``forwarded_for`` is every
        X-Forwarded-For line in order, joined by commas (``join_field_lines``): a proxy
        such as HAProxy (``option forwardfor``) adds a line of its own. The entries are
        walked from the right, skipping trusted ones; the first untrusted one is the
        client. If all are trusted, the leftmost is.

        An entry that is not an address ends the walk with None (unknown), where nginx
        would keep the last trusted hop: such a client is nobody we can vouch for, so it
        gets no loopback rights. So does a walk past ``MAX_FORWARDED_HOPS`` trusted hops.
        """
        if peer is None:
            return None
        address = _address(peer)
        if address is None or not forwarded_for or not self.trusts(address):
            return address
        hops = 0
        for entry in reversed(forwarded_for.split(",")):
            if not entry.strip():
                continue  # "a,,b" or a trailing comma: nginx skips empty entries too
            if hops == MAX_FORWARDED_HOPS:
                return None
            hops += 1
            address = _address(entry)
            if address is None:
                return None
            if not self.trusts(address):
                return address
        return address


@lru_cache(maxsize=256)  # a handful of peers call it for every request
def _loopback_text(peer: str) -> bool:
    address = _address(peer)
    return address is not None and address.is_loopback


# -- the policy -----------------------------------------------------------------------------
class TrustPolicy:
    """A node's answers to every "may they?"; built once from the ``Config``."""

    __slots__ = (
        "_api_key",
        "_origins",
        "_send_allow",
        "allow_query_token",
        "proxies",
        "users_verified",
        "verifier",
    )

    def __init__(
        self,
        *,
        api_key: str | None = None,
        trusted_proxies: Sequence[str] = DEFAULT_TRUSTED_PROXIES,
        allowed_origins: Sequence[str] = ("*",),
        send_allow: tuple[str, ...] = (),
        verifier: JwtVerifier | None = None,
        allow_query_token: bool = False,
        users_verified: bool | None = None,
    ) -> None:
        """``users_verified``: a session's user is vouched for (``--auth jwt`` or
        ``webhook``), so it may read only its own destinations; by default, with a verifier."""
        if api_key is not None and (problem := api_key_problem(api_key)):
            raise ValueError(f"this API key can never authenticate: {problem}")
        self._api_key = api_key.encode() if api_key else None
        self.proxies = TrustedProxies(parse_networks(trusted_proxies))
        origins = tuple(origin.lower() for origin in allowed_origins)
        self._origins = (
            None
            if "*" in origins
            else tuple(re.compile(fnmatch.translate(pattern)) for pattern in origins)
        )
        self._send_allow: GlobSet | None = compile_globs(send_allow)
        self.verifier = verifier
        self.allow_query_token = allow_query_token
        self.users_verified = verifier is not None if users_verified is None else users_verified

    @classmethod
    def from_config(cls, config: Config) -> TrustPolicy:
        return cls(
            api_key=config.api_key,
            trusted_proxies=config.trusted_proxies,
            allowed_origins=config.allowed_origins,
            send_allow=config.send_allow,
            verifier=verifier_for(config) if config.auth == "jwt" else None,
            allow_query_token=config.allow_query_token,
            users_verified=config.auth != "none",
        )

    # -- HTTP callers ------------------------------------------------------------------------
    def client_address(self, peer: str | None, forwarded_for: str | None) -> Address | None:
        """The client of a request from ``peer`` (see ``TrustedProxies.client_address``)."""
        return self.proxies.client_address(peer, forwarded_for)

    def api_refusal(
        self, authorization: str | None, peer: str | None, forwarded_for: str | None
    ) -> Refusal | None:
        """None if the caller may use the HTTP API, else why not.

        ``--api-key`` set: ``Authorization: Bearer <key>`` (RFC 6750 §2.1), compared in
        constant time. Not set: the client (``client_address``) must be a loopback address.
        """
        if self._api_key is not None:
            given = bearer_token(authorization)
            if given is None:
                return MISSING_KEY
            if not hmac.compare_digest(given.encode(), self._api_key):
                return WRONG_KEY
            return None
        if forwarded_for is None and peer is not None:  # the common case: a direct caller
            return None if _loopback_text(peer) else NOT_LOOPBACK
        client = self.proxies.client_address(peer, forwarded_for)
        return None if client is not None and client.is_loopback else NOT_LOOPBACK

    @property
    def has_api_key(self) -> bool:
        """``--api-key`` is set: the HTTP API (and the admin routes) require it."""
        return self._api_key is not None

    def may_admin(
        self, authorization: str | None, peer: str | None, forwarded_for: str | None
    ) -> bool:
        """The admin routes: the HTTP API's rule (the API key, or loopback without one)."""
        return self.api_refusal(authorization, peer, forwarded_for) is None

    # -- browsers ----------------------------------------------------------------------------
    @property
    def any_origin(self) -> bool:
        """``--allowed-origin *``: every Origin passes."""
        return self._origins is None

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """May a page of ``origin`` open a session here (WebSocket handshake, SockJS)?

        No Origin: not a browser page (RFC 6454 §7.1 has browsers send it), allowed.
        Same origin as the request's ``Host``: allowed. Otherwise it must match an
        ``--allowed-origin`` pattern (``*`` wildcards, case-insensitive).
        """
        if self._origins is None or origin is None:
            return True
        origin = origin.lower()
        if origin != "null" and host is not None and urlsplit(origin).netloc == host.lower():
            return True
        return any(pattern.fullmatch(origin) for pattern in self._origins)

    # -- STOMP sessions ----------------------------------------------------------------------
    def identify(self, event: ConnectRequested, access_token: str | None) -> Identity | None:
        """The session's user: the CONNECT login (``--auth none``, never expiring) or a
        verified token's sub and exp; None for an anonymous ``--auth none`` session.

        ``access_token`` is the ``?access_token=`` of the WebSocket or SockJS URL: used
        only with ``--allow-query-token``, since URLs end up in proxy and browser logs.
        AuthError says why not, with its reason.
        """
        verifier = self.verifier
        if verifier is None:
            return Identity(event.login, None) if event.login else None
        token = (
            bearer_token(event.frame.get("Authorization") or event.frame.get("authorization"))
            or event.passcode
        )
        if not token and access_token:
            if not self.allow_query_token:
                raise AuthError(
                    "tokens in the URL are not accepted (send 'Authorization: Bearer <jwt>' "
                    "on CONNECT)",
                    "missing_token",
                )
            token = access_token
        if not token:
            raise AuthError(
                "no token (send 'Authorization: Bearer <jwt>' on CONNECT)", "missing_token"
            )
        return verifier.identity(token)

    def authorize_subscription(self, user: str | None, target: Route) -> None:
        """With ``--auth jwt`` or ``webhook`` a session may read only its own user's
        destinations.

        With ``--auth none`` the login is whatever the client says, so there is nothing
        to hold it to (docs/security.md).
        """
        if self.users_verified and target.user is not None and target.user != user:
            raise AuthError(
                f"user {user} may not subscribe to messages of user {target.user}",
                "forbidden_destination",
            )

    def may_send(self, destination: str) -> bool:
        """A client SEND to ``destination``: only where ``--send-allow`` globs match."""
        return self._send_allow is not None and self._send_allow.matches(destination)

    @property
    def token_leeway_s(self) -> float:
        """Clock skew allowed past a token's ``exp`` before its session is ended."""
        return self.verifier.leeway_s if self.verifier is not None else 0.0
