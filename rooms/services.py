"""Writes. Every change to rooms and messages goes through here.

Synchronous functions do the database work inside one transaction; the async
``*_send``/``*_post`` functions run them off the event loop and broadcast only
after the transaction has committed (persist, then broadcast).
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cache

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, models, transaction
from django.db.models import F
from django.db.models.functions import Lower
from django.utils import timezone

from . import events
from .access import AccessLost, access_check, access_refusals
from .db import db_run
from .models import Assistant, AssistantRequest, Membership, Message, Room, RoomRead
from .realtime import group_publish, group_send_safe, room_group, user_group
from .rendering import mentions_in, message_render_mentions
from .selectors import room_may_moderate, sql_columns
from .tasks import tasks

logger = logging.getLogger(__name__)


@dataclass
class ServiceError(Exception):
    code: str
    detail: str
    # Fields an error frame carries besides code and detail (e.g. "resets").
    extra: dict[str, object] | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


# --- Rooms ------------------------------------------------------------------


def room_create(
    *,
    slug: str,
    name: str,
    created_by: AbstractBaseUser | None = None,
    is_private: bool = False,
    members: list[AbstractBaseUser] | None = None,
    assistant: str | None = "assistant",
) -> Room:
    """A room, with one assistant (``@assistant`` unless ``assistant`` names
    another; None: none) on the default model."""
    with transaction.atomic():
        room = Room.objects.create(slug=slug, name=name, is_private=is_private, created_by=created_by)
        if assistant:
            Assistant.objects.create(room=room, name=assistant)
        people = list(members or [])
        if created_by is not None and created_by not in people:
            people.append(created_by)
        for user in people:
            Membership.objects.get_or_create(room=room, user=user)
    return room


def assistant_configure(*, room: Room, name: str, enabled: bool = True, **fields: object) -> tuple[Assistant, bool]:
    """Create or update the room's assistant called ``name`` (case-insensitive);
    returns ``(assistant, created)``. ``fields``: model, base_url, key_env,
    system_prompt, temperature, max_tokens, context_chars, position."""
    if not re.fullmatch(r"[\w.-]{1,32}", name):
        raise ServiceError(events.BAD_REQUEST, "an assistant's name is one word of at most 32 letters, digits, . - _")
    key_env = fields.get("key_env")
    if key_env and not re.fullmatch(r"[A-Z][A-Z0-9_]*_API_KEY", str(key_env)):
        raise ServiceError(events.BAD_REQUEST, "key_env names an environment variable ending in _API_KEY")
    with transaction.atomic():
        assistant = Assistant.objects.filter(room=room, name__iexact=name).first()
        created = assistant is None
        if created:
            assistant = Assistant(room=room, name=name)
        assistant.enabled = enabled
        for field, value in fields.items():
            if value is not None:
                setattr(assistant, field, value)
        assistant.full_clean()
        assistant.save()
    return assistant, created


def membership_add(room: Room, user: AbstractBaseUser) -> Membership:
    membership, _ = Membership.objects.get_or_create(room=room, user=user)
    return membership


def membership_remove(room: Room, user: AbstractBaseUser) -> None:
    # The post_delete signal closes the user's open sockets to a private room.
    for membership in Membership.objects.filter(room=room, user=user):
        membership.delete()


# --- Messages ---------------------------------------------------------------


# Characters that draw nothing: a message of only these (zero-width spaces, joiners,
# BOMs, bidi marks, Hangul fillers, the blank Braille pattern) is empty.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def text_is_blank(text: str) -> bool:
    return all(ch.isspace() or ch in _INVISIBLE or unicodedata.category(ch) == "Cf" for ch in text)


def message_validate(text: object, client_id: object) -> tuple[str, str | None]:
    if not isinstance(text, str):
        raise ServiceError(events.BAD_REQUEST, "text must be a string")
    if client_id is not None and (not isinstance(client_id, str) or not 0 < len(client_id) <= 64):
        raise ServiceError(events.BAD_REQUEST, "client_id must be a string of 1 to 64 characters")
    if client_id is not None and "\x00" in client_id:
        raise ServiceError(events.BAD_REQUEST, "client_id must not contain NUL characters")
    if text_is_blank(text):
        raise ServiceError(events.BAD_REQUEST, "text must not be empty")
    if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise ServiceError(events.TOO_LONG, f"text is longer than {settings.CHAT_MAX_MESSAGE_CHARS} characters")
    # NUL cannot be stored in PostgreSQL text and has no business in chat.
    if "\x00" in text:
        raise ServiceError(events.BAD_REQUEST, "text must not contain NUL characters")
    # JSON can smuggle lone surrogates ("\ud800"), which no database can store.
    for value in (text, client_id or ""):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ServiceError(events.BAD_REQUEST, "text must be valid Unicode") from None
    return text, client_id


def room_lock(room_id: int) -> Room:
    """The room row, locked until the transaction commits: every seq is taken
    under it, so seqs have no holes and ids within a room commit in order."""
    room = Room.objects.select_for_update().filter(pk=room_id).first()
    if room is None:
        raise AccessLost("gone")
    return room


def room_lock_seq_take(room_id: int) -> Room:
    """``room_lock`` and ``seq_take`` in one statement (the room comes back
    with its new ``last_seq``): the hot path of every message."""
    rows = list(Room.objects.raw(_room_lock_seq_take_sql(), [room_id]))
    if not rows:
        raise AccessLost("gone")
    return rows[0]


@cache
def _room_lock_seq_take_sql() -> str:
    q = connection.ops.quote_name
    table, last_seq = q(Room._meta.db_table), q("last_seq")
    return f"UPDATE {table} SET {last_seq} = {last_seq} + 1 WHERE {q('id')} = %s RETURNING {sql_columns(Room)}"


def seq_take(room: Room) -> int:
    """The locked room's next seq (see ``_room_lock``)."""
    room.last_seq += 1
    Room.objects.filter(pk=room.pk).update(last_seq=F("last_seq") + 1)
    return room.last_seq


