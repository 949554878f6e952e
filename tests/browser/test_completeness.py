"""The page keeps the room complete by seq, whatever the transport loses, and
pages back through history on request."""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import Browser, WebSocketRoute, expect

from .pages import context_new, expect_message_count, login, messages, reply_row, room_open, send
from .stack import Stack

AT_BOTTOM_JS = (
    "() => { const l = document.getElementById('log'); return l.scrollHeight - l.scrollTop - l.clientHeight < 5; }"
)


def test_lost_frames_are_refetched(browser: Browser, live_stack: Stack, shots: Path) -> None:
    """Frames dropped between server and page (as a lossy channel layer would):
    a message is refetched by its seq gap, a lost delta or start is repaired by the end."""
    stack = live_stack
    dropped: list[dict[str, object]] = []
    # Set by the test before the mention whose assistant.start is to be lost.
    pending_prompt = [""]

    def dropped_start() -> bool:
        return any(f["type"] == "assistant.start" for f in dropped)

    def lossy(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_server(raw: str | bytes) -> None:
            frame = json.loads(raw)
            kind = frame.get("type")
            lose = (
                (kind == "message" and frame["message"]["text"] == "this one is lost")
                or (kind == "assistant.delta" and frame["seq"] in (2, 3) and not dropped_start())
                or (kind == "assistant.start" and "[[drop-start]]" in pending_prompt[0])
            )
            if lose:
                dropped.append(frame)
                return
            ws.send(raw)

        server.on_message(from_server)
        ws.on_message(lambda raw: server.send(raw))

    alice_ctx = context_new(browser)
    bob_ctx = context_new(browser)
    try:
        alice = alice_ctx.new_page()
        alice.route_web_socket(re.compile(r"/ws/rooms/gaps/"), lossy)
        bob = bob_ctx.new_page()
        login(alice, stack, "alice")
        login(bob, stack, "bob")
        room_open(alice, stack, "gaps")
        room_open(bob, stack, "gaps")

        for text in ("first", "this one is lost", "third"):
            send(bob, text)
        expect_message_count(bob, 3)
        # The jump from seq 1 to 3 makes alice's page fetch seq 2 from history.
        expect_message_count(alice, 3)
        assert [m["text"] for m in messages(alice)] == ["first", "this one is lost", "third"]
        assert [f["type"] for f in dropped] == ["message"]

        # Deltas 2 and 3 never reach alice: the text has a hole while streaming, and
        # assistant.end brings the whole reply.
        send(bob, "@assistant [[tokens=30]] [[tps=30]] count for me")
        expect_message_count(bob, 5)
        reply = bob.locator("#messages > li.msg.assistant").last
        expect(reply).to_have_attribute("data-status", "complete")
        reply_id = int(reply.get_attribute("data-id") or 0)
        expect(reply_row(alice, reply_id)).to_have_attribute("data-status", "complete")
        assert sorted(f["seq"] for f in dropped if f["type"] == "assistant.delta") == [2, 3]
        final = reply.locator(".msg-body").inner_text()
        assert reply_row(alice, reply_id).locator(".msg-body").inner_text() == final

        # A reply whose start is lost: its deltas have nowhere to go; the end shows it whole.
        pending_prompt[0] = "[[drop-start]]"
        send(bob, "@assistant [[tokens=20]] [[tps=40]] [[drop-start]] again")
        expect_message_count(bob, 7)
        second = bob.locator("#messages > li.msg.assistant").last
        expect(second).to_have_attribute("data-status", "complete")
        second_id = int(second.get_attribute("data-id") or 0)
        expect(reply_row(alice, second_id)).to_have_attribute("data-status", "complete")
        assert any(f["type"] == "assistant.start" for f in dropped)
        assert reply_row(alice, second_id).locator(".msg-body").inner_text() == second.locator(".msg-body").inner_text()

        rows = stack.room_messages("gaps")
        for page in (alice, bob):
            view = messages(page)
            assert [m["id"] for m in view] == [r[0] for r in rows]
            assert [m["seq"] for m in view] == list(range(1, len(rows) + 1))
        alice.screenshot(path=str(shots / "alice.png"))
    finally:
        alice_ctx.close()
        bob_ctx.close()


def test_load_older_and_new_messages_pill(browser: Browser, live_stack: Stack, shots: Path) -> None:
    stack = live_stack
    stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model\n"
        "from rooms.models import Room\n"
        "from rooms.services import message_create\n"
        "room = Room.objects.get(slug='history')\n"
        "user = get_user_model().objects.get(username='bob')\n"
        "for i in range(1, 131):\n"
        "    message_create(room=room, user=user, text=f'old message {i}')\n",
    )
    alice_ctx = context_new(browser, height=700)
    bob_ctx = context_new(browser)
    try:
        alice = alice_ctx.new_page()
        login(alice, stack, "alice")
        room_open(alice, stack, "history")
        # The newest 50, scrolled to the bottom.
        expect(alice.locator("#messages > li.msg")).to_have_count(50)
        assert [m["seq"] for m in messages(alice)] == list(range(81, 131))
        alice.wait_for_function(AT_BOTTOM_JS)

        older = alice.get_by_role("button", name="Load older messages")
        older.click()
        expect(alice.locator("#messages > li.msg")).to_have_count(100)
        older.click()
        expect(alice.locator("#messages > li.msg")).to_have_count(130)
        expect(older).to_be_hidden()
        assert [m["seq"] for m in messages(alice)] == list(range(1, 131))
        assert messages(alice)[0]["text"] == "old message 1"

        # Reading old messages: a new one does not yank the view down; a pill offers to.
        alice.locator("#log").evaluate("log => { log.scrollTop = 0; }")
        bob = bob_ctx.new_page()
        login(bob, stack, "bob")
        room_open(bob, stack, "history")
        send(bob, "something new")
        expect(alice.locator("#messages > li.msg")).to_have_count(131)
        pill = alice.get_by_role("button", name="New messages ↓")
        expect(pill).to_be_visible()
        assert alice.locator("#log").evaluate("log => log.scrollTop") == 0
        alice.screenshot(path=str(shots / "pill.png"))
        pill.click()
        alice.wait_for_function(AT_BOTTOM_JS)
        expect(pill).to_be_hidden()
        # At the bottom, the next one scrolls into view by itself.
        send(bob, "and another")
        expect(alice.locator("#messages > li.msg")).to_have_count(132)
        alice.wait_for_function(AT_BOTTOM_JS)
        expect(pill).to_be_hidden()
    finally:
        alice_ctx.close()
        bob_ctx.close()
