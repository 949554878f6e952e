"""rooms.socketauth: the session cookie of a websocket handshake becomes scope["user"]."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async as mk
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore

from rooms.socketauth import SocketAuthMiddleware

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


def session_for(user) -> str:
    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    return store.session_key


class Inner:
    """An ASGI app that records what the middleware handed it."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {}
        self.send: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope, self.send = scope, send


async def handshake(cookie: str | None) -> Inner:
    inner = Inner()
    headers = [(b"origin", b"http://testserver")]
    if cookie is not None:
        headers.append((b"cookie", cookie.encode("latin-1")))
    scope = {"type": "websocket", "path": "/ws/rooms/x/", "headers": headers}

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("the middleware itself sends nothing")

    await SocketAuthMiddleware(inner)(scope, None, send)
    assert inner.send is send, "send reaches the consumer unwrapped"
    return inner


async def test_session_cookie_resolves_to_its_user(make_user):
    alice = await mk(make_user)("alice")
    key = await mk(session_for)(alice)
    inner = await handshake(f"csrftoken=abc; {settings.SESSION_COOKIE_NAME}={key}")
    assert inner.scope["user"].is_authenticated and inner.scope["user"].pk == alice.pk
    assert inner.scope["session"].session_key == key
    assert inner.scope["cookies"]["csrftoken"] == "abc"


@pytest.mark.parametrize("cookie", [None, "", "sessionid=not-a-session", "sessionid=; other=1"])
async def test_no_or_unknown_session_is_anonymous(cookie):
    inner = await handshake(cookie)
    assert not inner.scope["user"].is_authenticated


async def test_session_of_a_changed_password_is_anonymous_and_flushed(make_user):
    alice = await mk(make_user)("alice")
    key = await mk(session_for)(alice)

    def password_change() -> None:
        alice.set_password("a-new-password-entirely")
        alice.save()

    await mk(password_change)()
    inner = await handshake(f"{settings.SESSION_COOKIE_NAME}={key}")
    assert not inner.scope["user"].is_authenticated
    assert not await mk(SessionStore().exists)(key), "the stale session is gone"
