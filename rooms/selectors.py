"""Reads. Plain synchronous ORM queries; async callers wrap them with
``database_sync_to_async``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, models
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery, TextField
from django.db.models.functions import Cast, Coalesce

from .access import access_check_fresh, room_can_access
from .models import Assistant, Membership, Message, Room, RoomRead

__all__ = ["room_can_access"]


def room_get(slug: str) -> Room | None:
    return Room.objects.filter(slug=slug).first()


def room_get_fresh(room_id: int) -> Room | None:
    return Room.objects.filter(pk=room_id).first()


def room_get_visible(slug: str, user: AbstractBaseUser) -> Room | None:
    """The room, if ``user`` may open it; a private room they may not see is
    answered exactly like a room that does not exist (no probing for names)."""
    room = room_get(slug)
    if room is None or not room_can_access(room, user):
        return None
    return room


def room_list_for_user(user: AbstractBaseUser) -> QuerySet[Room]:
    """The rooms ``user`` may open, each with ``unread`` (messages after their
    last read seq, not their own, not deleted) and ``mentioned`` (an unread one
    mentions them)."""
    read = RoomRead.objects.filter(room=OuterRef("pk"), user=user).values("last_read_seq")[:1]
    rooms = Room.objects.filter(Q(is_private=False) | Q(pk__in=Membership.objects.filter(user=user).values("room")))
    rooms = rooms.annotate(read_seq=Coalesce(Subquery(read), 0))
    unread = Message.objects.filter(
        room=OuterRef("pk"), seq__gt=OuterRef("read_seq"), deleted=False, visible_to=None
    ).exclude(author=user)
    counted = (
        unread.order_by().values("room").annotate(n=Count("pk")).values("n")  # one aggregate per room
    )
    # JSON containment is not portable (SQLite has none): match the quoted name in
    # the list's text, in either escaping a backend may store.
    name = user.get_username()
    mentions = unread.annotate(mentions_text=Cast("mentions", TextField())).filter(
        Q(mentions_text__contains=json.dumps(name)) | Q(mentions_text__contains=json.dumps(name, ensure_ascii=False))
    )
    return rooms.annotate(unread=Coalesce(Subquery(counted), 0), mentioned=Exists(mentions)).order_by("name")


def room_may_moderate(room: Room, user: AbstractBaseUser) -> bool:
    """Staff, or a moderator of this room: may edit and delete anyone's messages."""
    if getattr(user, "is_staff", False):
        return True
    return Membership.objects.filter(room=room, user=user, role=Membership.Role.MODERATOR).exists()


def room_last_read(room: Room, user: AbstractBaseUser) -> int:
    return RoomRead.objects.filter(room=room, user=user).values_list("last_read_seq", flat=True).first() or 0


def message_list_latest(room: Room, limit: int) -> list[Message]:
    rows = list(Message.objects.raw(f"{_sql().messages} ORDER BY m.seq DESC LIMIT %s", [room.pk, limit]))
    rows.reverse()
    return quotes_attach(rows)


def _messages() -> QuerySet[Message]:
    """The room's log as everyone sees it (no one's private replies). Lists
    of it pass through ``quotes_attach`` before anything reads ``reply_to``."""
    return Message.objects.filter(visible_to=None)


def quotes_attach(rows: list[Message]) -> list[Message]:
    """Every message sent to a client carries its quote: fetch them for all of
    ``rows`` in one query, and none when nothing quotes (most pages). A join
    instead would double the columns Django compiles and reads for every
    page, and that compilation was most of a reconnect's CPU."""
    ids = {m.reply_to_id for m in rows if m.reply_to_id is not None}
    if ids:
        quoted = {q.pk: q for q in Message.objects.filter(pk__in=ids).only("id", "author_name", "text", "deleted")}
        for m in rows:
            if m.reply_to_id is not None:
                m.reply_to = quoted.get(m.reply_to_id)
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
    q = _sql()
    rows = list(
        Message.objects.raw(f"{q.messages} AND m.id > %s ORDER BY m.seq LIMIT %s", [room.pk, after_id, limit + 1])
    )
    truncated = len(rows) > limit
    rows = rows[:limit]
    # Replies that finished, and rows edited or deleted, since the client's
    # newest message (the anchor) was the newest; the anchor is read inside
    # the same query (none: nothing is late).
    late = Message.objects.raw(q.late, [room.pk, after_id, room.pk, after_id, room.pk, after_id])
    seen = {m.id for m in rows}
    rows = sorted([m for m in late if m.id not in seen] + rows, key=lambda m: m.seq)
    return Resume(messages=quotes_attach(rows), truncated=truncated)


