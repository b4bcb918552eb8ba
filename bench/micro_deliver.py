"""Micro-benchmark of the per-delivery path: Hub.deliver to N local sessions, one flush each.

Real sessions and their WebSocket protocol objects over a sink transport (the kernel is
not part of what this measures), so the figure is Python CPU per delivered frame:

    .venv/bin/python -m bench.micro_deliver [--sessions 1000] [--messages 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

import uvloop

from tidings.config import Config
from tidings.message import Message
from tidings.server.app import Server
from tidings.server.edge import start_websocket


class SinkTransport:
    """Takes writes and forgets them; the rest of asyncio.Transport as an idle socket."""

    def __init__(self) -> None:
        self.written = 0
        self._protocol: object = None

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def set_protocol(self, protocol: object) -> None:
        self._protocol = protocol

    def get_protocol(self) -> object:
        return self._protocol

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def _masked(payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload  # zero mask key


async def run(sessions: int, messages: int, *, same_id: bool) -> None:
    server = Server(Config(heartbeat=(0, 0)))
    sinks = []
    for index in range(sessions):
        sink = SinkTransport()
        sub_id = "sub-0" if same_id else index
        protocol = start_websocket(server.context, sink, None)  # type: ignore[arg-type]
        protocol.data_received(
            _masked(b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
            + _masked(f"SUBSCRIBE\nid:{sub_id}\ndestination:/topic/bench\n\n\0".encode())
        )
        sinks.append(sink)
    for _ in range(20):
        await asyncio.sleep(0)
    assert server.node.hub.subscription_count == sessions, server.node.hub.subscription_count
    body = b"~" * 100
    message = Message(id="1", channel="t:bench", destination="/topic/bench", body=body)
    gc.collect()
    start = time.process_time()
    for _ in range(messages):
        server.node.hub.deliver(message)
        await asyncio.sleep(0)  # one loop turn: every connection flushes once
    spent = time.process_time() - start
    frames = sessions * messages
    print(
        f"{frames} deliveries in {spent:.3f} s CPU: {spent / frames * 1e9:.0f} ns per delivery, "
        f"{frames / spent / 1e3:.0f}k/s; {sum(s.written for s in sinks) / frames:.0f} B/frame"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument(
        "--same-id", action="store_true", help="every session subscribes with id sub-0"
    )
    args = parser.parse_args()
    uvloop.run(run(args.sessions, args.messages, same_id=args.same_id))


if __name__ == "__main__":
    main()
