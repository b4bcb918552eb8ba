"""SockJS 0.3, sans-I/O: framing (:mod:`.framing`) and session state (:mod:`.session`).

The aiohttp edge that serves it is :mod:`tidings.server.sockjs`; see docs/sockjs.md.
Never imports asyncio.
"""
