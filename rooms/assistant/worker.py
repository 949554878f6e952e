"""Running requests: wait for the turn, start the reply, stream it, end it;
and the sweeper that ends what a dead process left behind.

A request runs as its own task in whichever process received it, never inside
a consumer's ``receive``: it outlives the asker's sockets. Every
``assistant.start`` gets exactly one ``assistant.end``: the terminal state is
written once (``reply_finish`` refuses a second), and only the writer
announces it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from django.conf import settings

from .. import events
from ..db import DatabaseUnavailable, db_health, db_run
from ..models import Message
from ..tasks import tasks
from . import services
from .prompt import request_prepare
from .provider import provider_get
from .stream import INTERNAL_ERROR, UNAVAILABLE_ERROR, Stream, announce, pump, running

logger = logging.getLogger(__name__)

QUEUE_POLL_SECONDS = 0.5
# While the database is away a reply keeps streaming and retries its saves this often.
DB_RETRY_SECONDS = 1.0

# Wakes this process's waiting requests when one of its replies ends (a room's
# turn, or a site-wide slot, may be free).
_wakeup: asyncio.Event | None = None


def _reset() -> None:
    global _wakeup
    _wakeup = None


tasks.on_new_loop(_reset)


def _wakeup_event() -> asyncio.Event:
    global _wakeup
    tasks.bind()
    if _wakeup is None:
        _wakeup = asyncio.Event()
    return _wakeup


def request_run(room_id: int, request_id: int) -> None:
    """Run a saved request in this process; returns at once."""
    sweeper_ensure()
    tasks.spawn(_request_worker(room_id, request_id), name=f"request-{request_id}")


def sweeper_ensure() -> None:
    tasks.ensure("assistant-sweeper", _sweep_loop)


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
        await announce(
            reply.room_id,
            events.envelope(events.assistant_end_frame(reply), events.ASSISTANT_END, reply_id=reply.pk),
            private_to=reply.visible_to_id,
        )
    for request in orphans:
        logger.info("adopting waiting request %s", request.pk)
        tasks.spawn(_request_worker(request.room_id, request.pk), name=f"request-{request.pk}")


async def _request_worker(room_id: int, request_id: int) -> None:
    announced = 0
    while True:
        wakeup = _wakeup_event()
        try:
            reply = await db_run(services.request_claim_turn, request_id)
            if reply is not None:
                break
            position = await db_run(services.request_queue_position, request_id)
        except DatabaseUnavailable:
            # The request is saved as pending: wait for the database (or, if this
            # process dies meanwhile, another one adopts it).
            await asyncio.sleep(DB_RETRY_SECONDS)
            continue
        if position == 0:
            return  # started or refused elsewhere
        if position != announced:
            announced = position
            frame, private_to = await _queued_frame(request_id, position)
            await announce(room_id, events.envelope(frame, events.ASSISTANT_QUEUED), private_to=private_to)
        wakeup.clear()
        try:
            await asyncio.wait_for(wakeup.wait(), QUEUE_POLL_SECONDS)
        except TimeoutError:
            pass
    try:
        await _reply_run(reply)
    finally:
        _wakeup_event().set()


async def _queued_frame(request_id: int, position: int) -> tuple[str, int | None]:
    """The queued notice, and whose sockets alone may see it (a catch-up's asker)."""
    request = await db_run(services.request_summary, request_id)
    private_to = request["private_to"]
    frame = events.assistant_queued_frame(
        request["in_reply_to"], position, assistant=request["assistant"], private=private_to is not None
    )
    return frame, private_to


async def _reply_run(reply: Message) -> None:
    room_id = reply.room_id
    private_to = reply.visible_to_id
    queue: asyncio.Queue[object] = asyncio.Queue()
    running[reply.pk] = queue
    pumping: asyncio.Task[None] | None = None
    stream = Stream(reply.pk, room_id, private_to)
    try:
        await announce(
            room_id,
            events.envelope(events.assistant_start_frame(reply), events.ASSISTANT_START, reply_id=reply.pk),
            private_to=private_to,
        )
        if reply.versions:
            # A regenerated reply: the other versions now list this one too.
            for other in await db_run(services.versions_of, reply.pk):
                await announce(
                    room_id, events.envelope(events.message_update_frame(other), events.MESSAGE_UPDATE, id=other.pk)
                )
        refused = await db_run(services.request_budget_refusal, reply.pk)
        if refused is not None:
            outcome = stream.outcome(Message.Status.ERROR, error_code="budget_exceeded", error=refused)
        else:
            request, context_ids = await db_run(request_prepare, reply.pk)
            await db_run(services.reply_set_context, reply.pk, context_ids)
            stream.model = request.model
            pumping = asyncio.ensure_future(pump(provider_get(request.endpoint).stream(request), queue))
            outcome = await stream.run(queue)
    except asyncio.CancelledError:
        # The process is shutting down: leave a terminal state, not a hanging row.
        outcome = stream.outcome(
            Message.Status.INTERRUPTED, error_code="interrupted", error="The server stopped before the reply finished."
        )
        await asyncio.shield(_reply_end(reply.pk, room_id, outcome, private_to=private_to, retry=False))
        raise
    except DatabaseUnavailable:
        outcome = stream.outcome(Message.Status.ERROR, error_code="unavailable", error=UNAVAILABLE_ERROR)
    except Exception:
        logger.exception("reply %s failed", reply.pk)
        outcome = stream.outcome(Message.Status.ERROR, error_code="internal", error=INTERNAL_ERROR)
    finally:
        running.pop(reply.pk, None)
        if pumping is not None and not pumping.done():
            pumping.cancel()
            # Let the provider close its upstream stream before we go on.
            await asyncio.gather(pumping, return_exceptions=True)
    await _reply_end(reply.pk, room_id, outcome, private_to=private_to)


async def _reply_end(
    reply_id: int,
    room_id: int,
    outcome: services.ReplyOutcome,
    *,
    private_to: int | None = None,
    retry: bool = True,
) -> None:
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
        return  # already ended (swept, or stopped where no process ran it): announced then
    await announce(
        room_id,
        events.envelope(events.assistant_end_frame(final), events.ASSISTANT_END, reply_id=reply_id),
        private_to=private_to,
    )
