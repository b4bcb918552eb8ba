"""One SockJS session as a state machine, sans-I/O (SockJS protocol 0.3, "Session URLs").

A session outlives the HTTP requests that carry it. Rules, from the protocol:

- A session is created by its first *receiving* request (``xhr``, ``xhr_streaming``,
  ``eventsource``, ``htmlfile``, ``jsonp``) and opens with an ``o`` frame.
- At most one receiving request at a time: any other gets
  ``c[2010,"Another connection still open"]`` and ends; the session is untouched.
- Messages sent while no request receives are queued, within ``max_pending_bytes``.
- A polling request ends after one frame; a streaming request goes on until it has carried
  ``Receiver.limit`` bytes (128 KiB by default), and the client then opens a new one.
- Once closed (by the application, or because the receiving request was interrupted),
  every receiving request gets the close frame, "until the timeout occurs".
- The session expires ``timeout`` seconds after its last receiving request ended.

State transitions::

    CONNECTING --first receiver--> OPEN --close()--> CLOSING --expire()--> CLOSED
         \\__________________________ close() ______/^

Time is passed in (``now``, seconds on any monotonic clock); nothing here does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from tidings.sockjs.framing import (
    HEARTBEAT_FRAME,
    OPEN_FRAME,
    close_frame,
    message_frame,
    quote,
)

__all__ = [
    "ANOTHER_CONNECTION",
    "INTERRUPTED",
    "Receiver",
    "Session",
    "State",
]

ANOTHER_CONNECTION = (2010, "Another connection still open")
INTERRUPTED = (1002, "Connection interrupted")


class State(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Receiver:
    """One receiving request: how it wraps frames, what it carried, whether it must end."""

    __slots__ = ("done", "limit", "sent", "streaming", "wrap")

    def __init__(
        self, wrap: Callable[[bytes], bytes], *, streaming: bool, limit: int | None = None
    ) -> None:
        self.wrap = wrap
        self.streaming = streaming
        self.limit = limit  # bytes a streaming request carries before it ends; None: no end
        self.sent = 0
        self.done = False

    def _chunk(self, frame: bytes) -> bytes:
        chunk = self.wrap(frame)
        self.sent += len(chunk)
        if not self.streaming or (self.limit is not None and self.sent >= self.limit):
            self.done = True
        return chunk


class Session:
    """A SockJS session: its state, its queue of messages, and who receives them."""

    def __init__(self, *, max_pending_bytes: int) -> None:
        self.state = State.CONNECTING
        self.max_pending_bytes = max_pending_bytes
        self.receiver: Receiver | None = None
        self.detached_at: float | None = None
        self.close_reason: tuple[int, str] | None = None
        self.overflowed = False
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    # -- the application side -------------------------------------------------------------
    def send(self, text: str, *, in_flight: int = 0, force: bool = False) -> bool:
        """Queue one message; False (and everything queued dropped) once the queue plus
        ``in_flight`` (bytes the I/O layer holds unsent) would pass ``max_pending_bytes``.

        ``force`` queues past the bound (a last error before a close). Messages sent after
        ``close()`` are dropped.
        """
        if self.state in (State.CLOSING, State.CLOSED):
            return False
        if self.overflowed and not force:
            return False
        quoted = quote(text)
        size = len(quoted) + 1  # the comma or bracket that goes with it
        if not force and self._pending_bytes + in_flight + size > self.max_pending_bytes:
            self.overflowed = True
            self._pending.clear()
            self._pending_bytes = 0
            return False
        self._pending.append(quoted)
        self._pending_bytes += size
        return True

    def close(self, code: int, reason: str, *, discard_pending: bool = False) -> None:
        """Close with ``c[code,"reason"]``, after what is queued unless ``discard_pending``."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        self.state = State.CLOSING
        self.close_reason = (code, reason)
        if discard_pending:
            self._take_pending()

    # -- the receiving requests -----------------------------------------------------------
    def attach(self, receiver: Receiver, now: float) -> list[bytes]:
        """A receiving request arrived: the chunks to write to it at once.

        Afterwards ``receiver.done`` says whether it must end now; if it does not, it is
        the session's receiver until :meth:`detach`.
        """
        if self.state is State.CLOSED:
            raise RuntimeError("attach() to a closed session: the caller must make a new one")
        if self.receiver is not None:
            receiver.done = True
            return [receiver.wrap(close_frame(*ANOTHER_CONNECTION))]
        self.receiver = receiver
        self.detached_at = None
        if self.state is State.CONNECTING:
            self.state = State.OPEN
            chunks = [receiver._chunk(OPEN_FRAME)]
        else:
            chunks = self.take(receiver)
        if receiver.done:
            self.detach(receiver, now)
        return chunks

    def take(self, receiver: Receiver) -> list[bytes]:
        """The chunks due to ``receiver`` now: queued messages, then the close frame."""
        chunks: list[bytes] = []
        if self._pending and not receiver.done:
            chunks.append(receiver._chunk(message_frame(self._take_pending())))
        if self.close_reason is not None and not receiver.done:
            chunks.append(receiver._chunk(close_frame(*self.close_reason)))
            receiver.done = True
        return chunks

    def heartbeat(self, receiver: Receiver) -> bytes:
        """The ``h`` frame for an idle receiver (a polling request ends with it)."""
        return receiver._chunk(HEARTBEAT_FRAME)

    def detach(self, receiver: Receiver, now: float, *, interrupted: bool = False) -> None:
        """The receiving request ended; ``interrupted`` if the client went away first, which
        closes the session ("we're in an undefined state: some messages may have been lost")."""
        if self.receiver is not receiver:
            return
        self.receiver = None
        self.detached_at = now
        if interrupted:
            self.close(*INTERRUPTED, discard_pending=True)

    # -- expiry ---------------------------------------------------------------------------
    def deadline(self, timeout: float) -> float | None:
        """When the session expires if no receiving request comes; None while one is on."""
        if self.receiver is not None or self.detached_at is None:
            return None
        return self.detached_at + timeout

    def expire(self, now: float, timeout: float) -> bool:
        """Close for good if its deadline has passed; True if it is (now) CLOSED."""
        if self.state is State.CLOSED:
            return True
        deadline = self.deadline(timeout)
        if deadline is None or now < deadline:
            return False
        self.state = State.CLOSED
        self._take_pending()
        return True

    def _take_pending(self) -> list[bytes]:
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        return pending
