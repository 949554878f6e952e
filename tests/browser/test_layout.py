"""Phones and tablets (issue 11): at 390x844 and 768x1024 with 60 messages,
long code blocks, long URLs and a wide table, the top bar, the room header and
the composer stay put and uncovered, the log is the only thing that scrolls and
reaches the first message, nothing scrolls the page sideways, and the people
here are one tap away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from .pages import context_new, login, messages, room_open
from .stack import Stack

SLUG = "layout"
COUNT = 60
LONG_URL = "https://example.com/" + "a-very-long-path-segment-" * 12 + "?q=" + "x" * 80
LONG_CODE = "```python\nresult = compute(" + ", ".join(f"argument_number_{i}" for i in range(30)) + ")\n```"
WIDE_TABLE = (
    "| "
    + " | ".join(f"column {i}" for i in range(14))
    + " |\n|"
    + "---|" * 14
    + "\n| "
    + " | ".join(f"value-{i}-wide" for i in range(14))
    + " |"
)
UNBROKEN = "x" * 400


def seed_text(i: int) -> str:
    if i % 10 == 3:
        return f"message {i}: the code\n\n{LONG_CODE}"
    if i % 10 == 6:
        return f"message {i}: see {LONG_URL}"
    if i == 20:
        return f"message {i}: a table\n\n{WIDE_TABLE}"
    if i == 30:
        return f"message {i}: {UNBROKEN}"
    return f"message {i}: " + ("a few words of ordinary chat " * (1 + i % 4)).strip()


@pytest.fixture(scope="module")
def layout_room(stack: Stack) -> str:
    texts = [seed_text(i) for i in range(1, COUNT + 1)]
    stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model\n"
        "from rooms.models import Room\n"
        "from rooms.services import message_create\n"
        f"room = Room.objects.get(slug={SLUG!r})\n"
        "users = [get_user_model().objects.get(username=n) for n in ('alice', 'bob')]\n"
        f"for i, text in enumerate({texts!r}):\n"
        "    message_create(room=room, user=users[i % 2], text=text)\n",
    )
    return SLUG


AT_BOTTOM_JS = (
    "() => { const l = document.getElementById('log'); return l.scrollHeight - l.scrollTop - l.clientHeight < 5; }"
)

BOXES_JS = """() => {
    const box = (sel) => { const r = document.querySelector(sel).getBoundingClientRect();
                           return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, height: r.height}; };
    return {
        topbar: box('.topbar'), header: box('.room-header'), log: box('#log'), composer: box('.composer-area'),
        viewport: {width: window.innerWidth, height: window.innerHeight},
    };
}"""

# The element actually drawn at the middle of each fixed part is that part (nothing from the log on top).
ON_TOP_JS = """() => {
    const hit = (sel) => {
        const r = document.querySelector(sel).getBoundingClientRect();
        const points = [[r.left + 8, r.top + r.height / 2], [r.left + r.width / 2, r.top + r.height / 2],
                        [r.right - 8, r.top + r.height / 2]];
        return points.every(([x, y]) => { const el = document.elementFromPoint(x, y); return el && el.closest(sel); });
    };
    return {topbar: hit('.topbar'), header: hit('.room-header'), composer: hit('.composer')};
}"""

SIDEWAYS_JS = """() => {
    const doc = document.scrollingElement;
    const log = document.getElementById('log').getBoundingClientRect();
    const outside = [];
    for (const node of document.querySelectorAll('#messages > li.msg .msg-main')) {
        const r = node.getBoundingClientRect();
        if (r.right > log.right + 1 || r.left < log.left - 1) outside.push(node.closest('li').dataset.seq);
    }
    // For the failure message: what sticks out of the viewport.
    const wide = [];
    for (const node of document.body.querySelectorAll('*')) {
        const r = node.getBoundingClientRect();
        if (r.right > doc.clientWidth + 1 && !node.closest('.log')) wide.push(`${node.localName}.${node.className}`);
    }
    return {scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, bodyWidth: document.body.scrollWidth,
            outside, scrollX: window.scrollX, wide: wide.slice(0, 8)};
}"""


def layout_check(page: Page) -> dict[str, Any]:
    boxes = page.evaluate(BOXES_JS)
    view = boxes["viewport"]
    for part in ("topbar", "header", "log", "composer"):
        box = boxes[part]
        assert box["height"] > 0, (part, box)
        assert box["top"] >= -0.5 and box["bottom"] <= view["height"] + 0.5, (part, box, view)
        assert box["left"] >= -0.5 and box["right"] <= view["width"] + 0.5, (part, box, view)
    # Stacked in order, not overlapping: top bar, header, log, composer.
    assert boxes["topbar"]["bottom"] <= boxes["header"]["top"] + 0.5, boxes
    assert boxes["header"]["bottom"] <= boxes["log"]["top"] + 0.5, boxes
    assert boxes["log"]["bottom"] <= boxes["composer"]["top"] + 0.5, boxes
    assert boxes["log"]["height"] > view["height"] * 0.4, boxes
    assert page.evaluate(ON_TOP_JS) == {"topbar": True, "header": True, "composer": True}
    sideways = page.evaluate(SIDEWAYS_JS)
    assert sideways["scrollWidth"] <= sideways["clientWidth"], sideways["wide"]
    assert sideways["bodyWidth"] <= sideways["clientWidth"], sideways["wide"]
    assert sideways["outside"] == [], sideways
    return boxes


@pytest.mark.parametrize(("width", "height"), [(390, 844), (768, 1024)], ids=["phone-390", "tablet-768"])
def test_small_screens(
    browser: Browser, live_stack: Stack, layout_room: str, shots: Path, width: int, height: int
) -> None:
    stack = live_stack
    context = context_new(browser, width=width, height=height)
    try:
        page = context.new_page()
        login(page, stack, "alice")
        room_open(page, stack, layout_room)
        expect(page.locator("#messages > li.msg")).to_have_count(50)
        page.wait_for_function(AT_BOTTOM_JS)
        layout_check(page)
        page.screenshot(path=str(shots / "bottom.png"))

        # Long code and wide tables scroll inside their own block.
        code = page.locator("#messages .msg-body pre").first
        assert code.evaluate("n => n.scrollWidth > n.clientWidth")
        table = page.locator("#messages .msg-body table").first
        assert table.evaluate("n => n.scrollWidth > n.clientWidth")

        # The log is the only scroller and it reaches the first message.
        log = page.locator("#log")
        assert log.evaluate("l => l.scrollHeight > l.clientHeight")
        older = page.get_by_role("button", name="Load older messages")
        log.evaluate("l => { l.scrollTop = 0; }")
        expect(older).to_be_visible()
        older.click()
        expect(page.locator("#messages > li.msg")).to_have_count(COUNT)
        expect(older).to_be_hidden()
        log.evaluate("l => { l.scrollTop = 0; }")
        first = page.locator('#messages > li.msg[data-seq="1"]')
        expect(first).to_be_in_viewport()
        assert messages(page)[0]["text"].startswith("message 1:")
        log_box = log.bounding_box()
        first_box = first.bounding_box()
        assert log_box is not None and first_box is not None
        assert first_box["y"] >= log_box["y"] - 0.5
        layout_check(page)
        assert page.evaluate("() => window.scrollY") == 0
        page.screenshot(path=str(shots / "top.png"))

        if width < 760:
            # No hover on a phone: a tap on a message shows its actions, big enough for a finger.
            row = page.locator('#messages > li.msg[data-seq="2"]')
            row.locator(".msg-body").click()
            reply = row.locator('button.msg-action[data-action="reply"]')
            expect(reply).to_be_visible()
            box = reply.bounding_box()
            assert box is not None and box["height"] >= 40, box
            page.screenshot(path=str(shots / "actions.png"))
            reply.click()
            expect(page.locator("#reply-chip")).to_be_visible()
            expect(page.locator("#reply-chip")).to_contain_text("bob")
            layout_check(page)
            page.screenshot(path=str(shots / "replying.png"))

        # Fingers: every control of the header and the composer is at least 40 px tall.
        for selector in (".room-header a.back", "#send", "#text", "#presence-toggle"):
            control = page.locator(selector)
            if control.is_visible():
                box = control.bounding_box()
                assert box is not None and box["height"] >= 40, (selector, box)

        # Offline: the badge says so at once and still fits in the header.
        context.set_offline(True)
        connection = page.locator("#connection")
        expect(connection).to_have_attribute("data-state", "offline", timeout=1000)
        header = page.locator(".room-header").bounding_box()
        badge = connection.bounding_box()
        assert header is not None and badge is not None
        assert badge["x"] >= 0 and badge["x"] + badge["width"] <= min(header["x"] + header["width"], width) + 0.5
        layout_check(page)
        page.screenshot(path=str(shots / "offline.png"))
    finally:
        context.close()


def test_presence_drawer_on_a_phone(browser: Browser, live_stack: Stack, layout_room: str, shots: Path) -> None:
    stack = live_stack
    alice_ctx = context_new(browser, width=390, height=844)
    bob_ctx = context_new(browser)
    try:
        alice = alice_ctx.new_page()
        login(alice, stack, "alice")
        bob = bob_ctx.new_page()
        login(bob, stack, "bob")
        room_open(alice, stack, layout_room)
        room_open(bob, stack, layout_room)

        sidebar = alice.locator("#sidebar")
        expect(sidebar).to_be_hidden()
        toggle = alice.locator("#presence-toggle")
        expect(toggle).to_be_visible()
        expect(toggle).to_contain_text("2")
        toggle.click()
        expect(sidebar).to_be_visible()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        expect(alice.locator("#presence li")).to_have_count(2)
        for name in ("alice", "bob"):
            expect(alice.locator(f'#presence li[data-username="{name}"]')).to_be_visible()
        alice.wait_for_function(
            "() => { const r = document.getElementById('sidebar').getBoundingClientRect();"
            " return r.left >= 0 && r.right <= window.innerWidth + 0.5; }"
        )
        alice.screenshot(path=str(shots / "drawer.png"))
        alice.get_by_role("button", name="Close the list of people here").click()
        expect(sidebar).to_be_hidden()
        expect(toggle).to_have_attribute("aria-expanded", "false")

        # The count follows presence.
        bob_ctx.close()
        expect(toggle).to_contain_text("1")
    finally:
        alice_ctx.close()
        bob_ctx.close()