def sql_columns(model: type[models.Model], alias: str = "") -> str:
    """Every column of ``model``, quoted (``alias.`` before each), in field
    order: the select list of the raw SQL that builds ``model`` instances."""
    q = connection.ops.quote_name
    prefix = f"{alias}." if alias else ""
    return ", ".join(f"{prefix}{q(f.column)}" for f in model._meta.concrete_fields)


@dataclass(frozen=True)
class _OpenSql:
    room: str
    assistants: str
    messages: str
    late: str


@cache
def _sql() -> _OpenSql:
    """The connect path's queries, written once. Building and compiling the
    equivalent querysets cost more CPU than everything else a reconnect does
    (about 6 of 13 ms); the SQL is plain enough for SQLite and PostgreSQL,
    and tests run it on both."""
    q = connection.ops.quote_name
    msg, room = q(Message._meta.db_table), q(Room._meta.db_table)
    member, read = q(Membership._meta.db_table), q(RoomRead._meta.db_table)
    streaming, assistant = Message.Status.STREAMING.value, Message.Role.ASSISTANT.value
    messages = f"SELECT {sql_columns(Message, 'm')} FROM {msg} m WHERE m.room_id = %s AND m.visible_to_id IS NULL"

    def anchor(column: str) -> str:
        return (
            f"SELECT a.{q(column)} FROM {msg} a WHERE a.room_id = %s AND a.id <= %s"
            " AND a.visible_to_id IS NULL ORDER BY a.id DESC LIMIT 1"
        )

    return _OpenSql(
        room=(
            f"SELECT {sql_columns(Room, 'r')},"
            f" COALESCE((SELECT rr.last_read_seq FROM {read} rr WHERE rr.room_id = r.id AND rr.user_id = %s), 0)"
            " AS read_seq,"
            f" EXISTS(SELECT 1 FROM {member} mb WHERE mb.room_id = r.id AND mb.user_id = %s) AS is_member,"
            f" EXISTS(SELECT 1 FROM {member} mb WHERE mb.room_id = r.id AND mb.user_id = %s AND mb.role = %s)"
            " AS is_moderator,"
            # Most rooms have neither: asking costs a line of this query,
            # reading them a query each (partial and foreign-key indexes).
            f" EXISTS(SELECT 1 FROM {msg} x WHERE x.room_id = r.id AND x.status = '{streaming}') AS has_streaming,"
            f" EXISTS(SELECT 1 FROM {msg} x WHERE x.room_id = r.id AND x.visible_to_id = %s) AS has_private"
            f" FROM {room} r WHERE r.slug = %s"
        ),
        assistants=(
            f"SELECT {sql_columns(Assistant, 'a')} FROM {q(Assistant._meta.db_table)} a"
            " WHERE a.room_id = %s AND a.enabled = %s ORDER BY a.position, a.id"
        ),
        messages=messages,
        late=(
            f"{messages} AND m.id <= %s AND m.status <> '{streaming}' AND ("
            f"(m.role = '{assistant}' AND m.finished >= ({anchor('created')}))"
            f" OR m.change_mark >= ({anchor('seq')}))"
        ),
    )


