"""System tests: real daphne and uvicorn processes behind real nginx, a real Redis-protocol
server on a free port, PostgreSQL when DATABASE_URL points at it, and real
WebSocket clients."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.stack import Stack
from tests.system.wsclient import RoomClient

USERS = ["alice", "bob", "carol", "dave", "erin"]
_slugs = itertools.count(1)


def stack_seed(stack: Stack) -> None:
    code = (
        "from django.contrib.auth import get_user_model;U=get_user_model();"
        f"[U.objects.create_user(username=n, password='correct-horse-battery-staple') for n in {USERS!r}]"
    )
    stack.manage("shell", "-c", code)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    with Stack(
        tmp_path_factory.mktemp("stack"),
        daphne_count=2,
        # One process of each supported server: every test through nginx meets
        # both, and via=0 / via=1 pick daphne / uvicorn.
        servers=["daphne", "uvicorn"],
        fake_openai=True,
        env_overrides={"CHAT_RATE_LIMIT": "0", "ASSISTANT_RATE_LIMIT": "0", "ASSISTANT_FLUSH_MS": "20"},
    ) as running:
        stack_seed(running)
        yield running


@pytest.fixture(scope="module")
def sessions(stack) -> dict[str, dict[str, str]]:
    return {name: stack.login(name) for name in USERS}


@pytest.fixture
def room_slug(stack) -> str:
    slug = f"sys-{next(_slugs)}"
    stack.room_create(slug)
    return slug


def client_for(stack: Stack, sessions, user: str, slug: str, via: int | None = None) -> RoomClient:
    """A client through nginx, or straight to daphne number ``via``."""
    base = stack.ws_url if via is None else "ws" + stack.daphne_urls[via].removeprefix("http")
    origin = stack.origin if via is None else stack.daphne_urls[via]
    return RoomClient(base, slug, stack.ws_headers(sessions[user], origin=origin), name=f"{user}@{via}")
