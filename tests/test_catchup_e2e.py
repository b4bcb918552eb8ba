"""No loss through Redis faults (issue 13, acceptance (a), (b), (c); tidings.catchup).

Two real ``tidings serve`` nodes on one real Redis with AOF on and ``appendfsync
always``; 20 users, each with one plain auto-ack STOMP session (no resume header, no
ack mode: the Spring front end's kind) that never reconnects, half on each node; a back
end publishing every 20 ms through both nodes over HTTP. Mid-stream, Redis is shut down
and started again on the same port and directory (a), or its pub/sub connections are
killed (b), or, on a master with one replica and three sentinels, the master is
SIGKILLed and the sentinels promote the replica (c). Every message answered 2xx must
reach its user's session exactly once, in order. A publish refused with 503 is not
accepted: the back end retries it (with an ``Idempotency-Key``, so that a publish stored
before its reply was lost is not stored twice), as a back end should.

The safety net (a stored message whose announcement never came, without any broker
break) is checked by storing a message in Redis without announcing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest

from tidings.message import id_key

from .conftest import StartServer, TidingsServer
from .message_log import MessageLog
from .redis_fixture import RedisServer
from .sentinel_fixture import Sentinels
from .stompws import StompWs

USERS = 20
PUBLISHES = 520  # over both nodes: 260 each, one every 20 ms
INTERVAL_S = 0.02
FAULT_AFTER = 200  # accepted publishes before the fault
DELIVERY_TIMEOUT_S = 15.0
END = b"end"  # published to every user last: what arrives after it does not count


@pytest.fixture
async def durable_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server with AOF on and every write fsynced before it answers."""
    server = RedisServer(tmp_path, ["--appendonly", "yes", "--appendfsync", "always"])
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@dataclass
class Tally:
    accepted: dict[str, str] = field(default_factory=dict)  # body -> user
    refused: int = 0  # 503 answers (then retried)
    fault_due: asyncio.Event = field(default_factory=asyncio.Event)

    def accept(self, body: str, user: str) -> None:
        self.accepted[body] = user
        if len(self.accepted) >= FAULT_AFTER:
            self.fault_due.set()


async def publish_until_accepted(
    http: aiohttp.ClientSession, node: TidingsServer, user: str, body: str, tally: Tally
) -> None:
    """POST until a 2xx; a 503 or a broken connection is retried, with the same key."""
    url = f"{node.http_url}/api/v1/users/{user}/messages"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        try:
            async with http.post(
                url, json={"body": body}, headers={"Idempotency-Key": body}
            ) as reply:
                status = reply.status
                await reply.read()
        except aiohttp.ClientError:
            status = 0
        if 200 <= status < 300:
            tally.accept(body, user)
            return
        assert status in (0, 503), f"unexpected {status} for {body}"
        tally.refused += 1
        assert loop.time() < deadline, f"{body} not accepted within 20 s"
        await asyncio.sleep(0.05)  # the back end's retry delay


