"""Fixtures for the end-to-end browser tests: a real daphne serving the real
site, the fake OpenAI server behind it, and headless Debian Chromium."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from tests.fakeopenai import FakeOpenAI

from .stack import BASE_DIR, CHROMIUM, CHROMIUM_ARGS, Stack

USERS = ["alice", "bob", "carol", "dave"]
ROOMS = [
    "lobby",
    "stream",
    "xss",
    "resume",
    "leaving",
    "gaps",
    "history",
    "layout",
    "live-md",
    "edits",
    "replies",
    "unread",
    "elsewhere",
    "mentions",
    "empty",
]
RESULTS_DIR = BASE_DIR / "test-results" / "browser"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="package")
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="sk-browser-test") as fake:
        yield fake


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI) -> Iterator[Stack]:
    site = Stack(tmp_path_factory.mktemp("site"), openai_base_url=fake_openai.base_url)
    site.prepare(USERS, ROOMS)
    site.start()
    try:
        yield site
    finally:
        site.stop()
        log = site.log_tail(400)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / "daphne.log").write_text(log)


@pytest.fixture
def live_stack(stack: Stack) -> Stack:
    """The shared stack, running (a test that killed daphne may have left it down)."""
    if not stack.running():
        stack.start()
    return stack


@pytest.fixture(scope="package")
def playwright_instance() -> Iterator[Playwright]:
    if not os.path.exists(CHROMIUM) and not shutil.which("chromium"):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make test does this)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    browser = playwright_instance.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
    yield browser
    browser.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    """Where this test's screenshots go."""
    path = RESULTS_DIR / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path
