"""Running assistant replies: queueing, streaming, coalescing, cancelling.

A reply is its own task in whichever process received the mention, never part
of a consumer's ``receive``: it outlives the asker's sockets. Every flush is
saved before its delta is broadcast, so a tab that joins mid-stream reads the
text so far (and its delta seq) from the database and the live deltas continue
it with no gap or repeat. Every ``assistant.start`` gets exactly one
``assistant.end``: the terminal state is written once (``reply_finish``
refuses a second), and only the writer announces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from django.conf import settings

from . import events, selectors, services
from .db import DatabaseUnavailable, db_health, db_run
from .llm import ChatRequest, Delta, Finished, ProviderError, provider_get
from .models import Message, Room
from .realtime import group_publish, group_send_safe, hub, room_group
from .tasks import tasks

logger = logging.getLogger(__name__)

CONTROL_GROUP = "assistant.control"
QUEUE_POLL_SECONDS = 0.5
# While the database is away a reply keeps streaming and retries its saves this often.
DB_RETRY_SECONDS = 1.0
# A flush waits this long for its checkpoint before broadcasting anyway: a slow or
# vanished database must not stall what every tab is watching (the save goes on
# in the background, and the next one carries the whole text).
SAVE_WAIT_SECONDS = 1.0

DEFAULT_SYSTEM_PROMPT = (
    'You are {name}, an AI assistant taking part in a group chat room called "{room}" with several people. '
    "Each user message starts with the sender's name and a colon. Reply to the person who mentioned you, "
    "address them by name when it helps, keep answers concise, and use Markdown where it helps readability."
)


@dataclass(frozen=True)
class CancelRequest:
    by: str


@dataclass(frozen=True)
class _PumpEnded:
    error: BaseException | None


# Replies running in this process: reply id -> queue feeding its stream loop.
_running: dict[int, asyncio.Queue[object]] = {}
# Wakes this process's queued requests when one of its replies ends (a room's
# turn, or a site-wide slot, may be free).
_wakeup: asyncio.Event | None = None


def _reset() -> None:
    global _wakeup
    _running.clear()
    _wakeup = None


tasks.on_new_loop(_reset)


def _wakeup_event() -> asyncio.Event:
    global _wakeup
    tasks.bind()
    if _wakeup is None:
        _wakeup = asyncio.Event()
    return _wakeup


def reply_request(room: Room, request: Message) -> None:
    """Queue a reply to ``request``; returns at once."""
    background_ensure()
    tasks.spawn(_reply_worker(room.pk, request.pk), name=f"reply-for-{request.pk}")


async def reply_cancel(room: Room, user: object, reply_id: int) -> bool:
    """Ask whichever process runs the reply to stop it. False if no such reply streams here."""
    reply = await db_run(selectors.reply_get, room, user, reply_id)
    if reply is None or reply.status != Message.Status.STREAMING:
        return False
    username = user.get_username()  # type: ignore[attr-defined]
    queue = _running.get(reply_id)
    if queue is not None:
        queue.put_nowait(CancelRequest(by=username))
        return True
    # Running in another process: every process listens on the control group.
    return await group_send_safe(CONTROL_GROUP, {"type": events.REPLY_CANCEL, "reply_id": reply_id, "by": username})


def background_ensure() -> None:
    """Start this process's sweeper and cancel listener (once per process)."""
    tasks.ensure("assistant-sweeper", _sweep_loop)
    if not hub.joined(CONTROL_GROUP, _cancel_listener):
        tasks.ensure("assistant-control", _control_join)


class _CancelListener:
    """Cancels from other processes, delivered by this process's GroupHub (which
    keeps the group membership alive across group_expiry and Redis restarts)."""

    async def group_deliver(self, message: dict[str, object]) -> None:
        if message.get("type") == events.REPLY_CANCEL:
            queue = _running.get(message.get("reply_id"))  # type: ignore[arg-type]
            if queue is not None:
                queue.put_nowait(CancelRequest(by=str(message.get("by", ""))))


_cancel_listener = _CancelListener()


