"""What every endpoint shares: errors as ``{"code", "detail"}``, JSON bodies
parsed with the socket's care, bearer-token (or session) authentication, the
per-token rate limit, and the wrapper that turns every failure into one of
those answers — never a 500 with a traceback for bad input.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ObjectDoesNotExist, RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from .. import events
from ..access import AccessLost
from ..db import DatabaseUnavailable, db_run
from ..ratelimit import RateLimiterUnavailable, rate_hit, rate_peek
from ..services import ServiceError
from .models import TOKEN_PREFIX, ApiToken

logger = logging.getLogger(__name__)

# Error codes of the API besides the socket's (rooms.events).
UNAUTHORIZED = "unauthorized"
INVALID_TOKEN = "invalid_token"
METHOD_NOT_ALLOWED = "method_not_allowed"
CONFLICT = "conflict"
TOO_LARGE = "too_large"

# A ServiceError's code -> its HTTP status.
STATUS_OF = {
    events.BAD_REQUEST: 400,
    events.BAD_JSON: 400,
    events.FORBIDDEN: 403,
    events.NOT_FOUND: 404,
    CONFLICT: 409,
    events.TOO_LONG: 413,
    TOO_LARGE: 413,
    events.RATE_LIMITED: 429,
    "budget_exceeded": 429,
    events.UNAVAILABLE: 503,
    events.INTERNAL: 500,
}
RETRY_AFTER_UNAVAILABLE = 2
MAX_ID = 2**63 - 1


@dataclass
class ApiError(Exception):
    status: int
    code: str
    detail: str
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def json_response(body: str | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    text = body if isinstance(body, str) else events.dumps(body)
    response = HttpResponse(text, status=status, content_type="application/json")
    response["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def error_response(error: ApiError) -> HttpResponse:
    return json_response({"code": error.code, "detail": error.detail, **error.extra}, error.status, error.headers)


def service_error(exc: ServiceError) -> ApiError:
    extra = dict(getattr(exc, "extra", None) or {})
    status = STATUS_OF.get(exc.code, 400)
    headers = {}
    if status == 429:
        headers["Retry-After"] = "60"
    elif status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_UNAVAILABLE)
    return ApiError(status, exc.code, exc.detail, headers, extra)


def unavailable() -> ApiError:
    return ApiError(
        503,
        events.UNAVAILABLE,
        "the server cannot reach its database right now; try again shortly",
        {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)},
    )


def not_found(what: str = "no such room") -> ApiError:
    return ApiError(404, events.NOT_FOUND, what)


# --- Input ------------------------------------------------------------------------


def strings_clean(value: object, depth: int = 0) -> bool:
    """No NUL and no lone surrogate in any string of a parsed body (keys too):
    PostgreSQL cannot store NUL, and a lone surrogate cannot even be encoded."""
    if isinstance(value, str):
        if "\x00" in value:
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if depth > 64:
        return True
    if isinstance(value, dict):
        return all(strings_clean(k, depth + 1) and strings_clean(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(strings_clean(v, depth + 1) for v in value)
    return True


def json_body(request: HttpRequest) -> dict[str, Any]:
    """The request's body as a JSON object (an empty body is ``{}``)."""
    try:
        raw = request.body
    except RequestDataTooBig:
        raw = None
    if raw is None or len(raw) > settings.API_MAX_BODY_BYTES:
        raise ApiError(413, TOO_LARGE, f"the body is larger than {settings.API_MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, events.BAD_JSON, "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(400, events.BAD_REQUEST, "the body must be a JSON object")
    if not strings_clean(payload):
        raise ApiError(400, events.BAD_REQUEST, "the body contains NUL or invalid Unicode")
    return payload


def int_value(value: object, name: str, *, minimum: int = 0, maximum: int = MAX_ID) -> int:
    # bool is an int in Python, never in this API.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, events.BAD_REQUEST, f"{name} must be an integer")
    if not minimum <= value <= maximum:
        raise ApiError(400, events.BAD_REQUEST, f"{name} must be between {minimum} and {maximum}")
    return value


def int_param(request: HttpRequest, name: str, *, minimum: int = 0, maximum: int = MAX_ID) -> int | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise ApiError(400, events.BAD_REQUEST, f"{name} must be an integer")
    return int_value(int(raw), name, minimum=minimum, maximum=maximum)


def path_id(value: int) -> int:
    """An id from the URL; past what the database holds it cannot exist."""
    if not 0 < value <= MAX_ID:
        raise not_found("no such reply")
    return value


# --- Who is calling --------------------------------------------------------------


@dataclass
class Caller:
    user: AbstractBaseUser
    token: ApiToken | None  # None: the session cookie
    is_bot: bool

    @property
    def bucket(self) -> str:
        return f"api:token:{self.token.pk}" if self.token is not None else f"api:user:{self.user.pk}"


TOUCH_EVERY = timedelta(seconds=60)


def user_is_bot(user: AbstractBaseUser) -> bool:
    try:
        return bool(user.chat_profile.is_bot)  # type: ignore[attr-defined]
    except ObjectDoesNotExist:
        return False


def token_resolve(raw: str) -> tuple[ApiToken | None, str]:
    """The live token ``raw`` names, or ``(None, why)``."""
    parts = raw.removeprefix(TOKEN_PREFIX).split("_", 1) if raw.startswith(TOKEN_PREFIX) else []
    if len(parts) != 2 or not parts[0].isalnum() or len(parts[0]) > 16:
        return None, "the token is not valid"
    row = ApiToken.objects.select_related("user", "user__chat_profile").filter(key_id=parts[0]).first()
    if row is None or not row.matches(raw):
        return None, "the token is not valid"
    if row.revoked is not None:
        return None, "the token was revoked"
    if not row.user.is_active:
        return None, "the token's account is deactivated"
    now = timezone.now()
    if row.last_used is None or now - row.last_used > TOUCH_EVERY:
        ApiToken.objects.filter(pk=row.pk).update(last_used=now)
    return row, ""


def _session_caller_bot(user: AbstractBaseUser) -> bool:
    from .models import UserProfile

    return UserProfile.objects.filter(user=user, is_bot=True).exists()


async def token_caller(header: str) -> Caller:
    """The caller an ``Authorization`` header names; 401 otherwise."""
    scheme, _, raw = header.partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw or len(raw) > 200 or not raw.isascii():
        raise ApiError(
            401,
            INVALID_TOKEN,
            "use Authorization: Bearer <token>",
            {"WWW-Authenticate": 'Bearer realm="chatsite", error="invalid_request"'},
        )
    token, why = await db_run(token_resolve, raw)
    if token is None:
        raise ApiError(401, INVALID_TOKEN, why, {"WWW-Authenticate": 'Bearer realm="chatsite", error="invalid_token"'})
    return Caller(user=token.user, token=token, is_bot=user_is_bot(token.user))


async def session_caller(user: AbstractBaseUser) -> Caller:
    """The caller a logged-in session is (reads only); 401 if it is not logged in."""
    if not user.is_authenticated:
        raise missing_credentials()
    return Caller(user=user, token=None, is_bot=await db_run(_session_caller_bot, user))


async def caller_admit(caller: Caller) -> Caller:
    """The per-token rate limit; marks the user for ``Message.author_bot``."""
    # Read by rooms.api.signals when this user's message is saved.
    caller.user._chat_is_bot = caller.is_bot  # type: ignore[attr-defined]
    await _rate_check(caller)
    return caller


async def authenticate(request: HttpRequest, *, allow_session: bool) -> Caller:
    header = request.headers.get("Authorization", "")
    if header:
        caller = await token_caller(header)
    elif allow_session:
        caller = await session_caller(await request.auser())
    else:
        raise missing_credentials()
    return await caller_admit(caller)


def missing_credentials() -> ApiError:
    return ApiError(
        401,
        UNAUTHORIZED,
        "authentication required: Authorization: Bearer <token>",
        {"WWW-Authenticate": 'Bearer realm="chatsite"'},
    )


async def _rate_check(caller: Caller) -> None:
    limit = settings.API_RATE_LIMIT
    if limit is None:
        return
    try:
        allowed = await rate_hit(caller.bucket, limit)
    except RateLimiterUnavailable:  # pragma: no cover - only strict limits raise
        return
    if not allowed:
        wait = max(1, await rate_peek(caller.bucket, limit))
        raise ApiError(
            429, events.RATE_LIMITED, f"too many requests with this token; wait {wait} s", {"Retry-After": str(wait)}
        )


async def rate_limit(bucket: str, limit: tuple[int, int] | None, detail: str) -> None:
    """One action against a shared limit (the chat's, like a socket's send)."""
    if not await rate_hit(bucket, limit):
        wait = max(1, await rate_peek(bucket, limit))
        raise ApiError(429, events.RATE_LIMITED, detail, {"Retry-After": str(wait)})


# --- The wrapper -----------------------------------------------------------------

Handler = Callable[..., Awaitable[HttpResponse]]
ACCESS_STATUS = {
    "user": (401, INVALID_TOKEN, "the account is deactivated"),
    "room": (404, events.NOT_FOUND, "no such room"),
    "gone": (404, events.NOT_FOUND, "no such room"),
}


def api_endpoint(methods: dict[str, tuple[Handler, str]]) -> Callable[..., Awaitable[HttpResponse]]:
    """One URL: ``{"GET": (handler, auth), ...}`` with ``auth`` "token" (a
    bearer token), "any" (a token or the session cookie: reads only) or
    "none". Handlers get ``(request, caller, **url_kwargs)``."""

    @csrf_exempt
    async def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        entry = methods.get(request.method or "")
        if entry is None:
            allowed = ", ".join(methods)
            return error_response(ApiError(405, METHOD_NOT_ALLOWED, f"use {allowed}", {"Allow": allowed}))
        handler, auth = entry
        try:
            caller = None if auth == "none" else await authenticate(request, allow_session=auth == "any")
            return await handler(request, caller, **kwargs)
        except ApiError as exc:
            return error_response(exc)
        except ServiceError as exc:
            return error_response(service_error(exc))
        except AccessLost as exc:
            status, code, detail = ACCESS_STATUS.get(exc.what, ACCESS_STATUS["gone"])
            return error_response(ApiError(status, code, detail))
        except DatabaseUnavailable:
            return error_response(unavailable())
        except Exception:
            logger.exception("API %s %s failed", request.method, request.path[:100])
            return error_response(ApiError(500, events.INTERNAL, "something went wrong on our side"))

    return view


def endpoint(method: str, auth: str = "token") -> Callable[[Handler], Handler]:
    """Mark a handler's method and auth (collected by ``api_endpoint``)."""

    def mark(handler: Handler) -> Handler:
        handler.api_method = method  # type: ignore[attr-defined]
        handler.api_auth = auth  # type: ignore[attr-defined]
        return handler

    return mark


def route(*handlers: Handler) -> Callable[..., Awaitable[HttpResponse]]:
    return api_endpoint({h.api_method: (h, h.api_auth) for h in handlers})  # type: ignore[attr-defined]
