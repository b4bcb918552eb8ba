"""The durable per-user inbox and topic history (DESIGN.md §5).

``MemoryInbox`` pairs with the memory broker. ``tidings.inbox.redis.RedisInbox`` pairs
with the Redis broker; import it from there, only where Redis is configured, so that
redis-py loads only then.
"""

from tidings.inbox.base import (
    History,
    Inbox,
    InboxLimits,
    Stored,
    compare_ids,
    id_key,
    split_announcement,
)
from tidings.inbox.memory import MemoryInbox

__all__ = [
    "History",
    "Inbox",
    "InboxLimits",
    "MemoryInbox",
    "Stored",
    "compare_ids",
    "id_key",
    "split_announcement",
]
