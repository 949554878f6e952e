"""Reads of the API (synchronous; callers run them through ``db_run``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Prefetch, Q, QuerySet

from ..access import access_check_fresh
from ..models import Message, Room
from ..selectors import room_list_for_user
from .models import ApiToken

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime | None) -> int:
    """A time as whole microseconds since the epoch (exact, unlike a float)."""
    return 0 if moment is None else (moment - EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def _log() -> QuerySet[Message]:
    """The room's log as everyone sees it (no private replies), quotes fetched along."""
    return Message.objects.filter(visible_to=None).select_related("reply_to")


def rooms_for(user: AbstractBaseUser) -> list[Room]:
    from ..models import Assistant

    enabled = Prefetch("assistants", queryset=Assistant.objects.filter(enabled=True), to_attr="enabled_assistants")
    return list(room_list_for_user(user).prefetch_related(enabled))


def tokens_of(user: AbstractBaseUser) -> list[ApiToken]:
    return list(ApiToken.objects.filter(user=user).order_by("-created"))


def messages_latest(room: Room, user: AbstractBaseUser, limit: int) -> tuple[list[Message], bool]:
    fresh = access_check_fresh(room.pk, user)
    rows = list(_log().filter(room=fresh).order_by("-seq")[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    rows.reverse()
    return rows, has_more


# --- The event stream ----------------------------------------------------------------


@dataclass
class StreamStart:
    """What a fresh event stream starts from: the room's newest seq, the newest
    edit (as microseconds), and the replies being written now."""

    last_seq: int
    edited: int
    streaming: list[Message]


def stream_start(room: Room, user: AbstractBaseUser) -> StreamStart:
    fresh = access_check_fresh(room.pk, user)
    return StreamStart(last_seq=fresh.last_seq, edited=newest_edit(fresh), streaming=replies_streaming(fresh))


def newest_edit(room: Room) -> int:
    """The latest ``edited`` of the room's rows (microseconds), through the
    (room, change_mark) index: the newest edit has the highest mark."""
    row = (
        Message.objects.filter(room=room, visible_to=None, edited__isnull=False)
        .order_by("-change_mark", "-edited")
        .values_list("edited", flat=True)
        .first()
    )
    return micros(row)


def replies_streaming(room: Room) -> list[Message]:
    return list(_log().filter(room=room, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING).order_by("seq"))


def room_last_seq(room_id: int) -> int:
    return Room.objects.filter(pk=room_id).values_list("last_seq", flat=True).first() or 0


def rows_after(room: Room, after_seq: int, limit: int) -> list[Message]:
    """Rows with seq > ``after_seq``, oldest first (their current state)."""
    return list(_log().filter(room=room, seq__gt=after_seq).order_by("seq")[:limit])


def rows_between(room: Room, after_seq: int, upto_seq: int) -> list[Message]:
    return list(_log().filter(room=room, seq__gt=after_seq, seq__lte=upto_seq).order_by("seq"))


def edits_since(room: Room, upto_seq: int, edited_after: int) -> list[Message]:
    """Rows up to ``upto_seq`` edited or deleted after ``edited_after``
    (microseconds), in the order they changed. Every such change happened
    when the room's last seq was at least ``upto_seq`` (its change_mark)."""
    return list(
        _log()
        .filter(room=room, seq__lte=upto_seq, change_mark__gte=upto_seq, edited__gt=from_micros(edited_after))
        .order_by("edited", "id")
    )


def edits_from_mark(room: Room, upto_seq: int) -> list[Message]:
    """Rows up to ``upto_seq`` changed since the room's last seq was
    ``upto_seq`` (a bare-seq cursor: may include changes already seen)."""
    return list(
        _log()
        .filter(room=room, seq__lte=upto_seq, change_mark__gte=upto_seq, edited__isnull=False)
        .order_by("edited", "id")
    )


def replies_by_id(room: Room, ids: list[int]) -> list[Message]:
    return list(_log().filter(room=room, pk__in=ids, role=Message.Role.ASSISTANT).order_by("seq"))


def replies_late(room: Room, upto_seq: int) -> list[Message]:
    """For a bare-seq cursor: replies up to ``upto_seq`` that were still
    streaming or that finished after row ``upto_seq`` was written."""
    anchor = Message.objects.filter(room=room, seq=upto_seq).values_list("created", flat=True).first()
    late = _log().filter(room=room, seq__lte=upto_seq, role=Message.Role.ASSISTANT)
    condition = Q(status=Message.Status.STREAMING)
    if anchor is not None:
        condition |= Q(finished__gte=anchor)
    return list(late.filter(condition).order_by("seq"))


def reply_state(room_id: int, reply_id: int) -> Message | None:
    return _log().filter(room_id=room_id, pk=reply_id, role=Message.Role.ASSISTANT).first()
