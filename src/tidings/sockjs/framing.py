"""SockJS 0.3 framing, sans-I/O: frames, JSON quoting, request bodies, transport wrappers.

Frames the server sends (SockJS protocol 0.3, "Protocol and framing")::

    o                 open: the first frame of every session
    h                 heartbeat: keeps proxies from timing the connection out
    a["m1","m2"]      messages: a JSON array of strings
    c[3000,"Go away!"]  close: a code and a reason, served until the session expires

Each HTTP transport then wraps a frame its own way (``xhr``: a trailing newline,
``eventsource``: ``data: ...\\r\\n\\r\\n``, ...); those wrappers are the ``*_chunk``
functions below. Bytes and strings in, bytes out; nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import parse_qs

import orjson

from tidings.errors import ProtocolError

__all__ = [
    "BROKEN_JSON",
    "EVENTSOURCE_PRELUDE",
    "HEARTBEAT_FRAME",
    "OPEN_FRAME",
    "PAYLOAD_EXPECTED",
    "XHR_STREAMING_PRELUDE",
    "SockJSPayloadError",
    "close_frame",
    "decode_form_send",
    "decode_send",
    "decode_websocket_message",
    "eventsource_chunk",
    "htmlfile_chunk",
    "htmlfile_prelude",
    "iframe_page",
    "jsonp_chunk",
    "message_frame",
    "quote",
    "valid_callback",
    "xhr_chunk",
]

OPEN_FRAME = b"o"
HEARTBEAT_FRAME = b"h"

BROKEN_JSON = "Broken JSON encoding."
PAYLOAD_EXPECTED = "Payload expected."

# "The transport must first send 2KiB of `h` bytes as prelude" (xhr_streaming): some
# browsers fire no progress event before they have that much.
XHR_STREAMING_PRELUDE = b"h" * 2048 + b"\n"
# "The transport must first send a new line prelude, due to a bug in Opera" (eventsource).
EVENTSOURCE_PRELUDE = b"\r\n"

# Characters the server must send as \uXXXX escapes ("JSON Unicode Encoding"): browsers
# mangle them on some transports. JSON already escapes \x00-\x1f; the rest are
# U+200C-U+200F, U+2028-U+202F, U+2060-U+206F and U+FFF0-U+FFFF, matched here in UTF-8.
_SERVER_ESCAPABLE = re.compile(
    rb"\xe2\x80[\x8c-\x8f\xa8-\xaf]|\xe2\x81[\xa0-\xaf]|\xef\xbf[\xb0-\xbf]"
)
# The JSONP/htmlfile callback names a JavaScript function: nothing else may get through.
_CALLBACK = re.compile(r"[a-zA-Z0-9_.-]+")


class SockJSPayloadError(ProtocolError):
    """A client sent a body SockJS cannot decode; ``str(err)`` is the reason to show it."""


# -- frames --------------------------------------------------------------------------------
def quote(text: str) -> bytes:
    """``text`` as a JSON string with the escapes SockJS asks of servers."""
    data = orjson.dumps(text)
    if _SERVER_ESCAPABLE.search(data) is None:
        return data
    return _SERVER_ESCAPABLE.sub(_escape_char, data)


def _escape_char(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % ord(match.group().decode())


def message_frame(quoted: Sequence[bytes]) -> bytes:
    """An ``a`` frame from messages already passed through :func:`quote`."""
    return b"a[" + b",".join(quoted) + b"]"


def close_frame(code: int, reason: str) -> bytes:
    return b"c[%d," % code + quote(reason) + b"]"


# -- request bodies ------------------------------------------------------------------------
def decode_send(body: bytes) -> list[str]:
    """The messages of an ``xhr_send`` body: a JSON array of strings.

    Raises SockJSPayloadError: ``Payload expected.`` when the body is empty or not an array
    of strings, ``Broken JSON encoding.`` when it is not JSON (or not UTF-8, or holds a lone
    surrogate, which no UTF-8 STOMP frame can carry).
    """
    if not body:
        raise SockJSPayloadError(PAYLOAD_EXPECTED)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise SockJSPayloadError(BROKEN_JSON) from None
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise SockJSPayloadError(PAYLOAD_EXPECTED)
    return data


def decode_form_send(body: bytes, content_type: str) -> list[str]:
    """The messages of a ``jsonp_send`` body: a form field ``d`` holding the JSON array,
    or, with any other content type, the JSON array itself."""
    if content_type == "application/x-www-form-urlencoded":
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise SockJSPayloadError(BROKEN_JSON) from None
        body = fields.get("d", [""])[0].encode()
    return decode_send(body)


def decode_websocket_message(data: str | bytes) -> list[str]:
    """The messages of one WebSocket message: a JSON string or an array of strings.

    An empty message holds none (the server "must ignore empty messages"). Raises
    SockJSPayloadError for anything else.
    """
    if not data:
        return []
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise SockJSPayloadError(BROKEN_JSON) from None
    if isinstance(parsed, str):
        return [parsed]
    if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
        return parsed
    raise SockJSPayloadError(PAYLOAD_EXPECTED)


def valid_callback(name: str) -> bool:
    """True for a JSONP/htmlfile callback made only of ``[a-zA-Z0-9_.-]``."""
    return _CALLBACK.fullmatch(name) is not None


# -- transport wrappers --------------------------------------------------------------------
def xhr_chunk(frame: bytes) -> bytes:
    """``xhr`` and ``xhr_streaming``: one frame per line."""
    return frame + b"\n"


def eventsource_chunk(frame: bytes) -> bytes:
    """``eventsource``: one frame per event (frames are JSON, so never hold a newline)."""
    return b"data: " + frame + b"\r\n\r\n"


def _js_string(frame: bytes) -> bytes:
    # The frame as a JavaScript string literal. "<" is escaped too, so that a message
    # holding "</script>" cannot end the htmlfile's script element early.
    return orjson.dumps(frame.decode()).replace(b"<", b"\\u003c")


def htmlfile_chunk(frame: bytes) -> bytes:
    """``htmlfile``: one script element per frame, calling the page's ``p``."""
    return b"<script>\np(" + _js_string(frame) + b");\n</script>\r\n"


def jsonp_chunk(callback: str, frame: bytes) -> bytes:
    """``jsonp``: one call of ``callback`` per response.

    The ``/**/`` prefix (as later protocol versions and sockjs-node send) keeps a response
    from ever starting with attacker-chosen bytes (the "Rosetta Flash" attack).
    """
    return b"/**/" + callback.encode() + b"(" + _js_string(frame) + b");\r\n"


_HTMLFILE_HEAD = """<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.%s;
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>"""


def htmlfile_prelude(callback: str) -> bytes:
    """The htmlfile page's head, padded past 1 KiB: browsers render nothing before that."""
    head = (_HTMLFILE_HEAD % callback).encode()
    return head + b" " * max(0, 1025 - len(head)) + b"\r\n\r\n"


_IFRAME_PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script>
    document.domain = document.domain;
    _sockjs_onload = function(){SockJS.bootstrap_iframe();};
  </script>
  <script src="%s"></script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"""


def iframe_page(client_url: str) -> bytes:
    """The ``/iframe.html`` page: loads the SockJS client from ``client_url`` and lets it
    run the iframe-based transports on the server's own origin."""
    safe_url = client_url.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return (_IFRAME_PAGE % safe_url).encode()
