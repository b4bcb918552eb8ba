"""What the multi-host Redis URLs (``redis+sentinel://``, ``redis+cluster://``) share:
the scheme check, the ``host:port[,host:port...]`` list and the checked query."""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qsl, urlsplit


def split(url: str, schemes: tuple[str, ...]) -> SplitResult:
    """The parts of ``url``; ValueError unless its scheme is one of ``schemes`` (the
    first is the one the message names)."""
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"expected a {schemes[0]}:// URL, got a {parts.scheme}:// one")
    return parts


def host_ports(hosts: str, default_port: int, what: str) -> tuple[tuple[str, int], ...]:
    """``host[:port],...`` (``[v6]:port`` too) as (host, port) pairs; ValueError saying
    that ``what`` (e.g. "the nodes") were expected as that, naming the wrong item."""
    return tuple(_host_port(item, default_port, what) for item in hosts.split(","))


def _host_port(item: str, default_port: int, what: str) -> tuple[str, int]:
    host, colon, port = item.rpartition(":") if not item.endswith("]") else (item, "", "")
    if not colon:
        host, port = item, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected {what} as host:port[,host:port...], got {item!r}")
    return host, int(port)


def query(parts: SplitResult, keys: frozenset[str]) -> dict[str, str]:
    """The query parameters of ``parts``, the last of a repeated one winning; ValueError
    naming one that is not among ``keys``."""
    found: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in keys:
            raise ValueError(f"unknown parameter {key!r}: expected one of {sorted(keys)}")
        found[key] = value
    return found
