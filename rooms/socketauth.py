"""Who is on the other end of a websocket: the Django session cookie, resolved once.

Channels' ``AuthMiddlewareStack`` does the same job, but its session layer wraps
``send`` for the whole life of the socket (to add cookies to HTTP responses,
which a websocket never sends after its handshake) and spends two thread hops
per handshake. A room event is written to every socket in the room, so that
wrapper ran once per delivery. This middleware resolves the cookie to a user in
one hop with Django's own ``get_user`` (session hash checked, a stale session
flushed) and hands ``send`` through untouched.
"""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib import auth
from django.contrib.sessions.backends.base import SessionBase
from django.http.cookie import parse_cookie


def session_user_resolve(session_key: str | None) -> tuple[SessionBase, Any]:
    """The session for ``session_key`` (a fresh one if absent) and its user or AnonymousUser."""
    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    store = store_class(session_key)
    # django.contrib.auth.get_user only reads request.session.
    user = auth.get_user(SimpleNamespace(session=store))
    # The socket keeps a lazy handle (it needs the key, to match a logout), not
    # the decoded session data, for as long as it stays open.
    return store_class(store.session_key), user


class SocketAuthMiddleware:
    """Puts ``cookies``, ``session`` and ``user`` in a websocket's scope."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        cookies: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                cookies = parse_cookie(value.decode("latin-1"))
                break
        session, user = await database_sync_to_async(session_user_resolve)(cookies.get(settings.SESSION_COOKIE_NAME))
        return await self.inner(dict(scope, cookies=cookies, session=session, user=user), receive, send)
