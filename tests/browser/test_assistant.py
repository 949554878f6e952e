"""The assistant in the browser: a reply grows in every tab, Stop stops it for
everyone (and upstream), and Markdown renders."""

from __future__ import annotations

import time
from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from tests.fakeopenai import FakeOpenAI
from tests.xss_payloads import html_is_safe

from .pages import context_new, expect_message_count, login, reply_row, room_open, send
from .stack import Stack

LONGER_WHILE_STREAMING_JS = """([id, than]) => {
    const body = document.querySelector(`#messages > li[data-id="${id}"] .msg-body.streaming`);
    return body && body.textContent.length > than ? body.textContent.length : false;
}"""


def streaming_length(page: Page, reply_id: int, longer_than: int = 0) -> int:
    handle = page.wait_for_function(LONGER_WHILE_STREAMING_JS, arg=[reply_id, longer_than])
    return int(handle.json_value())


def wait_until(predicate: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_streaming_reply_stop_and_markdown(
    browser: Browser, live_stack: Stack, fake_openai: FakeOpenAI, shots: Path
) -> None:
    stack = live_stack
    contexts = [context_new(browser) for _ in range(3)]
    try:
        alice, bob, carol = (ctx.new_page() for ctx in contexts)
        for page, name in ((alice, "alice"), (bob, "bob")):
            login(page, stack, name)
            room_open(page, stack, "stream")

        send(alice, "@assistant [[long]] tell us a long story")
        streaming = bob.locator("#messages > li.msg.assistant.status-streaming")
        expect(streaming).to_have_count(1)
        reply_id = int(streaming.get_attribute("data-id") or 0)
        expect(streaming.locator(".msg-author")).to_have_text("assistant")
        expect(streaming.get_by_role("button", name="Stop")).to_be_visible()

        # The text grows while the reply is still streaming: two different partial lengths.
        first = streaming_length(bob, reply_id)
        second = streaming_length(bob, reply_id, longer_than=first)
        assert second > first > 0

        # A tab opened mid-stream picks the reply up from hello and keeps growing.
        login(carol, stack, "carol")
        room_open(carol, stack, "stream")
        joined = streaming_length(carol, reply_id)
        assert streaming_length(carol, reply_id, longer_than=joined) > joined
        bob.screenshot(path=str(shots / "streaming.png"))

        # One reply at a time per room: a second mention waits its turn, and says so.
        send(carol, "@assistant what's up?")
        for page in (alice, bob, carol):
            expect(page.locator("#notices .notice-info .notice-text")).to_have_text(
                "@assistant will answer after 1 earlier request."
            )

        # Bob stops alice's request.
        assert fake_openai.server.open_streams == 1
        bob.locator(f'#messages > li[data-id="{reply_id}"] button.stop').click()
        for page in (alice, bob, carol):
            row = reply_row(page, reply_id)
            expect(row).to_have_attribute("data-status", "cancelled")
            expect(row.locator(".badge-cancelled")).to_have_text("stopped by bob")
            expect(row.locator("button.stop")).to_have_count(0)
            expect(row.locator(".msg-body.streaming")).to_have_count(0)
        status, cancelled_by, saved_text = stack.query(
            "SELECT status, cancelled_by, text FROM rooms_message WHERE id = ?", (reply_id,)
        )[0]
        assert (status, cancelled_by) == ("cancelled", "bob")
        finals = {
            page: reply_row(page, reply_id).locator(".msg-body").inner_text().strip() for page in (alice, bob, carol)
        }
        assert len(set(finals.values())) == 1, finals
        assert finals[alice] == str(saved_text).strip()
        assert str(saved_text).startswith("lorem ipsum")
        # Stop reached the model too: the upstream stream was closed, not left running.
        wait_until(lambda: fake_openai.server.open_streams == 0, 10, "the upstream stream to close")
        bob.screenshot(path=str(shots / "stopped.png"))

        # Then the queued one runs: streamed, then replaced by the rendered final text.
        expect_message_count(alice, 4)
        latest = alice.locator("#messages > li.msg.assistant").last
        expect(latest).to_have_attribute("data-status", "complete")
        expect(latest.locator(".msg-body")).to_contain_text("Hello from the fake model. You said:")
        expect(latest.locator(".msg-body")).to_contain_text("héllo wörld")
        expect(latest.locator(".msg-body")).to_contain_text("日本語")
        expect(alice.locator("#notices .notice-info")).to_have_count(0)

        # Markdown from a person renders too: bold, and a highlighted code block.
        send(
            alice,
            'Try **this** instead:\n\n```python\ndef greet(name: str) -> str:\n    return f"hi {name}"\n```',
        )
        for page in (alice, bob, carol):
            expect_message_count(page, 5)
            row = page.locator("#messages > li.msg").last
            expect(row.locator(".msg-body strong")).to_have_text("this")
            expect(row.locator(".msg-body pre.hl code span.k").first).to_have_text("def")
            expect(row.locator(".msg-body pre.hl")).to_contain_text('return f"hi {name}"')
        alice.screenshot(path=str(shots / "markdown.png"))
    finally:
        for ctx in contexts:
            ctx.close()


# Every distinct state of a body still being written, as HTML and as text.
STREAM_RECORDER_JS = """() => {
    const snaps = {html: [], text: []};
    window.__streamSnaps = snaps;
    const seen = new Set();
    const record = () => {
        for (const body of document.querySelectorAll('#messages .msg-body.streaming')) {
            const html = body.innerHTML;
            if (seen.has(html)) continue;
            seen.add(html);
            snaps.html.push(html);
            snaps.text.push(body.textContent);
        }
    };
    new MutationObserver(record).observe(document.getElementById('messages'),
                                         {subtree: true, childList: true, characterData: true});
}"""

LIVE_MARKDOWN = (
    "**bold claim** and *a subtle one* then a list:\n\n- first point\n- second point with `inline code`\n\n"
    "```python\ndef greet(name):\n    return f'hi {name}'\n```\n\nThat is ~~all~~ everything, see https://example.com/docs"
)


def test_markdown_formatted_while_streaming(browser: Browser, live_stack: Stack, shots: Path) -> None:
    """The growing reply is Markdown before it ends, with no markup characters
    showing at any cut point, and the server's html replaces it at the end."""
    stack = live_stack
    context = context_new(browser)
    try:
        page = context.new_page()
        login(page, stack, "alice")
        room_open(page, stack, "live-md")
        page.evaluate(STREAM_RECORDER_JS)
        # The fake model echoes its context: this message, Markdown and all, a few characters at a time.
        send(page, f"@assistant [[echo-context]] [[tps=40]] {LIVE_MARKDOWN}")
        streaming = page.locator("#messages > li.msg.assistant.status-streaming .msg-body.streaming")
        expect(streaming.locator("strong")).to_have_text("bold claim")
        expect(streaming.locator("em").first).to_have_text("a subtle one")
        expect(streaming.locator("ul > li")).to_have_count(2)
        expect(streaming.locator("pre.hl code")).to_contain_text("def greet")
        # Still being written when all of that was already formatted.
        expect(page.locator("#messages > li.msg.assistant")).to_have_attribute("data-status", "streaming")
        page.screenshot(path=str(shots / "mid-stream.png"))

        reply = page.locator("#messages > li.msg.assistant")
        expect(reply).to_have_attribute("data-status", "complete", timeout=30_000)
        # The final html is the server's: highlighted code, and the same text.
        expect(reply.locator(".msg-body pre.hl code span.k").first).to_have_text("def")
        expect(reply.locator(".msg-body strong")).to_have_text("bold claim")
        expect(reply.locator(".msg-body s")).to_have_text("all")

        snaps = page.evaluate("() => window.__streamSnaps")
        assert len(snaps["html"]) > 10, len(snaps["html"])
        for text in snaps["text"]:
            # No markup characters at any cut point: what is open is closed, a lone marker is held back.
            assert "**" not in text and "```" not in text and "~~" not in text, text[-200:]
            assert not text.rstrip().endswith(("*", "`", "_")), text[-200:]
        for html in snaps["html"]:
            assert html_is_safe(html) == [], html
        assert any("<strong>" in html for html in snaps["html"])
    finally:
        context.close()
