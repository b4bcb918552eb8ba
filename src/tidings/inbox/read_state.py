"""Read-state requests, shared by the HTTP API and the STOMP ``/app/inbox/read`` SEND."""

from __future__ import annotations

from tidings.publish_rules import valid_inbox_id


def parse_read_request(data: object) -> tuple[list[str], str | None]:
    """``{"ids": [...]}`` and/or ``{"up_to": id}`` → (ids, up_to); ValueError says what is wrong.

    An empty ``ids`` without ``up_to`` marks nothing read: the answer is the unread count.
    """
    if not isinstance(data, dict):
        raise ValueError('expected a JSON object like {"ids": [...]} or {"up_to": "<id>"}')
    ids = data.get("ids", [])
    up_to = data.get("up_to")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError("'ids' must be a list of inbox id strings")
    if up_to is not None and not isinstance(up_to, str):
        raise ValueError("'up_to' must be an inbox id string")
    if "ids" not in data and up_to is None:
        raise ValueError("give 'ids' or 'up_to'")
    for inbox_id in [*ids, *([] if up_to is None else [up_to])]:
        if not valid_inbox_id(inbox_id):
            raise ValueError(f"{inbox_id!r} is not an inbox id like 1700000000000-0")
    return ids, up_to
