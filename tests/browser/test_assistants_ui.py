"""Issue 13 in the browser: several assistants per room, regenerate with a
version flipper, @-completion in the composer, a private catch-up that only
its asker's tabs ever receive, and refusals (budget, permission) that give
the text back."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.fakeopenai import FakeOpenAI

from .pages import TIMEOUT_MS, context_new, expect_live, login, message_action, room_open, send
from .stack import Stack
from .test_layout import layout_check

ROOMS = {
    "versions": None,
    "duo": "critic",
    "complete": "critic",
    "catchup": None,
    "budget": None,
    "askers": None,
}

VISIBLE_REPLY = "#messages > li.msg.assistant:not([hidden])"


@pytest.fixture(scope="module")
def rooms(stack: Stack) -> dict[str, str | None]:
    """This module's rooms: two with a second assistant (@critic on its own
    model), one whose daily budget is a single token, one where only
    moderators may ask."""
    stack.manage(
        "shell",
        "-c",
        "from django.core.management import call_command\n"
        "from rooms.models import Room\n"
        f"for slug in {list(ROOMS)!r}:\n"
        "    call_command('createroom', slug, name=slug.title())\n"
        "Room.objects.filter(slug='budget').update(budget_daily_tokens=1)\n"
        "Room.objects.filter(slug='askers').update(assistant_invoke=Room.Invoke.MODERATORS)\n",
    )
    for slug, second in ROOMS.items():
        if second:
            stack.manage("roomassistant", slug, second, "--model", f"{second}-model")
    return ROOMS


def frames_record(page: Page) -> dict[str, list[Any]]:
    """Every WebSocket frame the page receives and sends, parsed, and the URLs it opens."""
    seen: dict[str, list[Any]] = {"received": [], "sent": [], "urls": []}

    def parse(payload: str | bytes) -> Any:
        try:
            return json.loads(payload)
        except (TypeError, ValueError):
            return payload

    def opened(ws: Any) -> None:
        seen["urls"].append(ws.url)
        ws.on("framereceived", lambda payload: seen["received"].append(parse(payload)))
        ws.on("framesent", lambda payload: seen["sent"].append(parse(payload)))

    page.on("websocket", opened)
    return seen


def test_regenerate_keeps_both_versions_and_flips(
    browser: Browser, live_stack: Stack, rooms: dict[str, str | None], shots: Path
) -> None:
    stack = live_stack
    alice_ctx, bob_ctx = context_new(browser), context_new(browser)
    phone_ctx = touch_context(browser)
    try:
        alice = alice_ctx.new_page()
        bob = bob_ctx.new_page()
        for page, name in ((alice, "alice"), (bob, "bob")):
            login(page, stack, name)
            room_open(page, stack, "versions")

        send(alice, "@assistant [[vary]] [[tps=12]] what is the plan?")
        for page in (alice, bob):
            expect(page.locator(VISIBLE_REPLY)).to_have_attribute("data-status", "complete")
            expect(page.locator(f"{VISIBLE_REPLY} .msg-body")).to_contain_text("(take 1)")
            # A lone reply has no flipper.
            expect(page.locator(".versions")).to_have_count(0)
        first_id = int(alice.locator(VISIBLE_REPLY).get_attribute("data-id") or 0)

        # Only who asked (or a moderator) is offered Regenerate.
        bob_row = bob.locator(VISIBLE_REPLY)
        bob_row.locator(".msg-main").hover()
        expect(bob_row.locator('button.msg-action[data-action="reply"]')).to_be_visible()
        expect(bob_row.locator('button.msg-action[data-action="regenerate"]')).to_have_count(0)

        message_action(alice.locator(VISIBLE_REPLY), "regenerate")
        # The new version streams into the same entry, shown while it is written.
        for page in (alice, bob):
            shown = page.locator(VISIBLE_REPLY)
            expect(shown).to_have_count(1)
            expect(shown).to_have_attribute("data-status", "streaming")
            expect(shown.locator(".version-label")).to_have_text("2 / 2")
        alice.screenshot(path=str(shots / "regenerating.png"))

        for page in (alice, bob):
            shown = page.locator(VISIBLE_REPLY)
            expect(shown).to_have_attribute("data-status", "complete")
            expect(shown.locator(".msg-body")).to_contain_text("(take 2)")
            # Both versions are in the DOM; one entry is visible.
            expect(page.locator("#messages > li.msg.assistant")).to_have_count(2)
            expect(page.locator("#messages > li.msg.assistant[hidden]")).to_have_count(1)
            expect(page.locator(f'#messages > li.msg[data-id="{first_id}"]')).to_be_hidden()
        second_id = int(alice.locator(VISIBLE_REPLY).get_attribute("data-id") or 0)
        assert second_id > first_id
        rows = stack.query(
            "SELECT id, versions FROM rooms_message WHERE id IN (?, ?) ORDER BY id", (first_id, second_id)
        )
        assert [(int(r[0]), json.loads(str(r[1]))) for r in rows] == [(first_id, [second_id]), (second_id, [first_id])]

        # The entry sits where the question was answered: right after the question.
        order = alice.eval_on_selector_all(
            "#messages > li.msg", "rows => rows.map(r => [Number(r.dataset.id), r.hidden])"
        )
        assert [row[0] for row in order][-3:] == [first_id - 1, first_id, second_id], order
        alice.screenshot(path=str(shots / "version-2-of-2.png"))

        # Flip back and forth, in either tab: the text shown changes, both stay reachable.
        for page in (bob, alice):
            page.locator(f"{VISIBLE_REPLY} button.version-prev").click()
            shown = page.locator(VISIBLE_REPLY)
            expect(shown).to_have_attribute("data-id", str(first_id))
            expect(shown.locator(".version-label")).to_have_text("1 / 2")
            expect(shown.locator(".msg-body")).to_contain_text("(take 1)")
            expect(shown.locator(".msg-body")).not_to_contain_text("(take 2)")
            expect(shown.locator("button.version-prev")).to_be_disabled()
        alice.screenshot(path=str(shots / "version-1-of-2.png"))
        alice.locator(f"{VISIBLE_REPLY} button.version-next").click()
        expect(alice.locator(VISIBLE_REPLY)).to_have_attribute("data-id", str(second_id))
        expect(alice.locator(f"{VISIBLE_REPLY} .msg-body")).to_contain_text("(take 2)")

        # A reload shows the newest, and the older one is still one flip away.
        alice.reload()
        expect_live(alice)
        expect(alice.locator(VISIBLE_REPLY)).to_have_attribute("data-id", str(second_id))
        expect(alice.locator(f"{VISIBLE_REPLY} .version-label")).to_have_text("2 / 2")
        alice.locator(f"{VISIBLE_REPLY} button.version-prev").click()
        expect(alice.locator(f"{VISIBLE_REPLY} .msg-body")).to_contain_text("(take 1)")

        # On a phone: the flipper's buttons are finger-sized, and a tap flips.
        phone = phone_ctx.new_page()
        login(phone, stack, "carol")
        room_open(phone, stack, "versions")
        shown = phone.locator(VISIBLE_REPLY)
        expect(shown.locator(".version-label")).to_have_text("2 / 2")
        prev = shown.locator("button.version-prev")
        rect = prev.bounding_box()
        assert rect is not None and rect["height"] >= 40 and rect["width"] >= 40, rect
        prev.tap()
        expect(phone.locator(f"{VISIBLE_REPLY} .msg-body")).to_contain_text("(take 1)")
        expect(phone.locator(f"{VISIBLE_REPLY} .version-label")).to_have_text("1 / 2")
        layout_check(phone)
        phone.screenshot(path=str(shots / "phone-version-1-of-2.png"))
    finally:
        for ctx in (alice_ctx, bob_ctx, phone_ctx):
            ctx.close()


def test_one_message_two_assistants_in_mention_order(
    browser: Browser, live_stack: Stack, rooms: dict[str, str | None], fake_openai: FakeOpenAI, shots: Path
) -> None:
    stack = live_stack
    context = context_new(browser)
    try:
        page = context.new_page()
        login(page, stack, "alice")
        room_open(page, stack, "duo")
        send(page, "@critic [[tps=15]] then @assistant: review the rollout plan")
        # One at a time per room: the second asked waits, and the notice names it.
        expect(page.locator("#notices .notice-info .notice-text")).to_have_text(
            "@assistant will answer after 1 earlier request."
        )
        page.screenshot(path=str(shots / "queued.png"))
        replies = page.locator("#messages > li.msg.assistant")
        expect(replies).to_have_count(2, timeout=30_000)
        for i in range(2):
            expect(replies.nth(i)).to_have_attribute("data-status", "complete", timeout=30_000)
        # In mention order, each labelled with its assistant's name.
        expect(replies.locator(".msg-author")).to_have_text(["critic", "assistant"])
        expect(replies.locator(".tag")).to_have_text(["AI", "AI"])
        expect(page.locator("#notices .notice-info")).to_have_count(0)
        page.screenshot(path=str(shots / "two-replies.png"))
        # Each on its own model.
        models = [
            r["model"]
            for r in fake_openai.server.requests
            if "review the rollout plan" in json.dumps(r.get("messages", []), ensure_ascii=False)
        ]
        assert models == ["critic-model", "fake-model"], models
        rows = [r for r in stack.room_messages("duo") if r[3] == "assistant"]
        assert [r[2] for r in rows] == ["critic", "assistant"]
    finally:
        context.close()


def touch_context(browser: Browser) -> BrowserContext:
    """A 390x844 phone with a touch screen."""
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, has_touch=True, locale="en-GB", timezone_id="UTC"
    )
    context.set_default_timeout(TIMEOUT_MS)
    return context


def option_names(page: Page) -> list[str]:
    return page.eval_on_selector_all("#mention-list li[role=option]", "els => els.map(e => e.dataset.name)")


def test_mention_completion(browser: Browser, live_stack: Stack, rooms: dict[str, str | None], shots: Path) -> None:
    stack = live_stack
    alice_ctx, bob_ctx, carol_ctx = context_new(browser), context_new(browser), context_new(browser)
    phone_ctx = touch_context(browser)
    try:
        alice, bob, carol = alice_ctx.new_page(), bob_ctx.new_page(), carol_ctx.new_page()
        for page, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
            login(page, stack, name)
            room_open(page, stack, "complete")
        send(carol, "carol was here")
        expect(alice.locator("#messages > li.msg")).to_have_count(1)
        carol_ctx.close()  # carol left; her name is still offered, from the log
        expect(alice.locator("#presence li")).to_have_count(2)

        box = alice.locator("#text")
        listbox = alice.locator("#mention-list")
        box.press_sequentially("Hey @cr")
        expect(listbox).to_be_visible()
        assert option_names(alice) == ["critic"]
        expect(listbox.locator("li[role=option]").first).to_contain_text("AI")
        alice.screenshot(path=str(shots / "completing.png"))
        box.press("Enter")  # takes the name, does not send
        expect(listbox).to_be_hidden()
        expect(box).to_have_value("Hey @critic ")
        expect(alice.locator("#pending > li")).to_have_count(0)

        # All names after a bare "@": assistants first, then people here or seen in the log (never oneself).
        box.fill("")
        box.press_sequentially("@")
        expect(listbox).to_be_visible()
        assert option_names(alice) == ["assistant", "critic", "bob", "carol"]
        expect(listbox.locator("li.active")).to_have_attribute("data-name", "assistant")
        box.press("ArrowDown")
        expect(listbox.locator("li.active")).to_have_attribute("data-name", "critic")
        box.press("ArrowDown")
        box.press("ArrowDown")
        box.press("ArrowUp")
        expect(listbox.locator("li.active")).to_have_attribute("data-name", "bob")
        box.press("Tab")
        expect(box).to_have_value("@bob ")
        expect(box).to_be_focused()
        # Esc closes the list and keeps the text; Enter then sends as always.
        box.press_sequentially("and @c")
        expect(listbox).to_be_visible()
        assert option_names(alice) == ["critic", "carol"]
        box.press("Escape")
        expect(listbox).to_be_hidden()
        expect(box).to_have_value("@bob and @c")
        box.press_sequentially("ritic [[tps=0]] ok?")
        expect(listbox).to_be_hidden()
        box.press("Enter")
        expect(alice.locator("#messages > li.msg.user")).to_have_count(2)
        expect(alice.locator("#messages > li.msg.user").last.locator(".msg-body")).to_have_text(
            "@bob and @critic [[tps=0]] ok?"
        )
        expect(alice.locator("#messages > li.msg.assistant .msg-author")).to_have_text("critic")
        expect(bob.locator("#messages > li.msg.user").last.locator("span.mention.me")).to_have_text("@bob")

        # On a phone: big rows, and a tap takes the name.
        phone = phone_ctx.new_page()
        login(phone, stack, "dave")
        room_open(phone, stack, "complete")
        phone_box = phone.locator("#text")
        phone_box.press_sequentially("@a")
        phone_list = phone.locator("#mention-list")
        expect(phone_list).to_be_visible()
        assert option_names(phone)[:2] == ["assistant", "alice"]
        for option in phone_list.locator("li[role=option]").all():
            rect = option.bounding_box()
            assert rect is not None and rect["height"] >= 40, rect
        layout_check(phone)
        phone.screenshot(path=str(shots / "phone-completing.png"))
        phone_list.locator('li[data-name="alice"]').tap()
        expect(phone_box).to_have_value("@alice ")
        expect(phone_list).to_be_hidden()
        expect(phone_box).to_be_focused()
    finally:
        for ctx in (alice_ctx, bob_ctx, carol_ctx, phone_ctx):
            ctx.close()


# Every message row ever added to the log, recorded from the first frame of the page.
ROWS_RECORDER = """
window.__rowsSeen = [];
document.addEventListener('DOMContentLoaded', () => {
    const list = document.getElementById('messages');
    if (!list) return;
    new MutationObserver((records) => {
        for (const r of records) for (const n of r.addedNodes) {
            if (n.nodeType === 1 && n.matches('li.msg')) window.__rowsSeen.push([n.dataset.id, n.textContent]);
        }
    }).observe(list, {childList: true});
});
"""


def test_catchup_is_private_to_the_asker(
    browser: Browser, live_stack: Stack, rooms: dict[str, str | None], shots: Path
) -> None:
    stack = live_stack
    alice_ctx, bob_ctx = context_new(browser), context_new(browser)
    phone_ctx = context_new(browser, width=390, height=844)
    try:
        bob = bob_ctx.new_page()
        bob.add_init_script(ROWS_RECORDER)
        bob_frames = frames_record(bob)
        login(bob, stack, "bob")
        room_open(bob, stack, "catchup")
        for text in ("the deploy moved to Thursday", "alice: please review PR 42", "lunch is at noon"):
            send(bob, text)
        expect(bob.locator("#messages > li.msg")).to_have_count(3)

        # alice was away: three unread, and she asks what she missed.
        alice = alice_ctx.new_page()
        alice_frames = frames_record(alice)
        login(alice, stack, "alice")
        room_open(alice, stack, "catchup")
        alice_2 = alice_ctx.new_page()
        room_open(alice_2, stack, "catchup")
        expect(alice.locator("#unread-divider")).to_be_visible()
        catchup = alice.get_by_role("button", name="Catch me up")
        expect(catchup).to_be_visible()
        catchup.click()
        private = alice.locator("#messages > li.msg.private")
        expect(private).to_have_count(1)
        expect(private.locator(".private-label")).to_have_text("Only you can see this")
        expect(private.locator(".msg-author")).to_have_text("assistant")
        expect(private).to_have_attribute("data-status", "complete")
        expect(private.locator(".msg-body")).to_contain_text("Hello from the fake model")
        # No seq: not part of the room's log; nothing to reply to or change.
        assert private.get_attribute("data-seq") is None
        expect(private.locator(".msg-actions")).to_have_count(0)
        expect(catchup).to_be_enabled()
        reply_id = int(private.get_attribute("data-id") or 0)
        # alice's other tab has it too (her own sockets).
        expect(alice_2.locator(f'#messages > li.msg.private[data-id="{reply_id}"]')).to_have_attribute(
            "data-status", "complete"
        )
        alice.screenshot(path=str(shots / "catchup.png"))

        # A reconnect resumes after the room's newest message, not after the newer private reply.
        last_public = max(row[0] for row in stack.room_messages("catchup"))
        assert reply_id > last_public
        alice_ctx.set_offline(True)
        expect(alice.locator("#connection")).to_have_attribute("data-state", "offline")
        alice_ctx.set_offline(False)
        expect_live(alice)
        resumed = parse_qs(urlparse(alice_frames["urls"][-1]).query)
        assert resumed.get("after") == [str(last_public)], alice_frames["urls"]
        expect(alice.locator("#messages > li.msg.private")).to_have_count(1)

        # The room goes on: bob's next message is applied in order, no hole fetched.
        send(bob, "one more thing")
        expect(alice.locator("#messages > li.msg:not(.private)")).to_have_count(4)
        seqs = alice.eval_on_selector_all("#messages > li.msg[data-seq]", "rs => rs.map(r => Number(r.dataset.seq))")
        assert seqs == [1, 2, 3, 4], seqs
        assert not [f for f in alice_frames["sent"] if isinstance(f, dict) and f.get("type") == "history.fetch"]

        # bob never received a byte of it, and his log never showed it.
        bob.wait_for_timeout(300)
        for frame in bob_frames["received"]:
            assert not (isinstance(frame, dict) and frame.get("private")), frame
            assert not (isinstance(frame, dict) and frame.get("reply_id") == reply_id), frame
            if isinstance(frame, dict) and frame.get("type") in ("message", "message.update"):
                assert frame["message"]["id"] != reply_id, frame
        assert str(reply_id) not in [row[0] for row in bob.evaluate("() => window.__rowsSeen")]
        expect(bob.locator("#messages > li.msg.private")).to_have_count(0)
        expect(bob.locator("#messages")).not_to_contain_text("Only you can see this")

        # After a reload it is still there (hello.private), still marked.
        alice.reload()
        expect_live(alice)
        expect(alice.locator(f'#messages > li.msg.private[data-id="{reply_id}"] .private-label')).to_be_visible()

        # On a phone: the button fits the header, and the reply is as clearly private.
        phone = phone_ctx.new_page()
        login(phone, stack, "alice")
        room_open(phone, stack, "catchup")
        phone_button = phone.locator("#catchup")
        expect(phone_button).to_be_visible()
        rect = phone_button.bounding_box()
        assert rect is not None and rect["height"] >= 40 and rect["width"] >= 40, rect
        expect(phone.locator("#messages > li.msg.private")).to_have_count(1)
        phone.locator("#messages > li.msg.private").scroll_into_view_if_needed()
        layout_check(phone)
        phone.screenshot(path=str(shots / "phone-catchup.png"))
    finally:
        for ctx in (alice_ctx, bob_ctx, phone_ctx):
            ctx.close()


def test_refusals_give_the_text_back_on_a_phone(
    browser: Browser, live_stack: Stack, rooms: dict[str, str | None], shots: Path
) -> None:
    stack = live_stack
    context = context_new(browser, width=390, height=844)
    try:
        page = context.new_page()
        login(page, stack, "alice")
        room_open(page, stack, "budget")
        # The room's daily budget is one token: the first reply spends it.
        send(page, "@assistant [[tps=0]] first question")
        expect(page.locator("#messages > li.msg.assistant")).to_have_attribute("data-status", "complete")

        send(page, "@assistant a second question")
        notice = page.locator("#notices .notice-error .notice-text")
        expect(notice).to_have_text(re.compile(r"^Assistant budget used up — resets at \w+ \d+ \w+, 00:00$"))
        # Refused before anything was saved: the text is back in the composer, nothing pending.
        expect(page.locator("#text")).to_have_value("@assistant a second question")
        expect(page.locator("#pending > li")).to_have_count(0)
        expect(page.locator("#messages > li.msg")).to_have_count(2)
        layout_check(page)
        page.screenshot(path=str(shots / "budget.png"))

        # A catch-up is refused the same way, and the button comes back.
        page.locator("#notices button.notice-close").click()
        page.locator("#catchup").click()
        expect(notice).to_have_text(re.compile(r"^Assistant budget used up — resets at "))
        expect(page.locator("#catchup")).to_be_enabled()
        expect(page.locator("#messages > li.msg.private")).to_have_count(0)

        # Only moderators may ask here: the server's reason, and the text back.
        room_open(page, stack, "askers")
        send(page, "@assistant may I ask?")
        expect(notice).to_have_text("Not allowed: only some people in this room may ask @assistant")
        expect(page.locator("#text")).to_have_value("@assistant may I ask?")
        expect(page.locator("#pending > li")).to_have_count(0)
        expect(page.locator("#messages > li.msg")).to_have_count(0)
        page.screenshot(path=str(shots / "forbidden.png"))
    finally:
        context.close()
