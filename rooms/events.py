"""The WebSocket wire protocol: every frame type and its payload builder.

This is the only module that knows the names and shapes clients depend on
(docs/protocol.md states them). Frames are serialised once here, so a room
event costs one ``json.dumps`` however many sockets receive it.
"""

from __future__ import annotations

import json
from typing import Any

from .models import Message

# Server -> client frame types.
HELLO = "hello"
MESSAGE = "message"
PRESENCE = "presence"
TYPING = "typing"
HISTORY = "history"
ERROR = "error"
ASSISTANT_START = "assistant.start"
ASSISTANT_DELTA = "assistant.delta"
ASSISTANT_END = "assistant.end"
ASSISTANT_QUEUED = "assistant.queued"

# Client -> server frame types.
MESSAGE_SEND = "message.send"
TYPING_SET = "typing"
HISTORY_FETCH = "history.fetch"
ASSISTANT_CANCEL = "assistant.cancel"
PING = "ping"
PONG = "pong"

# Error codes.
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
TOO_LONG = "too_long"
RATE_LIMITED = "rate_limited"
NOT_FOUND = "not_found"
UNAVAILABLE = "unavailable"

# Close codes (autobahn lets an application send only 1000 and 3000-4999).
CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_LARGE = 4413
CLOSE_UNAVAILABLE = 4503


def dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def message_payload(message: Message) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": message.id,
        "seq": message.seq,
        "client_id": message.client_id,
        "author": message.author_name,
        "role": message.role,
        "text": message.text,
        "html": message.html,
        "created": message.created.isoformat(),
        "status": message.status,
    }
    if message.role == Message.Role.ASSISTANT:
        payload["in_reply_to"] = message.in_reply_to_id
        payload["model"] = message.model
        if message.status == Message.Status.ERROR:
            payload["error"] = message.error
        if message.status == Message.Status.CANCELLED and message.cancelled_by:
            payload["cancelled_by"] = message.cancelled_by
        if message.finish_reason:
            payload["finish_reason"] = message.finish_reason
    return payload


def streaming_payload(reply: Message) -> dict[str, Any]:
    return {
        "reply_id": reply.id,
        "in_reply_to": reply.in_reply_to_id,
        "author": reply.author_name,
        "text": reply.text,
        "seq": reply.stream_seq,
        "message_seq": reply.seq,
    }


def hello_frame(
    *,
    room_slug: str,
    room_name: str,
    username: str,
    presence: list[str],
    messages: list[Message],
    streaming: list[Message],
    truncated: bool,
    assistant_name: str | None,
) -> str:
    payload: dict[str, Any] = {
        "type": HELLO,
        "room": {"slug": room_slug, "name": room_name, "assistant": assistant_name},
        "user": {"username": username},
        "presence": presence,
        "messages": [message_payload(m) for m in messages],
        "streaming": [streaming_payload(r) for r in streaming],
    }
    if truncated:
        payload["truncated"] = True
    return dumps(payload)


def message_frame(message: Message) -> str:
    return dumps({"type": MESSAGE, "message": message_payload(message)})


def presence_frame(users: list[str]) -> str:
    return dumps({"type": PRESENCE, "users": users})


def typing_frame(username: str, active: bool) -> str:
    return dumps({"type": TYPING, "username": username, "active": active})


def history_frame(messages: list[Message], has_more: bool) -> str:
    return dumps({"type": HISTORY, "messages": [message_payload(m) for m in messages], "has_more": has_more})


def error_frame(code: str, detail: str, client_id: str | None = None) -> str:
    payload: dict[str, Any] = {"type": ERROR, "code": code, "detail": detail}
    if client_id is not None:
        payload["client_id"] = client_id
    return dumps(payload)


def pong_frame(last_seq: int, streaming: list[int]) -> str:
    """The room's newest seq and the replies still being written, so a client
    that pings can notice a lost last event even in a quiet room."""
    return dumps({"type": PONG, "last_seq": last_seq, "streaming": streaming})


def assistant_start_frame(reply: Message) -> str:
    return dumps(
        {
            "type": ASSISTANT_START,
            "reply_id": reply.id,
            "in_reply_to": reply.in_reply_to_id,
            "message": message_payload(reply),
        }
    )


def assistant_delta_frame(reply_id: int, seq: int, text: str) -> str:
    return dumps({"type": ASSISTANT_DELTA, "reply_id": reply_id, "seq": seq, "text": text})


def assistant_end_frame(reply: Message) -> str:
    return dumps({"type": ASSISTANT_END, "reply_id": reply.id, "message": message_payload(reply)})


def assistant_queued_frame(in_reply_to: int, position: int) -> str:
    return dumps({"type": ASSISTANT_QUEUED, "in_reply_to": in_reply_to, "position": position})


# --- Channel-layer envelopes ------------------------------------------------
# What travels between processes: the frame already serialised, plus the few
# fields a consumer needs to deduplicate or filter without parsing it.


def envelope(frame: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": "room.event", "kind": kind, "frame": frame, **fields}
