"""The names of a channel's Redis keys and of its pub/sub channel, per deployment (issue 18).

On one Redis (``redis://``, ``rediss://``, ``redis+sentinel://``) the names are those
Tidings always used, so an upgrade finds its data where it left it. On Redis Cluster
(``redis+cluster://``) every name of one channel carries the hash tag ``{<channel>}``
(https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags):
the stream, the user's id sets, read floor and ack cursor, the idempotency keys, the
legacy claims, the user's presence and the sharded pub/sub channel all hash to one slot,
so every script touches one slot and may ``SPUBLISH`` the announcement itself. A user's
keys are tagged with the user's channel ``u:<user>``.

========================  ===============================  ================================
what                      one Redis (``P`` = prefix)       Redis Cluster
========================  ===============================  ================================
stream                    ``P inbox:<channel>``             ``P inbox:{<channel>}``
acked / read ids          ``P acked:<user>``                ``P acked:{u:<user>}``
(a topic's)               ``""`` (none)                     ``P acked:{t:<topic>}`` (never
                                                            written: '' would be slot 0)
read floor, ack cursor    ``P readfloor:<user>`` ...        ``P readfloor:{u:<user>}`` ...
idempotency key           ``P idem:<len>:<channel>:<k>``    ``P idem:<len>:{<channel>}:<k>``
legacy claim              ``P legacy:<len>:<channel>:<d>``  ``P legacy:<len>:{<channel>}:<d>``
presence                  ``P presence:<user>``             ``P presence:{u:<user>}``
live channel              ``P<channel>``                    ``P{<channel>}`` (sharded)
========================  ===============================  ================================

The legacy Spring channel (``--legacy-channel``) keeps its name everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Key names under ``prefix``; ``cluster``: tagged with the channel (see the module)."""

    prefix: str = "tidings:"
    cluster: bool = False

    def __post_init__(self) -> None:
        if self.cluster and ("{" in self.prefix or "}" in self.prefix):
            raise ValueError(f"a Redis Cluster key prefix must not hold braces: {self.prefix!r}")

    def tag(self, channel: str) -> str:
        """The channel as it appears in its key names: ``{channel}`` on a cluster."""
        return "{" + channel + "}" if self.cluster else channel

    def live(self, channel: str) -> str:
        """The (sharded, on a cluster) pub/sub channel of ``channel``."""
        return self.prefix + self.tag(channel)

    def stream(self, channel: str) -> str:
        return f"{self.prefix}inbox:{self.tag(channel)}"

    def user_key(self, kind: str, user: str) -> str:
        """``acked``, ``read``, ``readfloor``, ``ackcursor`` or ``presence`` of ``user``."""
        return f"{self.prefix}{kind}:{self.tag('u:' + user) if self.cluster else user}"

    def sets(self, channel: str, user: str | None) -> list[str]:
        """The acked and read id sets of ``channel`` (``user``'s); for a topic two empty
        names on one Redis (the scripts' "no sets"), two names never written on a cluster."""
        if user is not None:
            return [self.user_key("acked", user), self.user_key("read", user)]
        if not self.cluster:
            return ["", ""]
        return [f"{self.prefix}acked:{self.tag(channel)}", f"{self.prefix}read:{self.tag(channel)}"]

    def idempotency(self, channel: str, key: str) -> str:
        return f"{self.prefix}idem:{len(channel)}:{self.tag(channel)}:{key}"

    def legacy_claim(self, channel: str, name: str) -> str:
        return f"{self.prefix}legacy:{len(channel)}:{self.tag(channel)}:{name}"