async def _control_join() -> None:
    try:
        await hub.join(CONTROL_GROUP, _cancel_listener)
    except Exception as exc:  # noqa: BLE001 - retried on the next background_ensure()
        logger.warning("assistant cancel listener not subscribed (%s)", type(exc).__name__)


async def _sweep_loop() -> None:
    while True:
        try:
            await reply_sweep()
        except asyncio.CancelledError:
            raise
        except DatabaseUnavailable:
            pass  # db_health logged it; the next sweep tries again
        except Exception:
            logger.exception("assistant sweep failed")
        await asyncio.sleep(settings.ASSISTANT_SWEEP_SECONDS)


async def reply_sweep() -> None:
    if db_health.quiet_for() < settings.ASSISTANT_STALE_SECONDS:
        # While the database was away no worker could check in: a stale beat is
        # no evidence of a dead process until it has been back for a while.
        return
    interrupted, orphans = await db_run(services.reply_sweep_stale, time.monotonic())
    for reply in interrupted:
        logger.warning("reply %s interrupted: its worker stopped checking in", reply.pk)
        await _announce(
            reply.room_id, events.envelope(events.assistant_end_frame(reply), events.ASSISTANT_END, reply_id=reply.pk)
        )
    for request in orphans:
        logger.info("adopting queued request %s", request.pk)
        tasks.spawn(_reply_worker(request.room_id, request.pk), name=f"reply-for-{request.pk}")


class CheckpointWriter:
    """Group commit for the checkpoints of this process's streaming replies.

    Every flush is saved before its delta is broadcast. Saved one at a time, 50
    replies flushing 20 times a second were 1000 commits a second through the
    one database thread, and the queue in front of it became the relay's
    latency (bench S2). Checkpoints that arrive while a batch is being written
    go into the next one, so commits stay near one reply's flush rate however
    many replies stream; and a reply's newer checkpoint replaces its older one
    still waiting (each is the whole text so far), so a slow database never
    piles up copies of a long text.
    """

    def __init__(self) -> None:
        self._waiting: dict[int, tuple[str, int, list[asyncio.Future[bool]]]] = {}
        self._task: asyncio.Task[None] | None = None
        tasks.on_new_loop(self._reset)

    def _reset(self) -> None:
        self._waiting, self._task = {}, None

    def save(self, reply_id: int, text: str, stream_seq: int) -> asyncio.Future[bool]:
        """A future of the checkpoint's commit: True once committed, False if the
        reply was swept; ``DatabaseUnavailable`` when the database is away."""
        loop = tasks.bind()
        done: asyncio.Future[bool] = loop.create_future()
        older = self._waiting.get(reply_id)
        futures = [*older[2], done] if older else [done]
        self._waiting[reply_id] = (text, stream_seq, futures)
        if self._task is None or self._task.done():
            self._task = tasks.spawn(self._run(), name="reply-checkpoints")
        return done

    async def _run(self) -> None:
        batch: dict[int, tuple[str, int, list[asyncio.Future[bool]]]] = {}
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, {}
                rows = [(reply_id, text, seq) for reply_id, (text, seq, _) in batch.items()]
                try:
                    saved = await db_run(services.reply_checkpoint_many, rows)
                except Exception as exc:  # noqa: BLE001 - each waiting reply handles it
                    for _, _, futures in batch.values():
                        for done in futures:
                            if not done.done():
                                done.set_exception(exc)
                    batch = {}
                    continue
                for (_, _, futures), ok in zip(batch.values(), saved, strict=True):
                    for done in futures:
                        if not done.done():
                            done.set_result(ok)
                batch = {}
        finally:
            # Cancelled (shutdown): nobody may wait forever on a lost batch.
            for _, _, futures in (*batch.values(), *self._waiting.values()):
                for done in futures:
                    done.cancel()


checkpoints = CheckpointWriter()


async def _announce(room_id: int, envelope: dict[str, object]) -> None:
    # Awaited: a reply's frames go out in order with the room's other events,
    # and a slow layer slows the reply rather than piling frames up.
    await group_publish(room_group(room_id), envelope)


