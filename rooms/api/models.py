"""The API's tables (app label ``rooms``; imported at the end of ``rooms.models``).

- ``UserProfile``: ``is_bot`` for accounts that are programs (a "BOT" badge).
- ``ApiToken``: a bearer token; only its SHA-256 is stored, the token itself is
  shown once when it is made.
- ``BotReply``: a bot's streaming reply, beside its ``Message`` row: the last
  delta number the bot posted and the text accepted but not yet broadcast
  (deltas are coalesced for the room like the assistant's).
- ``Webhook`` and ``WebhookDelivery``: outgoing webhooks of a room, and each
  event to deliver with its attempts (at least once: pending rows survive a
  restart).

``Message.author_bot`` (added below) marks rows written by a bot account, so
the message object can say ``"bot": true`` without a query per message.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from ..models import Message

__all__ = ["ApiToken", "BotReply", "UserProfile", "Webhook", "WebhookDelivery"]

TOKEN_PREFIX = "chs_"


class UserProfile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_profile")
    is_bot = models.BooleanField(
        default=False, help_text="A program, not a person: its messages and replies carry a BOT badge."
    )
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        app_label = "rooms"

    def __str__(self) -> str:
        return f"{self.user} ({'bot' if self.is_bot else 'person'})"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class ApiToken(models.Model):
    """``chs_<key_id>_<secret>``: ``key_id`` finds the row, the SHA-256 of the
    whole token is compared in constant time."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    key_id = models.CharField(max_length=16, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    created = models.DateTimeField(default=timezone.now, editable=False)
    last_used = models.DateTimeField(null=True, blank=True, editable=False)
    revoked = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        app_label = "rooms"
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'unnamed'}) of {self.user}"

    @property
    def prefix(self) -> str:
        """What identifies the token in lists (not a secret)."""
        return f"{TOKEN_PREFIX}{self.key_id}"

    @classmethod
    def issue(cls, user: object, name: str = "") -> tuple[ApiToken, str]:
        """A new token of ``user``: the row, and the token (shown once, never stored)."""
        while True:
            key_id = secrets.token_hex(6)
            if not cls.objects.filter(key_id=key_id).exists():
                break
        token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        row = cls.objects.create(user=user, name=name[:100], key_id=key_id, digest=token_digest(token))
        return row, token

    def matches(self, token: str) -> bool:
        return hmac.compare_digest(self.digest, token_digest(token))


class BotReply(models.Model):
    reply = models.OneToOneField(Message, on_delete=models.CASCADE, primary_key=True, related_name="bot_stream")
    # The last delta number the bot posted and we accepted (its own count, from 1).
    bot_seq = models.PositiveIntegerField(default=0)
    # Accepted from the bot, not yet folded into the row's text nor broadcast.
    pending = models.TextField(blank=True)
    last_flush = models.DateTimeField(default=timezone.now)

    class Meta:
        app_label = "rooms"

    def __str__(self) -> str:
        return f"bot reply {self.reply_id}"


def webhook_secret_new() -> str:
    return secrets.token_urlsafe(32)


class Webhook(models.Model):
    class Event(models.TextChoices):
        MESSAGE = "message", "every new message"
        MENTION = "mention", "messages that mention the bot user"

    room = models.ForeignKey("rooms.Room", on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500, help_text="http(s); private and loopback addresses are refused.")
    secret = models.CharField(
        max_length=128, default=webhook_secret_new, help_text="Signs each delivery (HMAC-SHA256 of the body)."
    )
    event = models.CharField(max_length=16, choices=Event.choices, default=Event.MESSAGE)
    bot = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="For mention webhooks: the user whose @mentions trigger it.",
    )
    active = models.BooleanField(default=True)
    created = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        app_label = "rooms"

    def __str__(self) -> str:
        what = f"mentions of {self.bot}" if self.event == self.Event.MENTION else "messages"
        return f"{self.room}: {what} -> {self.url}"


class WebhookDelivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    delivery_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    message = models.ForeignKey(Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    event = models.CharField(max_length=16)
    # The exact body posted (and signed) on every attempt.
    body = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt = models.DateTimeField(default=timezone.now)
    # A process sending it holds it until then; after that another may retry.
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveIntegerField(null=True, blank=True, help_text="HTTP status of the last attempt.")
    last_error = models.CharField(max_length=300, blank=True)
    # Every attempt: {"at", "status", "error", "ms"} (the latest 20).
    log = models.JSONField(default=list, blank=True)
    created = models.DateTimeField(default=timezone.now, editable=False)
    delivered = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "rooms"
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["webhook", "message", "event"],
                condition=models.Q(message__isnull=False),
                name="webhookdelivery_once",
            )
        ]
        indexes = [
            models.Index(fields=["next_attempt"], name="webhookdelivery_due", condition=models.Q(status="pending")),
        ]

    def __str__(self) -> str:
        return f"{self.delivery_id} ({self.status})"


# Whether a bot account wrote the row (set when it is created: rooms.api.signals).
Message.add_to_class(
    "author_bot", models.BooleanField(default=False, editable=False, help_text="Written by a bot account.")
)
