"""Free TCP ports for the servers tests start, never the same one twice in a run.

``bind(("127.0.0.1", 0))`` may hand back a port it handed out a moment ago once that
socket is closed; two servers started together would then race for one port and the
loser's test would silently talk to the winner. Remembering what was handed out stops
that within this process; the server fixtures also check who answers.
"""

from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and this run has not used."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
