"""hub.encode_tail: a MESSAGE frame after its message-id, per STOMP version (§MESSAGE)."""

from __future__ import annotations

import pytest

from tidings import hub
from tidings.hub import encode_tail
from tidings.message import Message
from tidings.stomp.frames import SERVER_COMMANDS, FrameParser

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
        ("1.0", "text/x:y\\z", None),  # a colon in a name cannot be written in 1.0
    ],
)
def test_encode_tail_escapes_per_version(
    version: str, content_type: str, header: str | None
) -> None:
    # Twice each: the second comes from the content-type lines kept per (type, version).
    for _ in range(2):
        stored = encode_tail(message(stored=True, headers=(("k:1", "v\\w"),)), version)
        assert (
            stored
            == (
                f"\ncontent-type:{content_type}\ncontent-length:4"
                f"\ntidings-id:1795765079484-3{'' if header is None else chr(10) + header}"
                "\n\nbody\0"
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


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_headers_a_version_cannot_carry_are_left_out(version: str) -> None:
    """A header value with a line break (from a message stored before SEND and publish
    refused them) must not end the header early: in 1.0, which escapes nothing, it would
    forge a header or a whole frame in the subscriber's stream (issue 14)."""
    forged = "text/plain\ndestination:/topic/forged\n\nforged\0MESSAGE"
    bad = Message(
        id="",
        channel="t:a",
        destination="/topic/a",
        body=b"body",
        content_type=forged,
        headers=(("x-a", "1\r\nx-b:2"), ("x-nul", "a\0b"), ("x-ok", "fine")),
    )
    tail = encode_tail(bad, version)
    parser = FrameParser(commands=SERVER_COMMANDS)
    parser.version = version
    (frame,) = parser.feed(b"MESSAGE\ndestination:/topic/a\nmessage-id:1" + tail)
    assert frame.body == b"body"
    names = [name for name, _ in frame.headers]
    assert "x-b" not in names and names.count("destination") == 1
    assert frame.get("x-ok") == "fine" and frame.get("x-nul") is None
    assert frame.get("content-type") is None  # a NUL: no version can carry it
    # 1.2 escapes CR and LF, so that value survives; 1.1 leaves CR, 1.0 both, unescaped.
    assert frame.get("x-a") == ("1\r\nx-b:2" if version == "1.2" else None)
