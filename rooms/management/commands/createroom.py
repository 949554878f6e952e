from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from rooms import services
from rooms.models import Room


class Command(BaseCommand):
    help = "Create a chat room (or add members to an existing one)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", help="Display name (default: the slug)")
        parser.add_argument("--private", action="store_true", help="Only members may open it")
        parser.add_argument("--member", action="append", default=[], metavar="USERNAME", help="Repeatable")

    def handle(self, *args: Any, slug: str, name: str | None, private: bool, member: list[str], **options: Any) -> None:
        User = get_user_model()
        users = []
        for username in member:
            try:
                users.append(User.objects.get(username=username))
            except User.DoesNotExist as exc:
                raise CommandError(f"no user named {username!r}") from exc
        room = Room.objects.filter(slug=slug).first()
        if room is None:
            room = services.room_create(slug=slug, name=name or slug, is_private=private, members=users)
            self.stdout.write(f"created room {room.slug}")
        else:
            for user in users:
                services.membership_add(room, user)
            self.stdout.write(f"room {room.slug} exists; members ensured")
