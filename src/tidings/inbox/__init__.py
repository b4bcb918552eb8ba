"""The durable per-user inbox and topic history (DESIGN.md §5)."""

from tidings.inbox.base import History, Inbox, InboxLimits, Stored, compare_ids, id_key

__all__ = ["History", "Inbox", "InboxLimits", "Stored", "compare_ids", "id_key"]
