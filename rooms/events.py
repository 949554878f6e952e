"""The wire protocol and the messages between processes: every name and shape.

This is the only module that knows the frame types, error and close codes
clients depend on (docs/protocol.md states them), the kinds of room-event
envelopes, and the inter-process message types. Frames are serialised once
here, so a room event costs one ``json.dumps`` however many sockets receive it.

Every frame the server sends stays within ``CHAT_MAX_SEND_FRAME_BYTES``:
``hello`` and ``history`` stop adding messages when the next one would not fit
(and say so), and any single frame still over the bound (one huge message) is
split into ``chunk`` frames that clients join back together.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from typing import Any

from .models import Message

# Server -> client frame types.
HELLO = "hello"
MESSAGE = "message"
MESSAGE_UPDATE = "message.update"
NOTIFY = "notify"
PRESENCE = "presence"
PRESENCE_DELTA = "presence.delta"
TYPING = "typing"
HISTORY = "history"
ERROR = "error"
ASSISTANT_START = "assistant.start"
ASSISTANT_DELTA = "assistant.delta"
ASSISTANT_END = "assistant.end"
ASSISTANT_QUEUED = "assistant.queued"
ASSISTANT_SNAPSHOT = "assistant.snapshot"
PONG = "pong"
CHUNK = "chunk"
# Server-sent events only (the HTTP API, docs/api.md): the stream is live.
READY = "ready"

# Client -> server frame types.
MESSAGE_SEND = "message.send"
MESSAGE_EDIT = "message.edit"
MESSAGE_DELETE = "message.delete"
READ = "read"
TYPING_SET = "typing"
HISTORY_FETCH = "history.fetch"
ASSISTANT_CANCEL = "assistant.cancel"
ASSISTANT_FETCH = "assistant.fetch"
ASSISTANT_REGENERATE = "assistant.regenerate"
ASSISTANT_CATCHUP = "assistant.catchup"
PRESENCE_FETCH = "presence.fetch"
PING = "ping"

# Error codes.
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
TOO_LONG = "too_long"
RATE_LIMITED = "rate_limited"
NOT_FOUND = "not_found"
UNAVAILABLE = "unavailable"
INTERNAL = "internal"
FORBIDDEN = "forbidden"
BUDGET_EXCEEDED = "budget_exceeded"

# Close codes (autobahn lets an application send only 1000 and 3000-4999).
CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_LARGE = 4413
CLOSE_TOO_MANY = 4429
CLOSE_UNAVAILABLE = 4503

# --- Between processes ------------------------------------------------------
# Messages on the channel layer. Room groups carry ROOM_EVENT envelopes (and
# ROOM_ACCESS / ROOM_DELETED); user groups carry the access changes; the
# control group carries REPLY_CANCEL; user groups carry USER_NOTIFY too; each process's own group carries
# HEALTH_ECHO.
ROOM_EVENT = "room.event"
ROOM_ACCESS = "room.access"
ROOM_DELETED = "room.deleted"
USER_SESSION_END = "user.session_end"
USER_ACCESS = "user.access"
USER_REMOVED = "user.removed"
USER_NOTIFY = "user.notify"
REPLY_CANCEL = "reply.cancel"
HEALTH_ECHO = "health.echo"
# User groups: an API token was revoked (its event streams end).
API_TOKEN_REVOKED = "api.token_revoked"


def dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def utf8_len(text: str) -> int:
    """Bytes of ``text`` on the wire; exact, but cheap for the common case."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


# --- Objects -------------------------------------------------------------------


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
        "edited": message.edited.isoformat() if message.edited else None,
        "deleted": message.deleted,
        "reply_to": quote_payload(message.reply_to) if message.reply_to_id else None,
        "mentions": message.mentions,
    }
    if message.visible_to_id is not None:
        payload["private"] = True
    if message.role == Message.Role.ASSISTANT:
        payload["in_reply_to"] = message.in_reply_to_id
        payload["model"] = message.model
        payload["versions"] = message.versions
        if message.status in (Message.Status.ERROR, Message.Status.INTERRUPTED) and message.error:
            payload["error"] = message.error
        if message.status == Message.Status.CANCELLED and message.cancelled_by:
            payload["cancelled_by"] = message.cancelled_by
        if message.finish_reason:
            payload["finish_reason"] = message.finish_reason
    if message.author_bot:
        payload["bot"] = True
    return payload


EXCERPT_CHARS = 140


def excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


def quote_payload(quoted: Message | None) -> dict[str, Any] | None:
    if quoted is None:
        return None
    return {"id": quoted.id, "author": quoted.author_name, "excerpt": "" if quoted.deleted else excerpt(quoted.text)}


