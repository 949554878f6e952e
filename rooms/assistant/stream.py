"""A reply while it streams: coalescing the model's tokens into deltas,
saving each before it is broadcast, and the registry of this process's running
replies (how a Stop reaches one).

Every flush is saved before its delta is broadcast, so a tab that joins
mid-stream reads the text so far (and its delta seq) from the database and the
live deltas continue it with no gap or repeat. When the database is away the
reply keeps streaming and keeps its text here (``_Stream``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from django.conf import settings

from .. import events
from ..db import DatabaseUnavailable, db_run
from ..models import Message
from ..realtime import group_publish, room_group
from ..tasks import tasks
from . import services
from .provider import Delta, Finished, ProviderError

logger = logging.getLogger(__name__)

# A flush waits this long for its checkpoint before broadcasting anyway: a slow or
# vanished database must not stall what every tab is watching (the save goes on
# in the background, and the next one carries the whole text).
SAVE_WAIT_SECONDS = 1.0
UNAVAILABLE_ERROR = "The server lost its database while writing this reply; the text so far is kept."
INTERNAL_ERROR = "Something went wrong on our side while writing this reply."


@dataclass(frozen=True)
class CancelRequest:
    by: str


@dataclass(frozen=True)
class PumpEnded:
    error: BaseException | None


# Replies running in this process: reply id -> the queue feeding its stream loop.
running: dict[int, asyncio.Queue[object]] = {}
tasks.on_new_loop(running.clear)


async def announce(room_id: int, envelope: dict[str, object], *, private_to: int | None = None) -> None:
    """Publish a reply's frame: to the room, or to one user's sockets (a
    private reply). Awaited: a reply's frames go out in order with the room's
    other events, and a slow layer slows the reply rather than piling frames up."""
    if private_to is None:
        await group_publish(room_group(room_id), envelope)
    else:
        from ..realtime import user_group

        await group_publish(user_group(private_to), {**envelope, "room_id": room_id})


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


async def pump(provider_stream: AsyncIterator[Delta | Finished], queue: asyncio.Queue[object]) -> None:
    """Feed the provider's items to the stream loop. Cancelling this task closes
    the upstream HTTP stream (aclosing), so a stopped reply stops costing tokens."""
    try:
        async with contextlib.aclosing(provider_stream) as items:  # type: ignore[type-var]
            async for item in items:
                queue.put_nowait(item)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - handed to the stream loop
        queue.put_nowait(PumpEnded(exc))
        return
    queue.put_nowait(PumpEnded(None))


class Stream:
    """Folds provider deltas into coalesced, saved, broadcast chunks.

    Each chunk is saved before it is broadcast. If the database is away, the
    chunk is broadcast anyway and the text is kept here: the next checkpoint
    saves all of it (a checkpoint is the whole text so far, so a failed one is
    simply superseded). A reply that could not save for longer than
    ASSISTANT_TIMEOUT_SECONDS ends with an error.
    """

    def __init__(self, reply_id: int, room_id: int, private_to: int | None = None) -> None:
        self.reply_id = reply_id
        self.room_id = room_id
        self.private_to = private_to
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
        await announce(
            self.room_id,
            events.envelope(
                events.assistant_delta_frame(self.reply_id, self.seq, chunk, private=self.private_to is not None),
                events.ASSISTANT_DELTA,
                reply_id=self.reply_id,
                seq=self.seq,
            ),
            private_to=self.private_to,
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
            elif isinstance(item, PumpEnded):
                await self.flush()
                if item.error is None:
                    return self.outcome(Message.Status.COMPLETE)
                if isinstance(item.error, ProviderError):
                    return self.outcome(Message.Status.ERROR, error_code=item.error.code, error=item.error.reason)
                logger.error("reply %s: provider stream failed", self.reply_id, exc_info=item.error)
                return self.outcome(Message.Status.ERROR, error_code="internal", error=INTERNAL_ERROR)
