"""SockJS framing and session state, sans-I/O: literal bytes in, literal bytes out."""

from __future__ import annotations

import orjson
import pytest

from tidings.server.sockjs import frame_text
from tidings.sockjs.framing import (
    BROKEN_JSON,
    PAYLOAD_EXPECTED,
    SockJSPayloadError,
    close_frame,
    decode_form_send,
    decode_send,
    decode_websocket_message,
    eventsource_chunk,
    htmlfile_chunk,
    htmlfile_prelude,
    iframe_page,
    jsonp_chunk,
    message_frame,
    quote,
    valid_callback,
    xhr_chunk,
)
from tidings.sockjs.session import Receiver, Session, State
from tidings.wsframe import OP_BINARY

# -- framing ---------------------------------------------------------------------------------


def test_quote_escapes_what_browsers_mangle() -> None:
    assert quote("a") == b'"a"'
    assert quote('"\\') == b'"\\"\\\\"'
    assert quote("  \x00\n\r ") == b'"  \\u0000\\n\\r "'
    assert quote("\u200c\u2028\u202f\u2060\u206f\ufff0\uffff") == (
        b'"\\u200c\\u2028\\u202f\\u2060\\u206f\\ufff0\\uffff"'
    )
    # Neighbours of the escaped ranges, and ordinary non-ASCII, go as UTF-8.
    assert quote("\u200b\u2030\u2070\uffef é€😀") == '"\u200b\u2030\u2070\uffef é€😀"'.encode()


def test_quote_escapes_every_character_of_the_server_ranges() -> None:
    ranges = [(0x200C, 0x200F), (0x2028, 0x202F), (0x2060, 0x206F), (0xFFF0, 0xFFFF)]
    text = "".join(chr(c) for low, high in ranges for c in range(low, high + 1))
    quoted = quote(text)
    assert quoted.isascii()
    assert orjson.loads(quoted) == text


def test_frames() -> None:
    assert message_frame([quote("a"), quote("b")]) == b'a["a","b"]'
    assert message_frame([]) == b"a[]"
    assert close_frame(3000, "Go away!") == b'c[3000,"Go away!"]'
    assert close_frame(2010, "Another connection still open") == (
        b'c[2010,"Another connection still open"]'
    )


def test_transport_wrappers() -> None:
    assert xhr_chunk(b"o") == b"o\n"
    assert eventsource_chunk(b'a["x"]') == b'data: a["x"]\r\n\r\n'
    assert htmlfile_chunk(b'a["x"]') == b'<script>\np("a[\\"x\\"]");\n</script>\r\n'
    assert jsonp_chunk("cb", b"o") == b'/**/cb("o");\r\n'
    assert jsonp_chunk("x", b'c[3000,"Go away!"]') == b'/**/x("c[3000,\\"Go away!\\"]");\r\n'


def test_htmlfile_chunk_cannot_end_the_script_element() -> None:
    chunk = htmlfile_chunk(b'a["</script><script>alert(1)</script>"]')
    assert chunk.count(b"</script>") == 1
    inner = chunk.removeprefix(b"<script>\np(").removesuffix(b");\n</script>\r\n")
    assert orjson.loads(inner) == 'a["</script><script>alert(1)</script>"]'


def test_htmlfile_prelude_is_the_page_head_padded_past_one_kibibyte() -> None:
    prelude = htmlfile_prelude("callback")
    assert len(prelude) > 1024
    assert prelude.endswith(b"\r\n\r\n")
    text = prelude.decode().strip()
    assert text.startswith("<!doctype html>\n<html><head>")
    assert "var c = parent.callback;\n    c.start();" in text
    assert text.endswith("window.onload = function() {c.stop();};\n  </script>")


def test_iframe_page_loads_the_configured_client() -> None:
    page = iframe_page("/vendor/sockjs.min.js").decode()
    assert page.startswith("<!DOCTYPE html>\n<html>\n<head>\n")
    assert '<script src="/vendor/sockjs.min.js"></script>' in page
    assert "_sockjs_onload = function(){SockJS.bootstrap_iframe();};" in page
    # The URL is configuration, but it still cannot break out of its attribute.
    assert 'src="x&quot;&lt;/script>"' in iframe_page('x"</script>').decode()


@pytest.mark.parametrize("name", ["callback", "a.b_c-9", "_jp.a1B2c3"])
def test_valid_callbacks(name: str) -> None:
    assert valid_callback(name)


