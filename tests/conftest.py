"""Shared fixtures. Layers: services against the database, consumers through
WebsocketCommunicator (in-process, in-memory layer), system tests against real
daphne and Redis processes (tests/system), the browser (tests/browser)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import pytest_asyncio
from django.contrib.auth import get_user_model

from rooms import services
from rooms.models import Room

_counter = itertools.count(1)


@pytest.fixture
def make_user(db) -> Callable[..., object]:
    def make(username: str | None = None):
        name = username or f"user{next(_counter)}"
        return get_user_model().objects.create_user(username=name, password="correct-horse-battery")

    return make


@pytest.fixture
def make_room(db) -> Callable[..., Room]:
    def make(slug: str | None = None, **kwargs) -> Room:
        slug = slug or f"room-{next(_counter)}"
        return services.room_create(slug=slug, name=kwargs.pop("name", slug.title()), **kwargs)

    return make


@pytest_asyncio.fixture
async def realtime_cleanup():
    """Stop the process-wide background tasks a test's event loop started."""
    yield
    from rooms.tasks import tasks_stop

    await tasks_stop()


@pytest.fixture
def batch_sizes(monkeypatch) -> Callable[[object, str], list[int]]:
    """``batch_sizes(module, name)``: wrap a group-commit function (one call per
    batch); the returned list fills with the size of every batch it is given."""

    def wrap(module: object, name: str) -> list[int]:
        sizes: list[int] = []
        real = getattr(module, name)

        def counted(items):
            sizes.append(len(items))
            return real(items)

        monkeypatch.setattr(module, name, counted)
        return sizes

    return wrap


@pytest.fixture(autouse=True)
def _webhook_targets_forgotten():
    """Each process caches its rooms' webhooks until one changes; a test's
    rollback sends no post_delete, so the next test must not inherit them."""
    yield
    from rooms.api import webhooks

    webhooks.targets_forget()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _static_without_collectstatic(settings) -> None:
    # In-process page tests render templates without a collectstatic run; the
    # manifest storage (production) is exercised by the system tests' stacks.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def pytest_collection_modifyitems(config, items) -> None:
    """Fast layers first, browser last: sync Playwright drives its own event loop
    in this thread while it is open, so it must not overlap asyncio tests (its
    fixtures are package-scoped and close before anything else runs)."""

    def rank(item) -> int:
        path = str(item.fspath)
        for index, folder in enumerate(("/tests/system/", "/tests/faults/", "/tests/browser/"), start=1):
            if folder in path:
                return index
        return 0

    items.sort(key=rank)
