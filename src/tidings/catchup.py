"""Node-side catch-up: the stream, not pub/sub, is the source of truth (DESIGN.md §5).

A node delivers stored messages as the broker announces them. Announcements can be
missed without anyone refusing a publish: a publish accepted after Redis restarted but
before the node's subscriptions were back, a subscriber connection killed by
``CLIENT KILL TYPE pubsub`` or by Redis' ``client-output-buffer-limit pubsub``. So the
node remembers, per channel, the last stored id it handed to its sessions (``last``,
one dict store per message, not per subscriber), and reads the inbox after it:

* when the broker reports a break (``Broker.on_continuity``): every channel is *held*
  from the loss on (live stored messages wait in a per-channel buffer), and once the
  broker hears them all again, their streams are read after ``last`` in a few round
  trips (``Inbox.histories``, one pipeline, ``PAGE`` messages a channel, continued while
  a page is full) and delivered in order; then the held live messages after the last
  one delivered. De-duplication is one comparison of order keys, here per channel and
  in the hub per subscription, so nothing arrives twice.
* every ``interval_s`` (the safety net, for losses without a disconnect): one cheap
  batched question for all channels (``Inbox.behind``: does the stream hold anything
  after ``last``?) and a catch-up of those that do.

A channel's first ``last`` is its stream's newest id when the node subscribed
(``Inbox.last_ids``, asked in one batch for the channels subscribed in one loop turn).
When the stream was trimmed past ``last`` (or is gone), the sessions subscribed to it
get ``tidings-gap:true`` on their next MESSAGE there (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tidings.errors import BrokerUnavailable
from tidings.inbox.base import Inbox
from tidings.message import Message, id_key

log = logging.getLogger(__name__)

GAP_HEADER = "tidings-gap"
"""Set to ``true`` on the MESSAGE (or RECEIPT) after which something was trimmed unseen."""
PAGE = 200
"""Messages read per channel per round trip of a catch-up."""
MAX_HELD = 10_000
"""Live messages held per channel during a catch-up; past it they are dropped and the
channel is read again from the stream (they are all in it)."""
DEFAULT_INTERVAL_S = 5.0
"""Seconds between two safety-net passes (``--catchup-interval``)."""
RETRY_INITIAL_S = 0.05
RETRY_MAX_S = 1.0
BASELINE_DELAY_S = 0.05
"""New channels' starting points are read together, this long after the first of them is
heard: in a connection storm one read then covers hundreds of channels. Read at the next
loop turn instead, 5,000 connects + subscribes (bench S4) took 2.4 s instead of 1.5 s
(docs/decisions.md)."""

OrderKey = tuple[int, int]
_LAST_SEQ = 2**63 - 1  # the largest sequence an inbox id carries


def _id(order: OrderKey) -> str:
    return f"{order[0]}-{order[1]}"


@dataclass(slots=True)
class CatchUpCounters:
    """Exported by /metrics."""

    runs: int = 0
    """Catch-ups that read the inbox."""
    messages: int = 0
    """Messages delivered from the inbox by a catch-up (missed live)."""
    gaps: int = 0
    """Channels found trimmed past what this node delivered."""
    passes: int = 0
    """Safety-net passes."""
    behind: int = 0
    """Channels a safety-net pass found behind their stream."""


class CatchUp:
    """A node's memory of what it delivered per channel, and the reads that complete it.

    ``deliver`` hands one message to the hub (the node's delivery path); ``channels``
    lists the channels with local subscribers, ``keys_of`` the destinations subscribed
    on one; ``ready`` says whether the broker hears its channels now.
    """

    def __init__(
        self,
        inbox: Inbox,
        deliver: Callable[[Message], None],
        *,
        channels: Callable[[], Iterable[str]],
        keys_of: Callable[[str], Iterable[str]],
        ready: Callable[[], bool],
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self._inbox = inbox
        self._deliver = deliver
        self._channels = channels
        self._keys_of = keys_of
        self._ready = ready
        self.interval_s = interval_s
        self.counters = CatchUpCounters()
        self.last: dict[str, OrderKey] = {}
        """Per channel, the order key of the last stored message delivered (or announced)."""
        self.held: dict[str, list[Message]] = {}
        """Channels whose live stored messages wait for a catch-up, and those messages."""
        self.gaps: dict[str, set[str]] = {}
        """Channels trimmed past ``last``: the destinations whose next MESSAGE says so."""
        self._wanted: set[str] = set()  # held channels to read, once the broker hears
        self._deaf = False  # between a reported loss and the broker hearing again
        self._baselines: set[str] = set()  # new channels, for one last_ids BASELINE_DELAY_S on
        # New channels whose starting point is not read yet: the millisecond they were
        # subscribed (this node's clock; an int, not a tuple the collector would track),
        # the starting point should a break come first.
        self._since: dict[str, int] = {}
        self._baseline_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._safety_net: asyncio.Task[None] | None = None

    # -- life ------------------------------------------------------------------------

    def start(self) -> None:
        if self.interval_s > 0 and self._safety_net is None:
            self._safety_net = asyncio.create_task(self._run_safety_net(), name="tidings-catchup")

    async def stop(self) -> None:
        if self._baseline_timer is not None:
            self._baseline_timer.cancel()
            self._baseline_timer = None
        tasks = [t for t in (self._safety_net, self._task, *self._tasks) if t is not None]
        self._safety_net = self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- events ----------------------------------------------------------------------

    def on_continuity(self, hearing: bool) -> None:
        """The broker's report (``Broker.on_continuity``): hold every channel from a loss
        on; read them all once it hears them again."""
        if not hearing:
            # A channel subscribed just before the loss has no starting point read yet:
            # what it may miss is what was stored after it was subscribed.
            for channel, since_ms in self._since.items():
                # Everything stored from that millisecond on: the order key just before it.
                self.last.setdefault(channel, (since_ms - 1, _LAST_SEQ))
        channels = [c for c in self._channels() if c in self.last]
        self._deaf = not hearing
        if not hearing:
            for channel in channels:
                self.held.setdefault(channel, [])
            return
        self.request(channels)

    def subscribed(self, channel: str) -> None:
        """The broker now hears ``channel``, newly: remember its stream's newest id."""
        if not _stored(channel) or channel in self.last:
            return
        self._since.setdefault(channel, int(time.time() * 1000))
        if not self._baselines:
            self._baseline_timer = asyncio.get_running_loop().call_later(
                BASELINE_DELAY_S, self._fetch_baselines
            )
        self._baselines.add(channel)

    def forget(self, channel: str) -> None:
        """The node unsubscribed ``channel``: nothing to remember of it."""
        self.last.pop(channel, None)
        self.held.pop(channel, None)
        self.gaps.pop(channel, None)
        self._wanted.discard(channel)
        self._baselines.discard(channel)
        self._since.pop(channel, None)

    def hold(self, buffer: list[Message], channel: str, message: Message) -> None:
        """Keep a live ``message`` of a held channel for after its catch-up."""
        if len(buffer) < MAX_HELD:
            buffer.append(message)
            return
        buffer.clear()  # all of them are in the stream: read them again from there
        self._wanted.add(channel)

    def request(self, channels: Iterable[str]) -> None:
        """Hold ``channels`` now and catch them up as soon as the broker hears them."""
        for channel in channels:
            if channel not in self.last:
                continue  # no starting point yet: its baseline is on its way
            self.held.setdefault(channel, [])
            self._wanted.add(channel)
        self._kick()

    def with_gap(self, message: Message) -> Message:
        """``message``, with ``tidings-gap:true`` if its destination on its channel has a
        gap to report; the report is then consumed."""
        keys = self.gaps.get(message.channel)
        if keys is None or message.order is None or message.destination not in keys:
            return message
        keys.discard(message.destination)
        if not keys:
            del self.gaps[message.channel]
        return dataclasses.replace(message, headers=(*message.headers, (GAP_HEADER, "true")))

    async def settle(self) -> None:
        """Return once no catch-up is wanted or running, and the starting points of the
        channels heard so far are asked for now (for tests and benchmarks)."""
        if self._baselines:
            self._fetch_baselines()
        while self._task is not None:
            await asyncio.shield(self._task)

    # -- catch-up --------------------------------------------------------------------

    def _kick(self) -> None:
        if self._task is None and self._wanted and self._ready():
            self._task = asyncio.create_task(self._run(), name="tidings-catchup-run")

    async def _run(self) -> None:
        failures = 0
        try:
            while self._wanted and self._ready():
                batch, self._wanted = self._wanted, set()
                try:
                    await self.catch_up(batch)
                    failures = 0
                except BrokerUnavailable as exc:
                    self._wanted |= {c for c in batch if c in self.held}
                    failures += 1
                    log.info("catch-up of %d channels failed, retrying: %s", len(batch), exc)
                    await asyncio.sleep(min(RETRY_MAX_S, RETRY_INITIAL_S * 2**failures))
                except Exception:
                    # A bug, not an outage: do not hold these channels' live messages
                    # forever. They go out as they came; the next check looks again.
                    log.exception("catch-up of %d channels failed", len(batch))
                    self._release(batch)
        finally:
            self._task = None

    async def catch_up(self, channels: set[str]) -> None:
        """Read each channel's stream after ``last``, deliver what is new in order, then
        release what was held live; BrokerUnavailable leaves them held."""
        self.counters.runs += 1
        after = {c: _id(self.last[c]) for c in channels if c in self.last}
        while after:
            pages = await self._inbox.histories(after, limit=PAGE)
            after = {}
            for channel, history in pages.items():
                if channel not in self.last:
                    continue  # unsubscribed meanwhile
                if history.gap:
                    self._mark_gap(channel)
                for stored in history.messages:
                    self._deliver_newer(channel, stored.message)
                if len(history.messages) >= PAGE:
                    after[channel] = _id(self.last[channel])
        self._release(channels)

    def _release(self, channels: set[str]) -> None:
        """Deliver the held live messages newer than the last delivered; go live."""
        for channel in channels:
            if self._deaf or channel in self._wanted or channel not in self.held:
                continue  # lost again, or overflowed, meanwhile: read it again first
            for message in self.held.pop(channel):
                self._deliver_newer(channel, message)

    def _deliver_newer(self, channel: str, message: Message) -> None:
        order = message.order
        last = self.last.get(channel)
        if order is None or last is None or order <= last:
            return
        self.last[channel] = order
        self.counters.messages += 1
        self._deliver(message)

    def _mark_gap(self, channel: str) -> None:
        self.counters.gaps += 1
        keys = set(self._keys_of(channel))
        if keys:
            self.gaps.setdefault(channel, set()).update(keys)
        log.warning("channel %s was trimmed past what this node delivered", channel)

    # -- starting points -------------------------------------------------------------

    def _fetch_baselines(self) -> None:
        if self._baseline_timer is not None:
            self._baseline_timer.cancel()  # when called early (settle)
            self._baseline_timer = None
        channels, self._baselines = list(self._baselines), set()
        if channels:
            task = asyncio.create_task(self._baseline(channels))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _baseline(self, channels: list[str]) -> None:
        try:
            tops = await self._inbox.last_ids(channels)
        except BrokerUnavailable as exc:
            log.info("cannot read the newest ids of %d channels now: %s", len(channels), exc)
            return  # the next safety-net pass sets them
        self._set_baselines(tops)

    def _set_baselines(self, tops: dict[str, str | None]) -> None:
        """A live message that arrived meanwhile already set a better starting point."""
        for channel, top in tops.items():
            self._since.pop(channel, None)
            if channel not in self.last and self._keys_of(channel):  # still subscribed
                self.last[channel] = id_key(top) if top is not None else (0, 0)

    # -- safety net ------------------------------------------------------------------

    async def _run_safety_net(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except BrokerUnavailable as exc:
                log.info("catch-up safety net skipped a pass: %s", exc)
            except Exception:
                log.exception("catch-up safety net pass failed")

    async def check(self) -> list[str]:
        """One safety-net pass: catch up the channels whose stream holds more than was
        delivered; returns them."""
        if not self._ready():
            return []
        self.counters.passes += 1
        channels = [c for c in self._channels() if _stored(c)]
        missing = [c for c in channels if c not in self.last]
        if missing:
            self._set_baselines(await self._inbox.last_ids(missing))
        after = {c: _id(self.last[c]) for c in channels if c in self.last and c not in self.held}
        found = await self._inbox.behind(after)
        # A channel that received something while we asked was probably behind by what
        # was in flight: the next pass looks again. The others are read now.
        behind = [c for c in found if c in self.last and _id(self.last[c]) == after[c]]
        self.counters.behind += len(behind)
        self.request(behind)
        self._kick()  # also retries a catch-up that failed
        return behind


def _stored(channel: str) -> bool:
    """Channels whose messages are stored (users and topics), not node or raw channels."""
    return channel[:2] in ("u:", "t:")
