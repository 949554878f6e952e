from django.contrib import admin

from .models import Membership, Message, Room


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    readonly_fields = ["joined"]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "is_private", "assistant_enabled", "assistant_name", "created"]
    list_filter = ["is_private", "assistant_enabled"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["created", "last_seq"]
    inlines = [MembershipInline]
    fieldsets = [
        (None, {"fields": ["name", "slug", "is_private", "created_by", "created", "last_seq"]}),
        (
            "Assistant",
            {
                "fields": [
                    "assistant_enabled",
                    "assistant_name",
                    "assistant_model",
                    "assistant_system_prompt",
                    "assistant_temperature",
                    "assistant_max_tokens",
                ]
            },
        ),
    ]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["room", "user", "joined"]
    list_filter = ["room"]
    search_fields = ["room__name", "room__slug", "user__username"]
    autocomplete_fields = ["room", "user"]
    readonly_fields = ["joined"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["room", "seq", "author_name", "role", "status", "short_text", "created"]
    list_filter = ["role", "status", "room"]
    search_fields = ["text", "author_name", "room__slug"]
    date_hierarchy = "created"
    list_select_related = ["room"]
    readonly_fields = [
        "room",
        "seq",
        "author",
        "author_name",
        "role",
        "client_id",
        "created",
        "html",
        "reply_state",
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

    @admin.display(description="text")
    def short_text(self, obj: Message) -> str:
        return obj.text[:80]
