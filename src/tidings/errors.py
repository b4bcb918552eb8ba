"""The one exception tree of Tidings.

TidingsError
├── ProtocolError            the peer broke a protocol; answer with an error frame and close
│   └── StompProtocolError   STOMP frame or session rule broken (sent as an ERROR frame)
├── AuthError                credentials missing, expired or invalid
├── LimitExceeded            a configured bound was reached (also a ProtocolError for STOMP)
├── InvalidPublish           a publish breaks a rule of the publish API (also a ValueError)
└── BrokerUnavailable        the broker cannot take or deliver messages right now
    └── ReplicasUnavailable  stored, but fewer replicas than asked for hold it in time
"""


class TidingsError(Exception):
    """Root of every error Tidings raises on purpose."""


class ProtocolError(TidingsError):
    """The remote peer broke a protocol rule; the message is safe to show to that peer."""


class StompProtocolError(ProtocolError):
    """A STOMP rule was broken; ``str(err)`` becomes the ERROR frame's ``message`` header."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class StompLimitExceeded(StompProtocolError):
    """A configured STOMP limit (frame size, header count, line length, subscriptions) was hit."""


class AuthError(TidingsError):
    """Credentials are missing, expired or invalid; the message is safe to show to the peer.

    ``reason`` is a short machine name (the ``reason`` label of
    ``tidings_auth_failures_total``): ``missing_token``, ``expired_token``,
    ``invalid_token`` or ``forbidden_destination``.
    """

    def __init__(self, message: str, reason: str = "invalid_token") -> None:
        super().__init__(message)
        self.reason = reason


class InvalidPublish(TidingsError, ValueError):
    """A publish (HTTP API or ``tidings.publisher``) breaks a rule; nothing was stored.

    ``code`` is the HTTP API's error code: ``invalid_field``, ``missing_field`` or
    ``too_large``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BrokerUnavailable(TidingsError):
    """The broker cannot take a publish or a subscription right now."""


class ReplicasUnavailable(BrokerUnavailable):
    """A publish was stored (and announced) on the master, but fewer replicas than
    ``--inbox-min-replicas`` acknowledged it within ``--inbox-replica-timeout``: a failover
    now could lose it. The caller is told so (HTTP 503); retrying with the same
    idempotency key stores nothing twice."""
