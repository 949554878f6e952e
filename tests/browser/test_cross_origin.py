"""Cross-site WebSocket hijacking from another port of the same host (issue 10).

Cookies are not scoped by port, and a page on http://127.0.0.1:<other port> is
same-site with the chat on http://127.0.0.1:<site port>: Chromium sends the
victim's session cookie with that page's WebSocket handshake. Only the server's
Origin check (scheme, host and port) stands between that page and the
victim's rooms.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import Browser

from .pages import context_new, login, room_open
from .stack import Stack

ATTACK_HTML = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>win a prize</title></head>
<body><p>Nothing to see here.</p><script src="/attack.js"></script></body></html>
"""

# Reports on window.__attack what the socket did; sends a message as the victim
# the moment it opens.
ATTACK_JS = b"""
const params = new URLSearchParams(location.search);
const out = {opened: false, hello: false, frames: [], error: false, closeCode: null, done: false};
window.__attack = out;
const ws = new WebSocket(`ws://127.0.0.1:${params.get("port")}/ws/rooms/${params.get("slug")}/`);
ws.onopen = () => {
  out.opened = true;
  ws.send(JSON.stringify({type: "message.send", text: params.get("mark")}));
};
ws.onmessage = (event) => {
  const frame = JSON.parse(event.data);
  out.frames.push(frame.type);
  if (frame.type === "hello") out.hello = true;
};
ws.onerror = () => { out.error = true; };
ws.onclose = (event) => { out.closeCode = event.code; out.done = true; };
"""


class _AttackerHandler(BaseHTTPRequestHandler):
    files = {"/attack.html": ("text/html", ATTACK_HTML), "/attack.js": ("text/javascript", ATTACK_JS)}

    def do_GET(self) -> None:
        kind, body = self.files.get(self.path.split("?", 1)[0], ("text/plain", b""))
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", kind)  # and no CSP: any script runs
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def attacker_site() -> Iterator[str]:
    """A page on another port of 127.0.0.1, served from a thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AttackerHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_page_on_another_port_cannot_open_the_victims_socket(
    live_stack: Stack, browser: Browser, attacker_site: str
) -> None:
    slug = "lobby"
    mark = f"posted by the attacker page {uuid.uuid4().hex[:8]}"
    context = context_new(browser)
    try:
        victim = context.new_page()
        login(victim, live_stack, "dave")
        room_open(victim, live_stack, slug)  # the victim's session opens the socket from the site
        log_before = live_stack.log_path.stat().st_size

        attack = context.new_page()
        attack.goto(f"{attacker_site}/attack.html?port={live_stack.port}&slug={slug}&mark={mark}")
        attack.wait_for_function("window.__attack && (window.__attack.done || window.__attack.hello)", timeout=15_000)
        result = attack.evaluate("window.__attack")
        # The session cookie really was there to be ridden: it is same-site.
        assert any(c["name"] == "sessionid" and c["domain"] == "127.0.0.1" for c in context.cookies())
    finally:
        context.close()

    assert result["opened"] is False and result["hello"] is False, result
    assert result["frames"] == [] and result["closeCode"] == 1006, result
    time.sleep(0.5)
    assert all(mark not in text for (text,) in live_stack.query("SELECT text FROM rooms_message"))
    with open(live_stack.log_path, "rb") as handle:
        handle.seek(log_before)
        log = handle.read().decode("utf-8", "replace")
    assert f"refused a websocket from origin '{attacker_site}'" in log, log[-2000:]
    assert "Traceback" not in log