def mentions_resolve(room: Room, text: str, author: AbstractBaseUser | None = None) -> list[str]:
    """The usernames ``text`` mentions that can see ``room`` (active users; the
    members of a private room), as they are spelled, author excluded."""
    candidates = [name.lower() for name in mentions_in(text)]
    if not candidates:
        return []
    users = get_user_model().objects.filter(is_active=True)
    users = users.annotate(lname=Lower("username")).filter(lname__in=candidates[:50])
    if room.is_private:
        users = users.filter(memberships__room_id=room.pk)
    if author is not None:
        users = users.exclude(pk=author.pk)
    return [name for name, _ in _mention_rows(users, candidates)]


def _mention_rows(users: models.QuerySet, candidates: list[str]) -> list[tuple[str, int]]:
    found = {name.lower(): (name, pk) for name, pk in users.values_list("username", "pk")}
    return [found[name] for name in dict.fromkeys(candidates) if name in found]


def mention_user_ids(room: Room, names: list[str]) -> list[int]:
    """The ids of the users called ``names`` who may see ``room``."""
    if not names:
        return []
    users = get_user_model().objects.filter(is_active=True, username__in=names)
    if room.is_private:
        users = users.filter(memberships__room_id=room.pk)
    return list(users.values_list("pk", flat=True))


def _reply_to_get(room_id: int, reply_to: object) -> Message | None:
    if reply_to is None:
        return None
    if not isinstance(reply_to, int) or isinstance(reply_to, bool) or not 0 < reply_to < 2**63:
        raise ServiceError(events.BAD_REQUEST, "reply_to must be a message id")
    quoted = Message.objects.filter(pk=reply_to, room_id=room_id, deleted=False).first()
    if quoted is None:
        raise ServiceError(events.NOT_FOUND, "the message to reply to is not in this room")
    return quoted


