"""The Channels tutorial chat consumer, plus the usual way AI chat apps add a bot.

Per received message: `json.loads`, one `group_send` on the core Redis layer;
per socket: a `chat_message` handler that `json.dumps` the event again. A
message mentioning ``@assistant`` starts a task that streams a completion from
the OpenAI-wire server and does one `group_send` per token, so every token is
one frame to every member (the pattern of most Channels AI-chat examples). The
stream runs as a task rather than inside `receive` so the sender's own socket is
not stalled (channels #1191); nothing else is tuned.
"""

from __future__ import annotations

import asyncio
import json
import logging

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from openai import AsyncOpenAI

logger = logging.getLogger("bench.naive")

_client: AsyncOpenAI | None = None
_tasks: set[asyncio.Task] = set()


def openai_client() -> AsyncOpenAI:
    global _client
    if _client is None:
        _client = AsyncOpenAI(base_url=settings.OPENAI_BASE_URL, api_key="bench", max_retries=0)
    return _client


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code: int) -> None:
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        text_data_json = json.loads(text_data or "")
        message = text_data_json["message"]
        await self.channel_layer.group_send(self.room_group_name, {"type": "chat.message", "message": message})
        if "@assistant" in message:
            task = asyncio.create_task(reply_stream(self.channel_layer, self.room_group_name, message))
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)

    async def chat_message(self, event: dict) -> None:
        message = event["message"]
        await self.send(text_data=json.dumps({"message": message}))

    async def chat_token(self, event: dict) -> None:
        await self.send(
            text_data=json.dumps(
                {"token": event["token"], "reply_id": event["reply_id"], "seq": event["seq"], "done": event["done"]}
            )
        )


async def reply_stream(layer, group: str, prompt: str) -> None:
    reply_id = prompt.split("~", 2)[1] if prompt.count("~") >= 2 else prompt[:32]
    seq = 0
    try:
        stream = await openai_client().chat.completions.create(
            model="bench", messages=[{"role": "user", "content": prompt}], stream=True
        )
        async with stream:
            async for chunk in stream:
                if not chunk.choices or not chunk.choices[0].delta.content:
                    continue
                seq += 1
                await layer.group_send(
                    group,
                    {
                        "type": "chat.token",
                        "token": chunk.choices[0].delta.content,
                        "reply_id": reply_id,
                        "seq": seq,
                        "done": False,
                    },
                )
    except Exception:
        logger.exception("reply %s failed", reply_id)
    await layer.group_send(
        group, {"type": "chat.token", "token": "", "reply_id": reply_id, "seq": seq + 1, "done": True}
    )