async def run_scenario(
    tidings_server: StartServer,
    redis: RedisServer,
    fault: Callable[[], Awaitable[None]],
    name: str,
    *,
    broker: str | None = None,
    node_args: Sequence[str] = (),
) -> None:
    """The scenario above; the nodes' ``--broker`` is ``redis.url`` unless ``broker``
    says otherwise, and they get ``node_args`` too."""
    url = broker or redis.url
    nodes = list(
        await asyncio.gather(
            *(tidings_server("--broker", url, "--node-id", n, *node_args) for n in ("A", "B"))
        )
    )
    users = [f"c{n}" for n in range(USERS)]
    readers = []
    for index, user in enumerate(users):
        client = await StompWs.open(nodes[index % 2].ws_url("/publicServer"))
        await client.connect(login=user)
        await client.subscribe("sub-0", f"/user/{user}/message")
        readers.append(MessageLog(user, client, END.decode()))
    tasks = [asyncio.create_task(reader.run()) for reader in readers]
    tally = Tally()
    faulted = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as http:

            async def back_end(node: TidingsServer, numbers: range) -> None:
                loop = asyncio.get_running_loop()
                start = loop.time()
                for step, n in enumerate(numbers):
                    await asyncio.sleep(max(0.0, start + step * INTERVAL_S - loop.time()))
                    user = users[n % USERS]
                    await publish_until_accepted(http, node, user, f"{user}:{n}", tally)

            async def inject() -> None:
                await tally.fault_due.wait()
                await fault()
                faulted.set()

            half = PUBLISHES // 2
            await asyncio.gather(
                back_end(nodes[0], range(0, half)),
                back_end(nodes[1], range(half, PUBLISHES)),
                inject(),
            )
            assert faulted.is_set()
            # Last, END to every user: each session's messages are in id order, so once
            # END is there, everything published before it is too (or never will be).
            for index, user in enumerate(users):
                node = nodes[index % 2]
                async with http.post(
                    f"{node.http_url}/api/v1/users/{user}/messages", json={"body": END.decode()}
                ) as reply:
                    assert reply.status == 202, await reply.text()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DELIVERY_TIMEOUT_S):
                await asyncio.gather(*(reader.done.wait() for reader in readers))
        expected = Counter(tally.accepted.values())
    finally:
        for task in tasks:
            task.cancel()
        for reader in readers:
            with contextlib.suppress(Exception):
                await reader.client.close()

    received = Counter(itertools.chain.from_iterable(r.bodies for r in readers))
    lost = [body for body in tally.accepted if received[body] == 0]
    duplicated = [body for body, count in received.items() if count > 1]
    stray = [body for body in received if body not in tally.accepted]
    report = (
        f"{name}: accepted {len(tally.accepted)}, refused-then-retried {tally.refused}, "
        f"delivered {sum(received.values())}, lost {len(lost)}, duplicated {len(duplicated)}"
    )
    print(f"\n{report}")
    for node in nodes:
        print(
            f"node {node.port}: caught up "
            f"{await node.metric('tidings_catchup_messages_total'):.0f} messages in "
            f"{await node.metric('tidings_catchup_runs_total'):.0f} runs, reconnects "
            f"{await node.metric('tidings_broker_reconnects_total'):.0f}"
        )
    assert not lost, f"{report}; lost e.g. {lost[:10]}"
    assert not duplicated, f"{report}; duplicated e.g. {duplicated[:10]}"
    assert not stray, f"{report}; never accepted: {stray[:10]}"
    for reader in readers:
        assert not reader.ended, f"{reader.user}'s session ended: {reader.ended}"
        assert reader.gaps == 0, f"{reader.user}: a gap reported with nothing trimmed"
        orders = [id_key(i) for i in reader.ids]
        assert orders == sorted(orders), f"{reader.user}: out of order"
        assert len(reader.bodies) == expected[reader.user], report


async def test_redis_restart_with_aof_loses_nothing(
    tidings_server: StartServer, durable_redis: RedisServer
) -> None:
    async def restart() -> None:
        await durable_redis.stop()  # SIGTERM: Redis' SHUTDOWN (AOF fsynced)
        await asyncio.sleep(0.5)  # the outage: publishes meanwhile get 503
        await durable_redis.start()  # same port, same dir: the AOF is loaded

    await run_scenario(tidings_server, durable_redis, restart, "redis restart")


async def test_killed_pubsub_connections_lose_nothing(
    tidings_server: StartServer, durable_redis: RedisServer
) -> None:
    async def kill() -> None:
        assert await durable_redis.kill_pubsub_clients() == 2  # one per node

    await run_scenario(tidings_server, durable_redis, kill, "CLIENT KILL TYPE pubsub")


