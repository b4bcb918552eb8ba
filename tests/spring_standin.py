"""A stand-in for one instance of the Spring Boot service of the Spring article (test (e)).

It is a fake of something outside Tidings, so it is small and shares no code with
Tidings: aiohttp for HTTP and the WebSocket, redis-py for pub/sub, its own few lines of
STOMP. It follows the article's code:

* ``RedisConfig``/``RedisListener``: subscribe to the channel (``webSocketMsgPush``);
  ``PushMessage.send``: ``JSON.parseObject(msgJson, Message.class)``, then
  ``convertAndSendToUser(to, "/message", content)``. Spring's simple broker matches
  ``/user/<to>/message`` literally, so the content goes as a MESSAGE (text/plain) to each
  of this instance's STOMP sessions subscribed to that destination. A message it cannot
  parse throws in the listener: logged, nothing delivered. Unknown JSON fields are
  ignored, as fastjson does.
* ``TestController``: ``POST /pushToOneTest`` publishes ``JSON.toJSONString(message)``
  (fields in name order, nulls left out) on the channel and answers ``发送成功``.
* ``WebSocketConfig``: STOMP over WebSocket at ``/publicServer`` and ``/privateServer``
  (the raw WebSocket; SockJS is not needed here).

    python tests/spring_standin.py --port 9910 --redis redis://127.0.0.1:6379/0

It prints ``READY`` once it listens and its subscription is confirmed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
from dataclasses import dataclass, field

import redis.asyncio
from aiohttp import WSMsgType, web

PROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")
FIELDS = ("code", "content", "form", "to")  # the article's Message, in fastjson's order


@dataclass(eq=False)  # hashed by identity: a set of sessions
class Session:
    ws: web.WebSocketResponse
    subscriptions: dict[str, str] = field(default_factory=dict)  # id -> destination


class Instance:
    def __init__(self, redis_url: str, channel: str) -> None:
        self.redis = redis.asyncio.Redis.from_url(redis_url)
        self.channel = channel
        self.sessions: set[Session] = set()
        self.ids = itertools.count(1)

    # -- RedisListener + PushMessage ------------------------------------------------------
    async def listen(self, ready: asyncio.Event) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.channel)
        ready.set()
        async for item in pubsub.listen():
            if item["type"] == "message":
                await self.send(item["data"].decode("utf-8", "replace"))

    async def send(self, msg_json: str) -> None:
        try:
            message = json.loads(msg_json)
            if isinstance(message, str):
                message = json.loads(message)
            to, content = message.get("to"), message.get("content")
            if to is None or content is None:
                raise ValueError("Payload must not be null")
        except (ValueError, AttributeError) as exc:
            print(f"listener error: {exc}: {msg_json[:80]!r}", file=sys.stderr, flush=True)
            return
        to = str(to).lower() if isinstance(to, bool) else str(to)
        content = content if isinstance(content, str) else json.dumps(content)
        await self.convert_and_send_to_user(to, "/message", content)

    async def convert_and_send_to_user(self, user: str, destination: str, content: str) -> None:
        target = f"/user/{user}{destination}"
        body = content.encode()
        for session in list(self.sessions):
            for sub_id, subscribed in session.subscriptions.items():
                if subscribed == target:
                    head = (
                        f"MESSAGE\ndestination:{target}\ncontent-type:text/plain;charset=UTF-8\n"
                        f"subscription:{sub_id}\nmessage-id:spring-{next(self.ids)}\n"
                        f"content-length:{len(body)}\n\n"
                    )
                    await session.ws.send_str(head + content + "\0")

    # -- TestController ------------------------------------------------------------------
    async def push_to_one_test(self, request: web.Request) -> web.Response:
        data = await request.json()
        message = {name: str(data[name]) for name in FIELDS if data.get(name) is not None}
        await self.redis.publish(self.channel, json.dumps(message, separators=(",", ":")))
        return web.Response(text="发送成功")

    # -- STOMP over WebSocket ------------------------------------------------------------
    async def stomp(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=PROTOCOLS)
        await ws.prepare(request)
        session = Session(ws)
        self.sessions.add(session)
        buffer = ""
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    buffer += msg.data
                elif msg.type == WSMsgType.BINARY:
                    buffer += msg.data.decode()
                else:
                    break
                while "\0" in buffer:
                    frame, buffer = buffer.split("\0", 1)
                    if not await self.on_frame(session, frame.lstrip("\r\n")):
                        return ws
        finally:
            self.sessions.discard(session)
        return ws

    async def on_frame(self, session: Session, frame: str) -> bool:
        head = frame.split("\n\n", 1)[0].split("\n")
        command = head[0].strip()
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name, value)
        if command in ("CONNECT", "STOMP"):
            await session.ws.send_str(
                "CONNECTED\nversion:1.2\nheart-beat:0,0\nserver:SpringStandIn/1 (node spring)\n\n\0"
            )
        elif command == "SUBSCRIBE":
            session.subscriptions[headers["id"]] = headers["destination"]
        elif command == "UNSUBSCRIBE":
            session.subscriptions.pop(headers.get("id", ""), None)
        if command != "CONNECT" and "receipt" in headers:  # STOMP 1.2: any client frame
            await session.ws.send_str(f"RECEIPT\nreceipt-id:{headers['receipt']}\n\n\0")
        if command == "DISCONNECT":
            await session.ws.close()
            return False
        return True


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--channel", default="webSocketMsgPush")
    args = parser.parse_args()
    instance = Instance(args.redis, args.channel)
    app = web.Application()
    for path in ("/publicServer", "/privateServer"):
        app.router.add_get(path, instance.stomp)
    app.router.add_post("/pushToOneTest", instance.push_to_one_test)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    ready = asyncio.Event()
    listener = asyncio.create_task(instance.listen(ready))
    await asyncio.wait_for(ready.wait(), 10)
    print("READY", flush=True)
    await listener


if __name__ == "__main__":
    asyncio.run(main())
