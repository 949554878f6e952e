"""Regenerate docs/screenshot.png and docs/screenshot-phone.png: a room with a
conversation, an assistant reply, a reply quoting a message, an edit and a
mention.

    .venv/bin/python -m tests.browser.screenshot [--out docs/screenshot.png] [--phone-out docs/screenshot-phone.png]

It runs the real site exactly as ``make run`` does out of the box (no model
configured, so the built-in demo assistant answers), drives two people in
headless Chromium (alice on a desktop, bob on a 390x844 phone), and photographs
both tabs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from .pages import context_new, expect_message_count, login, message_action, room_open, row_with_text, send
from .stack import BASE_DIR, CHROMIUM, CHROMIUM_ARGS, Stack

CONVERSATION = [
    ("alice", "Morning! The **v2 release** is out — has anyone tried the new streaming API yet?"),
    ("bob", "Not yet. Quick one for the bot before standup:"),
    ("bob", "@assistant how do I print a greeting in Python?"),
]


def screenshot_take(out: Path, phone_out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), openai_base_url=None)
        stack.prepare(["alice", "bob"], ["general"])
        stack.start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                alice_ctx = context_new(browser, width=1180, height=860)
                bob_ctx = context_new(browser, width=390, height=844)
                pages = {"alice": alice_ctx.new_page(), "bob": bob_ctx.new_page()}
                for name, page in pages.items():
                    login(page, stack, name)
                    room_open(page, stack, "general")
                for name, text in CONVERSATION:
                    before = pages["alice"].locator("#messages > li.msg.user").count()
                    send(pages[name], text)
                    expect(pages["alice"].locator("#messages > li.msg.user")).to_have_count(before + 1)
                reply = pages["alice"].locator("#messages > li.msg.assistant")
                expect(reply).to_have_attribute("data-status", "complete", timeout=30_000)
                alice = pages["alice"]
                # A reply that quotes bob's question and mentions him.
                message_action(row_with_text(alice, "how do I print a greeting").first, "reply")
                send(alice, "Perfect, thanks! I'll add that to the runbook — @bob can you review it?")
                expect_message_count(alice, len(CONVERSATION) + 2)
                # An edit: alice fixes her first message.
                message_action(row_with_text(alice, "has anyone tried"), "edit")
                editor = alice.locator("textarea.msg-editor-text")
                editor.fill("Morning! The **v2 release** is out — has anyone tried the new *streaming* API yet?")
                editor.press("Enter")
                expect(alice.locator(".msg-edited")).to_have_count(1)
                expect(pages["bob"].locator(".msg-edited")).to_have_count(1)
                expect(pages["bob"].locator("span.mention.me")).to_have_count(1)
                pages["bob"].locator("#text").press_sequentially("Sounds good", delay=20)
                expect(alice.locator("#typing")).to_have_text("bob is typing…")
                alice.mouse.move(5, 5)  # no hover toolbar in the picture
                alice.locator("#text").focus()
                alice.wait_for_function(
                    "() => [...document.querySelectorAll('.msg-actions')]"
                    ".every(a => getComputedStyle(a).opacity === '0')"
                )
                alice.screenshot(path=str(out))
                pages["bob"].locator("#log").evaluate("l => { l.scrollTop = l.scrollHeight; }")
                pages["bob"].screenshot(path=str(phone_out))
                browser.close()
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BASE_DIR / "docs" / "screenshot.png")
    parser.add_argument("--phone-out", type=Path, default=BASE_DIR / "docs" / "screenshot-phone.png")
    args = parser.parse_args()
    screenshot_take(args.out, args.phone_out)
    print(f"wrote {args.out} and {args.phone_out}")


if __name__ == "__main__":
    main()
