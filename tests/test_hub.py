"""hub.encode_tail: a MESSAGE frame after its message-id, per STOMP version (§MESSAGE)."""

from __future__ import annotations

import pytest

from tidings import hub
from tidings.hub import encode_tail
from tidings.message import Message

CONTENT_TYPE = "text/x:y\\z"  # a colon and a backslash: escaped in 1.1 and 1.2, not in 1.0


def message(*, stored: bool, headers: tuple[tuple[str, str], ...] = ()) -> Message:
    plain = Message(
        id="",
        channel="u:1",
        destination="/message",
        body=b"body",
        content_type=CONTENT_TYPE,
        headers=headers,
    )
    return plain.stored_as("1795765079484-3") if stored else plain


@pytest.mark.parametrize(
    ("version", "content_type", "header"),
    [
        ("1.2", "text/x\\cy\\\\z", "k\\c1:v\\\\w"),
        ("1.1", "text/x\\cy\\\\z", "k\\c1:v\\\\w"),
        ("1.0", "text/x:y\\z", "k:1:v\\w"),
    ],
)
def test_encode_tail_escapes_per_version(version: str, content_type: str, header: str) -> None:
    # Twice each: the second comes from the content-type lines kept per (type, version).
    for _ in range(2):
        stored = encode_tail(message(stored=True, headers=(("k:1", "v\\w"),)), version)
        assert (
            stored
            == (
                f"\ncontent-type:{content_type}\ncontent-length:4"
                f"\ntidings-id:1795765079484-3\n{header}\n\nbody\0"
            ).encode()
        )
        plain = encode_tail(message(stored=False), version)
        assert plain == f"\ncontent-type:{content_type}\ncontent-length:4\n\nbody\0".encode()


def test_the_content_type_lines_kept_are_bounded() -> None:
    for n in range(3 * hub._CONTENT_LINES_KEPT):
        typed = Message(
            id="", channel="t:a", destination="/topic/a", body=b"", content_type=f"t/{n}"
        )
        assert encode_tail(typed, "1.2") == f"\ncontent-type:t/{n}\ncontent-length:0\n\n\0".encode()
        assert len(hub._CONTENT_LINES) <= hub._CONTENT_LINES_KEPT