def streaming_payload(reply: Message) -> dict[str, Any]:
    return {
        "reply_id": reply.id,
        "in_reply_to": reply.in_reply_to_id,
        "author": reply.author_name,
        "text": reply.text,
        "seq": reply.stream_seq,
        "message_seq": reply.seq,
    }


# --- Bounded frames ---------------------------------------------------------------


def _json_list(parts: Iterable[str]) -> str:
    return "[" + ",".join(parts) + "]"


def messages_fit(messages: Sequence[Message], budget: int, *, keep: str) -> tuple[list[Message], list[str], bool]:
    """The messages whose serialised payloads fit ``budget`` bytes, and those payloads.

    ``keep="oldest"`` takes from the front and stops at the first that does not
    fit (a resume continues after the last one); ``keep="newest"`` takes from the
    back (the latest messages, older ones paged in on request). At least one
    message is always taken: a single message over the budget still goes out
    (in chunk frames). Returns ``(messages, payload JSON, cut)``.
    """
    ordered = list(messages) if keep == "oldest" else list(reversed(messages))
    taken: list[Message] = []
    parts: list[str] = []
    used = 0
    cut = False
    for message in ordered:
        part = dumps(message_payload(message))
        size = utf8_len(part) + 1
        if taken and used + size > budget:
            cut = True
            break
        taken.append(message)
        parts.append(part)
        used += size
    if keep == "newest":
        taken.reverse()
        parts.reverse()
    return taken, parts, cut


