"""Closing sockets that lost their right to be open: a logout, or removal from
a private room. Sent over the channel layer so it reaches every process."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .models import Membership
from .realtime import group_send_safe, user_group


@receiver(user_logged_out)
def sockets_close_on_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is None or request is None:
        return
    # Still the ending session: Django flushes it after this signal.
    session_key = getattr(request.session, "session_key", None)
    async_to_sync(group_send_safe)(user_group(user.pk), {"type": "user.logout", "session_key": session_key})


@receiver(post_delete, sender=Membership)
def sockets_close_on_removal(sender: Any, instance: Membership, **kwargs: Any) -> None:
    async_to_sync(group_send_safe)(user_group(instance.user_id), {"type": "user.removed", "room_id": instance.room_id})