async def _reply_worker(room_id: int, request_id: int) -> None:
    announced = 0
    while True:
        wakeup = _wakeup_event()
        try:
            reply = await db_run(services.reply_claim_turn, room_id, request_id)
            if reply is not None:
                break
            position = await db_run(services.reply_queue_position, room_id, request_id)
        except DatabaseUnavailable:
            # The request is saved as pending: wait for the database (or, if this
            # process dies meanwhile, another one adopts it).
            await asyncio.sleep(DB_RETRY_SECONDS)
            continue
        if position == 0:
            return  # answered or refused elsewhere
        if position != announced:
            announced = position
            await _announce(
                room_id,
                events.envelope(events.assistant_queued_frame(request_id, position), events.ASSISTANT_QUEUED),
            )
        wakeup.clear()
        try:
            await asyncio.wait_for(wakeup.wait(), QUEUE_POLL_SECONDS)
        except TimeoutError:
            pass
    try:
        await _reply_run(reply)
    finally:
        _wakeup_event().set()


def _context_build(room: Room, reply: Message) -> tuple[list[dict[str, str]], list[int]]:
    history = selectors.context_messages(room, before_seq=reply.seq - 1)
    # A question that quotes an earlier message ("reply to") is about it: the
    # quoted message goes in just before the question when the budget left it out.
    request = reply.in_reply_to
    quoted = request.reply_to if request is not None and request.reply_to_id else None
    if quoted is not None and (quoted.deleted or any(m.pk == quoted.pk for m in history)):
        quoted = None
    system = room.assistant_system_prompt or DEFAULT_SYSTEM_PROMPT.format(name=room.assistant_name, room=room.name)
    messages = [{"role": "system", "content": system}]
    for message in history:
        if quoted is not None and message.pk == request.pk:
            messages.append(_context_entry(quoted))
        messages.append(_context_entry(message))
    ids = [m.pk for m in history]
    if quoted is not None:
        ids.insert(ids.index(request.pk) if request.pk in ids else len(ids), quoted.pk)
    return messages, ids


def _context_entry(message: Message) -> dict[str, str]:
    if message.role == Message.Role.ASSISTANT:
        return {"role": "assistant", "content": message.text}
    text = message.text
    if message.reply_to_id and message.reply_to is not None and not message.reply_to.deleted:
        text = f'(replying to {message.reply_to.author_name}: "{events.excerpt(message.reply_to.text)}") {text}'
    return {"role": "user", "content": f"{message.author_name}: {text}"}


def _reply_prepare(reply_id: int) -> tuple[Room, Message, ChatRequest]:
    reply = Message.objects.select_related("room", "in_reply_to__reply_to").get(pk=reply_id)
    room = reply.room
    messages, context_ids = _context_build(room, reply)
    services.reply_set_context(reply_id, context_ids)
    request = ChatRequest(
        messages=messages,
        model=reply.model or settings.ASSISTANT_MODEL,
        temperature=room.assistant_temperature,
        max_tokens=room.assistant_max_tokens,
    )
    return room, reply, request


async def _pump(provider_stream: AsyncIterator[Delta | Finished], queue: asyncio.Queue[object]) -> None:
    """Feed the provider's items to the stream loop. Cancelling this task closes
    the upstream HTTP stream (aclosing), so a stopped reply stops costing tokens."""
    try:
        async with contextlib.aclosing(provider_stream) as items:  # type: ignore[type-var]
            async for item in items:
                queue.put_nowait(item)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - handed to the stream loop
        queue.put_nowait(_PumpEnded(exc))
        return
    queue.put_nowait(_PumpEnded(None))


UNAVAILABLE_ERROR = "The server lost its database while writing this reply; the text so far is kept."


