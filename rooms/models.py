from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone


class Room(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    is_private = models.BooleanField(default=False, help_text="Only members may open a private room.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now, editable=False)
    # The seq of the room's newest message. Bumped under a row lock, so seq has no holes.
    last_seq = models.PositiveBigIntegerField(default=0, editable=False)

    # Who may ask this room's assistants, and who may stop a reply.
    class Invoke(models.TextChoices):
        EVERYONE = "everyone", "everyone who can open the room"
        MEMBERS = "members", "members of the room"
        MODERATORS = "moderators", "room moderators"

    class Stop(models.TextChoices):
        ANYONE = "anyone", "anyone in the room"
        ASKER = "asker", "the asker and room moderators"

    assistant_invoke = models.CharField(max_length=16, choices=Invoke.choices, default=Invoke.EVERYONE)
    assistant_stop = models.CharField(max_length=16, choices=Stop.choices, default=Stop.ANYONE)
    # Budgets of the whole room (blank: the ASSISTANT_BUDGET_ROOM_* settings).
    budget_daily_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    budget_monthly_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    budget_daily_cost = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    budget_monthly_cost = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)

    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="rooms")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        # last_seq belongs to message_create's row lock; saving a stale copy of
        # the room (the admin, a form) must never move it back.
        if self.pk is not None and kwargs.get("update_fields") is None and not kwargs.get("force_insert"):
            kwargs["update_fields"] = [
                f.name for f in self._meta.concrete_fields if not f.primary_key and f.name != "last_seq"
            ]
        super().save(*args, **kwargs)