@dataclass
class MessageDraft:
    """A user message validated and rendered, waiting for its seq."""

    room: Room
    user: AbstractBaseUser
    text: str
    client_id: str | None
    quoted: Message | None
    html: str
    mentions: list[str]

    def message(self, seq: int) -> Message:
        return Message(
            room=self.room,
            seq=seq,
            author=self.user,
            author_name=self.user.get_username(),
            role=Message.Role.USER,
            text=self.text,
            html=self.html,
            client_id=self.client_id,
            reply_to=self.quoted,
            mentions=self.mentions,
        )


def message_draft(
    *, room: Room, user: AbstractBaseUser, text: object, client_id: object = None, reply_to: object = None
) -> MessageDraft | Message:
    """The draft of a new message, or the message a resend already created
    (when that is known without writing: its quote was deleted since)."""
    text, client_id = message_validate(text, client_id)
    # A repeated client_id is found by the unique constraint when saving rather
    # than looked up first: a retry is rare, and the lookup was a tenth of the
    # server's CPU per message.
    try:
        quoted = _reply_to_get(room.pk, reply_to)
    except ServiceError:
        # A resend of a message whose quote was deleted since: the original stands.
        existing = message_by_client_id(room.pk, user.pk, client_id) if client_id is not None else None
        if existing is None:
            raise
        return existing
    html, mentions = message_render_mentions(text, mentions_resolve(room, text, user))
    return MessageDraft(room, user, text, client_id, quoted, html, mentions)


def message_create(
    *,
    room: Room,
    user: AbstractBaseUser,
    text: object,
    client_id: object = None,
    reply_to: object = None,
    asks: Sequence[Assistant] = (),
) -> tuple[Message, bool]:
    """Save a user message; returns ``(message, created)``.

    A repeated ``client_id`` (a retry after reconnect) returns the message it
    created the first time instead of a second copy. ``asks``: the assistants
    it asks, in order: one request each is saved with it (their ids are on
    ``message.assistant_requests``) for the caller to start.
    """
    draft = message_draft(room=room, user=user, text=text, client_id=client_id, reply_to=reply_to)
    if isinstance(draft, Message):
        return draft, False
    try:
        with transaction.atomic():
            locked = room_lock_seq_take(room.pk)
            access_check(locked, user)
            if asks:
                _queue_room_check(locked, len(asks))
            message = draft.message(locked.last_seq)
            message.save(force_insert=True)
            message.assistant_requests = [
                AssistantRequest.objects.create(
                    room=locked, assistant=assistant, message=message, requester=user, heartbeat=timezone.now()
                ).pk
                for assistant in asks
            ]
    except IntegrityError:
        if draft.client_id is None:
            raise
        # Two tabs retried the same client_id at once: the other one won.
        existing = message_by_client_id(room.pk, user.pk, draft.client_id)
        if existing is None:
            raise
        return existing, False
    return message, True


@dataclass(frozen=True)
class MessageRequest:
    """One ``message_create`` (without assistants to ask) for ``message_create_many``."""

    room: Room
    user: AbstractBaseUser
    text: object
    client_id: object = None
    reply_to: object = None


MessageResult = tuple[Message, bool] | ServiceError | AccessLost