def message_list_before(room: Room, before_id: int, limit: int) -> tuple[list[Message], bool]:
    rows = list(_messages().filter(room=room, id__lt=before_id).order_by("-seq")[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    rows.reverse()
    return quotes_attach(rows), has_more


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
    """A socket's ``assistant.fetch``: an assistant reply of the room (or the
    user's own private one), streaming or not."""
    fresh = access_check_fresh(room.pk, user)
    return (
        Message.objects.select_related("reply_to")
        .filter(Q(visible_to=None) | Q(visible_to=user), room=fresh, id=reply_id, role=Message.Role.ASSISTANT)
        .first()
    )


def private_replies(room: Room, user: AbstractBaseUser, limit: int = 5) -> list[Message]:
    """``user``'s latest private replies (catch-ups) in ``room``, oldest first."""
    rows = list(Message.objects.filter(room=room, visible_to=user).order_by("-id")[:limit])
    rows.reverse()
    return rows


def room_sync_state(room: Room) -> tuple[int, list[int]]:
    """The room's last seq and the ids of replies still streaming."""
    last_seq = Room.objects.filter(pk=room.pk).values_list("last_seq", flat=True).first() or 0
    streaming = list(
        _messages()
        .filter(room=room, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)
        .order_by("seq")
        .values_list("pk", flat=True)
    )
    return last_seq, streaming


def reply_list_streaming(room: Room) -> list[Message]:
    streaming = _messages().filter(room=room, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)
    return quotes_attach(list(streaming.order_by("seq")))


def context_messages(room: Room, before_seq: int, budget: int | None = None) -> list[Message]:
    """The room's most recent finished messages up to ``before_seq``, oldest first,
    within the context budget (oldest dropped first)."""
    candidates = (
        _messages()
        .filter(room=room, seq__lte=before_seq, deleted=False)
        .exclude(role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)
        .exclude(text="")
        .order_by("-seq")[: settings.ASSISTANT_CONTEXT_MESSAGES]
    )
    return _within(candidates, budget or settings.ASSISTANT_CONTEXT_CHARS)


def context_unread(room: Room, after_seq: int, budget: int) -> list[Message]:
    """The messages after ``after_seq`` (what someone has not read), newest kept
    when the budget is short, oldest first."""
    candidates = (
        _messages()
        .filter(room=room, seq__gt=after_seq, deleted=False)
        .exclude(role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)
        .exclude(text="")
        .order_by("-seq")[: settings.ASSISTANT_CONTEXT_MESSAGES * 4]
    )
    return _within(candidates, budget)


def _within(newest_first: QuerySet[Message], budget: int) -> list[Message]:
    picked: list[Message] = []
    used = 0
    for message in newest_first:
        cost = len(message.text) + len(message.author_name) + 2
        if picked and used + cost > budget:
            break
        picked.append(message)
        used += cost
    picked.reverse()
    return quotes_attach(picked)


@dataclass
class RoomOpen:
    """Everything a socket needs to open a room, read in one database hop."""

    room: Room | None  # None: no such room, or one this user may not see
    moderator: bool = False
    last_read_seq: int = 0
    assistants: list[Assistant] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    truncated: bool = False
    streaming: list[Message] = field(default_factory=list)
    private: list[Message] = field(default_factory=list)


def room_open(slug: str, user: AbstractBaseUser, *, after: int | None, latest: int, resume_max: int) -> RoomOpen:
    """The room (if ``user`` may open it: active, and a member of a private
    room), with who they are in it and the snapshot its hello carries: the
    latest messages (``after`` None) or those after the cursor, the replies
    being written, and the user's own private replies."""
    if not user.is_active:
        return RoomOpen(room=None)
    uid = user.pk
    rows = list(Room.objects.raw(_sql().room, [uid, uid, uid, Membership.Role.MODERATOR.value, uid, slug]))
    room = rows[0] if rows else None
    if room is None or (room.is_private and not room.is_member):
        return RoomOpen(room=None)
    state = RoomOpen(
        room=room,
        moderator=bool(getattr(user, "is_staff", False) or room.is_moderator),
        last_read_seq=room.read_seq,
        assistants=list(Assistant.objects.raw(_sql().assistants, [room.pk, True])),
    )
    if after is None:
        state.messages = message_list_latest(room, latest)
    else:
        resume = message_list_after(room, after, resume_max)
        state.messages, state.truncated = resume.messages, resume.truncated
    if room.has_streaming:
        state.streaming = reply_list_streaming(room)
    if room.has_private:
        state.private = private_replies(room, user)
    return state


def room_id_for(slug: str) -> int | None:
    return Room.objects.filter(slug=slug).values_list("pk", flat=True).first()
