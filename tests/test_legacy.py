"""The Spring bridge without I/O (tidings.legacy): parsing with reasons, the mark, the counts."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from tidings.errors import BrokerUnavailable
from tidings.legacy import (
    MARK,
    MalformedLegacy,
    Occurrences,
    SpringBridge,
    digest,
    is_own,
    outbound_json,
    parse,
)
from tidings.logs import RateLimited
from tidings.message import TEXT_PLAIN, Message


def spring(**fields: object) -> bytes:
    """What the article's `JSON.toJSONString(message)` publishes."""
    return orjson.dumps({"code": "1", "form": "admin", **fields})


def test_the_article_json_becomes_content_at_user_message_as_text() -> None:
    message = parse(spring(to="42", content="hello"), max_bytes=100)
    assert (message.channel, message.destination) == ("u:42", "/message")
    assert (message.body, message.content_type, message.id) == (b"hello", TEXT_PLAIN, "")


def test_a_number_to_is_bound_to_the_string_field_as_fastjson_does() -> None:
    assert parse(spring(to=42, content="x"), max_bytes=100).channel == "u:42"


def test_a_double_encoded_json_string_is_read_like_the_object() -> None:
    inner = spring(to="7", content="twice").decode()
    assert parse(orjson.dumps(inner), max_bytes=100).channel == "u:7"


@pytest.mark.parametrize(
    ("payload", "reason", "says"),
    [
        (b"not json", "not_json", "not JSON"),
        (b"", "not_json", "not JSON"),
        (b"[1, 2]", "not_object", "an array"),
        (b'"just text"', "not_json", "not JSON"),
        (b"42", "not_object", "a number"),
        (spring(content="x"), "missing_to", "no 'to'"),
        (spring(to=None, content="x"), "invalid_to", "null"),
        (spring(to="", content="x"), "invalid_to", "not a user id"),
        (spring(to="a/b", content="x"), "invalid_to", '"a/b"'),
        (spring(to=True, content="x"), "invalid_to", "true"),
        (spring(to=["42"], content="x"), "invalid_to", '["42"]'),
        (spring(to="42"), "missing_content", "no 'content'"),
        (spring(to="42", content=None), "invalid_content", "null, not a string"),
        (spring(to="42", content={"a": 1}), "invalid_content", "an object, not a string"),
        (spring(to="42", content=5), "invalid_content", "a number, not a string"),
        (spring(to="42", content="x" * 101), "too_large", "101 bytes"),
    ],
)
def test_malformed_messages_name_their_reason(payload: bytes, reason: str, says: str) -> None:
    with pytest.raises(MalformedLegacy) as caught:
        parse(payload, max_bytes=100)
    assert caught.value.reason == reason
    assert says in str(caught.value)


def test_a_long_bad_to_is_shortened_in_the_reason() -> None:
    with pytest.raises(MalformedLegacy) as caught:
        parse(spring(to="/" * 500, content="x"), max_bytes=100)
    assert len(str(caught.value)) < 120


def test_outbound_json_is_what_the_spring_code_reads_and_the_mark_makes_it_ours() -> None:
    body = b'{"title": "Build done"}'
    data = orjson.loads(outbound_json("42", body))
    assert data == {"code": "", "form": "", "to": "42", "content": '{"title": "Build done"}'}
    # The publish script puts the mark before the first field (inbox/redis.py).
    marked = MARK + b'1-0",' + outbound_json("42", body)[1:]
    assert orjson.loads(marked)["tidingsId"] == "1-0"
    assert is_own(marked)
    assert not is_own(spring(to="42", content="x"))
    assert not is_own(b' {"tidingsId":"1-0"}')  # only Tidings' own exact start