def message_create_many(requests: Sequence[MessageRequest]) -> list[MessageResult]:
    """``message_create`` for several messages in one transaction (group commit);
    one result per request, in order: ``(message, created)``, or the
    ``ServiceError`` / ``AccessLost`` refusing that one alone.

    Messages of one room take consecutive seqs in request order. The rooms are
    locked in id order, so batches of several processes never deadlock. A
    repeated ``client_id`` breaks the batch's insert; then each request is
    saved on its own, and a retry gets its original back as ``message_create``
    gives it.
    """
    results: list[MessageResult | None] = [None] * len(requests)
    drafts: dict[int, MessageDraft] = {}
    for i, request in enumerate(requests):
        try:
            draft = message_draft(
                room=request.room,
                user=request.user,
                text=request.text,
                client_id=request.client_id,
                reply_to=request.reply_to,
            )
        except ServiceError as exc:
            results[i] = exc
            continue
        if isinstance(draft, Message):
            results[i] = (draft, False)
        else:
            drafts[i] = draft
    if drafts:
        try:
            with transaction.atomic():
                for i, outcome in _drafts_save(drafts).items():
                    results[i] = outcome
        except IntegrityError:
            for i in drafts:
                results[i] = _message_create_one(requests[i])
    missing = [i for i, result in enumerate(results) if result is None]
    if missing:
        raise RuntimeError(f"message_create_many left requests {missing} without a result")
    return results  # type: ignore[return-value]


def _drafts_save(drafts: dict[int, MessageDraft]) -> dict[int, MessageResult]:
    """Inside the caller's transaction: lock each room once and take its seqs,
    check every author's access under the locks, insert the messages in one
    statement."""
    by_room: dict[int, list[int]] = {}
    for i, draft in drafts.items():
        by_room.setdefault(draft.room.pk, []).append(i)
    outcomes: dict[int, MessageResult] = {}
    room_ids = sorted(by_room)
    counts = [len(by_room[room_id]) for room_id in room_ids]
    with connection.cursor() as cursor:
        if len(room_ids) > 1 and connection.features.has_select_for_update:
            # Locked in id order, so two processes' batches never deadlock
            # (an UPDATE of many rows locks them in whatever order its plan visits).
            cursor.execute(_rooms_lock_sql(len(room_ids)), room_ids)
        cursor.execute(_rooms_seq_take_sql(len(room_ids)), [*_pairs(room_ids, counts), *room_ids])
        taken = {room_id: (last_seq, is_private) for room_id, last_seq, is_private in cursor.fetchall()}
    for room_id in room_ids:
        if room_id not in taken:
            for i in by_room.pop(room_id):
                outcomes[i] = AccessLost("gone")
    private = {room_id for room_id, (_, is_private) in taken.items() if is_private}
    refusals = access_refusals({(room_id, drafts[i].user.pk) for room_id, ids in by_room.items() for i in ids}, private)
    messages: list[tuple[int, Message]] = []
    for room_id, ids in by_room.items():
        allowed = []
        for i in ids:
            what = refusals.get((room_id, drafts[i].user.pk))
            if what is None:
                allowed.append(i)
            else:
                outcomes[i] = AccessLost(what)
        refused = len(ids) - len(allowed)
        if refused:
            # Give back the seqs of the refused ones, under the same lock: seqs have no holes.
            Room.objects.filter(pk=room_id).update(last_seq=F("last_seq") - refused)
        first = taken[room_id][0] - len(ids) + 1
        messages.extend((i, drafts[i].message(first + n)) for n, i in enumerate(allowed))
    _messages_insert([message for _, message in messages])
    for i, message in messages:
        message.assistant_requests = []
        outcomes[i] = (message, True)
    return outcomes


def _messages_insert(messages: list[Message]) -> None:
    """One INSERT for all of them, with the signals ``save()`` would have sent
    (``bulk_create`` sends none): the API marks bots' messages before the insert
    and records webhook deliveries after it, in this transaction."""
    using = connection.alias
    for message in messages:
        models.signals.pre_save.send(sender=Message, instance=message, raw=False, using=using, update_fields=None)
    Message.objects.bulk_create(messages)
    for message in messages:
        models.signals.post_save.send(
            sender=Message, instance=message, created=True, update_fields=None, raw=False, using=using
        )


