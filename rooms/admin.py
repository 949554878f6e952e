from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import Assistant, Membership, Message, Room, RoomRead


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    readonly_fields = ["joined"]
    fields = ["user", "role", "joined"]


class AssistantInline(admin.StackedInline):
    model = Assistant
    extra = 0
    fields = [
        ("name", "enabled", "position"),
        ("model", "base_url", "key_env"),
        "system_prompt",
        ("temperature", "max_tokens", "context_chars"),
    ]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "is_private", "assistant_names", "created"]
    list_filter = ["is_private"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["created", "last_seq"]
    inlines = [AssistantInline, MembershipInline]
    fieldsets = [
        (None, {"fields": ["name", "slug", "is_private", "created_by", "created", "last_seq"]}),
        ("Who may use the assistants", {"fields": ["assistant_invoke", "assistant_stop"]}),
        (
            "Budgets of the room (blank: the ASSISTANT_BUDGET_ROOM_* settings)",
            {
                "fields": [
                    ("budget_daily_tokens", "budget_monthly_tokens"),
                    ("budget_daily_cost", "budget_monthly_cost"),
                ]
            },
        ),
    ]

    @admin.display(description="assistants")
    def assistant_names(self, obj: Room) -> str:
        return ", ".join(f"@{a.name}" + ("" if a.enabled else " (off)") for a in obj.assistants.all()) or "-"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Room]:
        return super().get_queryset(request).prefetch_related("assistants")


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["room", "user", "role", "joined"]
    list_filter = ["room", "role"]
    search_fields = ["room__name", "room__slug", "user__username"]
    autocomplete_fields = ["room", "user"]
    readonly_fields = ["joined"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """Messages are written by people and the assistant, never added here; an
    edit of the text and a delete go through the same service as a socket's, so
    every open tab is told (message.update)."""

    list_display = ["room", "seq", "author_name", "role", "status", "short_text", "edited", "deleted", "created"]
    list_filter = [
        "room",
        ("author", admin.RelatedOnlyFieldListFilter),
        "role",
        "status",
        "deleted",
    ]
    search_fields = ["text", "author_name", "room__slug"]
    date_hierarchy = "created"
    list_select_related = ["room"]
    actions = ["delete_for_everyone"]
    readonly_fields = [
        "room",
        "seq",
        "author",
        "author_name",
        "role",
        "client_id",
        "created",
        "edited",
        "deleted",
        "html",
        "reply_to",
        "mentions",
        "assistant",
        "asked_by",
        "cost",
        "versions",
        "visible_to",
        "heartbeat",
        "in_reply_to",
        "stream_seq",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "first_token_ms",
        "total_ms",
        "finish_reason",
        "error_code",
        "error",
        "cancelled_by",
        "finished",
        "context_ids",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        # Rows are never removed (a hole in a room's seq); see delete_for_everyone.
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Message | None = None) -> list[str]:
        fields = list(self.readonly_fields)
        if obj is not None and (obj.role != Message.Role.USER or obj.deleted):
            fields.append("text")
        return fields

    def get_fields(self, request: HttpRequest, obj: Message | None = None) -> list[str]:
        return ["text", *[f for f in self.readonly_fields if f != "text"]]

    def save_model(self, request: HttpRequest, obj: Message, form: Any, change: bool) -> None:
        if not change or "text" not in form.changed_data:
            return
        edited = services.message_edit(room=obj.room, user=request.user, message_id=obj.pk, text=obj.text, admin=True)
        services.message_change_announce(edited)

    @admin.action(description="Delete the selected messages for everyone")
    def delete_for_everyone(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        count = 0
        for message in queryset.select_related("room"):
            if message.deleted:
                continue
            try:
                deleted = services.message_delete(
                    room=message.room, user=request.user, message_id=message.pk, admin=True
                )
            except services.ServiceError as exc:
                self.message_user(request, f"#{message.seq} in {message.room}: {exc.detail}", messages.WARNING)
                continue
            services.message_change_announce(deleted)
            count += 1
        self.message_user(request, f"Deleted {count} message(s) for everyone.")

    @admin.display(description="text")
    def short_text(self, obj: Message) -> str:
        return "(deleted)" if obj.deleted else obj.text[:80]


@admin.register(RoomRead)
class RoomReadAdmin(admin.ModelAdmin):
    list_display = ["room", "user", "last_read_seq", "updated"]
    list_filter = ["room"]
    search_fields = ["room__slug", "user__username"]
    readonly_fields = ["room", "user", "last_read_seq", "updated"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


# The assistant usage page registers itself with the admin.
from . import usage_admin  # noqa: E402, F401

# The API: tokens, bot flags, webhooks and their deliveries.
from .api import admin as api_admin  # noqa: E402, F401
