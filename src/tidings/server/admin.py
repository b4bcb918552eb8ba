"""The admin API: a cluster seen from any node (issue 17; docs/admin.md).

* **Nodes**: every node writes a record about itself to the registry every
  ``registry.HEARTBEAT_S`` (``Heartbeat``): counters it already keeps, read when the
  heartbeat fires, never counted per message.
* **Sessions, disconnects, channels, users online**: asked of every live node over the
  control channel (``control.py``); each answers from its own state.
* **Inbox deletion**: the inbox is shared storage, so the node that is asked deletes,
  then announces an inbox-state event on the user's channel, which every node holding a
  session of the user delivers (``Node.delete_inbox``, as ``mark_read``).

Every route checks the caller with ``admin_access.admin_caller`` and writes one audit
line (logger ``tidings.audit``): who, what, target.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from tidings import __version__, publish_rules
from tidings.brokers import REDIS_SCHEMES
from tidings.errors import BrokerUnavailable
from tidings.presence import LocalSessions
from tidings.registry import HEARTBEAT_S, MemoryRegistry, Registry
from tidings.server.admin_access import admin_caller
from tidings.server.api import ApiError, PublishApi, read_object
from tidings.server.control import Control
from tidings.server.openapi_admin import MAX_LIST, MAX_REASON
from tidings.server.session import CLOSE_GOING_AWAY, CLOSE_POLICY_VIOLATION, SessionContext

if TYPE_CHECKING:
    from tidings.server.session import StompSession

log = logging.getLogger(__name__)
audit_log = logging.getLogger("tidings.audit")

DEFAULT_REASON = "disconnected by an operator"
_LIMIT = re.compile(r"[0-9]{1,4}")
_USER_RULE = (
    f"a user id is 1-{publish_rules.MAX_NAME} characters of text: no control character, no '/'"
)


def registry_for(server: SessionContext) -> Registry:
    """The registry on the node's broker: Redis for a Redis URL (Sentinel too), the PostgreSQL
    inbox's database beside RabbitMQ, else in process (and redis-py is not even imported:
    a memory-broker node starts faster without it)."""
    if urlsplit(server.config.broker).scheme not in REDIS_SCHEMES:
        # RabbitMQ routing, PostgreSQL storage: the records are in the inbox's database.
        from_database = getattr(server.node.presence, "node_registry", None)
        return MemoryRegistry() if from_database is None else cast("Registry", from_database())
    from tidings.brokers.redis import RedisBroker  # noqa: PLC0415 - the redis branch only
    from tidings.brokers.redis_registry import RedisRegistry  # noqa: PLC0415

    broker = server.node.broker
    assert isinstance(broker, RedisBroker), "a redis:// node has the Redis broker"
    return RedisRegistry(broker.redis)


class Heartbeat:
    """Writes this node's record every HEARTBEAT_S; removes it at a clean stop."""

    def __init__(self, server: SessionContext, registry: Registry) -> None:
        self.server = server
        self.registry = registry
        self.started_at = time.time()
        self._task: asyncio.Task[None] | None = None
        self._last: tuple[float, int, int, int] | None = None  # time, published, in, out
        self._broker_kind = urlsplit(server.config.broker).scheme  # memory, redis, rediss

    async def start(self) -> None:
        with contextlib.suppress(BrokerUnavailable):  # else the next beat writes it
            await self.registry.write(self.server.node.id, self.record())
        self._task = asyncio.create_task(self._beat(), name="tidings-admin-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(BrokerUnavailable, TimeoutError):
            await asyncio.wait_for(self.registry.remove(self.server.node.id), 1.0)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await asyncio.wait_for(
                    self.registry.write(self.server.node.id, self.record()), HEARTBEAT_S
                )
            except (BrokerUnavailable, TimeoutError) as exc:
                log.debug("node registry write failed (the next beat retries): %s", exc)

    def record(self) -> bytes:
        """What this node reports: numbers it keeps anyway, and rates since the last."""
        server, node = self.server, self.server.node
        counters = node.counters
        now = time.monotonic()
        published, received = counters.published, sum(counters.received.values())
        delivered = counters.delivered
        rates = {"published": 0.0, "in": 0.0, "out": 0.0}
        if self._last is not None and now > self._last[0]:
            elapsed = now - self._last[0]
            rates = {
                "published": (published - self._last[1]) / elapsed,
                "in": (received - self._last[2]) / elapsed,
                "out": (delivered - self._last[3]) / elapsed,
            }
        self._last = (now, published, received, delivered)
        presence = node.presence
        users = len(presence.by_user) if isinstance(presence, LocalSessions) else 0
        return orjson.dumps(
            {
                "id": node.id,
                "version": __version__,
                "pid": os.getpid(),
                "started_at": self.started_at,
                "reported_at": time.time(),
                "sessions": len(server.sessions),
                "users_online": users,
                "channels": node.hub.channel_count,
                "subscriptions": node.hub.subscription_count,
                "published_per_s": round(rates["published"], 2),
                "messages_in_per_s": round(rates["in"], 2),
                "messages_out_per_s": round(rates["out"], 2),
                "broker": {"kind": self._broker_kind, "ready": node.ready},
            }
        )


# -- what one node answers about itself (the control ops) -------------------------------
def local_sessions(server: SessionContext, user: str) -> list[dict[str, object]]:
    """This node's connected sessions of ``user``."""
    return [
        _session_json(server, session)
        for session in list(server.sessions)
        if session.user == user and not session.closed
    ]


def _session_json(server: SessionContext, session: StompSession) -> dict[str, object]:
    return {
        "id": session.id,
        "node": server.node.id,
        "transport": session.transport_name,
        "connected_at": session.connected_at,
        "remote": session.remote,
        "subscriptions": [
            {"id": sub.id, "destination": sub.destination, "ack": sub.ack}
            for sub in session.subscriptions
        ],
    }


def local_disconnect(server: SessionContext, user: str, reason: str, reconnect: bool) -> int:
    """ERROR then close for every session of ``user`` here; returns how many."""
    advice = "reconnect" if reconnect else "do not reconnect"
    code = CLOSE_GOING_AWAY if reconnect else CLOSE_POLICY_VIOLATION
    extra = (("tidings-reconnect", "true" if reconnect else "false"),)
    closed = 0
    for session in list(server.sessions):
        if session.user == user and not session.closed:
            session.fail(reason, f"{reason}: {advice}", code, extra=extra)
            closed += 1
    return closed


def local_channels(server: SessionContext, prefix: str, limit: int) -> dict[str, object]:
    """The ``limit`` channels with most local subscriptions, and how many matched."""
    counts = server.node.hub.subscriber_counts(prefix)
    counts.sort(key=lambda item: (-item[1], item[0]))
    return {"channels": counts[:limit], "matching": len(counts)}


def local_users(server: SessionContext, limit: int) -> dict[str, object]:
    """Up to ``limit`` users with sessions here (and their session counts)."""
    presence = server.node.presence
    by_user = presence.by_user if isinstance(presence, LocalSessions) else {}
    users = sorted(by_user.items(), key=lambda item: (-len(item[1]), item[0]))
    return {"users": [[user, len(ids)] for user, ids in users[:limit]], "matching": len(by_user)}


class AdminApi:
    """The admin routes and the node's part in the cluster view."""

    def __init__(self, server: SessionContext, api: PublishApi) -> None:
        self.server = server
        self.api = api
        self.registry = registry_for(server)
        self.heartbeat = Heartbeat(server, self.registry)
        self.control = Control(
            server.node,
            {
                "sessions": lambda args: local_sessions(server, str(args["user"])),
                "disconnect": lambda args: local_disconnect(
                    server, str(args["user"]), str(args["reason"]), bool(args["reconnect"])
                ),
                "channels": lambda args: local_channels(
                    server, str(args["prefix"]), int(args["limit"])
                ),
                "users": lambda args: local_users(server, int(args["limit"])),
            },
        )

    async def start(self) -> None:
        await self.control.start()
        await self.heartbeat.start()

    async def stop(self) -> None:
        await self.heartbeat.stop()
        await self.control.stop()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/admin/nodes", self.nodes),
            web.get("/api/v1/admin/users", self.users),
            web.get("/api/v1/admin/users/{user}/sessions", self.sessions),
            web.get("/api/v1/admin/channels", self.channels),
            web.post("/api/v1/users/{user}/disconnect", self.disconnect),
            web.delete("/api/v1/users/{user}/inbox", self.delete_inbox),
        ]

    # -- routes ------------------------------------------------------------------------
    async def nodes(self, request: web.Request) -> web.Response:
        """Every live node's latest record, with its uptime, by node id."""
        audit(self._caller(request), "list nodes", "cluster")
        records = await self.registry.records()
        now = time.time()
        nodes = []
        for node_id in sorted(records):
            record = orjson.loads(records[node_id])
            record["uptime_s"] = round(max(0.0, now - float(record.get("started_at", now))), 1)
            nodes.append(record)
        return web.json_response({"answered_by": self.server.node.id, "nodes": nodes})

    async def users(self, request: web.Request) -> web.Response:
        """Users online cluster-wide, most sessions first: ``?limit=`` (default 100)."""
        who = self._caller(request)
        limit = _limit(request)
        audit(who, "list users online", "cluster")
        replies, unanswered = await self._ask("users", {"limit": limit})
        sessions: dict[str, int] = {}
        nodes: dict[str, list[str]] = {}
        complete = not unanswered
        for node, reply in replies.items():
            if not isinstance(reply, dict) or "users" not in reply:
                complete = False
                continue
            complete = complete and reply["matching"] <= limit
            for user, count in reply["users"]:
                sessions[user] = sessions.get(user, 0) + count
                nodes.setdefault(user, []).append(node)
        ranked = sorted(sessions, key=lambda user: (-sessions[user], user))[:limit]
        users = [{"user": u, "sessions": sessions[u], "nodes": sorted(nodes[u])} for u in ranked]
        return web.json_response({"users": users, "complete": complete, "unanswered": unanswered})

    async def sessions(self, request: web.Request) -> web.Response:
        """Each session of the user on any node."""
        who = self._caller(request)
        user = _user(request)
        audit(who, "list sessions", f"user {user}")
        replies, unanswered = await self._ask("sessions", {"user": user})
        sessions = [s for reply in replies.values() if isinstance(reply, list) for s in reply]
        sessions.sort(key=lambda s: (s["node"], s["connected_at"], s["id"]))
        return web.json_response({"user": user, "sessions": sessions, "unanswered": unanswered})

    async def channels(self, request: web.Request) -> web.Response:
        """The channels with most subscriptions, cluster-wide: ``?prefix=&limit=``."""
        who = self._caller(request)
        prefix = request.query.get("prefix", "")
        if len(prefix) > 2 + publish_rules.MAX_NAME:
            raise ApiError(400, "invalid_field", "'prefix' is too long")
        limit = _limit(request)
        audit(who, "list channels", f"prefix {prefix!r}")
        replies, unanswered = await self._ask("channels", {"prefix": prefix, "limit": limit})
        totals: dict[str, int] = {}
        nodes: dict[str, int] = {}
        complete = not unanswered
        for reply in replies.values():
            if not isinstance(reply, dict) or "channels" not in reply:
                complete = False
                continue
            # A node that matched more than it sent may hide a channel's other subscribers.
            complete = complete and reply["matching"] <= limit
            for channel, count in reply["channels"]:
                totals[channel] = totals.get(channel, 0) + count
                nodes[channel] = nodes.get(channel, 0) + 1
        ranked = sorted(totals, key=lambda c: (-totals[c], c))[:limit]
        channels = [{"channel": c, "subscribers": totals[c], "nodes": nodes[c]} for c in ranked]
        return web.json_response(
            {"channels": channels, "complete": complete, "unanswered": unanswered}
        )

    async def disconnect(self, request: web.Request) -> web.Response:
        """ERROR then close for every session of the user on every node."""
        who = self._caller(request)
        user = _user(request)
        raw = await request.read()
        data = read_object(raw) if raw.strip() else {}
        reason = data.get("reason", DEFAULT_REASON)
        if not isinstance(reason, str) or not 1 <= len(reason) <= MAX_REASON:
            raise ApiError(
                400, "invalid_field", f"'reason' must be a string of 1-{MAX_REASON} characters"
            )
        reconnect = data.get("reconnect", True)
        if not isinstance(reconnect, bool):
            raise ApiError(400, "invalid_field", "'reconnect' must be true or false")
        audit(who, "disconnect", f"user {user}", reason=reason, reconnect=str(reconnect).lower())
        args = {"user": user, "reason": reason, "reconnect": reconnect}
        replies, unanswered = await self._ask("disconnect", args)
        closed = {node: count for node, count in replies.items() if isinstance(count, int)}
        return web.json_response(
            {
                "user": user,
                "closed": sum(closed.values()),
                "nodes": closed,
                "unanswered": unanswered,
            }
        )

    async def delete_inbox(self, request: web.Request) -> web.Response:
        """Delete the user's stored messages (all, or ``?up_to=<id>``); sessions are told."""
        who = self._caller(request)
        user = _user(request)
        up_to = request.query.get("up_to")
        if up_to is not None and not publish_rules.valid_inbox_id(up_to):
            raise ApiError(400, "invalid_field", "'up_to' must be an inbox id like 1700000000000-0")
        target = f"user {user}" + (f" up to {up_to}" if up_to else "")
        audit(who, "delete inbox", target)
        deleted, unread = await self.server.node.delete_inbox(user, up_to=up_to)
        return web.json_response({"deleted": deleted, "unread": unread})

    # -- shared ------------------------------------------------------------------------
    def _caller(self, request: web.Request) -> str:
        """The caller checked (ApiError 401/403 if not an operator): who, for the audit."""
        return admin_caller(self.api, request.headers, request.remote)

    async def _ask(self, op: str, args: dict[str, Any]) -> tuple[dict[str, object], list[str]]:
        """``op`` on every live node (the registry's list, and always this one)."""
        live = set(await self.registry.records())
        live.add(self.server.node.id)
        return await self.control.ask(op, args, live)


def audit(who: str, action: str, target: str, **details: str) -> None:
    """One line per admin action: who, what, on what (and details such as a reason)."""
    extra = "".join(f" {name}={value!r}" for name, value in details.items())
    audit_log.info(
        "admin: %s: %s %s%s",
        who,
        action,
        target,
        extra,
        extra={"who": who, "action": action, "target": target, **details},
    )


def _user(request: web.Request) -> str:
    user = request.match_info["user"]
    if not publish_rules.valid_user(user):
        raise ApiError(400, "invalid_field", f"the user id in the path: {_USER_RULE}")
    return user


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", "100")
    limit = int(text) if _LIMIT.fullmatch(text) else 0
    if not 1 <= limit <= MAX_LIST:
        raise ApiError(400, "invalid_field", f"'limit' must be an integer 1..{MAX_LIST}")
    return limit
