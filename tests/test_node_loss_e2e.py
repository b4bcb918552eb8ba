"""No loss when a node goes away (issue 13: acceptance (d) and item 6).

Two real ``tidings serve`` nodes on one real Redis, 20 users with one plain auto-ack STOMP
session each (no ack mode; no resume header on the first SUBSCRIBE), a back end publishing
to them over HTTP while they receive. Then one node goes:

- **SIGKILL** (acceptance (d)): the sessions of the killed node, and only those, reconnect
  to the other node and SUBSCRIBE again with ``tidings-resume-after`` carrying the last
  ``tidings-id`` they saw. Publishes in flight to the killed node may fail: the back end
  counts them, and retries them through the other node with the same ``Idempotency-Key``.
- **A rolling restart behind deploy/nginx.conf** (item 6): SIGTERM one node; its sessions
  get ``ERROR message:server shutting down``, reconnect through nginx, land on the other
  node and resume. The node starts again on the same port; then new clients are spread
  over both nodes again (before deploy/nginx.conf set ``max_fails=0``, 29 of 30 went to
  the other node: docs/decisions.md).

Every publish answered 2xx must reach its user's screen exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tidings.message import id_key

from .conftest import StartServer, TidingsServer
from .nginx_fixture import DEPLOY_CONF, NginxProxy, StartNginx
from .processes import exit_agent
from .redis_fixture import RedisServer
from .stompws import Closed, StompWs

USERS = 20
PUBLISHES = 520
INTERVAL_S = 0.01  # one back end loop: 100 publishes/s
FAULT_AFTER = 200  # accepted publishes before the node goes
DELIVERY_TIMEOUT_S = 15.0
RECONNECT_WITHIN_S = 10.0
RETRY_WITHIN_S = 20.0
END = "end"  # published to every user last: what arrives after it does not count
API_KEY = "test-key-for-rolling-restarts"
RESUME_HEADER = "tidings-resume-after"
NODE_IN_SERVER_HEADER = re.compile(r"\(node ([^)]+)\)")
JS_READER = Path(__file__).resolve().parent / "js" / "resuming.mjs"


@dataclass
class Screen:
    """What one user's client showed: every message body once per MESSAGE, with its
    ``tidings-id``; the node of each connection; the ERROR frames it got."""

    user: str
    bodies: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # the node of each connection
    errors: list[str] = field(default_factory=list)  # ERROR frames' message headers
    advice: list[str] = field(default_factory=list)  # and their bodies
    gaps: int = 0
    moved_in: list[float] = field(default_factory=list)  # connection lost to resubscribed, s
    failed: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)  # END came (or it failed)

    @property
    def reconnects(self) -> int:
        return len(self.nodes) - 1

    def connected(self, server_header: str) -> None:
        node = NODE_IN_SERVER_HEADER.search(server_header)
        self.nodes.append(node.group(1) if node else server_header)

    def message(self, tidings_id: str, gap: bool, body: str) -> None:
        self.ids.append(tidings_id)
        self.gaps += gap
        if body == END:
            self.done.set()
        else:
            self.bodies.append(body)

    def error(self, message: str, body: str) -> None:
        self.errors.append(message)
        self.advice.append(body)


@dataclass
class ResumingReader(Screen):
    """Our Python client: a STOMP session that, when its connection ends, reconnects (to
    ``urls`` in turn) and resumes after the last ``tidings-id`` it received."""

    urls: list[str] = field(default_factory=list)  # the first at start, then in turn
    client: StompWs | None = None

    async def connect(self, url: str) -> None:
        """CONNECT and SUBSCRIBE; after the first time, with the resume header.

        The first SUBSCRIBE's RECEIPT is awaited (nothing is published before); after a
        reconnect, MESSAGE frames of the replay follow the RECEIPT at once, and ``run``
        reads everything in order.
        """
        client = await StompWs.open(url)
        try:
            connected = await client.connect(login=self.user)
            self.connected(connected.get("server") or "")
            destination = f"/user/{self.user}/message"
            if len(self.nodes) == 1:
                await client.subscribe("sub-0", destination)
            else:
                # "0" when nothing came yet: this test's streams start empty.
                resume = self.ids[-1] if self.ids else "0"
                headers = {"id": "sub-0", "destination": destination, RESUME_HEADER: resume}
                await client.send_frame("SUBSCRIBE", headers)
        except BaseException:
            await client.close()
            raise
        self.client = client

    async def reconnect(self) -> None:
        """Connect again, to the next URL; a refused one is tried again 50 ms later."""
        loop = asyncio.get_running_loop()
        lost_at = loop.time()
        deadline = lost_at + RECONNECT_WITHIN_S
        for url in itertools.islice(itertools.cycle(self.urls), 1, None):
            try:
                await self.connect(url)
                self.moved_in.append(loop.time() - lost_at)
                return
            except (aiohttp.ClientError, AssertionError, TimeoutError) as exc:
                if loop.time() >= deadline:
                    raise AssertionError(f"{self.user}: no reconnect within the deadline") from exc
                await asyncio.sleep(0.05)

    async def run(self) -> None:
        try:
            while True:
                assert self.client is not None
                item = await self.client.next(timeout=3600)
                if isinstance(item, Closed) or (
                    not isinstance(item, str) and item.command == "ERROR"
                ):
                    if not isinstance(item, Closed):
                        self.error(item.get("message") or "", item.body.decode())
                    with contextlib.suppress(Exception):
                        await self.client.close()
                    await self.reconnect()
                    continue
                if isinstance(item, str) or item.command != "MESSAGE":
                    continue  # heart-beats, RECEIPTs
                gap = item.get("tidings-gap") == "true"
                self.message(item.get("tidings-id") or "", gap, item.body.decode())
        except Exception as exc:  # reported by the test's assertions
            self.failed = repr(exc)
            self.done.set()

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()


@dataclass
class StompJsReader(Screen):
    """@stomp/stompjs 7 as docs/deploy.md shows it (tests/js/resuming.mjs): its own
    reconnect, and the resume header sent from onConnect."""

    urls: list[str] = field(default_factory=list)  # one: the library reconnects there
    proc: asyncio.subprocess.Process | None = None
    _subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    _lost_at: float | None = None

    async def connect(self, url: str) -> None:
        """Start the client; return once its first SUBSCRIBE has its RECEIPT."""
        node = shutil.which("node") or "/usr/bin/node"
        self.proc = await asyncio.create_subprocess_exec(
            *(node, str(JS_READER), "--url", url, "--user", self.user),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._reading = asyncio.create_task(self._read())
        async with asyncio.timeout(10):
            await self._subscribed.wait()

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        while line := await self.proc.stdout.readline():
            event = json.loads(line)
            kind = event["event"]
            if kind == "connected":
                self.connected(event["server"] or "")
                if self._lost_at is not None:
                    self.moved_in.append(loop.time() - self._lost_at)
                    self._lost_at = None
            elif kind == "subscribed":
                self._subscribed.set()
            elif kind == "message":
                self.message(event["id"] or "", event["gap"] == "true", event["body"])
            elif kind == "error":
                self.error(event["message"] or "", event["body"])
                self._lost_at = loop.time()
        self.failed = self.failed or f"stompjs client exited ({self.proc.returncode})"
        self.done.set()

    async def run(self) -> None:
        await asyncio.shield(self._reading)  # cancelling run() leaves the reader to close()

    async def close(self) -> None:
        if self.proc is not None:
            self._reading.cancel()  # the exit below is no failure
            await exit_agent(self.proc, 5)


Reader = ResumingReader | StompJsReader


@dataclass
class BackEnd:
    """Publishes with an ``Idempotency-Key`` each, retrying until a 2xx."""

    http: aiohttp.ClientSession
    headers: dict[str, str]
    accepted: dict[str, str] = field(default_factory=dict)  # body -> user
    refused: Counter[int] = field(default_factory=Counter)  # non-2xx answers, then retried
    failed_in_flight: int = 0  # no answer at all (the node died), then retried elsewhere
    fault_due: asyncio.Event = field(default_factory=asyncio.Event)

    async def publish(self, base_urls: list[str], user: str, body: str) -> list[str]:
        """POST to ``base_urls[0]`` until accepted; on a broken connection, fail over to
        the next URL for good. Returns the URLs to use from now on."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_WITHIN_S
        while True:
            url = f"{base_urls[0]}/api/v1/users/{user}/messages"
            try:
                async with self.http.post(
                    url, json={"body": body}, headers={**self.headers, "Idempotency-Key": body}
                ) as reply:
                    status = reply.status
                    await reply.read()
            except aiohttp.ClientError:
                status = 0
            if 200 <= status < 300:
                if body != END:
                    self.accepted[body] = user
                    if len(self.accepted) >= FAULT_AFTER:
                        self.fault_due.set()
                return base_urls
            assert status in (0, 502, 503), f"unexpected {status} for {body}"
            assert loop.time() < deadline, f"{body} not accepted within {RETRY_WITHIN_S} s"
            if status == 0:
                self.failed_in_flight += 1
                if len(base_urls) > 1:
                    base_urls = base_urls[1:]  # the node is gone: the other one, for good
                continue  # at once: a dead node refuses at once, and this one was in flight
            self.refused[status] += 1
            await asyncio.sleep(0.05)  # the back end's retry delay

    async def stream(self, lanes: list[list[str]], users: list[str]) -> None:
        """PUBLISHES messages, one every INTERVAL_S, round robin over ``lanes`` (each a
        list of base URLs: the node to use, then where to fail over to)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        lanes = [list(lane) for lane in lanes]
        for n in range(PUBLISHES):
            await asyncio.sleep(max(0.0, start + n * INTERVAL_S - loop.time()))
            lane = n % len(lanes)
            user = users[n % len(users)]
            lanes[lane] = await self.publish(lanes[lane], user, f"{user}:{n}")


def check_screens(name: str, readers: Sequence[Screen], back_end: BackEnd) -> str:
    """Assert 0 lost, 0 duplicated, in order, for every reader; return the report line."""
    received = Counter(itertools.chain.from_iterable(r.bodies for r in readers))
    accepted = back_end.accepted
    lost = [body for body in accepted if received[body] == 0]
    duplicated = [body for body, count in received.items() if count > 1]
    stray = [body for body in received if body not in accepted]
    report = (
        f"{name}: accepted {len(accepted)}, delivered {sum(received.values())}, "
        f"lost {len(lost)}, duplicated {len(duplicated)}; "
        f"failed in flight then retried {back_end.failed_in_flight}, "
        f"refused then retried {dict(back_end.refused)}; "
        f"sessions that reconnected {sum(r.reconnects > 0 for r in readers)}"
    )
    print(f"\n{report}")
    assert not lost, f"{report}; lost e.g. {lost[:10]}"
    assert not duplicated, f"{report}; duplicated e.g. {duplicated[:10]}"
    assert not stray, f"{report}; never accepted: {stray[:10]}"
    expected = Counter(accepted.values())
    for reader in readers:
        assert not reader.failed, f"{reader.user}: {reader.failed}"
        assert reader.gaps == 0, f"{reader.user}: a gap reported with nothing trimmed"
        orders = [id_key(i) for i in reader.ids]
        assert orders == sorted(orders), f"{reader.user}: out of order"
        assert len(reader.bodies) == expected[reader.user], report
    return report


async def run_scenario(
    readers: Sequence[Reader],
    back_end: BackEnd,
    lanes: list[list[str]],
    fault: Callable[[], Awaitable[None]],
    end_url: str,
) -> None:
    """Readers connected; publish while ``fault`` runs once FAULT_AFTER are accepted;
    then END to every user, and wait until every reader has it."""
    for reader in readers:
        await reader.connect(reader.urls[0])
    tasks = [asyncio.create_task(reader.run()) for reader in readers]
    try:

        async def inject() -> None:
            await back_end.fault_due.wait()
            await fault()

        users = [reader.user for reader in readers]
        await asyncio.gather(back_end.stream(lanes, users), inject())
        # Last, END to every user: a session's messages come in id order, so once END is
        # there, everything accepted before it is too (or never will be).
        for user in users:
            await back_end.publish([end_url], user, END)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DELIVERY_TIMEOUT_S):
                await asyncio.gather(*(reader.done.wait() for reader in readers))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for reader in readers:
            await reader.close()


async def test_a_node_killed_under_load_loses_nothing(
    tidings_server: StartServer, shared_store: list[str]
) -> None:
    """Acceptance (d): SIGKILL one of two nodes mid-stream; on Redis, and on RabbitMQ +
    PostgreSQL (issue 20, item 5)."""
    a, b = await asyncio.gather(
        *(tidings_server(*shared_store, "--node-id", n) for n in ("A", "B"))
    )
    urls = [node.ws_url("/publicServer") for node in (a, b)]
    readers = [
        ResumingReader(f"k{n}", urls=urls if n % 2 == 0 else urls[::-1]) for n in range(USERS)
    ]

    async def kill() -> None:
        a.proc.send_signal(signal.SIGKILL)
        assert await a.proc.wait() == -signal.SIGKILL

    async with aiohttp.ClientSession() as http:
        back_end = BackEnd(http, {})
        lanes = [[a.http_url, b.http_url], [b.http_url, a.http_url]]
        await run_scenario(readers, back_end, lanes, kill, b.http_url)

    store = "rabbitmq+postgresql" if "--inbox" in shared_store else "redis"
    report = check_screens(f"node SIGKILL ({store})", readers, back_end)
    moved_in = max(itertools.chain.from_iterable(r.moved_in for r in readers))
    print(f"sessions resubscribed on the other node within {moved_in * 1000:.0f} ms")
    for reader in readers:  # only the killed node's sessions moved, and to the other
        expected = ["A", "B"] if reader.urls[0] == urls[0] else ["B"]
        assert reader.nodes == expected, f"{reader.user}: {reader.nodes}; {report}"
        assert reader.errors == [], f"{reader.user}: {reader.errors}"
    # The lane that used A lost its publish in flight (or the next one, on a connection
    # A's death broke), and used B from then on.
    assert 1 <= back_end.failed_in_flight <= 2, report


async def wait_exit(node: TidingsServer, within: float) -> int:
    async with asyncio.timeout(within):
        return await node.proc.wait()


async def connected_nodes(proxy: NginxProxy, count: int) -> Counter[str]:
    """Open ``count`` new STOMP WebSockets through nginx; on which node did each land?"""
    clients: list[StompWs] = []
    nodes: Counter[str] = Counter()
    try:
        for n in range(count):
            client = await StompWs.open(proxy.ws_url("/publicServer"))
            clients.append(client)
            connected = await client.connect(login=f"new{n}")
            found = NODE_IN_SERVER_HEADER.search(connected.get("server") or "")
            assert found, connected
            nodes[found.group(1)] += 1
    finally:
        for client in clients:
            await client.close()
    return nodes


async def test_rolling_restart_behind_nginx_loses_nothing_and_spreads_again(
    tidings_server: StartServer, redis_server: RedisServer, nginx_proxy: StartNginx
) -> None:
    """Item 6: behind deploy/nginx.conf, SIGTERM node A and start it again on its port,
    then the same with B, while sessions receive."""
    args = ["--broker", redis_server.url, "--api-key", API_KEY]
    a, b = await asyncio.gather(*(tidings_server(*args, "--node-id", n) for n in ("A", "B")))
    proxy = await nginx_proxy([a.port, b.port])
    url = proxy.ws_url("/publicServer")
    # Every fourth user's screen is @stomp/stompjs, reconnecting by itself.
    readers: list[Reader] = [
        StompJsReader(f"r{n}", urls=[url]) if n % 4 == 3 else ResumingReader(f"r{n}", urls=[url])
        for n in range(USERS)
    ]
    timings: dict[str, float] = {}
    spreads: dict[str, Counter[str]] = {}

    async def restart(name: str, node: TidingsServer) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        node.proc.send_signal(signal.SIGTERM)
        assert await wait_exit(node, 10) == 0, node.log_tail()
        timings[f"{name} drained"] = loop.time() - start
        await tidings_server(*args, "--node-id", name, port=node.port)
        timings[f"{name} serving again"] = loop.time() - start
        # The node is back: new clients are spread over both again, at once.
        spreads[name] = await connected_nodes(proxy, 30)

    async def rolling_restart() -> None:
        await restart("A", a)
        await restart("B", b)

    async with aiohttp.ClientSession() as http:
        back_end = BackEnd(http, {"Authorization": f"Bearer {API_KEY}"})
        await run_scenario(readers, back_end, [[proxy.http_url]], rolling_restart, proxy.http_url)

    report = check_screens("rolling restart", readers, back_end)
    moved_in = max(itertools.chain.from_iterable(r.moved_in for r in readers))
    print(", ".join(f"{what} {seconds:.2f} s after SIGTERM" for what, seconds in timings.items()))
    print(f"sessions resubscribed on the other node within {moved_in * 1000:.0f} ms")
    print(f"30 new WebSockets after each restart: {spreads}")
    first_on_a = [reader for reader in readers if reader.nodes[0] == "A"]
    assert first_on_a and len(first_on_a) < USERS, [r.nodes for r in readers]  # round robin
    for reader in readers:
        # Told why at each restart of its node, then resumed on the node that stayed.
        moves = ["A", "B", "A"] if reader in first_on_a else ["B", "A"]
        assert reader.nodes == moves, f"{reader.user}: {reader.nodes}; {report}"
        assert reader.errors == ["server shutting down"] * (len(moves) - 1), reader.errors
        assert all(f"SUBSCRIBE with {RESUME_HEADER}" in body for body in reader.advice)
    for name, spread in spreads.items():
        assert spread["A"] >= 10 and spread["B"] >= 10, f"after restarting {name}: {spread}"


def test_every_shipped_upstream_server_has_max_fails_0() -> None:
    """The rolling restart test runs the first `server` line's parameters on every test
    node; this holds the shipped file to the same for every line (docs/deploy.md)."""
    upstream = re.search(r"(?ms)^\s*upstream tidings \{(.*?)^\s*\}", DEPLOY_CONF.read_text())
    assert upstream, "no upstream block in deploy/nginx.conf"
    servers = re.findall(r"(?m)^\s*server\s+([^;]*);", upstream.group(1))
    assert len(servers) >= 2, servers
    assert all("max_fails=0" in server.split()[1:] for server in servers), servers
