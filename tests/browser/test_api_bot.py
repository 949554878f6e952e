"""A bot streaming through the HTTP API, as people see it: two tabs watch its
reply grow piece by piece, one presses Stop, and the bot's next delta is
refused with 409 cancelled."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2 as httpx
from playwright.sync_api import Browser, expect

from .pages import context_new, login, reply_row, room_open, send
from .stack import Stack

STREAMING_TEXT_JS = """([id, text]) => {
    const body = document.querySelector(`#messages > li[data-id="${id}"] .msg-body`);
    return !!body && body.textContent.includes(text);
}"""


def test_a_bot_streams_to_two_tabs_and_is_stopped(browser: Browser, live_stack: Stack, shots: Path) -> None:
    stack = live_stack
    stack.manage("createroom", "bots", "--name", "Bots")
    token = stack.manage("createapitoken", "streambot", "--bot").strip().splitlines()[-1]
    api = httpx.Client(base_url=stack.base_url + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    contexts = [context_new(browser) for _ in range(2)]
    try:
        alice, bob = (ctx.new_page() for ctx in contexts)
        for page, name in ((alice, "alice"), (bob, "bob")):
            login(page, stack, name)
            room_open(page, stack, "bots")
        send(alice, "@streambot tell us something")
        question = None
        for _ in range(100):
            page_of = api.get("/rooms/bots/messages").json()["messages"]
            if page_of:
                question = page_of[-1]
                break
            time.sleep(0.05)
        assert question is not None and question["mentions"] == ["streambot"]

        started = api.post("/rooms/bots/replies", json={"in_reply_to": question["id"]})
        assert started.status_code == 201
        reply_id = started.json()["reply_id"]
        for page in (alice, bob):
            row = reply_row(page, reply_id)
            expect(row).to_have_attribute("data-status", "streaming")
            expect(row.locator(".msg-author")).to_have_text("streambot")

        # Token by token: each piece shows in both tabs before the next is sent.
        text = ""
        for seq, word in enumerate(["Once", " upon", " a", " time", " there", " was"], start=1):
            answer = api.post(f"/replies/{reply_id}/deltas", json={"seq": seq, "text": word})
            assert answer.status_code == 200, answer.text
            text += word
            for page in (alice, bob):
                page.wait_for_function(STREAMING_TEXT_JS, arg=[reply_id, text])
        bob.screenshot(path=str(shots / "bot-streaming.png"))

        # Stop from bob's tab: both tabs show it stopped, with the text so far.
        reply_row(bob, reply_id).locator("button.stop").click()
        for page in (alice, bob):
            row = reply_row(page, reply_id)
            expect(row).to_have_attribute("data-status", "cancelled")
            expect(row.locator(".badge-cancelled")).to_have_text("stopped by bob")
            expect(row.locator(".msg-body")).to_contain_text("Once upon a time there was")
        refused = api.post(f"/replies/{reply_id}/deltas", json={"seq": 7, "text": " a bot"})
        assert refused.status_code == 409 and refused.json()["code"] == "cancelled"
        alice.screenshot(path=str(shots / "bot-stopped.png"))
        rows = [r for r in stack.room_messages("bots") if r[0] == reply_id]
        assert rows == [(reply_id, question["seq"] + 1, "streambot", "assistant", "cancelled")]
    finally:
        api.close()
        for ctx in contexts:
            ctx.close()