async def _reply_run(reply: Message) -> None:
    room_id = reply.room_id
    queue: asyncio.Queue[object] = asyncio.Queue()
    _running[reply.pk] = queue
    pump: asyncio.Task[None] | None = None
    stream = _Stream(reply.pk, room_id)
    try:
        await _announce(
            room_id, events.envelope(events.assistant_start_frame(reply), events.ASSISTANT_START, reply_id=reply.pk)
        )
        _, reply, request = await db_run(_reply_prepare, reply.pk)
        provider = provider_get()
        stream.model = request.model
        pump = asyncio.ensure_future(_pump(provider.stream(request), queue))
        outcome = await stream.run(queue)
    except asyncio.CancelledError:
        # The process is shutting down: leave a terminal state, not a hanging row.
        outcome = stream.outcome(
            Message.Status.INTERRUPTED, error_code="interrupted", error="The server stopped before the reply finished."
        )
        await asyncio.shield(_reply_end(reply.pk, room_id, outcome, retry=False))
        raise
    except DatabaseUnavailable:
        outcome = stream.outcome(Message.Status.ERROR, error_code="unavailable", error=UNAVAILABLE_ERROR)
    except Exception:
        logger.exception("reply %s failed", reply.pk)
        outcome = stream.outcome(
            Message.Status.ERROR,
            error_code="internal",
            error="Something went wrong on our side while writing this reply.",
        )
    finally:
        _running.pop(reply.pk, None)
        if pump is not None and not pump.done():
            pump.cancel()
            # Let the provider close its upstream stream before we go on.
            await asyncio.gather(pump, return_exceptions=True)
    await _reply_end(reply.pk, room_id, outcome)


async def _reply_end(reply_id: int, room_id: int, outcome: services.ReplyOutcome, *, retry: bool = True) -> None:
    """Save the reply's one terminal state, then announce it.

    While the database is away this keeps trying (the model's full text is
    held here meanwhile); an outage longer than ASSISTANT_TIMEOUT_SECONDS
    turns the outcome into an error that keeps the text, saved once the
    database answers, for as long again.
    """
    started = time.monotonic()
    patience = settings.ASSISTANT_TIMEOUT_SECONDS
    while True:
        try:
            final = await db_run(services.reply_finish, reply_id, outcome)
            break
        except DatabaseUnavailable:
            waited = time.monotonic() - started
            if not retry or waited > 2 * patience:
                logger.warning("reply %s: could not save its end; the sweeper will close it", reply_id)
                return
            if waited > patience and outcome.status != Message.Status.ERROR:
                outcome = dataclasses.replace(
                    outcome, status=Message.Status.ERROR, error_code="unavailable", error=UNAVAILABLE_ERROR
                )
            await asyncio.sleep(DB_RETRY_SECONDS)
    if final is None:
        return  # already ended (swept): it was announced then
    await _announce(
        room_id, events.envelope(events.assistant_end_frame(final), events.ASSISTANT_END, reply_id=reply_id)
    )


