"""Regenerate docs/screenshot.png: a room with a conversation and an assistant reply.

    .venv/bin/python -m tests.browser.screenshot [--out docs/screenshot.png]

It runs the real site exactly as ``make run`` does out of the box (no model
configured, so the built-in demo assistant answers), drives two people in
headless Chromium, and photographs one of their tabs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from .pages import context_new, expect_message_count, login, room_open, send
from .stack import BASE_DIR, CHROMIUM, CHROMIUM_ARGS, Stack

CONVERSATION = [
    ("alice", "Morning! The **v2 release** is out — has anyone tried the new streaming API yet?"),
    ("bob", "Not yet. Quick one for the bot before standup:"),
    ("bob", "@assistant how do I print a greeting in Python?"),
]


def screenshot_take(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), openai_base_url=None)
        stack.prepare(["alice", "bob"], ["general"])
        stack.start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                alice_ctx = context_new(browser, width=1180, height=860)
                bob_ctx = context_new(browser, width=1180, height=860)
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
                send(pages["alice"], "Perfect, thanks! I'll add that to the runbook.")
                expect_message_count(pages["alice"], len(CONVERSATION) + 2)
                pages["bob"].locator("#text").press_sequentially("Sounds good", delay=20)
                expect(pages["alice"].locator("#typing")).to_have_text("bob is typing…")
                pages["alice"].screenshot(path=str(out))
                browser.close()
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BASE_DIR / "docs" / "screenshot.png")
    args = parser.parse_args()
    screenshot_take(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
