"""Issue 11 in the browser: edit and delete in every tab (and in a tab that was
offline meanwhile), replies that quote and jump, unread counts and the "new
messages" divider across a reload, mentions that reach another room's tab,
and the empty-room note."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from .pages import (
    context_new,
    expect_live,
    expect_message_count,
    login,
    message_action,
    messages,
    room_open,
    row_with_text,
    send,
)
from .stack import Stack

AT_BOTTOM_JS = (
    "() => { const l = document.getElementById('log'); return l.scrollHeight - l.scrollTop - l.clientHeight < 5; }"
)

# Playwright cannot hide a tab; this is what the page sees when its tab is in the background.
HIDE_TAB_JS = """() => {
    Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});
    Object.defineProperty(document, 'hidden', {value: true, configurable: true});
    document.dispatchEvent(new Event('visibilitychange'));
}"""
SHOW_TAB_JS = """() => {
    delete document.visibilityState;
    delete document.hidden;
    document.dispatchEvent(new Event('visibilitychange'));
}"""

# Notifications the page shows, recorded instead (permission granted).
NOTIFICATION_RECORDER = """
window.__notifications = [];
window.Notification = class {
    static permission = 'granted';
    static requestPermission() { return Promise.resolve('granted'); }
    constructor(title, options) { window.__notifications.push({title, tag: options.tag, body: options.body}); }
    addEventListener() {}
    close() {}
};
"""


def message_id(page: Page, text: str) -> int:
    return int(row_with_text(page, text).get_attribute("data-id") or 0)


def test_edit_and_delete_reach_every_tab(browser: Browser, live_stack: Stack, shots: Path) -> None:
    stack = live_stack
    alice_ctx = context_new(browser)
    bob_ctx = context_new(browser)
    carol_ctx = context_new(browser)
    try:
        alice_1 = alice_ctx.new_page()
        login(alice_1, stack, "alice")
        alice_2 = alice_ctx.new_page()
        bob = bob_ctx.new_page()
        login(bob, stack, "bob")
        carol = carol_ctx.new_page()
        login(carol, stack, "carol")
        tabs = [alice_1, alice_2, bob, carol]
        for page in tabs:
            room_open(page, stack, "edits")

        send(alice_1, "first draft of the plan")
        send(bob, "bob's own words")
        for page in tabs:
            expect_message_count(page, 2)
        mid = message_id(bob, "first draft of the plan")

        # Only one's own messages offer Edit and Delete; anyone's offer Reply.
        others = row_with_text(bob, "first draft of the plan")
        expect(others.locator('button.msg-action[data-action="reply"]')).to_have_count(1)
        expect(others.locator('button.msg-action[data-action="edit"]')).to_have_count(0)
        expect(others.locator('button.msg-action[data-action="delete"]')).to_have_count(0)
        bobs = row_with_text(alice_1, "bob's own words")
        expect(bobs.locator('button.msg-action[data-action="edit"]')).to_have_count(0)

        # Esc cancels an edit: nothing changes anywhere.
        own = row_with_text(alice_1, "first draft of the plan")
        message_action(own, "edit")
        editor = alice_1.locator(f'li.msg[data-id="{mid}"] textarea.msg-editor-text')
        expect(editor).to_be_focused()
        expect(editor).to_have_value("first draft of the plan")
        editor.fill("not this")
        editor.press("Escape")
        expect(editor).to_have_count(0)
        expect(alice_1.locator(f'li.msg[data-id="{mid}"] .msg-body')).to_have_text("first draft of the plan")

        # Enter saves: every tab shows the new text once, marked (edited) with the time in its title.
        message_action(own, "edit")
        editor.fill("second draft of the plan")
        editor.press("Enter")
        for page in tabs:
            row = page.locator(f'#messages > li.msg[data-id="{mid}"]')
            expect(row).to_have_count(1)
            expect(row.locator(".msg-body")).to_have_text("second draft of the plan")
            expect(row.locator(".msg-edited")).to_have_text("(edited)")
            expect(row.locator(".msg-edited")).to_have_attribute("title", re.compile(r"^edited "))
            expect_message_count(page, 2)
        alice_1.screenshot(path=str(shots / "edited.png"))

        # Carol's network drops; the next edit happens while she is away and reaches her on reconnect.
        carol_ctx.set_offline(True)
        expect(carol.locator("#connection")).to_have_attribute("data-state", "offline", timeout=1000)
        message_action(row_with_text(alice_2, "second draft of the plan"), "edit")
        alice_2.locator(f'li.msg[data-id="{mid}"] textarea.msg-editor-text').fill("third draft, final")
        alice_2.locator(f'li.msg[data-id="{mid}"] textarea.msg-editor-text').press("Enter")
        for page in (alice_1, alice_2, bob):
            expect(page.locator(f'#messages > li.msg[data-id="{mid}"] .msg-body')).to_have_text("third draft, final")
        expect(carol.locator(f'#messages > li.msg[data-id="{mid}"] .msg-body')).to_have_text("second draft of the plan")
        carol_ctx.set_offline(False)
        expect_live(carol, timeout=20_000)
        expect(carol.locator(f'#messages > li.msg[data-id="{mid}"] .msg-body')).to_have_text("third draft, final")
        expect(carol.locator(f'#messages > li.msg[data-id="{mid}"]')).to_have_count(1)
        expect_message_count(carol, 2)

        # Delete takes a second press; then every tab shows "message deleted" in its place.
        delete_row = row_with_text(alice_1, "third draft, final")
        message_action(delete_row, "delete")
        confirm = delete_row.locator('button.msg-action[data-action="delete"]')
        expect(confirm).to_have_text("Delete?")
        confirm.click()
        for page in tabs:
            row = page.locator(f'#messages > li.msg[data-id="{mid}"]')
            expect(row.locator(".msg-body.deleted")).to_have_text("message deleted")
            expect(row.locator("button.msg-action")).to_have_count(0)
            expect_message_count(page, 2)
        views = {id(page): [m["seq"] for m in messages(page)] for page in tabs}
        assert all(seqs == [1, 2] for seqs in views.values()), views
        bob.screenshot(path=str(shots / "deleted.png"))

        # After a reload, the same.
        bob.reload()
        expect_live(bob)
        expect(bob.locator(f'#messages > li.msg[data-id="{mid}"] .msg-body.deleted')).to_have_text("message deleted")
    finally:
        for ctx in (alice_ctx, bob_ctx, carol_ctx):
            ctx.close()


def test_reply_quotes_and_jumps(browser: Browser, live_stack: Stack, shots: Path) -> None:
    stack = live_stack
    alice_ctx = context_new(browser, height=700)
    bob_ctx = context_new(browser, height=700)
    try:
        alice = alice_ctx.new_page()
        login(alice, stack, "alice")
        bob = bob_ctx.new_page()
        login(bob, stack, "bob")
        room_open(alice, stack, "replies")
        room_open(bob, stack, "replies")

        send(bob, "Which port does the staging proxy listen on?")
        for i in range(1, 21):
            send(bob, f"filler {i}")
        for page in (alice, bob):
            expect_message_count(page, 21)
        original = message_id(alice, "Which port does the staging proxy")

        # Alice replies to the question: a chip above the composer, then a quote on her message.
        alice.locator("#log").evaluate("l => { l.scrollTop = 0; }")
        message_action(row_with_text(alice, "Which port does the staging proxy"), "reply")
        chip = alice.locator("#reply-chip")
        expect(chip).to_be_visible()
        expect(chip).to_contain_text("bob")
        expect(chip).to_contain_text("Which port does the staging proxy listen on?")
        expect(alice.locator("#text")).to_be_focused()
        send(alice, "8443, behind the VPN")
        expect(chip).to_be_hidden()
        for page in (alice, bob):
            expect_message_count(page, 22)
            quote = row_with_text(page, "8443, behind the VPN").locator("button.msg-quote")
            expect(quote).to_contain_text("bob")
            expect(quote).to_contain_text("Which port does the staging proxy listen on?")
        bob.wait_for_function(AT_BOTTOM_JS)
        expect(bob.locator(f'li.msg[data-id="{original}"]')).not_to_be_in_viewport()

        # Clicking the quote brings the original into view and flashes it.
        row_with_text(bob, "8443, behind the VPN").locator("button.msg-quote").click()
        target = bob.locator(f'li.msg[data-id="{original}"]')
        expect(target).to_be_in_viewport()
        expect(target).to_have_class(re.compile(r"\bflash\b"))
        bob.screenshot(path=str(shots / "jumped.png"))

        # A quote of a message that is not loaded yet: older history is paged in until it is.
        for i in range(21, 71):
            send(bob, f"more filler {i}")
        send(bob, "and the answer again, for the late joiner")
        expect_message_count(bob, 73)
        late_ctx = context_new(browser, height=700)
        try:
            late = late_ctx.new_page()
            login(late, stack, "carol")
            room_open(late, stack, "replies")
            expect(late.locator("#messages > li.msg")).to_have_count(50)
            expect(late.locator(f'li.msg[data-id="{original}"]')).to_have_count(0)
            # Alice quotes the question again: the late tab has only the newest 50 rows.
            message_action(row_with_text(alice, "Which port does the staging proxy"), "reply")
            send(alice, "(repeating the answer: 8443)")
            quote = row_with_text(late, "(repeating the answer: 8443)").locator("button.msg-quote")
            expect(quote).to_contain_text("Which port does the staging proxy")
            quote.click()
            expect(late.locator(f'li.msg[data-id="{original}"]')).to_be_in_viewport()
        finally:
            late_ctx.close()
    finally:
        alice_ctx.close()
        bob_ctx.close()


def test_unread_counts_divider_and_title(browser: Browser, live_stack: Stack, shots: Path) -> None:
    stack = live_stack
    alice_ctx = context_new(browser)
    bob_ctx = context_new(browser)
    try:
        alice = alice_ctx.new_page()
        login(alice, stack, "alice")
        bob = bob_ctx.new_page()
        login(bob, stack, "bob")
        room_open(bob, stack, "unread")
        room_open(alice, stack, "unread")
        send(alice, "I'll be back after lunch")
        expect_message_count(bob, 1)
        # Alice leaves for the room list; bob goes on talking and mentions her once.
        alice.goto(stack.url("/"))
        said = ["lunch is over", "the build is red", "@alice can you look at the build?"]
        for count, text in enumerate(said, start=2):
            send(bob, text)
            expect_message_count(bob, count)

        alice.reload()
        entry = alice.locator('.room-list li[data-slug="unread"]')
        expect(entry.locator(".unread-count")).to_have_text("3")
        expect(entry.locator(".mention-mark")).to_be_visible()
        # A room with nothing in it has no badge.
        expect(alice.locator('.room-list li[data-slug="elsewhere"] .unread-count')).to_have_count(0)
        alice.screenshot(path=str(shots / "room-list.png"))

        # In the room: the divider sits right above the first unread message; her mention stands out.
        entry.get_by_role("link").click()
        expect_live(alice)
        expect_message_count(alice, 4)
        divider = alice.locator("#unread-divider")
        expect(divider).to_have_text("New messages")
        assert divider.evaluate("d => d.nextElementSibling.querySelector('.msg-body').textContent.trim()") == (
            "lunch is over"
        )
        mention = row_with_text(alice, "can you look at the build")
        expect(mention).to_have_class(re.compile(r"\bmentions-me\b"))
        expect(mention.locator("span.mention.me")).to_have_text("@alice")
        alice.screenshot(path=str(shots / "divider.png"))

        # Reading at the bottom of the log is recorded: after a reload there is nothing new.
        alice.goto(stack.url("/"))
        expect(alice.locator('.room-list li[data-slug="unread"] .unread-count')).to_have_count(0)
        expect(alice.locator('.room-list li[data-slug="unread"] .mention-mark')).to_have_count(0)
        room_open(alice, stack, "unread")
        expect_message_count(alice, 4)
        expect(alice.locator("#unread-divider")).to_have_count(0)

        # While her tab is in the background, new messages count in its title.
        assert alice.title() == "Unread · Chatsite"
        alice.evaluate(HIDE_TAB_JS)
        send(bob, "still there?")
        send(bob, "hello?")
        expect(alice).to_have_title("(2) Unread · Chatsite")
        alice.evaluate(SHOW_TAB_JS)
        expect(alice).to_have_title("Unread · Chatsite")
    finally:
        alice_ctx.close()
        bob_ctx.close()


def test_mention_reaches_another_room(browser: Browser, live_stack: Stack, shots: Path) -> None:
    stack = live_stack
    alice_ctx = context_new(browser)
    bob_ctx = context_new(browser)
    asker_ctx = context_new(browser)
    try:
        # Alice's tab is in another room, in the background, and she allowed notifications.
        alice_ctx.add_init_script(NOTIFICATION_RECORDER)
        alice = alice_ctx.new_page()
        login(alice, stack, "alice")
        room_open(alice, stack, "elsewhere")
        # A tab in the room where it happens sees the mention too.
        alice_here = alice_ctx.new_page()
        room_open(alice_here, stack, "mentions")
        bob = bob_ctx.new_page()
        login(bob, stack, "bob")
        room_open(bob, stack, "mentions")

        expect(alice.locator("#notify-enable")).to_be_hidden()  # already granted
        alice.evaluate(HIDE_TAB_JS)
        send(bob, "@alice the release notes need your sign-off")
        expect(alice).to_have_title("(1) Elsewhere · Chatsite")
        note = alice.locator("#notices .notice-info")
        expect(note).to_contain_text("bob mentioned you in Mentions")
        expect(note).to_contain_text("the release notes need your sign-off")
        expect(note.get_by_role("link", name="Open")).to_have_attribute("href", "/rooms/mentions/")
        mid = message_id(bob, "the release notes need your sign-off")
        shown = alice.evaluate("() => window.__notifications")
        assert shown == [
            {
                "title": "bob mentioned you in Mentions",
                "tag": f"mention-{mid}",
                "body": "@alice the release notes need your sign-off",
            }
        ], shown
        expect(row_with_text(alice_here, "release notes").locator("span.mention.me")).to_have_text("@alice")
        # Bob is not told about his own mention, and a visible tab gets no system notification.
        assert bob.title() == "Mentions · Chatsite"
        alice.evaluate(SHOW_TAB_JS)
        expect(alice).to_have_title("Elsewhere · Chatsite")
        alice.screenshot(path=str(shots / "notified.png"))

        # Asking for permission: only on a click, and the button goes once answered.
        asker = asker_ctx.new_page()
        login(asker, stack, "carol")
        room_open(asker, stack, "elsewhere")
        button = asker.get_by_role("button", name="Turn on notifications for mentions")
        expect(button).to_be_visible()
        assert asker.evaluate("() => Notification.permission") == "default"
        button.click()
        expect(button).to_be_hidden()
    finally:
        for ctx in (alice_ctx, bob_ctx, asker_ctx):
            ctx.close()


def test_empty_room_note(browser: Browser, live_stack: Stack) -> None:
    stack = live_stack
    context = context_new(browser)
    try:
        page = context.new_page()
        login(page, stack, "dave")
        room_open(page, stack, "empty")
        note = page.locator("#empty")
        expect(note).to_be_visible()
        expect(note).to_contain_text("No messages yet")
        send(page, "first!")
        expect_message_count(page, 1)
        expect(note).to_be_hidden()
        page.reload()
        expect_live(page)
        expect_message_count(page, 1)
        expect(note).to_be_hidden()
    finally:
        context.close()