class _Stream:
    """Folds provider deltas into coalesced, saved, broadcast chunks.

    Each chunk is saved before it is broadcast. If the database is away, the
    chunk is broadcast anyway and the text is kept here: the next checkpoint
    saves all of it (a checkpoint is the whole text so far, so a failed one is
    simply superseded). A reply that could not save for longer than
    ASSISTANT_TIMEOUT_SECONDS ends with an error.
    """

    def __init__(self, reply_id: int, room_id: int) -> None:
        self.reply_id = reply_id
        self.room_id = room_id
        self.text = ""
        self.pending = ""
        self.seq = 0
        self.model = ""
        self.started = time.monotonic()
        self.first_token_ms: int | None = None
        self.last_flush = time.monotonic()
        self.last_beat = time.monotonic()
        self.unsaved_since: float | None = None

    def outcome(self, status: str, **fields: object) -> services.ReplyOutcome:
        text = self.text + self.pending
        seq = self.seq + (1 if self.pending else 0)
        return services.ReplyOutcome(
            status=status,
            text=text,
            stream_seq=seq,
            model=str(fields.pop("model", self.model)),
            first_token_ms=self.first_token_ms,
            total_ms=int((time.monotonic() - self.started) * 1000),
            **fields,  # type: ignore[arg-type]
        )

    async def _save(self) -> None:
        seq = self.seq
        saving = checkpoints.save(self.reply_id, self.text, seq)
        try:
            await asyncio.wait_for(asyncio.shield(saving), SAVE_WAIT_SECONDS)
        except TimeoutError:
            # Slow: go on; if it lands later and nothing newer is waiting, all is saved.
            if self.unsaved_since is None:
                self.unsaved_since = time.monotonic()
            saving.add_done_callback(lambda f: self._saved_later(f, seq))
            return
        except DatabaseUnavailable:
            if self.unsaved_since is None:
                self.unsaved_since = time.monotonic()
            return
        self.unsaved_since = None

    def _saved_later(self, saving: asyncio.Future[bool], seq: int) -> None:
        if not saving.cancelled() and saving.exception() is None and seq == self.seq:
            self.unsaved_since = None

    def lost_database(self) -> bool:
        """The database has refused every save for longer than the reply may wait."""
        return (
            self.unsaved_since is not None
            and time.monotonic() - self.unsaved_since > settings.ASSISTANT_TIMEOUT_SECONDS
        )

    async def flush(self) -> None:
        if not self.pending:
            return
        chunk, self.pending = self.pending, ""
        self.seq += 1
        self.text += chunk
        await self._save()
        await _announce(
            self.room_id,
            events.envelope(
                events.assistant_delta_frame(self.reply_id, self.seq, chunk),
                events.ASSISTANT_DELTA,
                reply_id=self.reply_id,
                seq=self.seq,
            ),
        )
        # Timed from when this flush ended, not began: while a slow save or
        # broadcast is in flight (an overloaded process), tokens gather into the
        # next chunk instead of each becoming a frame of its own, which would
        # only add load.
        self.last_flush = self.last_beat = time.monotonic()

    async def beat(self) -> None:
        """Check in while no tokens come (and save text a failed checkpoint left)."""
        self.last_beat = time.monotonic()
        if self.unsaved_since is not None:
            await self._save()
            return
        try:
            await db_run(services.reply_heartbeat, self.reply_id)
        except DatabaseUnavailable:
            self.unsaved_since = time.monotonic()

    async def run(self, queue: asyncio.Queue[object]) -> services.ReplyOutcome:
        flush_after = settings.ASSISTANT_FLUSH_MS / 1000
        beat_every = settings.ASSISTANT_HEARTBEAT_SECONDS
        while True:
            if self.lost_database():
                await self.flush()
                return self.outcome(Message.Status.ERROR, error_code="unavailable", error=UNAVAILABLE_ERROR)
            if self.pending:
                timeout = max(0.0, self.last_flush + flush_after - time.monotonic())
            else:
                timeout = max(0.0, self.last_beat + beat_every - time.monotonic())
            try:
                item = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                if self.pending:
                    await self.flush()
                elif time.monotonic() - self.last_beat >= beat_every:
                    await self.beat()
                continue
            if isinstance(item, Delta):
                if self.first_token_ms is None:
                    self.first_token_ms = int((time.monotonic() - self.started) * 1000)
                self.pending += item.text
                if (
                    len(self.pending) >= settings.ASSISTANT_FLUSH_CHARS
                    or time.monotonic() - self.last_flush >= flush_after
                ):
                    await self.flush()
            elif isinstance(item, Finished):
                await self.flush()
                return self.outcome(
                    Message.Status.COMPLETE,
                    model=item.model or self.model,
                    prompt_tokens=item.prompt_tokens,
                    completion_tokens=item.completion_tokens,
                    finish_reason=item.finish_reason or "",
                )
            elif isinstance(item, CancelRequest):
                await self.flush()
                return self.outcome(Message.Status.CANCELLED, cancelled_by=item.by)
            elif isinstance(item, _PumpEnded):
                await self.flush()
                if item.error is None:
                    return self.outcome(Message.Status.COMPLETE)
                if isinstance(item.error, ProviderError):
                    return self.outcome(Message.Status.ERROR, error_code=item.error.code, error=item.error.reason)
                logger.error("reply %s: provider stream failed", self.reply_id, exc_info=item.error)
                return self.outcome(
                    Message.Status.ERROR,
                    error_code="internal",
                    error="Something went wrong on our side while writing this reply.",
                )