def _message_create_one(request: MessageRequest) -> MessageResult:
    try:
        return message_create(
            room=request.room,
            user=request.user,
            text=request.text,
            client_id=request.client_id,
            reply_to=request.reply_to,
        )
    except (ServiceError, AccessLost) as exc:
        return exc
    except IntegrityError as exc:
        # Not a repeated client_id (message_create answers those): a row it
        # refers to went away meanwhile (the quoted message, with its room).
        # This one fails alone; the batch's others are saved and announced.
        logger.warning("message not saved: %s", type(exc.__cause__ or exc).__name__)
        return ServiceError(events.NOT_FOUND, "what this message refers to is gone")


def _pairs(room_ids: list[int], counts: list[int]) -> list[int]:
    return [value for pair in zip(room_ids, counts, strict=True) for value in pair]


@cache
def _rooms_lock_sql(n: int) -> str:
    q = connection.ops.quote_name
    marks = ", ".join(["%s"] * n)
    return f"SELECT {q('id')} FROM {q(Room._meta.db_table)} WHERE {q('id')} IN ({marks}) ORDER BY {q('id')} FOR UPDATE"


@cache
def _rooms_seq_take_sql(n: int) -> str:
    """Each of n rooms' last_seq moved on by its own count, in one statement."""
    q = connection.ops.quote_name
    room_id, last_seq = q("id"), q("last_seq")
    cases = " ".join(["WHEN %s THEN %s"] * n)
    marks = ", ".join(["%s"] * n)
    return (
        f"UPDATE {q(Room._meta.db_table)} SET {last_seq} = {last_seq} + CASE {room_id} {cases} END"
        f" WHERE {room_id} IN ({marks}) RETURNING {room_id}, {last_seq}, {q('is_private')}"
    )


def _message_for_change(
    room_id: int, message_id: object, user: AbstractBaseUser, *, admin: bool = False
) -> tuple[Room, Message]:
    """The room (locked, access re-checked) and the message ``user`` may change.
    ``admin``: the Django admin, whose own permissions already decided."""
    if not isinstance(message_id, int) or isinstance(message_id, bool) or not 0 < message_id < 2**63:
        raise ServiceError(events.BAD_REQUEST, "id must be a message id")
    locked = room_lock(room_id)
    if not admin:
        access_check(locked, user)
    message = Message.objects.select_for_update().filter(pk=message_id, room_id=room_id).first()
    if message is None:
        raise ServiceError(events.NOT_FOUND, "no message with that id in this room")
    own = message.role == Message.Role.USER and message.author_id == user.pk
    if not own and not admin and not room_may_moderate(locked, user):
        raise ServiceError(events.FORBIDDEN, "you may only change your own messages")
    if message.deleted:
        raise ServiceError(events.BAD_REQUEST, "that message was deleted")
    return locked, message


def message_edit(
    *, room: Room, user: AbstractBaseUser, message_id: object, text: object, admin: bool = False
) -> Message:
    """Replace a user message's text (its author, a room moderator or staff).

    Rendered and validated like a send. The assistant is not asked again, and a
    reply it already wrote stays as it is.
    """
    text, _ = message_validate(text, None)
    mentions = mentions_resolve(room, text)
    with transaction.atomic():
        locked, message = _message_for_change(room.pk, message_id, user, admin=admin)
        if message.role != Message.Role.USER:
            raise ServiceError(events.BAD_REQUEST, "only people's messages can be edited")
        if message.author_id is not None:
            mentions = [name for name in mentions if name != message.author_name]
        message.text = text
        message.html, message.mentions = message_render_mentions(text, mentions)
        message.edited = timezone.now()
        message.change_mark = locked.last_seq
        message.save(update_fields=["text", "html", "mentions", "edited", "change_mark"])
        _ = message.reply_to  # loaded here: the frame is built on the event loop
    return message


