"""URLs of the API (``/api/v1/``) and of the API tokens page; included at the
site's root by ``chatsite.urls``. Paths, names and status codes are a public
contract: docs/api.md and ``/api/v1/schema.json`` (``schema.py``) list them."""

from django.urls import path, re_path

from . import views

app_name = "api"

urlpatterns = [
    path("api/v1/me", views.me_view, name="me"),
    path("api/v1/rooms/", views.rooms_view, name="rooms"),
    path("api/v1/rooms/<slug:slug>/messages", views.messages_view, name="messages"),
    path("api/v1/rooms/<slug:slug>/events", views.events_view, name="events"),
    path("api/v1/rooms/<slug:slug>/replies", views.reply_start_view, name="reply_start"),
    path("api/v1/rooms/<slug:slug>/replies/<int:reply_id>/cancel", views.reply_stop_view, name="reply_cancel"),
    path("api/v1/replies/<int:reply_id>/deltas", views.reply_delta_view, name="reply_deltas"),
    path("api/v1/replies/<int:reply_id>/end", views.reply_end_view, name="reply_end"),
    path("api/v1/schema.json", views.schema_view, name="schema"),
    re_path(r"^api/", views.unknown_view, name="unknown"),
    path("account/api-tokens/", views.api_tokens, name="tokens"),
]
