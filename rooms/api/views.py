"""The REST endpoints (``/api/v1/``), the event stream's entry, and the API
tokens page. docs/api.md and ``schema.py`` describe every one of them.

Each endpoint is an async view: authentication, then the same services a
socket calls (``rooms.services``, ``rooms.assistant``), with every ORM call
through ``db_run``. Errors are ``{"code", "detail"}`` (``http.api_endpoint``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from .. import events, selectors
from ..assistant import ask
from ..assistant.cancel import reply_cancel
from ..db import db_run
from ..models import Message, Room
from . import bots, schema, sse
from . import selectors as api_selectors
from .http import (
    CONFLICT,
    ApiError,
    Caller,
    endpoint,
    int_param,
    int_value,
    json_body,
    json_response,
    not_found,
    path_id,
    rate_limit,
    route,
)
from .models import ApiToken
from .models import UserProfile as UserProfile

# --- Shared -------------------------------------------------------------------------


async def room_visible(caller: Caller, slug: str) -> Room:
    """The room, if the caller may open it: a private room they may not see is
    answered exactly like a missing one."""
    room = await db_run(selectors.room_get_visible, slug, caller.user)
    if room is None:
        raise not_found()
    return room


def room_object(room: Room) -> dict[str, Any]:
    return {
        "slug": room.slug,
        "name": room.name,
        "private": room.is_private,
        "last_seq": room.last_seq,
        "unread": getattr(room, "unread", 0),
        "mentioned": bool(getattr(room, "mentioned", False)),
        "assistants": [
            {"name": a.name, "model": a.model or settings.ASSISTANT_MODEL}
            for a in getattr(room, "enabled_assistants", [])
        ],
    }


def messages_body(rows: list[Message], has_more: bool, *, keep: str) -> str:
    """``{"messages": [...], "has_more": ...}`` bounded like a socket's history
    page (CHAT_MAX_SEND_FRAME_BYTES): a page cut short by size says has_more."""
    _, parts, cut = events.messages_fit(rows, settings.CHAT_MAX_SEND_FRAME_BYTES - 64, keep=keep)
    more = "true" if has_more or cut else "false"
    return '{"messages":[' + ",".join(parts) + '],"has_more":' + more + "}"


# --- Who am I, rooms ------------------------------------------------------------------


@endpoint("GET", auth="any")
async def me(request: HttpRequest, caller: Caller) -> HttpResponse:
    token = caller.token
    return json_response(
        {
            "username": caller.user.get_username(),
            "bot": caller.is_bot,
            "token": None if token is None else {"name": token.name, "prefix": token.prefix},
        }
    )


@endpoint("GET", auth="any")
async def rooms_list(request: HttpRequest, caller: Caller) -> HttpResponse:
    rooms = await db_run(api_selectors.rooms_for, caller.user)
    return json_response({"rooms": [room_object(room) for room in rooms]})


# --- Messages ---------------------------------------------------------------------------


@endpoint("GET", auth="any")
async def messages_list(request: HttpRequest, caller: Caller, slug: str) -> HttpResponse:
    after = int_param(request, "after")
    before = int_param(request, "before", minimum=1)
    limit = int_param(request, "limit", minimum=1, maximum=settings.CHAT_HISTORY_MAX) or 50
    if after is not None and before is not None:
        raise ApiError(400, events.BAD_REQUEST, "give at most one of after and before (message ids)")
    room = await room_visible(caller, slug)
    if after is not None or before is not None:
        page = await db_run(selectors.history_page, room, caller.user, before=before, after=after, limit=limit)
        rows, has_more = page.messages, page.truncated
    else:
        rows, has_more = await db_run(api_selectors.messages_latest, room, caller.user, limit)
    return json_response(messages_body(rows, has_more, keep="oldest" if after is not None else "newest"))


@endpoint("POST")
async def messages_post(request: HttpRequest, caller: Caller, slug: str) -> HttpResponse:
    body = json_body(request)
    if "text" not in body:
        raise ApiError(400, events.BAD_REQUEST, "text is required")
    room = await room_visible(caller, slug)
    await rate_limit(
        f"chat:{caller.user.pk}", settings.CHAT_RATE_LIMIT, "you are sending messages too fast; wait a few seconds"
    )
    text, client_id = body["text"], body.get("client_id")
    message, created = await ask.message_send_asking(
        room=room, user=caller.user, text=text, client_id=client_id, reply_to=body.get("reply_to")
    )
    if not created and message.text != text and message.edited is None:
        raise ApiError(409, CONFLICT, "this client_id was already used for a different message")
    return json_response(events.dumps(events.message_payload(message)), 201 if created else 200)


# --- Replies -------------------------------------------------------------------------------


@endpoint("POST")
async def reply_stop(request: HttpRequest, caller: Caller, slug: str, reply_id: int) -> HttpResponse:
    json_body(request)  # nothing is read from it, but it must be well-formed
    room = await room_visible(caller, slug)
    if not await reply_cancel(room, caller.user, path_id(reply_id)):
        raise not_found("no reply with that id is being written in this room")
    return json_response({"reply_id": reply_id, "status": "cancelling"}, 202)


@endpoint("POST")
async def reply_start(request: HttpRequest, caller: Caller, slug: str) -> HttpResponse:
    body = json_body(request)
    in_reply_to = body.get("in_reply_to")
    if in_reply_to is not None:
        in_reply_to = int_value(in_reply_to, "in_reply_to", minimum=1)
    room = await room_visible(caller, slug)
    reply = await bots.reply_start(room, caller, in_reply_to)
    return json_response({"reply_id": reply.pk, "message": events.message_payload(reply)}, 201)


@endpoint("POST")
async def reply_delta(request: HttpRequest, caller: Caller, reply_id: int) -> HttpResponse:
    body = json_body(request)
    if "text" not in body or not isinstance(body["text"], str):
        raise ApiError(400, events.BAD_REQUEST, "text must be a string")
    seq = int_value(body.get("seq"), "seq", minimum=1, maximum=2**31 - 1)
    return json_response(await bots.reply_delta(caller, path_id(reply_id), body["text"], seq))


@endpoint("POST")
async def reply_end(request: HttpRequest, caller: Caller, reply_id: int) -> HttpResponse:
    body = json_body(request)
    status = body.get("status", "complete")
    if status not in ("complete", "error"):
        raise ApiError(400, events.BAD_REQUEST, 'status must be "complete" or "error"')
    error = body.get("error", "")
    if not isinstance(error, str):
        raise ApiError(400, events.BAD_REQUEST, "error must be a string")
    reply = await bots.reply_end(caller, path_id(reply_id), status, error)
    return json_response({"reply_id": reply.pk, "message": events.message_payload(reply)})


# --- The event stream ----------------------------------------------------------------------


@endpoint("GET", auth="any")
async def room_events(request: HttpRequest, caller: Caller, slug: str) -> HttpResponse:
    """The stream through Django's handler. The server processes never get
    here: ``rooms.api.asgi`` answers this path before Django (no thread per
    stream); this serves a deployment that does not wrap the application."""
    room = await room_visible(caller, slug)
    session = await sse.session_open(
        caller,
        room,
        request.headers.get("Last-Event-ID") or request.GET.get("after") or "",
        request.session.session_key if caller.token is None else None,
    )
    response = StreamingHttpResponse(sse.stream(session), content_type="text/event-stream")
    for name, value in sse.RESPONSE_HEADERS:
        response[name] = value
    return response


# --- The schema, unknown paths -----------------------------------------------------------------


@endpoint("GET", auth="none")
async def openapi(request: HttpRequest, caller: None) -> HttpResponse:
    return json_response(schema.document(request))


@endpoint("GET", auth="none")
async def unknown(request: HttpRequest, caller: None, **kwargs: object) -> HttpResponse:
    raise not_found("no such API endpoint (see /api/v1/schema.json)")


def unknown_any() -> Any:
    """Any method on an unknown API path: a JSON 404, not the site's HTML page."""
    handlers = {method: (unknown, "none") for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")}
    from .http import api_endpoint

    return api_endpoint(handlers)


me_view = route(me)
rooms_view = route(rooms_list)
messages_view = route(messages_list, messages_post)
reply_stop_view = route(reply_stop)
reply_start_view = route(reply_start)
reply_delta_view = route(reply_delta)
reply_end_view = route(reply_end)
events_view = route(room_events)
schema_view = route(openapi)
unknown_view = unknown_any()


# --- The API tokens page ---------------------------------------------------------------------


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def api_tokens(request: HttpRequest) -> HttpResponse:
    """The logged-in user's tokens: make one (shown once), revoke one."""
    created: str | None = None
    error = ""
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "create":
            name = (request.POST.get("name") or "").strip()[:100]
            _, created = ApiToken.issue(request.user, name)
        elif action == "revoke":
            token = ApiToken.objects.filter(
                pk=_int_or_none(request.POST.get("token")), user=request.user, revoked__isnull=True
            ).first()
            if token is None:
                error = "No such token."
            else:
                token.revoked = timezone.now()
                token.save(update_fields=["revoked"])
        else:
            error = "Unknown action."
    is_bot = UserProfile.objects.filter(user=request.user, is_bot=True).exists()
    context = {
        "tokens": ApiToken.objects.filter(user=request.user),
        "created": created,
        "error": error,
        "is_bot": is_bot,
        "api_base": request.build_absolute_uri("/api/v1/"),
    }
    return render(request, "rooms/api_tokens.html", context, status=400 if error else 200)


def _int_or_none(raw: str | None) -> int | None:
    return int(raw) if raw and raw.isascii() and raw.isdigit() and len(raw) < 19 else None