def message_delete(*, room: Room, user: AbstractBaseUser, message_id: object, admin: bool = False) -> Message:
    """Delete a message (its author; a room moderator or staff: any message):
    the row keeps its id and seq, its text and html are emptied."""
    with transaction.atomic():
        locked, message = _message_for_change(room.pk, message_id, user, admin=admin)
        if message.role == Message.Role.ASSISTANT and message.status == Message.Status.STREAMING:
            raise ServiceError(events.BAD_REQUEST, "stop the reply before deleting it")
        message.text = ""
        message.html = ""
        message.mentions = []
        message.deleted = True
        message.edited = timezone.now()
        message.change_mark = locked.last_seq
        message.save(update_fields=["text", "html", "mentions", "deleted", "edited", "change_mark"])
        _ = message.reply_to  # loaded here: the frame is built on the event loop
    return message


def read_mark(*, room: Room, user: AbstractBaseUser, seq: object) -> int:
    """Record that ``user`` has read ``room`` up to ``seq`` (never backwards);
    returns the last read seq now stored."""
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ServiceError(events.BAD_REQUEST, "seq must be a non-negative integer")
    fresh = Room.objects.filter(pk=room.pk).only("last_seq", "is_private").first()
    if fresh is None:
        raise AccessLost("gone")
    access_check(fresh, user)
    seq = min(seq, fresh.last_seq)
    read, created = RoomRead.objects.get_or_create(room_id=room.pk, user_id=user.pk, defaults={"last_read_seq": seq})
    if not created and seq > read.last_read_seq:
        RoomRead.objects.filter(pk=read.pk, last_read_seq__lt=seq).update(last_read_seq=seq)
        return seq
    return read.last_read_seq


def _queue_room_check(room: Room, adding: int) -> None:
    """Refuse a mention when the room's assistant queue is full (bounded work
    per room, whatever the number of accounts asking)."""
    limit = settings.ASSISTANT_MAX_QUEUE_PER_ROOM
    waiting = AssistantRequest.objects.filter(room_id=room.pk, state=AssistantRequest.State.PENDING).count()
    if limit and waiting + adding > limit:
        raise ServiceError(
            events.RATE_LIMITED,
            f"the assistants already have {waiting} requests waiting in this room; ask again once they have answered",
        )


def message_by_client_id(room_id: int, user_id: int, client_id: str) -> Message | None:
    return (
        Message.objects.select_related("reply_to")
        .filter(room_id=room_id, author_id=user_id, client_id=client_id)
        .first()
    )


class MessageWriter:
    """Group commit for the messages sent through this process.

    Saved one at a time, every message paid for its own transaction, room
    lock, thread hop and connection checkout: about 2.7 ms of CPU, which
    capped a process near 300 messages a second however small its rooms (bench
    S6). A message is written at once when no batch is being written;
    otherwise it waits for the next batch (``message_create_many``), so at a
    low rate each is still written alone, without waiting, and under load the
    cost per message falls with the size of the batch. A batch's failure (the
    database away) is every sender's in it, as it would have been one by one.
    """

    BATCH_MAX = 100
    # Batches written at once. Two (S6, PostgreSQL) halved the median latency
    # at 200 messages a second but cost a third of the peak rate: smaller
    # batches, and two threads contending for the GIL.
    IN_FLIGHT = 1

    def __init__(self) -> None:
        self._waiting: list[tuple[MessageRequest, asyncio.Future[MessageResult]]] = []
        self._writing: set[asyncio.Task[None]] = set()
        tasks.on_new_loop(self._reset)

    def _reset(self) -> None:
        self._waiting, self._writing = [], set()

    async def save(self, request: MessageRequest) -> tuple[Message, bool]:
        """``message_create`` through the next batch."""
        loop = tasks.bind()
        done: asyncio.Future[MessageResult] = loop.create_future()
        self._waiting.append((request, done))
        self._dispatch()
        result = await done
        if isinstance(result, Exception):
            raise result
        return result

    def _dispatch(self) -> None:
        while self._waiting and len(self._writing) < self.IN_FLIGHT:
            # A sender that gave up while waiting (its socket closed) is not written.
            waiting = [item for item in self._waiting if not item[1].done()]
            batch, self._waiting = waiting[: self.BATCH_MAX], waiting[self.BATCH_MAX :]
            if not batch:
                return
            task = tasks.spawn(self._write(batch), name="message-batch")
            self._writing.add(task)
            task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writing.discard(task)
        if not task.cancelled():
            self._dispatch()

    async def _write(self, batch: list[tuple[MessageRequest, asyncio.Future[MessageResult]]]) -> None:
        try:
            results = await db_run(message_create_many, [request for request, _ in batch])
        except asyncio.CancelledError:
            # Shut down mid-write: nobody may wait forever on a lost batch.
            for _, done in batch:
                done.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - each waiting sender answers it
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        for (request, done), result in zip(batch, results, strict=True):
            if not done.done():
                done.set_result(result)
            elif isinstance(result, tuple) and result[1]:
                # Saved after its sender left: the room still hears of it.
                _message_announce(request.room, result[0])


