from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from rooms import services
from rooms.models import Room


class Command(BaseCommand):
    help = "Create or update one of a room's assistants (mentioned as @name)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="The room")
        parser.add_argument("name", help="Mentioned as @name")
        parser.add_argument("--model", help="The model (default: ASSISTANT_MODEL)")
        parser.add_argument("--base-url", help="An OpenAI-compatible API (default: OPENAI_BASE_URL)")
        parser.add_argument(
            "--key-env", help="The environment variable holding its API key, e.g. MISTRAL_API_KEY (never the key)"
        )
        parser.add_argument("--prompt", help="Its system prompt")
        parser.add_argument("--temperature", type=float)
        parser.add_argument("--max-tokens", type=int, help="Output-token limit")
        parser.add_argument("--context-chars", type=int, help="Context budget in characters")
        parser.add_argument("--position", type=int, help="Order in the room's list")
        parser.add_argument("--disable", action="store_true", help="Turn it off (kept, not mentioned)")

    def handle(self, *args: Any, slug: str, name: str, **options: Any) -> None:
        room = Room.objects.filter(slug=slug).first()
        if room is None:
            raise CommandError(f"no room {slug!r}")
        try:
            assistant, created = services.assistant_configure(
                room=room,
                name=name,
                enabled=not options["disable"],
                model=options["model"],
                base_url=options["base_url"],
                key_env=options["key_env"],
                system_prompt=options["prompt"],
                temperature=options["temperature"],
                max_tokens=options["max_tokens"],
                context_chars=options["context_chars"],
                position=options["position"],
            )
        except services.ServiceError as exc:
            raise CommandError(exc.detail) from exc
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        state = "" if assistant.enabled else " (disabled)"
        self.stdout.write(f"{'created' if created else 'updated'} @{assistant.name} in {room.slug}{state}")
