"""The two sans-I/O bounds on client SENDs: ``TokenBucket`` (``--send-rate``) and
``SendBudget`` (``--max-send-stored-bytes``), with literal times."""

from __future__ import annotations

import time

import pytest

from tidings.inbox.base import InboxLimits
from tidings.ratelimit import TokenBucket
from tidings.send_budget import OVERHEAD, SendBudget


def test_a_bucket_takes_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(10, 3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.1)  # one token a tenth of a second
    assert not bucket.take(0.1)
    assert not bucket.take(0.15)  # half a token is not one
    assert bucket.take(0.2)


def test_a_bucket_holds_no_more_than_its_burst() -> None:
    bucket = TokenBucket(10, 3, now=0.0)
    assert [bucket.take(3600.0) for _ in range(4)] == [True, True, True, False]


def test_a_bucket_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(0, 1, now=0.0)


LIMITS = InboxLimits(max_messages=3, topic_history=2, max_age_s=10)


def test_a_channel_counts_only_what_it_retains() -> None:
    """A topic keeps 2: the third SEND replaces the first in the count."""
    budget = SendBudget(10_000, LIMITS)
    for now in (0.0, 1.0, 2.0):
        assert budget.admit("t:a", 1000, now)
    assert budget.held == 2 * (1000 + OVERHEAD)


def test_past_the_budget_nothing_is_counted() -> None:
    budget = SendBudget(5_000, LIMITS)
    assert budget.admit("u:1", 2000, 0.0)
    assert budget.admit("u:2", 2000, 0.0)
    held = budget.held
    assert not budget.admit("t:b", 2000, 0.0)
    assert budget.held == held
    # A full channel's SEND of no more than it replaces still fits.
    assert budget.admit("u:1", 100, 1.0)


def test_a_channel_is_forgotten_when_its_key_would_expire() -> None:
    budget = SendBudget(5_000, LIMITS)
    assert budget.admit("t:a", 4000, 0.0)
    assert not budget.admit("t:b", 4000, 5.0)
    assert budget.admit("t:b", 4000, 12.0)  # t:a's key expired after 10 s + the margin
    assert budget.held == 4000 + OVERHEAD


def test_zero_is_no_budget_and_a_topic_without_history_costs_nothing() -> None:
    assert SendBudget(0, LIMITS).admit("t:a", 10**9, 0.0)
    no_history = SendBudget(1, InboxLimits(topic_history=0))
    assert no_history.admit("t:a", 10**6, 0.0)
    assert no_history.held == 0


def test_time_is_linear_in_the_sends() -> None:
    """SENDs to ever new channels, each expiring the one before (each channel expires
    once), cost about what SENDs to a few channels cost: no walk that grows."""
    n = 50_000
    channels = [f"t:{i}" for i in range(n)]

    def timed(sends: list[tuple[str, float]]) -> float:
        budget = SendBudget(1 << 40, LIMITS)
        started = time.perf_counter()
        for channel, now in sends:
            budget.admit(channel, 10, now)
        return time.perf_counter() - started

    benign_sends = [(channels[i % 100], 0.0) for i in range(2 * n)]
    expiring_sends = [(channel, 0.0) for channel in channels] + [
        (f"t:x{i}", 100.0 + i) for i in range(n)
    ]
    # The best of 3 each: one run can lose the core to the suite's other workers (once
    # 0.93 s against 0.084 s; about 3x when quiet); a walk that grows is slow in every run.
    benign = min(timed(benign_sends) for _ in range(3))
    expiring = min(timed(expiring_sends) for _ in range(3))
    assert expiring < 10 * benign, (expiring, benign)