async def test_sentinel_failover_with_min_replicas_loses_nothing(
    tidings_server: StartServer, sentinels: Sentinels
) -> None:
    """(c): nodes on ``redis+sentinel://`` with ``--inbox-min-replicas 1``; the master is
    SIGKILLed mid-stream. A publish is answered 2xx only once the replica holds it, so
    the promoted replica has every accepted message; the nodes find the new master and
    catch up from its streams. The killed server comes back as a replica of the new
    master (as an operator's restart would, once the sentinels reconfigured it): until
    then no replica can acknowledge, and publishes are answered 503 and retried."""
    servers = sentinels.servers
    old = await sentinels.master_port()

    async def failover() -> None:
        await sentinels.kill_master()
        new = await sentinels.wait_for_failover(old)
        assert new == servers.replica.port
        servers.master.extra_args += ["--replicaof", "127.0.0.1", str(new)]
        await servers.master.start()

    await run_scenario(
        tidings_server,
        servers.master,
        failover,
        "sentinel failover, --inbox-min-replicas 1",
        broker=sentinels.url,
        node_args=("--inbox-min-replicas", "1", "--inbox-replica-timeout", "500"),
    )


async def test_safety_net_delivers_a_stored_message_that_was_never_announced(
    tidings_server: StartServer, durable_redis: RedisServer
) -> None:
    """Pub/sub can drop a message with no disconnect at all: the periodic check finds
    the stream ahead of what the node delivered and reads the rest from it."""
    node = await tidings_server(
        "--broker", durable_redis.url, "--node-id", "A", "--catchup-interval", "0.3"
    )
    client = await StompWs.open(node.ws_url("/publicServer"))
    try:
        await client.connect(login="42")
        await client.subscribe("sub-0", "/user/42/message")
        async with aiohttp.ClientSession() as http:
            url = f"{node.http_url}/api/v1/users/42/messages"
            async with http.post(url, json={"body": "announced"}) as reply:
                assert reply.status == 202
                first = (await reply.json())["id"]
        message = await client.expect("MESSAGE", **{"tidings-id": first})
        assert message.body == b"announced"

        # Stored as the publish script stores (fields n, p, d, m), but never PUBLISHed.
        redis = durable_redis.client()
        try:
            stored = orjson.dumps(["", "u:42", "/message", "silent", "text/plain", []])
            silent = (
                await redis.xadd(
                    "tidings:inbox:u:42", {"n": "2", "p": first, "d": "/message", "m": stored}
                )
            ).decode()
        finally:
            await redis.aclose()
        message = await client.expect("MESSAGE", timeout=5, **{"tidings-id": silent})
        assert message.body == b"silent"
        assert message.get("tidings-gap") is None
        assert await node.metric("tidings_catchup_messages_total") == 1
    finally:
        await client.close()


async def test_missed_messages_beyond_retention_come_with_a_gap_header(
    tidings_server: StartServer, durable_redis: RedisServer
) -> None:
    """Trimmed past what the node delivered: the next MESSAGE says tidings-gap:true."""
    node = await tidings_server(
        "--broker",
        durable_redis.url,
        "--node-id",
        "A",
        "--catchup-interval",
        "0.3",
        "--inbox-max-messages",
        "3",
    )
    client = await StompWs.open(node.ws_url("/publicServer"))
    try:
        await client.connect(login="42")
        await client.subscribe("sub-0", "/user/42/message")
        async with aiohttp.ClientSession() as http:
            url = f"{node.http_url}/api/v1/users/42/messages"
            async with http.post(url, json={"body": "announced"}) as reply:
                assert reply.status == 202
                previous = (await reply.json())["id"]
        await client.expect("MESSAGE", **{"tidings-id": previous})

        # Five stored and never announced; the stream keeps three (MAXLEN 3).
        redis = durable_redis.client()
        silent = []
        try:
            for n in range(5):
                stored = orjson.dumps(["", "u:42", "/message", f"s{n}", "text/plain", []])
                fields = {"n": str(n + 2), "p": previous, "d": "/message", "m": stored}
                previous = (
                    await redis.xadd("tidings:inbox:u:42", fields, maxlen=3, approximate=False)
                ).decode()
                silent.append(previous)
        finally:
            await redis.aclose()
        got = [await client.expect("MESSAGE", timeout=5) for _ in range(3)]
        assert [m.get("tidings-id") for m in got] == silent[2:]
        assert [m.get("tidings-gap") for m in got] == ["true", None, None]
        assert await node.metric("tidings_catchup_gaps_total") == 1
    finally:
        await client.close()