def frame_chunks(frame: str, limit: int) -> list[str] | None:
    """``frame`` as ``chunk`` frames of at most ``limit`` bytes each, or None if
    it fits as it is.

    A chunk's ``data`` is a slice of the frame's text; joined in ``index`` order
    the slices are the original frame. Every character of a slice costs at
    most 4 bytes once re-encoded as a JSON string (2 for an escaped ASCII
    character, 4 for the widest UTF-8), so slices of ``(limit - 200) // 4``
    characters always fit.
    """
    if len(frame) * 4 <= limit or utf8_len(frame) <= limit:
        return None
    step = max(1, (limit - 200) // 4)
    pieces = [frame[i : i + step] for i in range(0, len(frame), step)]
    chunk_id = f"c{next(_chunk_ids)}"
    return [
        dumps({"type": CHUNK, "id": chunk_id, "index": index, "count": len(pieces), "data": piece})
        for index, piece in enumerate(pieces)
    ]


_chunk_ids = itertools.count(1)


# --- Server frames ------------------------------------------------------------------


def hello_frame(
    *,
    room_slug: str,
    room_name: str,
    assistants: list[dict[str, str]],
    private: list[Message],
    username: str,
    presence: list[str],
    presence_version: int,
    last_read_seq: int,
    moderator: bool,
    messages: list[Message],
    streaming: list[Message],
    truncated: bool,
    resume: bool,
    limit: int,
) -> tuple[str, list[Message], bool]:
    """The hello frame within ``limit`` bytes; returns ``(frame, messages sent, cut)``.

    The streaming replies and presence always go in; messages fill what is
    left. A resume (``resume``) keeps the oldest and sets ``truncated`` when it
    had to stop (the client pages on with ``history.fetch`` ``after``); a fresh
    open keeps the newest (older ones are paged in with ``before``).
    """
    head: dict[str, Any] = {
        "type": HELLO,
        "room": {
            "slug": room_slug,
            "name": room_name,
            "assistant": assistants[0]["name"] if assistants else None,
            "assistants": assistants,
        },
        "user": {"username": username, "moderator": moderator},
        "presence": presence,
        "presence_version": presence_version,
        "last_read_seq": last_read_seq,
        "streaming": [streaming_payload(r) for r in streaming],
    }
    if private:
        head["private"] = [message_payload(m) for m in private]
    budget = limit - utf8_len(dumps(head)) - 64
    sent, parts, cut = messages_fit(messages, budget, keep="oldest" if resume else "newest")
    if truncated or (cut and resume):
        head["truncated"] = True
    text = dumps(head)
    return text[:-1] + ',"messages":' + _json_list(parts) + "}", sent, cut


def message_frame(message: Message) -> str:
    return dumps({"type": MESSAGE, "message": message_payload(message)})


def message_update_frame(message: Message) -> str:
    return dumps({"type": MESSAGE_UPDATE, "message": message_payload(message)})


def notify_frame(room: Any, message: Message) -> str:
    return dumps(
        {
            "type": NOTIFY,
            "kind": "mention",
            "room": {"slug": room.slug, "name": room.name},
            "message": {
                "id": message.id,
                "seq": message.seq,
                "author": message.author_name,
                "excerpt": excerpt(message.text),
            },
        }
    )


def presence_frame(users: list[str], version: int) -> str:
    return dumps({"type": PRESENCE, "users": users, "version": version})


def presence_delta_frame(since: int, version: int, joined: list[str], left: list[str]) -> str:
    return dumps({"type": PRESENCE_DELTA, "since": since, "version": version, "joined": joined, "left": left})


def typing_frame(username: str, active: bool) -> str:
    return dumps({"type": TYPING, "username": username, "active": active})


def history_frame(messages: list[Message], has_more: bool, *, keep: str, limit: int) -> tuple[str, list[Message], bool]:
    """The answer to ``history.fetch`` within ``limit`` bytes: ``keep="newest"``
    for a page before an id (the rows nearest it), ``"oldest"`` for a page
    after one. A page cut short says ``has_more``."""
    sent, parts, cut = messages_fit(messages, limit - 64, keep=keep)
    more = "true" if has_more or cut else "false"
    return '{"type":"history","messages":' + _json_list(parts) + ',"has_more":' + more + "}", sent, cut


def error_frame(code: str, detail: str, client_id: str | None = None, extra: dict[str, Any] | None = None) -> str:
    payload: dict[str, Any] = {"type": ERROR, "code": code, "detail": detail, **(extra or {})}
    if client_id is not None:
        payload["client_id"] = client_id
    return dumps(payload)


def pong_frame(last_seq: int, streaming: list[int]) -> str:
    """The room's newest seq and the replies still being written, so a client
    that pings can notice a lost last event even in a quiet room."""
    return dumps({"type": PONG, "last_seq": last_seq, "streaming": streaming})


def _private(payload: dict[str, Any], private: bool) -> dict[str, Any]:
    if private:
        payload["private"] = True
    return payload


def assistant_start_frame(reply: Message) -> str:
    return dumps(
        _private(
            {
                "type": ASSISTANT_START,
                "reply_id": reply.id,
                "in_reply_to": reply.in_reply_to_id,
                "message": message_payload(reply),
            },
            reply.visible_to_id is not None,
        )
    )


def assistant_delta_frame(reply_id: int, seq: int, text: str, *, private: bool = False) -> str:
    return dumps(_private({"type": ASSISTANT_DELTA, "reply_id": reply_id, "seq": seq, "text": text}, private))


def assistant_end_frame(reply: Message) -> str:
    return dumps(
        _private(
            {"type": ASSISTANT_END, "reply_id": reply.id, "message": message_payload(reply)},
            reply.visible_to_id is not None,
        )
    )


def assistant_queued_frame(
    in_reply_to: int | None, position: int, *, assistant: str | None = None, private: bool = False
) -> str:
    payload: dict[str, Any] = {"type": ASSISTANT_QUEUED, "in_reply_to": in_reply_to, "position": position}
    if assistant is not None:
        payload["assistant"] = assistant
    return dumps(_private(payload, private))


def assistant_snapshot_frame(reply: Message) -> str:
    """A reply's state for a client that missed a delta: the text so far and the
    delta ``seq`` it ends with while it streams, or the final message once ended."""
    private = reply.visible_to_id is not None
    if reply.status == Message.Status.STREAMING:
        return dumps(
            _private({"type": ASSISTANT_SNAPSHOT, "reply_id": reply.id, "streaming": streaming_payload(reply)}, private)
        )
    return dumps(
        _private({"type": ASSISTANT_SNAPSHOT, "reply_id": reply.id, "message": message_payload(reply)}, private)
    )


def ready_frame(
    *,
    room_slug: str,
    room_name: str,
    username: str,
    bot: bool,
    cursor: str,
    last_seq: int,
    resumed: bool,
    replayed: int,
) -> str:
    """The event stream's (SSE) ``ready``: what came before it was the replay
    (``replayed`` events), what follows is live; ``cursor`` is where it stands."""
    return dumps(
        {
            "type": READY,
            "room": {"slug": room_slug, "name": room_name},
            "user": {"username": username, "bot": bot},
            "cursor": cursor,
            "last_seq": last_seq,
            "resumed": resumed,
            "replayed": replayed,
        }
    )


# --- Channel-layer envelopes ------------------------------------------------
# What travels between processes for a room event: the frame already
# serialised, plus the few fields a consumer needs to deduplicate or filter
# without parsing it. ``kind`` is the frame's type.


def envelope(frame: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": ROOM_EVENT, "kind": kind, "frame": frame, **fields}
