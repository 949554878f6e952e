"""Reads. Plain synchronous ORM queries; async callers wrap them with
``database_sync_to_async``."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from .access import access_check_fresh, room_can_access
from .models import Message, Room

__all__ = ["room_can_access"]


def room_get(slug: str) -> Room | None:
    return Room.objects.filter(slug=slug).first()


def room_get_visible(slug: str, user: AbstractBaseUser) -> Room | None:
    """The room, if ``user`` may open it; a private room they may not see is
    answered exactly like a room that does not exist (no probing for names)."""
    room = room_get(slug)
    if room is None or not room_can_access(room, user):
        return None
    return room


def room_list_for_user(user: AbstractBaseUser) -> QuerySet[Room]:
    return Room.objects.filter(Q(is_private=False) | Q(memberships__user=user)).distinct().order_by("name")


def message_list_latest(room: Room, limit: int) -> list[Message]:
    rows = list(Message.objects.filter(room=room).order_by("-seq")[:limit])
    rows.reverse()
    return rows


@dataclass
class Resume:
    messages: list[Message]
    truncated: bool


def message_list_after(room: Room, after_id: int, limit: int) -> Resume:
    """Everything a client that last saw ``after_id`` is missing, oldest first.

    Assistant rows are created when their reply starts, so a reply the client saw
    start can sit below ``after_id`` and have finished since: those come back too
    (clients upsert by id), as does any reply still streaming.
    """
    rows = list(Message.objects.filter(room=room, id__gt=after_id).order_by("seq")[: limit + 1])
    truncated = len(rows) > limit
    rows = rows[:limit]
    anchor = Message.objects.filter(room=room, id=after_id).only("created").first()
    if anchor is not None:
        late = Message.objects.filter(
            room=room, id__lte=after_id, role=Message.Role.ASSISTANT, finished__gte=anchor.created
        ).exclude(status=Message.Status.STREAMING)
        seen = {m.id for m in rows}
        rows = sorted([m for m in late if m.id not in seen] + rows, key=lambda m: m.seq)
    return Resume(messages=rows, truncated=truncated)


def message_list_before(room: Room, before_id: int, limit: int) -> tuple[list[Message], bool]:
    rows = list(Message.objects.filter(room=room, id__lt=before_id).order_by("-seq")[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    rows.reverse()
    return rows, has_more


def history_page(room: Room, user: AbstractBaseUser, *, before: int | None, after: int | None, limit: int) -> Resume:
    """A socket's ``history.fetch``: access re-checked, then the page
    (``truncated`` meaning there is more in that direction)."""
    fresh = access_check_fresh(room.pk, user)
    if after is not None:
        return message_list_after(fresh, after, limit)
    assert before is not None
    rows, has_more = message_list_before(fresh, before, limit)
    return Resume(messages=rows, truncated=has_more)


def reply_get(room: Room, user: AbstractBaseUser, reply_id: int) -> Message | None:
    """A socket's ``assistant.fetch``: an assistant reply of the room, streaming or not."""
    fresh = access_check_fresh(room.pk, user)
    return Message.objects.filter(room=fresh, id=reply_id, role=Message.Role.ASSISTANT).first()


def room_sync_state(room: Room) -> tuple[int, list[int]]:
    """The room's last seq and the ids of replies still streaming."""
    last_seq = Room.objects.filter(pk=room.pk).values_list("last_seq", flat=True).first() or 0
    streaming = list(
        Message.objects.filter(room=room, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)
        .order_by("seq")
        .values_list("pk", flat=True)
    )
    return last_seq, streaming


def reply_list_streaming(room: Room) -> list[Message]:
    return list(
        Message.objects.filter(room=room, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING).order_by("seq")
    )


def reply_get_streaming(room: Room, reply_id: int) -> Message | None:
    return Message.objects.filter(
        room=room, id=reply_id, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING
    ).first()


def context_messages(room: Room, before_seq: int) -> list[Message]:
    """The room's most recent finished messages up to ``before_seq``, oldest first,
    within the context budget (oldest dropped first)."""
    budget = settings.ASSISTANT_CONTEXT_CHARS
    candidates = (
        Message.objects.filter(room=room, seq__lte=before_seq)
        .exclude(role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)
        .exclude(text="")
        .order_by("-seq")[: settings.ASSISTANT_CONTEXT_MESSAGES]
    )
    picked: list[Message] = []
    used = 0
    for message in candidates:
        cost = len(message.text) + len(message.author_name) + 2
        if picked and used + cost > budget:
            break
        picked.append(message)
        used += cost
    picked.reverse()
    return picked
