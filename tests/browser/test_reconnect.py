"""The server dies mid-conversation and comes back: the page says so, reconnects
by itself, and catches up with what was said meanwhile, each message once."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, WebSocket, expect
from websockets.sync.client import connect as ws_connect

from .pages import context_new, expect_live, expect_message_count, login, messages, room_open, send
from .stack import Stack


def send_as(stack: Stack, context: BrowserContext, slug: str, texts: list[str]) -> list[int]:
    """Post messages with a plain WebSocket client on the user's session cookie."""
    cookies = {c["name"]: c["value"] for c in context.cookies(stack.base_url)}
    url = stack.base_url.replace("http://", "ws://") + f"/ws/rooms/{slug}/"
    ids = []
    with ws_connect(
        url,
        origin=stack.base_url,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={cookies['sessionid']}"},
        open_timeout=10,
    ) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        for text in texts:
            client_id = uuid.uuid4().hex
            ws.send(json.dumps({"type": "message.send", "text": text, "client_id": client_id}))
            while True:
                frame = json.loads(ws.recv(timeout=10))
                if frame["type"] == "message" and frame["message"]["client_id"] == client_id:
                    ids.append(frame["message"]["id"])
                    break
                assert frame["type"] != "error", frame
    return ids


def test_server_restart_catch_up(browser: Browser, live_stack: Stack, shots: Path) -> None:
    stack = live_stack
    alice_ctx = context_new(browser)
    bob_ctx = context_new(browser)
    sockets: list[str] = []
    hellos: list[dict[str, object]] = []

    def on_websocket(ws: WebSocket) -> None:
        sockets.append(ws.url)

        def on_frame(payload: str | bytes) -> None:
            if isinstance(payload, str) and payload.startswith('{"type":"hello"'):
                hellos.append(json.loads(payload))

        ws.on("framereceived", on_frame)

    try:
        alice = alice_ctx.new_page()
        alice.on("websocket", on_websocket)
        bob = bob_ctx.new_page()
        login(alice, stack, "alice")
        login(bob, stack, "bob")
        room_open(alice, stack, "resume")
        room_open(bob, stack, "resume")
        send(alice, "before the outage 1")
        send(bob, "before the outage 2")
        for page in (alice, bob):
            expect_message_count(page, 2)
        last_seen = max(m["id"] for m in messages(alice))

        stack.kill()
        expect(alice.locator("#connection")).to_have_attribute("data-state", "reconnecting")
        # Typed while the server is gone: kept as "sending…" and sent after the reconnect.
        send(alice, "typed during the outage")
        expect(alice.locator("#pending > li.pending")).to_have_count(1)
        expect(alice.locator("#pending > li .msg-time")).to_have_text("sending…")
        # Alice's network drops too, so she cannot be back before the others talk.
        alice_ctx.set_offline(True)
        # Offline the moment the browser says so, not when pings time out.
        expect(alice.locator("#connection")).to_have_attribute("data-state", "offline", timeout=1000)
        expect(alice.locator("#connection")).to_contain_text("Offline")
        alice.screenshot(path=str(shots / "reconnecting.png"))

        stack.start()
        missed = [f"said while alice was away {i}" for i in range(1, 4)]
        missed_ids = send_as(stack, bob_ctx, "resume", missed)
        expect_message_count(bob, 5, timeout=20_000)
        expect(alice.locator("#connection")).to_have_attribute("data-state", "offline")
        # Back online: the page reconnects at once (the "online" event), not at the end of its backoff.
        alice_ctx.set_offline(False)

        # Both tabs come back by themselves (backoff is capped at ~10 s) and catch up.
        for page in (alice, bob):
            expect_live(page, timeout=20_000)
            expect_message_count(page, 6)
        rows = stack.room_messages("resume")
        assert len(rows) == 6
        for page in (alice, bob):
            view = messages(page)
            assert [m["id"] for m in view] == [r[0] for r in rows]
            assert [m["seq"] for m in view] == list(range(1, 7))
            texts = [m["text"] for m in view]
            assert len(set(texts)) == 6, texts
            assert set(missed) <= set(texts)
            assert "typed during the outage" in texts
        # The reconnect resumed from the newest id alice had seen.
        resumed = [url for url in sockets if "after=" in url]
        assert resumed, sockets
        assert resumed[-1].endswith(f"after={last_seen}")
        # They came in the resume hello, not live: alice really had missed them.
        assert len(hellos) >= 2
        resumed_hello = hellos[-1]
        assert [m["id"] for m in resumed_hello["messages"]] == missed_ids  # type: ignore[index]
        alice.screenshot(path=str(shots / "caught-up.png"))
    finally:
        alice_ctx.close()
        bob_ctx.close()
