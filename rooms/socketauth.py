"""Who is on the other end of a websocket, and may they open one from there.

``OriginValidator`` refuses a handshake whose ``Origin`` is not the site's own
origin (scheme, host and port, as the browser sends it) nor one of
``DJANGO_CSRF_TRUSTED_ORIGINS``: the same rule as Django's CSRF origin check.
Channels' ``AllowedHostsOriginValidator`` compares only the host name, so a
page on another port or scheme of the same host could open a socket with the
victim's cookies (cookies are not scoped by port).

``SocketAuthMiddleware`` resolves the Django session cookie to a user in one
thread hop with Django's own ``get_user`` (session hash checked, a stale
session flushed) and hands ``send`` through untouched. Channels'
``AuthMiddlewareStack`` does the same job, but its session layer wraps ``send``
for the whole life of the socket and spends two thread hops per handshake; a
room event is written to every socket in the room, so that wrapper ran once per
delivery.

``socket_refuse`` turns away a socket with a close code the client acts on
(HTTP 403 when closed before accept, as daphne and uvicorn answer it).
"""

from __future__ import annotations

import logging
from datetime import datetime
from importlib import import_module
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import auth
from django.contrib.sessions.backends.base import SessionBase
from django.http.cookie import parse_cookie
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from . import events
from .admission import connect_gate
from .db import DatabaseUnavailable, db_run

logger = logging.getLogger(__name__)


async def socket_refuse(receive: Any, send: Any, code: int, *, accept: bool = True) -> None:
    """Answer a socket's connect with a close, before any consumer machinery.

    ``accept``: open it first so the close code reaches the client (4xxx);
    otherwise the handshake itself is refused (HTTP 403).
    """
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if accept:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code})
    else:
        await send({"type": "websocket.close", "code": code})


# --- Origin -----------------------------------------------------------------------


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _request_is_secure(scope: dict[str, Any]) -> bool:
    """Like ``HttpRequest.is_secure()``: the server's scheme, or the proxy's
    ``X-Forwarded-Proto`` when SECURE_PROXY_SSL_HEADER says it is trusted."""
    if scope.get("scheme") in ("https", "wss"):
        return True
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        name, secure_value = proxy
        header = name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
        value = _header(scope, header)
        if value is not None:
            return value.split(",", 1)[0].strip() == secure_value
    return False


def origin_allowed(scope: dict[str, Any]) -> bool:
    origin = _header(scope, b"origin")
    host = _header(scope, b"host")
    if not origin or not host:
        return False
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    own = "{}://{}".format("https" if _request_is_secure(scope) else "http", host)
    if origin.lower() == own.lower():
        return True
    trusted = [o.lower() for o in settings.CSRF_TRUSTED_ORIGINS]
    if origin.lower() in trusted:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    # "https://*.example.com" entries, as Django's CSRF check reads them.
    for entry in trusted:
        if "*" not in entry:
            continue
        entry_parts = urlsplit(entry)
        if entry_parts.scheme == parts.scheme and is_same_domain(parts.netloc.lower(), entry_parts.netloc[1:]):
            return True
    return False


class OriginValidator:
    """Refuses (HTTP 403) a websocket handshake from any origin but the site's own."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            logger.info("refused a websocket from origin %r", (_header(scope, b"origin") or "")[:100])
            return await socket_refuse(receive, send, 403, accept=False)
        return await self.inner(scope, receive, send)


# --- Session ----------------------------------------------------------------------


def session_user_resolve(session_key: str | None) -> tuple[SessionBase, Any, datetime | None]:
    """The session for ``session_key`` (a fresh one if absent), its user or
    AnonymousUser, and when the session expires."""
    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    store = store_class(session_key)
    # django.contrib.auth.get_user only reads request.session.
    user = auth.get_user(SimpleNamespace(session=store))
    expires = store.get_expiry_date() if user.is_authenticated else None
    # The socket keeps a lazy handle (it needs the key, to match a logout), not
    # the decoded session data, for as long as it stays open.
    return store_class(store.session_key), user, expires


class SocketAuthMiddleware:
    """Puts ``cookies``, ``session``, ``session_expires`` and ``user`` in a websocket's scope."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        cookies: dict[str, str] = {}
        cookie = _header(scope, b"cookie")
        if cookie is not None:
            cookies = parse_cookie(cookie)
        key = cookies.get(settings.SESSION_COOKIE_NAME)
        if key is not None and not (key.isascii() and key.isalnum()):
            key = None  # Django's keys are [a-z0-9]; anything else cannot match one
        try:
            async with connect_gate():
                session, user, expires = await db_run(session_user_resolve, key)
        except DatabaseUnavailable:
            # The client backs off and resumes, as during a Redis outage.
            return await socket_refuse(receive, send, events.CLOSE_UNAVAILABLE)
        scope = dict(scope, cookies=cookies, session=session, session_expires=expires, user=user)
        return await self.inner(scope, receive, send)
