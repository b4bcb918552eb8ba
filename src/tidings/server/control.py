"""Requests from one node to the others over the broker: the admin API's cluster view.

The asking node publishes ``{"op", "rid", "from", "args"}`` on each target's control
channel ``n:<node id>:ctl`` (a node channel: ``Node`` hands it over before any delivery
work, so the delivery path pays nothing for it). The target runs the op's handler on its
own in-memory state (synchronous: no I/O, nothing to wait for) and publishes
``{"op": "reply", "rid", "node", "result"}`` on the asker's channel. The asker waits for
every target, at most ``ASK_TIMEOUT_S``, and names the ones that did not answer; it
answers for itself directly, without the broker. With the memory broker there is one
node: every ask is local.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from tidings.errors import BrokerUnavailable

if TYPE_CHECKING:
    from tidings.node import Node

log = logging.getLogger(__name__)

CONTROL_SUFFIX = ":ctl"
ASK_TIMEOUT_S = 2.0
"""How long an ask waits for the other nodes' answers."""
MAX_ASKS = 64
"""Asks in flight at once on one node; more are refused (BrokerUnavailable, 503)."""
SUBSCRIBE_RETRY_MAX_S = 1.0

Handler = Callable[[dict[str, Any]], object]
"""An op: its arguments in, a JSON-able result out; runs on the node's own state."""


class Control:
    """One node's end of the control channel (see the module docstring)."""

    def __init__(self, node: Node, handlers: Mapping[str, Handler]) -> None:
        self.node = node
        self.handlers = dict(handlers)
        self._channel = ""
        self._ids = itertools.count(1)
        self._prefix = f"{node.id}-{secrets.token_hex(3)}-"
        self._asks: dict[str, dict[str, asyncio.Future[object]]] = {}  # rid -> node -> reply
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._channel = self.node.on_node_message(self._on_message, CONTROL_SUFFIX)
        try:
            await self.node.broker.subscribe(self._channel)
        except BrokerUnavailable:  # Redis down at start: subscribed once it is back
            self._spawn(self._subscribe_when_back())

    async def stop(self) -> None:
        self.node.on_node_message(None, CONTROL_SUFFIX)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def ask(
        self, op: str, args: dict[str, Any], nodes: Iterable[str]
    ) -> tuple[dict[str, object], list[str]]:
        """Run ``op`` on each of ``nodes``: (results by node, nodes that did not answer).

        BrokerUnavailable if the request could not be published to every node.
        """
        targets = set(nodes)
        results: dict[str, object] = {}
        if self.node.id in targets:
            targets.discard(self.node.id)
            results[self.node.id] = self.run(op, args)
        if not targets:
            return results, []
        if len(self._asks) >= MAX_ASKS:
            raise BrokerUnavailable(f"more than {MAX_ASKS} cluster requests under way")
        rid = f"{self._prefix}{next(self._ids)}"
        loop = asyncio.get_running_loop()
        waiting = {node: loop.create_future() for node in targets}
        self._asks[rid] = waiting
        request = orjson.dumps({"op": op, "rid": rid, "from": self.node.id, "args": args})
        try:
            await asyncio.gather(
                *(
                    self.node.broker.publish(f"n:{node}{CONTROL_SUFFIX}", request)
                    for node in targets
                )
            )
            await asyncio.wait(waiting.values(), timeout=ASK_TIMEOUT_S)
        finally:
            del self._asks[rid]
        unanswered = []
        for node, reply in sorted(waiting.items()):
            if reply.done():
                results[node] = reply.result()
            else:
                reply.cancel()
                unanswered.append(node)
        return results, unanswered

    def run(self, op: str, args: dict[str, Any]) -> object:
        """Run ``op`` here; an unknown op or a failure is ``{"error": ...}``."""
        handler = self.handlers.get(op)
        if handler is None:
            return {"error": f"unknown op {op!r}"}
        try:
            return handler(args)
        except Exception as exc:  # one node's failure must not hide the others' answers
            log.exception("control op %s failed", op)
            return {"error": f"{type(exc).__name__}: {exc}"}

    def _on_message(self, payload: bytes) -> None:
        try:
            message = orjson.loads(payload)
            op, rid = message["op"], message["rid"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("control: ignoring an undecodable message: %s", exc)
            return
        if op == "reply":
            reply = self._asks.get(rid, {}).get(message.get("node"))
            if reply is not None and not reply.done():
                reply.set_result(message.get("result"))
            return
        args = message.get("args")
        result = self.run(op, args if isinstance(args, dict) else {})
        answer = orjson.dumps({"op": "reply", "rid": rid, "node": self.node.id, "result": result})
        self._spawn(self._reply(f"n:{message.get('from')}{CONTROL_SUFFIX}", answer))

    async def _reply(self, channel: str, answer: bytes) -> None:
        with contextlib.suppress(BrokerUnavailable):  # the asker times out and says so
            await self.node.broker.publish(channel, answer)

    async def _subscribe_when_back(self) -> None:
        for attempt in itertools.count():
            await asyncio.sleep(min(SUBSCRIBE_RETRY_MAX_S, 0.05 * 2**attempt))
            with contextlib.suppress(BrokerUnavailable):
                await self.node.broker.subscribe(self._channel)
                return

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
