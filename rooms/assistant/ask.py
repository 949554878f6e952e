"""Asking assistants: who may, how often, within which budget — checked
before anything is saved or sent upstream — and starting what was asked.

The transports (the room socket, the HTTP API) call these; the room's message
service only records which assistants a message asks (``asks``) and returns
what it saved.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from django.conf import settings

from .. import events, selectors
from ..db import db_run
from ..models import Assistant, Message, Room
from ..ratelimit import RateLimiterUnavailable, rate_hit
from ..rendering import mention_pattern
from ..services import ServiceError, message_by_client_id, message_send, message_validate
from . import budget, services
from .cancel import listener_ensure
from .worker import request_run, sweeper_ensure


def background_ensure() -> None:
    """Start this process's sweeper and cancel listener (once per process)."""
    sweeper_ensure()
    listener_ensure()


def room_assistants(room: Room) -> list[Assistant]:
    return list(room.assistants.filter(enabled=True))


def assistants_asked(room: Room, text: str) -> list[Assistant]:
    """The room's enabled assistants that ``text`` mentions, in mention order."""
    found: list[tuple[int, Assistant]] = []
    for assistant in room_assistants(room):
        match = mention_pattern(assistant.name).search(text)
        if match:
            found.append((match.start(), assistant))
    return [assistant for _, assistant in sorted(found, key=lambda pair: pair[0])]


def _invoke_allowed(room: Room, user: object) -> bool:
    fresh = selectors.room_get_fresh(room.pk) or room
    if fresh.assistant_invoke == Room.Invoke.EVERYONE:
        return True
    if fresh.assistant_invoke == Room.Invoke.MEMBERS and fresh.memberships.filter(user=user).exists():
        return True
    return selectors.room_may_moderate(fresh, user)  # type: ignore[arg-type]


async def ask_check(room: Room, user: object, names: list[str]) -> None:
    """May ``user`` ask now? Raises ``ServiceError`` (forbidden, rate_limited,
    unavailable, budget_exceeded) before anything is saved or sent upstream."""
    who = ", ".join(f"@{name}" for name in names) or "the assistant"
    if not await db_run(_invoke_allowed, room, user):
        raise ServiceError(events.FORBIDDEN, f"only some people in this room may ask {who}")
    try:
        allowed = await rate_hit(f"assistant:{user.pk}", settings.ASSISTANT_RATE_LIMIT, strict=True)  # type: ignore[attr-defined]
    except RateLimiterUnavailable:
        # Unmetered model requests cost money: refuse while the limiter is away.
        raise ServiceError(events.UNAVAILABLE, f"{who} is unavailable for a moment; try again shortly") from None
    if not allowed:
        raise ServiceError(events.RATE_LIMITED, f"{who} is busy with your earlier requests; try again in a minute")
    exceeded = await db_run(budget.check, room, user.pk)  # type: ignore[attr-defined]
    if exceeded is not None:
        raise ServiceError(events.BUDGET_EXCEEDED, exceeded.detail, {"resets": exceeded.resets.isoformat()})


async def message_send_asking(
    *,
    room: Room,
    user: object,
    text: object,
    client_id: object = None,
    reply_to: object = None,
    on_saved: Callable[[Message], Awaitable[None]] | None = None,
    announce_existing: bool = False,
) -> tuple[Message, bool]:
    """Send a message; if it mentions assistants, check the asker may ask them,
    record one request per assistant (in mention order) and start them."""
    text, client_id = message_validate(text, client_id)
    asked = await db_run(assistants_asked, room, text) if "@" in text else []
    if asked:
        if client_id:
            # A resend after reconnect is answered with the original before the
            # limits count it again (message_create dedupes the rest).
            existing = await db_run(message_by_client_id, room.pk, user.pk, client_id)  # type: ignore[attr-defined]
            if existing is not None:
                if on_saved is not None:
                    await on_saved(existing)
                return existing, False
        await ask_check(room, user, [a.name for a in asked])
    message, created = await message_send(
        room=room,
        user=user,  # type: ignore[arg-type]
        text=text,
        client_id=client_id,
        reply_to=reply_to,
        asks=asked,
        on_saved=on_saved,
        announce_existing=announce_existing,
    )
    if created:
        background_ensure()
        for request_id in getattr(message, "assistant_requests", ()):
            request_run(room.pk, request_id)
    return message, created


async def reply_regenerate(room: Room, user: object, reply_id: int) -> None:
    """A new version of a reply, by the same assistant, to the same question."""
    reply = await db_run(selectors.reply_get, room, user, reply_id)
    await ask_check(room, user, [reply.author_name] if reply is not None else [])
    request = await db_run(services.request_regenerate, room=room, user=user, reply_id=reply_id)
    background_ensure()
    request_run(room.pk, request.pk)


async def catchup(room: Room, user: object, assistant_name: str | None, since_seq: int | None = None) -> None:
    """A private summary of what ``user`` has not read, streamed to their own
    sockets only: from ``since_seq`` (what the page showed as unread when it
    opened), else from their stored read position."""
    await ask_check(room, user, [assistant_name] if assistant_name else [])
    since = since_seq if since_seq is not None else await db_run(selectors.room_last_read, room, user)
    request = await db_run(
        services.request_catchup, room=room, user=user, assistant_name=assistant_name, since_seq=since
    )
    background_ensure()
    request_run(room.pk, request.pk)
