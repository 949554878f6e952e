"""Two people chatting in headless Chromium: one of them in two tabs."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Browser, expect

from .pages import context_new, expect_message_count, login, messages, room_open, send
from .stack import Stack


def test_two_users_three_tabs_chat(browser: Browser, live_stack: Stack, shots: Path) -> None:
    stack = live_stack
    alice_ctx = context_new(browser)
    bob_ctx = context_new(browser)
    try:
        alice_1 = alice_ctx.new_page()
        login(alice_1, stack, "alice")
        bob = bob_ctx.new_page()
        login(bob, stack, "bob")
        room_open(alice_1, stack, "lobby")
        room_open(bob, stack, "lobby")
        # The second tab shares alice's session cookie, as a real second tab does.
        alice_2 = alice_ctx.new_page()
        room_open(alice_2, stack, "lobby")
        tabs = {"alice tab 1": alice_1, "alice tab 2": alice_2, "bob": bob}

        for page in tabs.values():
            expect(page.locator("#presence li")).to_have_count(2)
            expect(page.locator("#presence")).to_contain_text("alice")
            expect(page.locator("#presence")).to_contain_text("bob")

        script = [
            (alice_1, "alice", "Morning Bob! Anyone seen the deploy notes?"),
            (bob, "bob", "Morning. They're in the wiki, under *Runbooks*."),
            (alice_2, "alice", "Found them, thanks — writing from my other tab."),
            (bob, "bob", "Multi-line works too:\nline two\nline three"),
            (alice_1, "alice", "`make test` is green 🎉"),
        ]
        for count, (page, _, text) in enumerate(script, start=1):
            send(page, text)
            # Every tab shows it before the next one is sent, so the order is known.
            for tab in tabs.values():
                expect_message_count(tab, count)
            expect(page.locator("#text")).to_have_value("")

        # A quick burst from all three tabs at once: each message exactly once everywhere.
        burst = {"alice tab 1": "burst from alice 1", "alice tab 2": "burst from alice 2", "bob": "burst from bob"}
        for name, text in burst.items():
            send(tabs[name], text)
        total = len(script) + len(burst)
        for tab in tabs.values():
            expect_message_count(tab, total)

        views = {name: messages(tab) for name, tab in tabs.items()}
        reference = views["bob"]
        for name, view in views.items():
            assert [m["id"] for m in view] == [m["id"] for m in reference], name
            seqs = [m["seq"] for m in view]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), (name, seqs)
            texts = [m["text"] for m in view]
            assert len(texts) == len(set(texts)), f"{name} shows a message twice: {texts}"
        shown = [(m["author"], m["text"]) for m in reference[: len(script)]]
        assert [a for a, _ in shown] == [author for _, author, _ in script]
        assert "Found them, thanks — writing from my other tab." in shown[2][1]
        assert shown[3][1].splitlines() == ["Multi-line works too:", "line two", "line three"]
        assert {m["text"] for m in reference[len(script) :]} == set(burst.values())

        # Own messages are set apart, per viewer.
        for name, view in views.items():
            viewer = "bob" if name == "bob" else "alice"
            for row in view:
                assert row["own"] == (row["author"] == viewer), (name, row)
        expect(bob.locator("#messages li.msg.own")).to_have_count(3)
        expect(alice_2.locator("#messages li.msg.own")).to_have_count(5)
        # Markdown from users renders (emphasis, inline code), as text otherwise.
        expect(bob.locator("#messages li.msg em")).to_have_text("Runbooks")
        expect(bob.locator("#messages li.msg code")).to_have_text("make test")

        # The database agrees with every tab.
        rows = stack.room_messages("lobby")
        assert [r[0] for r in rows] == [m["id"] for m in reference]

        alice_1.screenshot(path=str(shots / "alice-tab-1.png"))
        bob.screenshot(path=str(shots / "bob.png"))
    finally:
        alice_ctx.close()
        bob_ctx.close()


def test_logout_closes_other_tabs(browser: Browser, live_stack: Stack, shots: Path) -> None:
    stack = live_stack
    ctx = context_new(browser)
    watcher_ctx = context_new(browser)
    try:
        tab_1 = ctx.new_page()
        login(tab_1, stack, "carol")
        room_open(tab_1, stack, "leaving")
        tab_2 = ctx.new_page()
        room_open(tab_2, stack, "leaving")
        watcher = watcher_ctx.new_page()
        login(watcher, stack, "dave")
        room_open(watcher, stack, "leaving")
        expect(watcher.locator("#presence li")).to_have_count(2)

        tab_1.get_by_role("button", name="Log out").click()
        tab_1.wait_for_url("**/accounts/login/**")

        # The other tab's socket is closed by the server (4401) and says so; it does not retry.
        connection = tab_2.locator("#connection")
        expect(connection).to_have_attribute("data-state", "signed-out", timeout=5_000)
        expect(connection.get_by_role("link", name="Log in again")).to_be_visible()
        expect(tab_2.locator("#text")).to_be_disabled()
        # Presence follows: carol left everywhere.
        expect(watcher.locator("#presence li")).to_have_count(1)
        expect(watcher.locator("#presence")).not_to_contain_text("carol")
        tab_2.screenshot(path=str(shots / "signed-out.png"))

        # The link leads back to a login form that returns to the room.
        connection.get_by_role("link", name="Log in again").click()
        tab_2.wait_for_url(re.compile(r"/accounts/login/\?next=(/|%2F)rooms(/|%2F)leaving"))
    finally:
        ctx.close()
        watcher_ctx.close()
