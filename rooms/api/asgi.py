"""The API's place in the ASGI application (``chatsite/asgi.py``).

``api_http(django_app)`` wraps the site's HTTP application:

- every server process starts its webhook delivery worker on its first request
  (health checks included), so deliveries left pending by a restart go out;
- ``GET /api/v1/rooms/<slug>/events`` is answered here, before Django. Django's
  ASGI handler runs each request inside a ``ThreadSensitiveContext`` whose
  executor thread (started by the sync middleware) lives as long as the
  request: an open event stream would hold a thread for its whole life. Here a
  stream is a coroutine and a small task watching for the client leaving; its
  database calls go to the process's database thread (``db_run``), like a
  socket's. It checks what Django would for this path: the Host header
  (ALLOWED_HOSTS), the HTTPS redirect, a foreign Origin when the session cookie
  authenticates, then the same token or session authentication, rate limit and
  room visibility as the other endpoints.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.http import parse_cookie
from django.http.request import split_domain_port, validate_host

from .. import events, selectors
from ..access import AccessLost
from ..db import DatabaseUnavailable, db_run
from ..socketauth import _request_is_secure, origin_allowed, session_user_resolve
from ..tasks import tasks
from . import sse, webhooks
from .http import (
    ACCESS_STATUS,
    ApiError,
    caller_admit,
    missing_credentials,
    not_found,
    session_caller,
    token_caller,
    unavailable,
)

logger = logging.getLogger(__name__)

EVENTS_PATH = re.compile(r"^/api/v1/rooms/(?P<slug>[-a-zA-Z0-9_]+)/events$")


def api_http(django_app: Any) -> Any:
    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not tasks.running("webhook-deliveries"):
            webhooks.deliveries_ensure()
        if scope.get("type") == "http" and scope.get("method") in ("GET", "HEAD"):
            match = EVENTS_PATH.match(scope.get("path", ""))
            if match is not None:
                await events_app(scope, receive, send, match["slug"])
                return
        await django_app(scope, receive, send)

    return application


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        name = key.decode("latin-1").lower()
        if name not in found:
            found[name] = value.decode("latin-1")
    return found


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _error(send: Any, error: ApiError) -> None:
    body = events.dumps({"code": error.code, "detail": error.detail, **error.extra}).encode("utf-8")
    headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store"), *error.headers.items()]
    await _respond(send, error.status, body, headers)


def _security_headers(scope: dict[str, Any]) -> list[tuple[str, str]]:
    headers = [("Referrer-Policy", settings.SECURE_REFERRER_POLICY or "same-origin")]
    if settings.SECURE_HSTS_SECONDS and _request_is_secure(scope):
        value = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            value += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            value += "; preload"
        headers.append(("Strict-Transport-Security", value))
    return headers


async def _open(scope: dict[str, Any], headers: dict[str, str], slug: str) -> sse.Session:
    """Authenticate, find the room, make the stream; ``ApiError`` otherwise."""
    authorization = headers.get("authorization")
    session_key, expires = None, None
    if authorization:
        caller = await token_caller(authorization)
    else:
        if "origin" in headers and not origin_allowed(scope):
            raise ApiError(403, events.FORBIDDEN, "a session stream must come from the site's own origin")
        key = parse_cookie(headers.get("cookie", "")).get(settings.SESSION_COOKIE_NAME)
        if not key or not (key.isascii() and key.isalnum()):
            raise missing_credentials()
        _, user, expires = await db_run(session_user_resolve, key)
        caller = await session_caller(user)
        session_key = key
    caller = await caller_admit(caller)
    room = await db_run(selectors.room_get_visible, slug, caller.user)
    if room is None:
        raise not_found()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    raw = headers.get("last-event-id") or (query.get("after") or [""])[0]
    return await sse.session_open(caller, room, raw, session_key, expires)


async def events_app(scope: dict[str, Any], receive: Any, send: Any, slug: str) -> None:
    headers = _headers(scope)
    domain, _ = split_domain_port(headers.get("host", ""))
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        logger.warning("Invalid HTTP_HOST header for the event stream: %r", headers.get("host", "")[:100])
        await _error(send, ApiError(400, events.BAD_REQUEST, "bad Host header"))
        return
    if settings.SECURE_SSL_REDIRECT and not _request_is_secure(scope):
        query = scope.get("query_string", b"").decode("latin-1")
        location = f"https://{headers['host']}{scope.get('path', '')}" + (f"?{query}" if query else "")
        await _respond(send, 301, b"", [("Location", location)])
        return
    try:
        session = await _open(scope, headers, slug)
    except ApiError as exc:
        await _error(send, exc)
        return
    except AccessLost as exc:
        status, code, detail = ACCESS_STATUS.get(exc.what, ACCESS_STATUS["gone"])
        await _error(send, ApiError(status, code, detail))
        return
    except DatabaseUnavailable:
        await _error(send, unavailable())
        return
    except Exception:
        logger.exception("opening an event stream failed")
        await _error(send, ApiError(500, events.INTERNAL, "something went wrong on our side"))
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in [*sse.RESPONSE_HEADERS, *_security_headers(scope)]
            ],
        }
    )
    if scope.get("method") == "HEAD":
        await send({"type": "http.response.body", "body": b""})
        return
    gone = asyncio.Event()
    watcher = asyncio.ensure_future(_until_disconnect(receive, session, gone))
    body = sse.stream(session)
    try:
        async for chunk in body:
            if gone.is_set():
                break
            await send({"type": "http.response.body", "body": chunk.encode("utf-8"), "more_body": True})
        if not gone.is_set():
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:
        pass  # the client went away mid-write
    finally:
        watcher.cancel()
        await body.aclose()


async def _until_disconnect(receive: Any, session: sse.Session, gone: asyncio.Event) -> None:
    """The client's side: a request body (none) and, one day, its disconnect."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            gone.set()
            session.end(events.UNAVAILABLE, "the client went away")
            return