class Membership(models.Model):
    class Role(models.TextChoices):
        MEMBER = "member"
        MODERATOR = "moderator"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    joined = models.DateTimeField(default=timezone.now, editable=False)
    role = models.CharField(
        max_length=16,
        choices=Role.choices,
        default=Role.MEMBER,
        help_text="Moderators may edit and delete anyone's messages in the room.",
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.room}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        COMPLETE = "complete"
        STREAMING = "streaming"
        CANCELLED = "cancelled"
        ERROR = "error"
        INTERRUPTED = "interrupted"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    # NULL only for a private reply (a catch-up), which is not part of the room's log.
    seq = models.PositiveBigIntegerField(null=True, blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept so history still reads right after a user is deleted or an assistant renamed.
    author_name = models.CharField(max_length=150)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.USER)
    text = models.TextField(blank=True)
    html = models.TextField(blank=True)
    # NULL, not "": the unique (room, author, client_id) constraint must ignore messages without one.
    client_id = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    created = models.DateTimeField(default=timezone.now, editable=False)

    # The streaming worker checks in here; a stale beat means its process died.
    heartbeat = models.DateTimeField(null=True, blank=True, editable=False)

    # Assistant replies only.
    in_reply_to = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    stream_seq = models.PositiveIntegerField(default=0, help_text="Seq of the last delta folded into text.")
    model = models.CharField(max_length=100, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    total_ms = models.PositiveIntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    error_code = models.CharField(max_length=32, blank=True)
    error = models.CharField(max_length=300, blank=True)
    cancelled_by = models.CharField(max_length=150, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    context_ids = models.JSONField(default=list, blank=True, help_text="Messages the model was shown.")
    assistant = models.ForeignKey("Assistant", null=True, blank=True, on_delete=models.SET_NULL, related_name="replies")
    # Who asked (the usage and budgets are theirs), what it cost (ASSISTANT_PRICES).
    asked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cost = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    # The other versions of this reply (regenerated), oldest first.
    versions = models.JSONField(default=list, blank=True, editable=False)
    # A private reply (a catch-up) is shown to this user only.
    visible_to = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )

    # Edits and deletes. A deleted message keeps its row (id, seq) with empty text.
    edited = models.DateTimeField(null=True, blank=True, editable=False)
    deleted = models.BooleanField(default=False, editable=False)
    # The room's last seq when this row last changed after its creation (an edit,
    # a delete): a tab resuming after message N gets the rows changed since N
    # was the newest, whatever their own seq. Taken under the room lock.
    change_mark = models.PositiveBigIntegerField(default=0, editable=False)
    # The message this one quotes ("reply to"); for assistant replies see in_reply_to.
    reply_to = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Usernames mentioned with @name (existing users at the time of writing).
    mentions = models.JSONField(default=list, blank=True, editable=False)

    class Meta:
        ordering = ["seq"]
        constraints = [
            models.UniqueConstraint(fields=["room", "seq"], name="message_room_seq"),
            models.UniqueConstraint(
                fields=["room", "author", "client_id"],
                condition=models.Q(client_id__isnull=False),
                name="message_client_id",
            ),
        ]
        indexes = [
            models.Index(fields=["room", "id"], name="message_room_id"),
            models.Index(fields=["room", "change_mark"], name="message_room_change"),
            models.Index(fields=["status"], name="message_status", condition=models.Q(status="streaming")),
            models.Index(fields=["asked_by", "finished"], name="message_usage_user"),
            models.Index(fields=["room", "finished"], name="message_usage_room"),
        ]

    def __str__(self) -> str:
        return f"{self.room.slug}#{self.seq} {self.author_name}"


class Assistant(models.Model):
    """One of a room's assistants, mentioned as @name. Its key is never stored:
    ``key_env`` names the environment variable that holds it."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="assistants")
    name = models.CharField(max_length=32, help_text="Mentioned as @name (one word, case-insensitive).")
    enabled = models.BooleanField(default=True)
    position = models.PositiveSmallIntegerField(default=0, help_text="Order in the room's list.")
    model = models.CharField(max_length=100, blank=True, help_text="Blank: the ASSISTANT_MODEL setting.")
    base_url = models.CharField(
        max_length=200, blank=True, help_text="An OpenAI-compatible API. Blank: the OPENAI_BASE_URL setting."
    )
    key_env = models.CharField(
        max_length=64,
        blank=True,
        help_text="The environment variable holding its API key (a name ending in _API_KEY). Blank: OPENAI_API_KEY.",
    )
    system_prompt = models.TextField(blank=True, help_text="Blank: the built-in prompt.")
    temperature = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)])
    max_tokens = models.PositiveIntegerField(null=True, blank=True, help_text="Output-token limit.")
    context_chars = models.PositiveIntegerField(
        null=True, blank=True, help_text="Context budget in characters. Blank: ASSISTANT_CONTEXT_CHARS."
    )

    class Meta:
        ordering = ["position", "id"]
        constraints = [models.UniqueConstraint(Lower("name"), "room", name="assistant_name_unique")]

    def __str__(self) -> str:
        return f"@{self.name} in {self.room}"


class AssistantRequest(models.Model):
    """A question waiting for (or given) an assistant's reply: one per assistant
    a message mentions, one per regenerate, one per catch-up. The queue of a
    room (and of the site) is its pending requests, oldest first."""

    class Kind(models.TextChoices):
        ANSWER = "answer"
        REGENERATE = "regenerate"
        CATCHUP = "catchup"

    class State(models.TextChoices):
        PENDING = "pending"
        STARTED = "started"
        REFUSED = "refused"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="assistant_requests")
    assistant = models.ForeignKey(Assistant, null=True, on_delete=models.SET_NULL, related_name="requests")
    # The question (none for a catch-up).
    message = models.ForeignKey(Message, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    requester = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.ANSWER)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    created = models.DateTimeField(default=timezone.now)
    # A waiting worker checks in here; a stale beat means its process died.
    heartbeat = models.DateTimeField(null=True, blank=True)
    reply = models.ForeignKey(Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    regenerates = models.ForeignKey(Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # A catch-up summarises from here (the asker's last read seq).
    since_seq = models.PositiveBigIntegerField(default=0)

    class Meta:
        indexes = [
            models.Index(fields=["room", "id"], name="request_pending", condition=models.Q(state="pending")),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.state})"


class AssistantUsage(Message):
    """The admin's view of what the assistants cost (no table of its own)."""

    class Meta:
        proxy = True
        verbose_name = "assistant usage"
        verbose_name_plural = "assistant usage"


class RoomRead(models.Model):
    """How far a user has read a room (any of their tabs, any device)."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="reads")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="room_reads")
    last_read_seq = models.PositiveBigIntegerField(default=0)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "user"], name="roomread_unique")]

    def __str__(self) -> str:
        return f"{self.user} read {self.room} to {self.last_read_seq}"


# The API's tables (tokens, bot profiles, webhooks); they also add Message.author_bot.
from .api.models import *  # noqa: E402, F403
