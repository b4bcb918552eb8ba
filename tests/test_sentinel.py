"""Redis Sentinel (``redis+sentinel://``) and ``--inbox-min-replicas`` (issue 13, item 3).

Real processes only: a master, a replica and three sentinels (tests/sentinel_fixture.py),
real ``tidings serve`` nodes, the direct publisher. The end-to-end failover under load,
acceptance (c), is in tests/test_catchup_e2e.py.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tidings.errors import BrokerUnavailable, ReplicasUnavailable
from tidings.inbox.base import InboxLimits
from tidings.options import redact_url
from tidings.publisher import Publisher
from tidings.redis_sentinel import SentinelUrl, check_role, parse

from .conftest import StartServer
from .sentinel_fixture import Replicated, Sentinels, wait_for
from .stompws import StompWs


def test_a_sentinel_url_names_sentinels_master_and_credentials() -> None:
    url = (
        "redis+sentinel://10.0.0.1:26380,10.0.0.2,[::1]:26381/my%2Dmaster"
        "?db=3&password=p&username=u&sentinel_password=sp"
    )
    assert parse(url) == SentinelUrl(
        sentinels=(("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 26381)),
        master="my-master",
        db=3,
        username="u",
        password="p",
        sentinel_password="sp",
    )
    assert parse("rediss+sentinel://h:1/m").tls
    assert redact_url(url).endswith("?db=3&password=***&username=u&sentinel_password=***")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h:1/", "master's name"),
        ("redis+sentinel://h:1/a/b", "master's name"),
        ("redis+sentinel://h:x/m", "host:port"),
        ("redis+sentinel://h:70000/m", "host:port"),
        ("redis+sentinel://h:1,/m", "host:port"),
        ("redis+sentinel://:secret@h:1/m", "?password="),
        ("redis+sentinel://h:1/m?db=x", "db must be a number"),
        ("redis+sentinel://h:1/m?pasword=x", "unknown parameter 'pasword'"),
    ],
)
def test_a_bad_sentinel_url_is_refused_with_the_reason(url: str, says: str) -> None:
    with pytest.raises(ValueError) as error:
        parse(url)
    assert says in str(error.value)
    assert "secret" not in str(error.value)


async def test_role_check_refuses_a_replica(replicated: Replicated) -> None:
    """What a stale sentinel would hand out: a replica. Its real ROLE reply is refused."""
    client = replicated.replica.client()
    try:
        reply = await client.execute_command("ROLE")
    finally:
        await client.aclose()
    with pytest.raises(Exception, match="is a slave, not the master"):
        check_role(reply, "127.0.0.1:1")
    master = replicated.master.client()
    try:
        check_role(await master.execute_command("ROLE"), "127.0.0.1:1")  # no exception
    finally:
        await master.aclose()


async def test_publisher_follows_a_failover(sentinels: Sentinels) -> None:
    """Connections opened on the old master find the new one; what the replica
    acknowledged (min_replicas=1) survives the SIGKILL."""
    old = await sentinels.master_port()
    durable = Publisher.from_url(sentinels.url, limits=InboxLimits(min_replicas=1))
    plain = Publisher.from_url(sentinels.url)
    async with durable, plain:
        before = await durable.to_user("42", "before")
        await plain.to_user("7", "warm")  # its connections are on the old master now
        await sentinels.kill_master()
        assert await sentinels.wait_for_failover(old) == sentinels.servers.replica.port
        after: list[str] = []

        async def published() -> bool:
            try:
                after.append(await plain.to_user("42", "after", idempotency_key="a"))
            except BrokerUnavailable:
                return False
            return True

        await wait_for(published, "a publish on the new master", 15)
    new_master = sentinels.servers.replica.client()
    try:
        entries = await new_master.xrange("tidings:inbox:u:42")
    finally:
        await new_master.aclose()
    assert [entry_id.decode() for entry_id, _ in entries] == [before, *after]


async def test_node_publishes_and_delivers_through_sentinel(
    tidings_server: StartServer, sentinels: Sentinels
) -> None:
    node = await tidings_server("--broker", sentinels.url, "--inbox-min-replicas", "1")
    client = await StompWs.open(node.ws_url("/publicServer"))
    try:
        await client.connect(login="42")
        await client.subscribe("sub-0", "/user/42/message")
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{node.http_url}/api/v1/users/42/messages", json={"body": "hi"}) as reply,
        ):
            assert reply.status == 202, await reply.text()
            inbox_id = (await reply.json())["id"]
        message = await client.expect("MESSAGE", **{"tidings-id": inbox_id})
        assert message.body == b"hi"
    finally:
        await client.close()


async def test_min_replicas_waits_for_the_replica_and_says_when_it_is_missing(
    tidings_server: StartServer, replicated: Replicated
) -> None:
    """On plain redis://: 202 once the replica holds it; replica gone: 503 that says so,
    and the retry with the same key, once the replica is back, stores nothing twice."""
    node = await tidings_server(
        "--broker",
        replicated.master.url,
        "--inbox-min-replicas",
        "1",
        "--inbox-replica-timeout",
        "300",
    )
    url = f"{node.http_url}/api/v1/users/42/messages"
    replica = replicated.replica.client()
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"body": "one"}) as reply:
            assert reply.status == 202, await reply.text()
            one = (await reply.json())["id"]
        assert [i.decode() for i, _ in await replica.xrange("tidings:inbox:u:42")] == [one]
        await replica.aclose()

        await replicated.replica.stop()
        loop = asyncio.get_running_loop()
        started = loop.time()
        key = {"Idempotency-Key": "two"}
        async with http.post(url, json={"body": "two"}, headers=key) as reply:
            assert reply.status == 503
            answer = await reply.json()
        assert loop.time() - started >= 0.3
        assert answer["error"] == "replicas_unavailable"
        assert "0 of the 1 replicas" in answer["message"]
        assert "same idempotency key" in answer["message"]

        await replicated.replica.start()  # a full resync from the master

        async def retried() -> bool:
            async with http.post(url, json={"body": "two"}, headers=key) as reply:
                return reply.status == 202

        await wait_for(retried, "the retry to be accepted", 15)
    master = replicated.master.client()
    try:
        bodies = await master.xlen("tidings:inbox:u:42")
    finally:
        await master.aclose()
    assert bodies == 2  # "two" once, although answered 503 first


async def test_direct_publisher_waits_for_replicas_too(replicated: Replicated) -> None:
    # The one replica acknowledges within the timeout (1.5 s: on a loaded machine 100 ms
    # was not always enough for it); the second one asked for does not exist.
    limits = InboxLimits(min_replicas=2, replica_timeout_s=1.5)
    async with Publisher.from_url(replicated.master.url, limits=limits) as publisher:
        with pytest.raises(ReplicasUnavailable, match="1 of the 2 replicas"):
            await publisher.to_user("42", "x")
    limits = InboxLimits(min_replicas=1, replica_timeout_s=1.0)
    async with Publisher.from_url(replicated.master.url, limits=limits) as publisher:
        assert await publisher.to_user("42", "y")


async def test_waited_publishes_survive_a_script_flush_and_share_a_write(
    replicated: Replicated,
) -> None:
    """NOSCRIPT under WAIT: the calls are sent again with a WAIT of their own; and the
    publishes of one loop turn are answered by the one WAIT after their write."""
    limits = InboxLimits(min_replicas=1, replica_timeout_s=2.0)
    async with Publisher.from_url(replicated.master.url, limits=limits) as publisher:
        await publisher.to_user("42", "loads the script")
        master = replicated.master.client()
        try:
            await master.script_flush()
        finally:
            await master.aclose()
        ids = await asyncio.gather(*(publisher.to_user("42", f"m{n}") for n in range(50)))
    assert len(set(ids)) == 50
    replica = replicated.replica.client()
    try:
        assert await replica.xlen("tidings:inbox:u:42") == 51  # on the replica, each once
    finally:
        await replica.aclose()