@pytest.mark.parametrize("name", ["", " ", "*", "abc(", "a b", "a;b", "a\nb", "é"])
def test_invalid_callbacks(name: str) -> None:
    assert not valid_callback(name)


# -- request bodies --------------------------------------------------------------------------


def test_decode_send() -> None:
    assert decode_send(b'["a"]') == ["a"]
    assert decode_send(b'["a","b"]') == ["a", "b"]
    assert decode_send(b"[]") == []
    assert decode_send(b'["\\u0000\\ud83d\\ude00\\u2028"]') == ["\x00😀\u2028"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", PAYLOAD_EXPECTED),
        (b'["x', BROKEN_JSON),
        (b"not json", BROKEN_JSON),
        (b'["\\ud800"]', BROKEN_JSON),  # a lone surrogate cannot be UTF-8
        (b"\xff", BROKEN_JSON),
        (b'"a"', PAYLOAD_EXPECTED),
        (b"{}", PAYLOAD_EXPECTED),
        (b"[1]", PAYLOAD_EXPECTED),
        (b"null", PAYLOAD_EXPECTED),
    ],
)
def test_decode_send_refuses(body: bytes, reason: str) -> None:
    with pytest.raises(SockJSPayloadError) as caught:
        decode_send(body)
    assert str(caught.value) == reason


def test_decode_form_send() -> None:
    form = "application/x-www-form-urlencoded"
    assert decode_form_send(b"d=%5B%22x%22%5D", form) == ["x"]
    assert decode_form_send(b"d=%5B%22a+b%22%5D&i=a1", form) == ["a b"]
    assert decode_form_send(b'["%61bc"]', "text/plain") == ["%61bc"]
    for body, reason in [
        (b"", PAYLOAD_EXPECTED),
        (b"d=", PAYLOAD_EXPECTED),
        (b"p=p", PAYLOAD_EXPECTED),
        (b"d=%5B%22x", BROKEN_JSON),
    ]:
        with pytest.raises(SockJSPayloadError, match=reason.replace(".", r"\.")):
            decode_form_send(body, form)


def test_decode_websocket_message() -> None:
    assert decode_websocket_message("") == []
    assert decode_websocket_message(b"") == []
    assert decode_websocket_message("[]") == []
    assert decode_websocket_message('["a","b"]') == ["a", "b"]
    assert decode_websocket_message('"a"') == ["a"]
    with pytest.raises(SockJSPayloadError, match="Broken JSON"):
        decode_websocket_message('["a')
    with pytest.raises(SockJSPayloadError, match="Payload expected"):
        decode_websocket_message("[1]")


# -- STOMP frames as SockJS text -------------------------------------------------------------


def test_a_binary_frame_keeps_a_content_length_that_matches_its_text() -> None:
    frame = b"MESSAGE\ndestination:/topic/x\ncontent-length:3\n\n\xff\x00a\x00"
    text = frame_text(frame, OP_BINARY)
    assert text == "MESSAGE\ndestination:/topic/x\ncontent-length:5\n\n\ufffd\x00a\x00"
    body = text.split("\n\n", 1)[1]
    assert len(body[:-1].encode()) == 5


# -- session state ---------------------------------------------------------------------------


def polling() -> Receiver:
    return Receiver(xhr_chunk, streaming=False)


def streaming(limit: int | None = None) -> Receiver:
    return Receiver(xhr_chunk, streaming=True, limit=limit)


def test_first_receiver_opens_the_session_and_a_poll_ends_after_one_frame() -> None:
    session = Session(max_pending_bytes=1000)
    assert session.state is State.CONNECTING
    first = polling()
    assert session.attach(first, now=0.0) == [b"o\n"]
    assert first.done
    assert session.state is State.OPEN
    assert session.receiver is None
    assert session.deadline(5.0) == 5.0


def test_messages_wait_for_the_next_poll_and_leave_in_one_frame() -> None:
    session = Session(max_pending_bytes=1000)
    session.attach(polling(), now=0.0)
    assert session.send("a")
    assert session.send("b\n")
    poll = polling()
    assert session.attach(poll, now=1.0) == [b'a["a","b\\n"]\n']
    assert poll.done
    assert not session.has_pending


def test_a_waiting_poll_takes_messages_sent_later() -> None:
    session = Session(max_pending_bytes=1000)
    session.attach(polling(), now=0.0)
    poll = polling()
    assert session.attach(poll, now=1.0) == []
    assert not poll.done
    assert session.receiver is poll
    assert session.deadline(5.0) is None
    assert session.take(poll) == []
    session.send("x")
    assert session.take(poll) == [b'a["x"]\n']
    assert poll.done


