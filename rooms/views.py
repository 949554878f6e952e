from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import unicodedata

from asgiref.sync import async_to_sync, sync_to_async
from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import NON_FIELD_ERRORS
from django.db import connection
from django.forms.utils import ErrorDict
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from . import selectors, services
from .forms import RoomCreateForm, SignupForm
from .kv import kv_client
from .ratelimit import rate_hit, rate_peek

logger = logging.getLogger(__name__)


# --- Log-in and sign-up throttling ----------------------------------------------
#
# The project's Redis limiter (rooms.ratelimit), not django-axes: one mechanism
# for log-in, sign-up and the chat, shared by every process through Redis with
# no database write per attempt, a Retry-After for clients, and the stated
# policy when Redis is away (counts per process). docs/deployment.md, "Security".


def client_address(request: HttpRequest) -> str:
    """The throttling key of the client's address: REMOTE_ADDR (the servers run
    with --proxy-headers behind nginx), an IPv6 client by its /64 (one
    subscriber's allocation, which they can rotate through freely)."""
    raw = str(request.META.get("REMOTE_ADDR") or "")
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return raw[:64] or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def account_key(username: str) -> str:
    """A fixed-size key per account name, case-insensitive (``Alice`` and
    ``alice `` are one account to an attacker); hashed so Redis keys are bounded
    and hold no user names."""
    name = unicodedata.normalize("NFKC", username).strip().casefold()
    return hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:32]


def _throttled(
    request: HttpRequest, template: str, form: forms.BaseForm, message: str, wait: int, context: dict | None = None
) -> HttpResponse:
    """The form again with ``message`` as its error, HTTP 429 and Retry-After.

    The error is set without validating the form: a throttled log-in must not
    check the password (that is the point of refusing it)."""
    form._errors = ErrorDict()  # full_clean() never runs
    form._errors[NON_FIELD_ERRORS] = form.error_class([message], error_class="nonfield")
    response = render(request, template, {**(context or {}), "form": form}, status=429)
    response["Retry-After"] = str(wait)
    return response


def _wait_phrase(wait: int) -> str:
    if wait <= 90:
        return f"{wait} seconds"
    return f"{(wait + 59) // 60} minutes"


class LoginView(auth_views.LoginView):
    """Django's log-in, throttled per account and per client address.

    Only failed attempts count (a user who logs in on many devices is never
    locked out). Both counters are read before the password is checked; once
    either is at its limit the attempt is refused with 429 and Retry-After
    without checking the password, the right one included, until the window
    ends.
    """

    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        form = self.get_form()
        username = str(request.POST.get(get_user_model().USERNAME_FIELD) or "")
        buckets = [(f"login-address:{client_address(request)}", settings.LOGIN_ADDRESS_RATE_LIMIT)]
        if username:
            buckets.append((f"login-account:{account_key(username)}", settings.LOGIN_RATE_LIMIT))
        waits = {bucket.split(":", 1)[0]: async_to_sync(rate_peek)(bucket, limit) for bucket, limit in buckets}
        wait = max(waits.values())
        if wait:
            which = ", ".join(name for name, seconds in waits.items() if seconds)
            logger.warning("log-in refused: too many failures (%s); retry in %s s", which, wait)
            message = f"Too many failed log-in attempts. Try again in {_wait_phrase(wait)}."
            return _throttled(request, self.template_name, form, message, wait, self.get_context_data(form=form))
        if form.is_valid():
            return self.form_valid(form)
        for bucket, limit in buckets:
            async_to_sync(rate_hit)(bucket, limit)
        return self.form_invalid(form)


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("room_list")
    form = SignupForm(request.POST or None)
    if request.method == "POST":
        # Every sign-up counts, made or not: accounts are what an abuser
        # multiplies (each one gets its own chat and assistant allowance).
        bucket = f"signup-address:{client_address(request)}"
        if not async_to_sync(rate_hit)(bucket, settings.SIGNUP_RATE_LIMIT):
            wait = max(1, async_to_sync(rate_peek)(bucket, settings.SIGNUP_RATE_LIMIT))
            message = f"Too many sign-ups from your network. Try again in {_wait_phrase(wait)}."
            return _throttled(request, "registration/signup.html", form, message, wait)
        if form.is_valid():
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
        "assistant": next((a.name for a in room.assistants.all() if a.enabled), None),
        "maxChars": settings.CHAT_MAX_MESSAGE_CHARS,
    }
    return render(request, "rooms/room_detail.html", {"room": room, "config": config})


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico whatever the page says: point them at the
    static icon (a 404 here is a console error on every first page)."""
    return redirect(static("rooms/favicon.png"), permanent=False)


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