message_writer = MessageWriter()


async def message_send(
    *,
    room: Room,
    user: AbstractBaseUser,
    text: object,
    client_id: object = None,
    reply_to: object = None,
    asks: Sequence[Assistant] = (),
    on_saved: Callable[[Message], Awaitable[None]] | None = None,
    announce_existing: bool = False,
) -> tuple[Message, bool]:
    """Persist a user message, then tell the room (and notify who it mentions).

    ``on_saved`` runs after the commit and before the broadcast: the sender's
    acknowledgement, which must not wait on (or race with) the channel layer.
    The assistant requests it saved (``asks``) are for the caller to start
    (``rooms.assistant.ask`` does both).

    ``announce_existing``: a resend whose first attempt ended without knowing
    whether it committed (the database stopped answering mid-write) may find
    the message saved but never announced; it is announced then (clients drop
    a copy they already have by id).
    """
    if asks:
        message, created = await db_run(
            message_create, room=room, user=user, text=text, client_id=client_id, reply_to=reply_to, asks=asks
        )
    else:
        message, created = await message_writer.save(MessageRequest(room, user, text, client_id, reply_to))
    if on_saved is not None:
        await on_saved(message)
    if created or announce_existing:
        # Not awaited: the sender already has its ack and a stalled layer must
        # not hold up its next frame.
        _message_announce(room, message)
    if created and message.mentions:
        await _mentions_notify(room, message)
    return message, created


def _message_announce(room: Room, message: Message) -> None:
    group_publish(room_group(room.pk), events.envelope(events.message_frame(message), events.MESSAGE, id=message.id))


async def _mentions_notify(room: Room, message: Message) -> None:
    try:
        user_ids = await db_run(mention_user_ids, room, list(message.mentions))
    except Exception as exc:  # noqa: BLE001 - a notification is a courtesy; the message is saved
        logger.info("mention notifications skipped: %s", type(exc).__name__)
        return
    frame = events.notify_frame(room, message)
    for user_id in user_ids:
        if user_id != message.author_id:
            group_publish(user_group(user_id), {"type": events.USER_NOTIFY, "frame": frame})


def message_change_announce(message: Message) -> None:
    """Tell the room about an edit or delete made outside a socket (the admin),
    once the change has committed."""
    envelope = events.envelope(events.message_update_frame(message), events.MESSAGE_UPDATE, id=message.id)
    envelope["group"] = room_group(message.room_id)

    def send() -> None:
        async_to_sync(group_send_safe)(room_group(message.room_id), envelope)

    transaction.on_commit(send)


async def message_update_send(
    change: Callable[..., Message], *, room: Room, user: AbstractBaseUser, **fields: object
) -> Message:
    """Run ``message_edit`` or ``message_delete``, then tell the room."""
    message = await db_run(change, room=room, user=user, **fields)
    group_publish(
        room_group(room.pk), events.envelope(events.message_update_frame(message), events.MESSAGE_UPDATE, id=message.id)
    )
    return message