def test_occurrences_count_each_payload_within_the_window() -> None:
    now = [0.0]
    seen = Occurrences(10.0, margin_s=1.0, clock=lambda: now[0])
    assert [seen.count("a"), seen.count("a"), seen.count("b")] == [1, 2, 1]
    now[0] = 10.5  # within window + margin of the last sighting: still counted
    assert seen.count("a") == 3
    now[0] = 21.0  # "b" was last seen at 0 and "a" at 10.5: b forgotten, a not yet
    assert seen.count("b") == 1
    assert seen.count("a") == 4
    now[0] = 40.0
    assert seen.count("a") == 1  # forgotten 11 s after its last sighting
    assert len(seen) == 1  # and "b" with it


def test_occurrences_forget_the_oldest_past_their_cap() -> None:
    seen = Occurrences(60.0, max_tracked=3, clock=lambda: 0.0)
    for name in "abc":
        seen.count(name)
    seen.count("a")  # a is now the most recent
    seen.count("d")  # b, the least recently seen, goes
    assert len(seen) == 3
    assert seen.count("a") == 3
    assert seen.count("b") == 1


def test_digest_depends_on_every_byte() -> None:
    assert digest(b"x") == digest(b"x") != digest(b"x ")


class FakeStore:
    """Records what a bridge hands over; answers with the futures the test resolves."""

    def __init__(self) -> None:
        self.calls: list[tuple[Message, str, int]] = []
        self.futures: list[asyncio.Future[str | None]] = []
        self.down = False

    def submit(self, message: Message, name: str, occurrence: int) -> asyncio.Future[str | None]:
        if self.down:
            raise BrokerUnavailable("node is not running")
        self.calls.append((message, name, occurrence))
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    async def close(self) -> None:
        pass


async def test_the_bridge_skips_its_own_drops_the_malformed_and_counts_copies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore()
    bridge = SpringBridge("webSocketMsgPush", store, max_bytes=100)
    good = spring(to="42", content="hi")
    with caplog.at_level(logging.WARNING, logger="tidings.legacy"):
        bridge.received(MARK + b'1-0","to":"42","content":"x"}')
        bridge.received(b"{nope")
        bridge.received(spring(to="42", content=7))
        bridge.received(good)
        bridge.received(good)  # the same payload published twice: the 2nd copy
    assert [(m.channel, m.body, n) for m, _, n in store.calls] == [
        ("u:42", b"hi", 1),
        ("u:42", b"hi", 2),
    ]
    assert store.calls[0][1] == store.calls[1][1] == digest(good)
    store.futures[0].set_result("5-0")
    store.futures[1].set_result(None)  # another node stored that copy
    await asyncio.sleep(0)  # the done callbacks
    assert bridge.counts == {
        "stored": 1,
        "stored_elsewhere": 1,
        "own": 1,
        "malformed": 2,
        "failed": 0,
    }
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "webSocketMsgPush" in lines[0] and "not JSON" in lines[0] and "b'{nope'" in lines[0]
    assert "'content' is a number, not a string" in lines[1]
    assert [getattr(r, "reason", None) for r in caplog.records] == [
        "legacy_not_json",
        "legacy_invalid_content",
    ]


async def test_the_bridge_rate_limits_one_reason_and_counts_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore()
    now = [0.0]
    warnings = RateLimited(logging.getLogger("tidings.legacy"), 10.0, clock=lambda: now[0])
    bridge = SpringBridge("c", store, max_bytes=100, warnings=warnings)
    with caplog.at_level(logging.WARNING, logger="tidings.legacy"):
        for _ in range(50):
            bridge.received(b"[]")
        now[0] = 11.0
        bridge.received(b"[]")
        store.down = True
        bridge.received(spring(to="1", content="x"))
        store.down = False
        bridge.received(spring(to="2", content="y"))
        store.futures[-1].set_exception(BrokerUnavailable("redis unavailable: gone"))
        await asyncio.sleep(0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "49 more like this" in lines[1]
    assert "could not store" in lines[2] and "node is not running" in lines[2]
    assert bridge.counts["malformed"] == 51 and bridge.counts["failed"] == 2
