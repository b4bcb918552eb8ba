"""Message values: what stored_as keeps."""

from __future__ import annotations

import dataclasses

import pytest

from tidings.message import Message, build_message


def test_stored_as_changes_the_id_and_order_and_keeps_every_other_field() -> None:
    message = Message(
        id="",
        channel="u:7",
        destination="/queue/alerts",
        body=b'{"n": 1}',
        content_type="application/json",
        headers=(("priority", "high"),),
    )
    stored = message.stored_as("1795765079484-3")
    assert stored == dataclasses.replace(message, id="1795765079484-3", order=(1795765079484, 3))
    # stored_as names every field itself (faster than dataclasses.replace): a new field
    # must be added there too.
    assert [field.name for field in dataclasses.fields(Message)] == [
        "id",
        "channel",
        "destination",
        "body",
        "content_type",
        "headers",
        "order",
    ]


def test_decode_with_an_inbox_id_is_the_message_stored_under_it() -> None:
    message = Message(
        id="",
        channel="t:news",
        destination="/topic/news",
        body="é\n".encode(),
        headers=(("k", "v"),),
    )
    encoded = message.encode()
    assert Message.decode(encoded) == message
    stored = Message.decode(encoded, "1795765079484-12")
    assert stored == message.stored_as("1795765079484-12")
    assert stored.order == (1795765079484, 12)
    with pytest.raises(ValueError, match="not an inbox id"):
        Message.decode(encoded, f"{2**64}-0")


def test_build_message_is_the_frozen_message_the_constructor_makes() -> None:
    fields = {
        "id": "1795765079484-3",
        "channel": "u:7",
        "destination": "/message",
        "body": b"hi",
        "content_type": "application/json",
        "headers": (("a", "b"),),
        "order": (1795765079484, 3),
    }
    built = build_message(**fields)  # type: ignore[arg-type]
    made = Message(**fields)  # type: ignore[arg-type]
    assert (built, hash(built), repr(built)) == (made, hash(made), repr(made))
    assert [getattr(built, name) for name in fields] == list(fields.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.id = "changed"  # type: ignore[misc]
