"""Steps that presence and the SockJS session directory take alike in every store.

Presence (``tidings.presence.Presence``) and the SockJS session directory
(``tidings.server.sockjs_relay.SessionDirectory``) each live in Redis
(tests/test_presence_redis.py, tests/test_sockjs_cluster.py) or in PostgreSQL
(tests/test_presence_postgres.py). The tests of each store run these same steps, then
check what their store left behind.
"""

from __future__ import annotations

import asyncio

from tidings.presence import Presence
from tidings.server.sockjs_relay import SessionDirectory


async def add_and_remove_in_one_turn(presence: Presence, user: str) -> None:
    """Give ``user`` a session ``old``; then, in one loop turn, add a session ``gone`` and
    remove both. Returns once the add has returned: nothing of ``user`` may be left."""
    await presence.add(user, "old")
    add = asyncio.ensure_future(presence.add(user, "gone"))
    await asyncio.sleep(0)  # the add is queued, not written
    presence.remove(user, "gone")
    presence.remove(user, "old")
    await add


async def claim_release_and_take_over(directory: SessionDirectory) -> None:
    """Node A claims session s1 and holds it against B while alive; once A is gone B takes
    it over, and releases it. Leaves s1 unowned, node A gone and node B never beating."""
    await directory.beat("A")
    assert await directory.owner("s1", "A") == "A"  # nobody held it: claimed
    assert await directory.owner("s1", "B") == "A"  # A is alive and holds it
    assert await directory.live_owner("s1") == "A"
    assert await directory.alive("A") and not await directory.alive("B")
    await directory.release("s1", "B")  # not B's to release
    assert await directory.live_owner("s1") == "A"
    await directory.gone("A")  # A stopped: its sessions are up for grabs
    assert not await directory.alive("A")
    assert await directory.live_owner("s1") is None
    assert await directory.owner("s1", "B") == "B"
    await directory.release("s1", "B")
    assert await directory.live_owner("s1") is None
