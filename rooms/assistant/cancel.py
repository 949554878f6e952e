"""Stop: from any tab, on any process, for whichever process runs the reply.

The process that runs a reply holds its stream's queue (``stream.running``);
a Stop on another process travels over the channel layer's control group,
which every process listens to. A reply no process runs (a bot's reply,
streamed through the API) is ended ``cancelled`` right in the database, and
its writer learns it at its next write.
"""

from __future__ import annotations

import logging

from .. import events, selectors
from ..db import db_run
from ..models import Message, Room
from ..realtime import group_send_safe, hub
from ..services import ServiceError
from ..tasks import tasks
from . import services
from .stream import CancelRequest, announce, running

logger = logging.getLogger(__name__)

CONTROL_GROUP = "assistant.control"


def _may_stop(room: Room, user: object, reply: Message) -> bool:
    if room.assistant_stop == Room.Stop.ANYONE and reply.visible_to_id is None:
        return True
    if reply.asked_by_id == user.pk or reply.visible_to_id == user.pk:  # type: ignore[attr-defined]
        return True
    return selectors.room_may_moderate(room, user)  # type: ignore[arg-type]


async def reply_cancel(room: Room, user: object, reply_id: int) -> bool:
    """Stop a streaming reply. False if no such reply streams in this room;
    ``ServiceError(forbidden)`` if the room's stop policy does not let ``user``."""
    reply = await db_run(selectors.reply_get, room, user, reply_id)
    if reply is None or reply.status != Message.Status.STREAMING:
        return False
    fresh = await db_run(selectors.room_get_fresh, room.pk)
    if fresh is None or not await db_run(_may_stop, fresh, user, reply):
        raise ServiceError(events.FORBIDDEN, "only who asked, or a room moderator, may stop this reply")
    username = user.get_username()  # type: ignore[attr-defined]
    queue = running.get(reply_id)
    if queue is not None:
        queue.put_nowait(CancelRequest(by=username))
        return True
    if reply.assistant_id is None:
        # Not the room's assistant (a bot streaming through the API): no process
        # runs it, so it ends here; the bot's next delta is refused.
        final = await db_run(services.reply_cancel_mark, reply_id, username)
        if final is not None:
            await announce(
                room.pk, events.envelope(events.assistant_end_frame(final), events.ASSISTANT_END, reply_id=reply_id)
            )
        return True
    # Running in another process: every process listens on the control group.
    return await group_send_safe(CONTROL_GROUP, {"type": events.REPLY_CANCEL, "reply_id": reply_id, "by": username})


class _CancelListener:
    """Stops from other processes, delivered by this process's GroupHub (which
    keeps the group membership alive across group_expiry and Redis restarts)."""

    async def group_deliver(self, message: dict[str, object]) -> None:
        if message.get("type") == events.REPLY_CANCEL:
            queue = running.get(message.get("reply_id"))  # type: ignore[arg-type]
            if queue is not None:
                queue.put_nowait(CancelRequest(by=str(message.get("by", ""))))


_cancel_listener = _CancelListener()


def listener_ensure() -> None:
    if not hub.joined(CONTROL_GROUP, _cancel_listener):
        tasks.ensure("assistant-control", _control_join)


async def _control_join() -> None:
    try:
        await hub.join(CONTROL_GROUP, _cancel_listener)
    except Exception as exc:  # noqa: BLE001 - retried on the next listener_ensure()
        logger.warning("assistant cancel listener not subscribed (%s)", type(exc).__name__)
