"""The API's admin: tokens (listed, revoked; never shown), bot flags, webhooks
and every delivery attempt. Imported at the end of ``rooms.admin``."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html_join

from . import webhooks
from .models import ApiToken, UserProfile, Webhook, WebhookDelivery


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are made by their owner (the API tokens page) or by
    ``manage.py createapitoken``: only their hash is stored, so there is
    nothing to show here but which token it is."""

    list_display = ["prefix_shown", "name", "user", "created", "last_used", "revoked"]
    list_filter = [("revoked", admin.EmptyFieldListFilter)]
    search_fields = ["name", "user__username", "key_id"]
    readonly_fields = ["prefix_shown", "user", "name", "created", "last_used", "revoked"]
    fields = readonly_fields
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="token")
    def prefix_shown(self, obj: ApiToken) -> str:
        return f"{obj.prefix}…"

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        count = 0
        for token in queryset.filter(revoked__isnull=True):
            token.revoked = timezone.now()
            token.save(update_fields=["revoked"])  # its open event streams end (rooms.api.signals)
            count += 1
        self.message_user(request, f"Revoked {count} token(s).")


@admin.register(UserProfile)
class UserProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "is_bot", "description"]
    list_filter = ["is_bot"]
    search_fields = ["user__username", "description"]
    autocomplete_fields = ["user"]


class DeliveryInline(admin.TabularInline):
    model = WebhookDelivery
    extra = 0
    max_num = 0
    can_delete = False
    fields = ["delivery_id", "event", "status", "attempts", "last_status", "last_error", "next_attempt", "created"]
    readonly_fields = fields
    ordering = ["-id"]
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookDelivery]:
        return super().get_queryset(request).order_by("-id")


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    list_display = ["room", "event", "bot", "url", "active", "created"]
    list_filter = ["active", "event", "room"]
    search_fields = ["url", "room__slug", "room__name"]
    autocomplete_fields = ["room", "bot"]
    readonly_fields = ["created"]
    fields = ["room", "url", "secret", "event", "bot", "active", "created"]
    inlines = [DeliveryInline]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ["delivery_id", "webhook", "event", "status", "attempts", "last_status", "next_attempt", "created"]
    list_filter = ["status", "event", "webhook__room"]
    search_fields = ["delivery_id", "webhook__url"]
    list_select_related = ["webhook__room"]
    readonly_fields = [
        "delivery_id",
        "webhook",
        "message",
        "event",
        "status",
        "attempts",
        "next_attempt",
        "last_status",
        "last_error",
        "attempts_shown",
        "created",
        "delivered",
        "body",
    ]
    fields = readonly_fields
    actions = ["retry_now"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="every attempt")
    def attempts_shown(self, obj: WebhookDelivery) -> str:
        rows = [
            (entry.get("at", ""), entry.get("status") or "-", entry.get("error") or "ok", entry.get("ms", ""))
            for entry in obj.log
        ]
        return format_html_join("\n", "<div>{}: HTTP {} — {} ({} ms)</div>", rows) or "none yet"

    @admin.action(description="Deliver the selected again now")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        count = webhooks.delivery_retry_now(list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{count} deliveries are due again.", messages.INFO)
