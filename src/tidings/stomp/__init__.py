"""STOMP 1.0, 1.1 and 1.2, sans-I/O.

:mod:`.frames` holds the frame model, parser and serializer; :mod:`.connection`
the server side of a session.
"""

from tidings.stomp.connection import (
    AckReceived,
    ConnectRequested,
    DisconnectRequested,
    Event,
    NackReceived,
    ReceiptDue,
    SendRequested,
    ServerConnection,
    State,
    SubscribeRequested,
    Subscription,
    UnsubscribeRequested,
    error_receipt,
    negotiate_heartbeat,
    negotiate_version,
    parse_heartbeat,
)
from tidings.stomp.frames import (
    CLIENT_COMMANDS,
    HEARTBEAT,
    SERVER_COMMANDS,
    VERSIONS,
    Frame,
    FrameParser,
    Limits,
    escape_header,
    serialize,
    unescape_header,
)

__all__ = [
    "CLIENT_COMMANDS",
    "HEARTBEAT",
    "SERVER_COMMANDS",
    "VERSIONS",
    "AckReceived",
    "ConnectRequested",
    "DisconnectRequested",
    "Event",
    "Frame",
    "FrameParser",
    "Limits",
    "NackReceived",
    "ReceiptDue",
    "SendRequested",
    "ServerConnection",
    "State",
    "SubscribeRequested",
    "Subscription",
    "UnsubscribeRequested",
    "error_receipt",
    "escape_header",
    "negotiate_heartbeat",
    "negotiate_version",
    "parse_heartbeat",
    "serialize",
    "unescape_header",
]
