"""Closing sockets that lost their right to be open, on every process.

What can take access away, and what the open sockets are told (over the
channel layer, after the change commits, so each process's sockets re-check
against the database and find it changed):

- a logout, or a session deleted (the admin, ``clearsessions``): the sockets of
  that session close with 4401;
- a user deactivated, their password changed (other sessions' hashes no longer
  match), or the user deleted: every socket of the user re-checks its session
  and closes with 4401;
- removal from a room: that user's sockets in the room re-check (4403 if the
  room is private);
- a room made private: its sockets of non-members close with 4403;
- a room deleted: its sockets close with 4404.

Actions re-check access in their own transaction as well (``rooms.access``),
so nothing is done with access lost in the moment before the close.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.contrib.sessions.models import Session
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from . import events
from .models import Membership, Room
from .realtime import group_send_safe, room_group, user_group

logger = logging.getLogger(__name__)


def _tell(group: str, message: dict[str, Any]) -> None:
    """Send once the surrounding transaction (if any) has committed."""

    def send() -> None:
        try:
            async_to_sync(group_send_safe)(group, message)
        except Exception:
            logger.warning("could not tell %s about an access change", group, exc_info=True)

    transaction.on_commit(send)


@receiver(user_logged_out)
def sockets_close_on_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is None or request is None:
        return
    # Still the ending session: Django flushes it after this signal.
    session_key = getattr(request.session, "session_key", None)
    _tell(user_group(user.pk), {"type": events.USER_SESSION_END, "session_key": session_key})


@receiver(post_delete, sender=Session)
def sockets_close_on_session_delete(sender: Any, instance: Session, **kwargs: Any) -> None:
    try:
        user_id = instance.get_decoded().get("_auth_user_id")
    except Exception:  # noqa: BLE001 - an undecodable session had no sockets
        return
    if user_id is not None:
        _tell(user_group(int(user_id)), {"type": events.USER_SESSION_END, "session_key": instance.session_key})


_ACCESS_FIELDS = ("password", "is_active")


@receiver(pre_save, sender=settings.AUTH_USER_MODEL)
def _user_remember_access(sender: Any, instance: Any, **kwargs: Any) -> None:
    if instance.pk is None:
        return
    fields = kwargs.get("update_fields")
    if fields is not None and not set(fields) & set(_ACCESS_FIELDS):
        return  # e.g. the last_login update of every login
    before = sender.objects.filter(pk=instance.pk).values(*_ACCESS_FIELDS).first()
    instance._access_before = before


@receiver(post_save, sender=settings.AUTH_USER_MODEL)
def sockets_recheck_on_user_change(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    before = getattr(instance, "_access_before", None)
    if created or before is None:
        return
    instance._access_before = None
    if any(before[field] != getattr(instance, field) for field in _ACCESS_FIELDS):
        _tell(user_group(instance.pk), {"type": events.USER_ACCESS})


@receiver(post_delete, sender=get_user_model())
def sockets_close_on_user_delete(sender: Any, instance: Any, **kwargs: Any) -> None:
    _tell(user_group(instance.pk), {"type": events.USER_ACCESS})


@receiver(post_delete, sender=Membership)
def sockets_close_on_removal(sender: Any, instance: Membership, **kwargs: Any) -> None:
    _tell(user_group(instance.user_id), {"type": events.USER_REMOVED, "room_id": instance.room_id})


@receiver(post_save, sender=Room)
def sockets_close_on_room_private(sender: Any, instance: Room, created: bool, **kwargs: Any) -> None:
    if created or not instance.is_private:
        return
    room_id = instance.pk

    def send() -> None:
        # Read after commit: the members as they are now.
        members = list(Membership.objects.filter(room_id=room_id).values_list("user_id", flat=True))
        message = {"type": events.ROOM_ACCESS, "room_id": room_id, "private": True, "members": members}
        try:
            async_to_sync(group_send_safe)(room_group(room_id), message)
        except Exception:
            logger.warning("could not tell room %s about an access change", room_id, exc_info=True)

    transaction.on_commit(send)


@receiver(post_delete, sender=Room)
def sockets_close_on_room_delete(sender: Any, instance: Room, **kwargs: Any) -> None:
    _tell(room_group(instance.pk), {"type": events.ROOM_DELETED, "room_id": instance.pk})
