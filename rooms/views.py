from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from . import selectors, services
from .forms import RoomCreateForm, SignupForm
from .kv import kv_client

logger = logging.getLogger(__name__)


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("room_list")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user)
        return redirect("room_list")
    return render(request, "registration/signup.html", {"form": form})


@login_required
@require_http_methods(["GET", "POST"])
def room_list(request: HttpRequest) -> HttpResponse:
    form = RoomCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        room = services.room_create(
            slug=form.cleaned_data["slug"],
            name=form.cleaned_data["name"],
            is_private=form.cleaned_data["is_private"],
            created_by=request.user,
        )
        return redirect("room_detail", slug=room.slug)
    rooms = selectors.room_list_for_user(request.user)
    return render(request, "rooms/room_list.html", {"rooms": rooms, "form": form})


@login_required
@require_GET
def room_detail(request: HttpRequest, slug: str) -> HttpResponse:
    # A private room the user may not see answers exactly like a missing one.
    room = selectors.room_get_visible(slug, request.user)
    if room is None:
        raise Http404("No such room")
    config = {
        "slug": room.slug,
        "name": room.name,
        "username": request.user.get_username(),
        "assistant": room.assistant_name if room.assistant_enabled else None,
        "maxChars": settings.CHAT_MAX_MESSAGE_CHARS,
    }
    return render(request, "rooms/room_detail.html", {"room": room, "config": config})


@never_cache
async def healthz(request: HttpRequest) -> JsonResponse:
    """Readiness: the database answers and so does the channel layer's Redis."""
    checks: dict[str, str] = {}
    try:
        await sync_to_async(_database_ping)()
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        logger.warning("health: database %s", type(exc).__name__)
        checks["database"] = "error"
    client = kv_client()
    if client is None:
        checks["channel_layer"] = "ok (in-memory)"
    else:
        try:
            await asyncio.wait_for(client.ping(), 2.0)
            checks["channel_layer"] = "ok"
        except Exception as exc:  # noqa: BLE001
            logger.warning("health: redis %s", type(exc).__name__)
            checks["channel_layer"] = "error"
    healthy = all(v.startswith("ok") for v in checks.values())
    return JsonResponse(checks, status=200 if healthy else 503)


def _database_ping() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
