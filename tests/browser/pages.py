"""What a person does on the site, as Playwright steps, and what a tab shows."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Browser, BrowserContext, Page, expect

from .stack import PASSWORD, Stack

TIMEOUT_MS = 15_000


def context_new(browser: Browser, *, width: int = 1100, height: int = 760) -> BrowserContext:
    context = browser.new_context(viewport={"width": width, "height": height}, locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(TIMEOUT_MS)
    return context


def login(page: Page, stack: Stack, username: str) -> None:
    """Through the real login form."""
    page.goto(stack.url("/accounts/login/"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(stack.url("/"))
    expect(page.locator(".whoami")).to_have_text(username)


def room_open(page: Page, stack: Stack, slug: str) -> None:
    page.goto(stack.url(f"/rooms/{slug}/"))
    expect_live(page)


def expect_live(page: Page, timeout: int = TIMEOUT_MS) -> None:
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=timeout)


def send(page: Page, text: str) -> None:
    """Type into the composer and press Enter, as a person would."""
    box = page.locator("#text")
    box.fill(text)
    box.press("Enter")


def messages(page: Page) -> list[dict[str, Any]]:
    """Every confirmed message row in the tab, in DOM order."""
    return page.eval_on_selector_all(
        "#messages > li.msg",
        """rows => rows.map(r => ({
            id: Number(r.dataset.id),
            seq: r.dataset.seq ? Number(r.dataset.seq) : null,
            status: r.dataset.status,
            author: r.querySelector('.msg-author').textContent,
            own: r.classList.contains('own'),
            assistant: r.classList.contains('assistant'),
            text: r.querySelector('.msg-body').innerText.trim(),
        }))""",
    )


def expect_message_count(page: Page, count: int, timeout: int = TIMEOUT_MS) -> None:
    expect(page.locator("#messages > li.msg")).to_have_count(count, timeout=timeout)
    expect(page.locator("#pending > li")).to_have_count(0, timeout=timeout)


def reply_row(page: Page, reply_id: int) -> Any:
    return page.locator(f'#messages > li.msg[data-id="{reply_id}"]')


def row_with_text(page: Page, text: str) -> Any:
    """The confirmed message row whose body contains ``text``."""
    return page.locator("#messages > li.msg").filter(has=page.locator(".msg-body", has_text=text))


def message_action(row: Any, action: str) -> None:
    """Reply, Edit or Delete, as a person does: point at the message, press the button."""
    row.locator(".msg-main").hover()
    row.locator(f'button.msg-action[data-action="{action}"]').click()