def test_a_second_receiver_gets_2010_and_the_first_keeps_its_place() -> None:
    session = Session(max_pending_bytes=1000)
    session.attach(polling(), now=0.0)
    first = polling()
    session.attach(first, now=1.0)
    second = polling()
    assert session.attach(second, now=1.5) == [b'c[2010,"Another connection still open"]\n']
    assert second.done
    assert session.receiver is first
    session.detach(second, now=1.6)  # not the receiver: no effect
    assert session.receiver is first


def test_closing_serves_queued_messages_then_the_close_frame_to_every_receiver() -> None:
    session = Session(max_pending_bytes=1000)
    session.attach(polling(), now=0.0)
    session.send("bye")
    session.close(3000, "Go away!")
    assert not session.send("after close")
    assert session.attach(polling(), now=1.0) == [b'a["bye"]\n']
    for now in (2.0, 3.0):
        assert session.attach(polling(), now=now) == [b'c[3000,"Go away!"]\n']
    stream = streaming()
    assert session.attach(stream, now=4.0) == [b'c[3000,"Go away!"]\n']
    assert stream.done
    assert session.state is State.CLOSING


def test_a_streaming_receiver_gets_messages_and_close_in_one_go() -> None:
    session = Session(max_pending_bytes=1000)
    stream = streaming()
    assert session.attach(stream, now=0.0) == [b"o\n"]
    assert not stream.done
    session.send("m")
    session.close(1000, "client disconnected")
    assert session.take(stream) == [b'a["m"]\n', b'c[1000,"client disconnected"]\n']
    assert stream.done


def test_a_streaming_receiver_ends_after_its_byte_limit() -> None:
    session = Session(max_pending_bytes=100_000)
    stream = streaming(limit=4096)
    session.attach(stream, now=0.0)
    message = "x" * 128
    frame_size = len(b'a["' + message.encode() + b'"]\n')  # 134 bytes on the wire
    sent = 2  # "o\n"
    while sent + frame_size < 4096:
        session.send(message)
        assert session.take(stream) == [b'a["' + message.encode() + b'"]\n']
        sent += frame_size
        assert not stream.done
    session.send(message)
    session.take(stream)
    assert stream.done
    assert stream.sent == 2 + 31 * frame_size


def test_heartbeat_ends_a_poll_but_not_a_stream() -> None:
    session = Session(max_pending_bytes=1000)
    session.attach(polling(), now=0.0)
    poll = polling()
    session.attach(poll, now=0.0)
    assert session.heartbeat(poll) == b"h\n"
    assert poll.done
    session.detach(poll, now=1.0)
    stream = streaming()
    session.attach(stream, now=1.0)
    assert session.heartbeat(stream) == b"h\n"
    assert not stream.done


def test_session_expires_timeout_after_its_last_receiver() -> None:
    session = Session(max_pending_bytes=1000)
    session.attach(polling(), now=10.0)
    assert not session.expire(now=14.9, timeout=5.0)
    poll = polling()
    session.attach(poll, now=14.0)
    assert not session.expire(now=100.0, timeout=5.0)  # a receiver is on: never
    session.detach(poll, now=20.0)
    assert not session.expire(now=24.9, timeout=5.0)
    assert session.expire(now=25.0, timeout=5.0)
    assert session.state is State.CLOSED
    with pytest.raises(RuntimeError):
        session.attach(polling(), now=26.0)


def test_an_interrupted_receiver_closes_the_session_with_1002() -> None:
    session = Session(max_pending_bytes=1000)
    stream = streaming()
    session.attach(stream, now=0.0)
    session.send("lost")
    session.detach(stream, now=1.0, interrupted=True)
    assert session.state is State.CLOSING
    assert session.attach(polling(), now=1.5) == [b'c[1002,"Connection interrupted"]\n']


def test_the_queue_is_bounded_and_force_goes_past_it() -> None:
    session = Session(max_pending_bytes=20)
    session.attach(polling(), now=0.0)
    assert session.send("12345")  # 7 bytes quoted, 8 with its separator
    assert session.send("12345", in_flight=4)
    assert not session.send("12345")  # 24 > 20
    assert session.overflowed
    assert not session.has_pending  # the queue was dropped
    assert not session.send("x")
    assert session.send("ERROR", force=True)
    session.close(1008, "slow consumer")
    assert session.attach(polling(), now=1.0) == [b'a["ERROR"]\n']
    assert session.attach(polling(), now=1.0) == [b'c[1008,"slow consumer"]\n']
