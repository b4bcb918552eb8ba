"""tidings.trust without I/O: every "may they?" answered from plain values.

The client-address cases follow nginx's realip module with ``real_ip_recursive on``
(walk X-Forwarded-For from the right, skip trusted hops, the first untrusted entry is the
client), except that an entry that is not an address leaves the client unknown.
"""

from __future__ import annotations

import ipaddress
import time

import jwt
import pytest

from tidings.config import Config
from tidings.destinations import route
from tidings.errors import AuthError
from tidings.stomp.connection import ConnectRequested
from tidings.stomp.frames import Frame
from tidings.trust import (
    MAX_FORWARDED_HOPS,
    MISSING_KEY,
    NOT_LOOPBACK,
    WRONG_KEY,
    TrustPolicy,
    api_key_problem,
    join_field_lines,
    parse_networks,
)

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"


def client(policy: TrustPolicy, peer: str | None, *lines: str) -> str | None:
    address = policy.client_address(peer, join_field_lines(lines))
    return None if address is None else str(address)


# -- the client address -------------------------------------------------------------------------


def test_by_default_only_loopback_proxies_are_believed() -> None:
    policy = TrustPolicy()
    assert client(policy, "127.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert client(policy, "::1", "203.0.113.9") == "203.0.113.9"
    # A remote peer's forwarded header is its own claim: ignored.
    assert client(policy, "198.51.100.7", "127.0.0.1") == "198.51.100.7"
    assert client(policy, "198.51.100.7") == "198.51.100.7"


def test_a_second_header_line_is_read_too() -> None:
    """HAProxy's ``option forwardfor`` adds its own line after the client's forged one:
    the first line alone would name 127.0.0.1."""
    policy = TrustPolicy()
    assert client(policy, "127.0.0.1", "127.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert policy.api_refusal(None, "127.0.0.1", join_field_lines(["127.0.0.1", "203.0.113.9"]))


def test_the_rightmost_untrusted_entry_through_several_trusted_hops() -> None:
    policy = TrustPolicy(trusted_proxies=("10.0.0.0/8", "192.168.1.5"))
    chain = "127.0.0.1, 198.51.100.1, 203.0.113.9, 10.1.2.3, 192.168.1.5"
    # Peer 10.0.0.2 trusted; 192.168.1.5 and 10.1.2.3 trusted; 203.0.113.9 is the client.
    assert client(policy, "10.0.0.2", chain) == "203.0.113.9"
    # The same chain from an untrusted peer: the peer is the client.
    assert client(policy, "198.51.100.50", chain) == "198.51.100.50"
    # An explicit list replaces the default: loopback is no longer trusted.
    assert client(policy, "127.0.0.1", "203.0.113.9") == "127.0.0.1"


def test_when_every_entry_is_trusted_the_leftmost_is_the_client() -> None:
    policy = TrustPolicy()
    assert client(policy, "127.0.0.1", "127.0.0.2, ::1") == "127.0.0.2"
    assert policy.api_refusal(None, "127.0.0.1", "127.0.0.2, ::1") is None


def test_trusted_proxy_none_ignores_forwarded_headers() -> None:
    policy = TrustPolicy(trusted_proxies=("none",))
    assert client(policy, "127.0.0.1", "203.0.113.9") == "127.0.0.1"
    assert policy.api_refusal(None, "127.0.0.1", "203.0.113.9") is None
    assert client(policy, "127.0.0.1", "127.0.0.5") == "127.0.0.1"


def test_ipv6_peers_and_entries() -> None:
    policy = TrustPolicy(trusted_proxies=("2001:db8:1::/48", "::1"))
    assert client(policy, "2001:db8:1::7", "2001:db8:2::9, 2001:db8:1::5") == "2001:db8:2::9"
    assert client(policy, "::1", "[2001:db8:2::9]:4711") == "2001:db8:2::9"
    assert client(policy, "fe80::1%eth0") == "fe80::1"
    # A dual-stack socket shows an IPv4 peer as IPv4-mapped IPv6.
    assert client(TrustPolicy(), "::ffff:127.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert TrustPolicy().api_refusal(None, "::ffff:127.0.0.1", None) is None


def test_entries_with_ports_and_empty_entries() -> None:
    policy = TrustPolicy()
    assert client(policy, "127.0.0.1", "203.0.113.9:5555") == "203.0.113.9"
    assert client(policy, "127.0.0.1", "203.0.113.9, , ,") == "203.0.113.9"


@pytest.mark.parametrize(
    "forwarded", ["unknown", "203.0.113.9, garbage", "999.1.1.1", "2001:db8::zz", "_hidden"]
)
def test_a_malformed_entry_leaves_the_client_unknown(forwarded: str) -> None:
    """Unlike nginx, which keeps the last trusted hop (here loopback): unknown gets no
    loopback rights."""
    policy = TrustPolicy()
    peer = "127.0.0.1"
    last = forwarded.rsplit(",", 1)[-1].strip()
    expected = None if last != "203.0.113.9" else "203.0.113.9"
    assert client(policy, peer, forwarded) == expected
    assert policy.api_refusal(None, peer, forwarded) == NOT_LOOPBACK


def test_a_malformed_entry_behind_an_untrusted_one_is_never_read() -> None:
    assert client(TrustPolicy(), "127.0.0.1", "garbage, 203.0.113.9") == "203.0.113.9"


def test_the_walk_is_bounded() -> None:
    policy = TrustPolicy()
    within = ", ".join(["127.0.0.1"] * MAX_FORWARDED_HOPS)
    assert client(policy, "127.0.0.1", within) == "127.0.0.1"
    assert client(policy, "127.0.0.1", within + ", , ,") == "127.0.0.1"  # empty: no hop
    beyond = ", ".join(["127.0.0.1"] * (MAX_FORWARDED_HOPS + 1))
    assert client(policy, "127.0.0.1", beyond) is None
    assert policy.api_refusal(None, "127.0.0.1", beyond) == NOT_LOOPBACK


def test_no_peer_address_is_unknown() -> None:
    assert client(TrustPolicy(), None, "127.0.0.1") is None
    assert TrustPolicy().api_refusal(None, None, None) == NOT_LOOPBACK


def test_trusted_proxy_values() -> None:
    assert parse_networks(["10.0.0.0/8", "::1", "192.0.2.1/24"]) == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.0.2.0/24"),
    )
    assert parse_networks(["none"]) == ()
    with pytest.raises(ValueError, match="give it alone"):
        parse_networks(["none", "10.0.0.0/8"])
    with pytest.raises(ValueError, match=r"'proxy\.example'"):
        parse_networks(["proxy.example"])


def test_join_field_lines() -> None:
    assert join_field_lines([]) is None
    assert join_field_lines(["a"]) == "a"
    assert join_field_lines(["a, b", "c"]) == "a, b, c"


# -- the API key ------------------------------------------------------------------------------


def test_the_api_key_is_a_bearer_token_and_loopback_does_not_replace_it() -> None:
    policy = TrustPolicy(api_key="k3y-._~+/==")
    assert policy.api_refusal("Bearer k3y-._~+/==", "203.0.113.9", None) is None
    assert policy.api_refusal("bearer  k3y-._~+/== ", "203.0.113.9", None) is None
    assert policy.api_refusal(None, "127.0.0.1", None) == MISSING_KEY
    assert policy.api_refusal("Bearer wrong", "127.0.0.1", None) == WRONG_KEY
    assert policy.api_refusal("Basic k3y-._~+/==", "127.0.0.1", None) == MISSING_KEY
    assert policy.has_api_key and not TrustPolicy().has_api_key
    assert policy.may_admin("Bearer k3y-._~+/==", "203.0.113.9", None)
    assert not policy.may_admin(None, "127.0.0.1", None)


def test_without_a_key_loopback_clients_only() -> None:
    policy = TrustPolicy()
    assert policy.api_refusal(None, "127.0.0.1", None) is None
    assert policy.api_refusal(None, "::1", None) is None
    assert policy.api_refusal(None, "203.0.113.9", None) == NOT_LOOPBACK
    assert policy.may_admin(None, "127.0.0.1", None)
    assert not policy.may_admin(None, "127.0.0.1", "203.0.113.9")


@pytest.mark.parametrize(
    ("key", "named"),
    [("my key", "' '"), ("k€y", "'€'"), ("a=b", "'='"), ('x"y,z', "'\"' ','"), ("==", "only")],
)
def test_an_api_key_no_bearer_token_can_carry_is_refused(key: str, named: str) -> None:
    problem = api_key_problem(key)
    assert problem is not None
    assert named in problem
    with pytest.raises(ValueError, match="can never authenticate"):
        TrustPolicy(api_key=key)


def test_keys_of_the_token_set_are_accepted() -> None:
    for key in ("abc", "A-Z.0_9~+/", "abc==", "x" * 200):
        assert api_key_problem(key) is None


# -- origins ----------------------------------------------------------------------------------


def test_origins() -> None:
    policy = TrustPolicy(allowed_origins=("https://*.Example.com", "http://localhost:3000"))
    assert policy.origin_allowed(None, "node.example.net")  # not a browser page
    assert policy.origin_allowed("https://app.example.com", "node.example.net")
    assert policy.origin_allowed("HTTPS://APP.EXAMPLE.COM", "node.example.net")
    assert policy.origin_allowed("http://localhost:3000", None)
    assert not policy.origin_allowed("https://evil.example.org", "node.example.net")
    assert not policy.origin_allowed("null", "node.example.net")
    # Same origin as the Host the request was sent to: always allowed.
    assert policy.origin_allowed("http://node.example.net:9908", "Node.Example.net:9908")
    # Two Origin lines joined are no origin.
    assert not policy.origin_allowed("http://localhost:3000, http://x", "node")
    assert TrustPolicy().origin_allowed("https://anywhere.example", "node")
    assert TrustPolicy().any_origin and not policy.any_origin


# -- STOMP sessions ---------------------------------------------------------------------------


def connect(*headers: tuple[str, str], login: str | None = None) -> ConnectRequested:
    frame = Frame("CONNECT", headers)
    return ConnectRequested("1.2", login, None, None, (0, 0), frame)


def test_auth_none_trusts_the_login() -> None:
    policy = TrustPolicy()
    assert policy.identify(connect(login="42"), None) == ("42", None)
    assert policy.identify(connect(), None) is None
    target = route("/user/7/message", "42")
    policy.authorize_subscription("42", target)  # --auth none: nothing to hold it to


def test_auth_jwt_identifies_by_token_and_limits_subscriptions() -> None:
    config = Config(auth="jwt", jwt_secret=SECRET)
    policy = TrustPolicy.from_config(config)
    exp = int(time.time()) + 60
    token = jwt.encode({"sub": "42", "exp": exp}, SECRET, algorithm="HS256")
    assert policy.identify(connect(("Authorization", f"Bearer {token}")), None) == ("42", exp)
    with pytest.raises(AuthError, match="no token"):
        policy.identify(connect(login="42"), None)
    with pytest.raises(AuthError, match="not accepted"):
        policy.identify(connect(), token)
    allowing = TrustPolicy.from_config(config.replace(allow_query_token=True))
    assert allowing.identify(connect(), token) == ("42", exp)
    policy.authorize_subscription("42", route("/user/42/message", "42"))
    policy.authorize_subscription("42", route("/topic/news", "42"))
    with pytest.raises(AuthError) as refused:
        policy.authorize_subscription("42", route("/user/7/message", "42"))
    assert refused.value.reason == "forbidden_destination"


def test_send_is_allowed_only_where_a_glob_matches() -> None:
    assert not TrustPolicy().may_send("/topic/chat")
    policy = TrustPolicy(send_allow=("/topic/chat/**",))
    assert policy.may_send("/topic/chat/room/1")
    assert not policy.may_send("/topic/news")
