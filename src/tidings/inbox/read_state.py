"""Read-state requests, shared by the HTTP API and the STOMP ``/app/inbox/read`` SEND."""

from __future__ import annotations

from tidings.message import id_key


def parse_read_request(data: object) -> tuple[list[str], str | None]:
    """``{"ids": [...]}`` and/or ``{"up_to": id}`` → (ids, up_to); ValueError says what is wrong."""
    if not isinstance(data, dict):
        raise ValueError('expected a JSON object like {"ids": [...]} or {"up_to": "<id>"}')
    ids = data.get("ids", [])
    up_to = data.get("up_to")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError("'ids' must be a list of inbox id strings")
    if up_to is not None and not isinstance(up_to, str):
        raise ValueError("'up_to' must be an inbox id string")
    if not ids and up_to is None:
        raise ValueError("give 'ids' or 'up_to'")
    for inbox_id in [*ids, *([up_to] if up_to else [])]:
        try:
            id_key(inbox_id)
        except ValueError:
            raise ValueError(f"{inbox_id!r} is not an inbox id like 1700000000000-0") from None
    return ids, up_to
