"""No script from any message, a person's or the model's, ever runs in the page."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, Dialog, Request, expect

from tests.xss_payloads import XSS_PAYLOADS, html_is_safe

from .pages import context_new, expect_message_count, login, send
from .stack import Stack

# What the page itself may hold inside the log besides message bodies: buttons.
LOG_PROBLEMS_JS = """() => {
    const log = document.getElementById('log');
    const problems = [];
    for (const node of log.querySelectorAll('*')) {
        for (const attr of node.attributes) {
            if (attr.name.toLowerCase().startsWith('on')) problems.push(`${attr.name} on <${node.localName}>`);
            if (attr.name === 'style') problems.push(`style on <${node.localName}>`);
        }
        if (['href', 'src', 'action', 'formaction', 'data', 'xlink:href'].some(name => {
            const value = node.getAttribute(name);
            return value !== null && /^\\s*(javascript|vbscript|data):/i.test(value.replace(/[\\t\\n\\r]/g, ''));
        })) problems.push(`dangerous URL on <${node.localName}>`);
        const linked = node.localName === 'a' && node.hasAttribute('href');
        if (linked && !['http:', 'https:', 'mailto:'].includes(node.protocol)) {
            problems.push(`link to ${node.protocol}`);
        }
    }
    for (const tag of ['img', 'script', 'iframe', 'svg', 'math', 'object', 'embed', 'style', 'form', 'input',
                       'link', 'meta', 'base', 'video', 'audio', 'frame', 'template', 'noscript']) {
        const count = log.getElementsByTagName(tag).length;
        if (count) problems.push(`${count} <${tag}>`);
    }
    return problems;
}"""


# Every distinct innerHTML of a body still being written.
STREAM_RECORDER_JS = """() => {
    const snaps = [];
    window.__streamSnaps = snaps;
    const seen = new Set();
    new MutationObserver(() => {
        for (const body of document.querySelectorAll('#messages .msg-body.streaming')) {
            if (!seen.has(body.innerHTML)) {
                seen.add(body.innerHTML);
                snaps.push(body.innerHTML);
            }
        }
    }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
}"""


def test_xss_payloads_never_run(browser: Browser, live_stack: Stack, shots: Path) -> None:
    stack = live_stack
    context = context_new(browser, height=900)
    dialogs: list[str] = []
    foreign: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    def on_request(request: Request) -> None:
        if not request.url.startswith(stack.base_url) and not request.url.startswith("ws://127.0.0.1"):
            foreign.append(request.url)

    try:
        page = context.new_page()
        page.on("dialog", on_dialog)
        page.on("request", on_request)
        login(page, stack, "alice")
        response = page.goto(stack.url("/rooms/xss/"))
        assert response is not None
        csp = response.headers.get("content-security-policy", "")
        directives = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}
        assert directives.get("script-src") == ["'self'"], csp
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, csp
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        title = page.title()

        # NUL never reaches the database: the server refuses it and the text stays in the composer.
        storable = [p for p in XSS_PAYLOADS if "\x00" not in p]
        for payload in (p for p in XSS_PAYLOADS if "\x00" in p):
            send(page, payload)
            expect(page.locator("#notices .notice-error")).to_contain_text("NUL")
            expect(page.locator("#text")).to_have_value(payload)
            expect(page.locator("#pending > li")).to_have_count(0)
            page.locator("#notices .notice-close").click()
            page.locator("#text").fill("")

        # Every payload as a person's message.
        for payload in storable:
            send(page, payload)
        expect_message_count(page, len(storable))
        # Raw HTML was shown as text, not parsed.
        expect(page.locator("#messages")).to_contain_text("<script>alert(1)</script>")
        expect(page.locator("#messages")).to_contain_text("<img src=x onerror=alert(1)>")

        # And from the model: the fake model echoes its whole context (every payload,
        # inline after a name) and this last message (every payload at a line start),
        # a few characters at a time: while it streams, the page renders its Markdown
        # at every cut point (markdown.js, DOMPurify), and each of those states is checked.
        page.evaluate(STREAM_RECORDER_JS)
        send(page, "@assistant [[echo-context]] [[tps=800]]\n\n" + "\n\n".join(storable))
        expect_message_count(page, len(storable) + 2, timeout=30_000)
        reply = page.locator("#messages > li.msg.assistant").last
        mid_stream_problems: list[str] = []
        checks = 0
        while reply.get_attribute("data-status") == "streaming":
            mid_stream_problems += page.evaluate(LOG_PROBLEMS_JS)
            checks += 1
        expect(reply).to_have_attribute("data-status", "complete", timeout=30_000)
        assert mid_stream_problems == []
        assert checks > 0, "the reply ended before the page could be looked at mid-stream"
        snaps = page.evaluate("() => window.__streamSnaps")
        # Many states, formatted: the payloads went through the streaming renderer.
        assert len(snaps) > 20, len(snaps)
        assert any("<strong>" in html or "<pre" in html for html in snaps)
        for html in snaps:
            assert html_is_safe(html) == [], html
        joined = "".join(snaps)
        for payload in ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>"):
            # Raw HTML in the stream was text: escaped, never parsed.
            assert payload.replace("<", "&lt;").replace(">", "&gt;") in joined, payload
        expect(reply.locator(".msg-body")).to_contain_text("user: alice: <script>alert(1)</script>")

        # Give any deferred handler (onerror, onload, ontoggle, autofocus) a chance to fire.
        page.evaluate("() => new Promise(resolve => requestAnimationFrame(() => setTimeout(resolve, 300)))")

        assert dialogs == []
        assert page.evaluate("() => typeof window.__xss") == "undefined"
        assert page.title() == title
        assert page.evaluate(LOG_PROBLEMS_JS) == []
        bodies = page.eval_on_selector_all("#messages .msg-body", "nodes => nodes.map(n => n.innerHTML)")
        assert len(bodies) == len(storable) + 2
        for body in bodies:
            assert html_is_safe(body) == [], body
        assert not [url for url in foreign if "evil.example" in url], foreign
        assert foreign == []
        page.screenshot(path=str(shots / "xss.png"), full_page=True)
    finally:
        context.close()
