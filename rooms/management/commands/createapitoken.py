from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from rooms.api.models import ApiToken, UserProfile


class Command(BaseCommand):
    help = (
        "Make an API token for a user and print it (once: only its hash is stored). "
        "With --bot the user is marked a bot (created if missing, without a password)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="What the token is for (shown in lists)")
        parser.add_argument("--bot", action="store_true", help="Mark the user a bot account (BOT badge; may stream)")

    def handle(self, *args: Any, username: str, name: str, bot: bool, **options: Any) -> None:
        User = get_user_model()
        with transaction.atomic():
            user = User.objects.filter(username=username).first()
            if user is None:
                if not bot:
                    raise CommandError(f"no user named {username!r} (use --bot to create a bot account)")
                user = User.objects.create_user(username=username, password=None)
            if bot:
                UserProfile.objects.update_or_create(user=user, defaults={"is_bot": True})
            _, token = ApiToken.issue(user, name)
        self.stdout.write(token)
