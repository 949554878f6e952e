"""Who may do what, checked against the database at the moment of acting.

A socket decides at connect whether its user may open the room, and is closed
when that changes (rooms.signals tells every process). Between the change and
the close there is a moment; so every write checks again inside its own
transaction, and every read a socket makes checks first (``access_check``).
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser

from .models import Membership, Room


class AccessLost(Exception):
    """The actor may no longer do this: ``what`` is "user" (deactivated or
    deleted), "room" (no longer a member of a private room) or "gone" (the
    room was deleted). Sockets close with 4401, 4403 or 4404."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def room_can_access(room: Room, user: AbstractBaseUser) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    if not room.is_private:
        return True
    return Membership.objects.filter(room=room, user=user).exists()


def access_check(room: Room, user: AbstractBaseUser) -> None:
    """Raise ``AccessLost`` unless ``user`` is active and may use ``room`` now
    (``room`` as freshly read; one query)."""
    users = get_user_model().objects.filter(pk=user.pk, is_active=True)
    if not room.is_private:
        if not users.exists():
            raise AccessLost("user")
        return
    if users.filter(memberships__room_id=room.pk).exists():
        return
    raise AccessLost("room" if users.exists() else "user")


def access_refusals(pairs: set[tuple[int, int]], private: set[int]) -> dict[tuple[int, int], str]:
    """``access_check`` for many (room id, user id) pairs at once, the rooms as
    freshly read (``private``: the ids of the private ones); two queries at
    most. Each refused pair maps to what was lost: "user" or "room"."""
    active = set(
        get_user_model().objects.filter(pk__in={user for _, user in pairs}, is_active=True).values_list("pk", flat=True)
    )
    asking = {(room, user) for room, user in pairs if room in private and user in active}
    members: set[tuple[int, int]] = set()
    if asking:
        members = set(
            Membership.objects.filter(
                room_id__in={room for room, _ in asking}, user_id__in={user for _, user in asking}
            ).values_list("room_id", "user_id")
        )
    refused = {pair: "user" for pair in pairs if pair[1] not in active}
    refused.update({pair: "room" for pair in asking if pair not in members})
    return refused


def access_check_fresh(room_id: int, user: AbstractBaseUser) -> Room:
    """The room as it is now, if ``user`` may still use it."""
    room = Room.objects.filter(pk=room_id).first()
    if room is None:
        raise AccessLost("gone")
    access_check(room, user)
    return room
