"""The HTTP API against real processes (issue 12): nginx in front of one daphne
and one uvicorn process, Redis, the fake model server, PostgreSQL when
DATABASE_URL points at it. Tokens, REST, the resumable SSE stream, bots that
stream, signed webhooks, the example client, fuzzed bodies."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stack import Stack, port_free
from tests.system.apiclient import SseStream, api, reply_view, token_make, token_revoke
from tests.system.conftest import USERS, client_for, stack_seed

pytestmark = [pytest.mark.system]
REPO = Path(__file__).resolve().parents[2]
_rooms = itertools.count(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    with Stack(
        tmp_path_factory.mktemp("api-stack"),
        daphne_count=2,
        servers=["daphne", "uvicorn"],
        fake_openai=True,
        env_overrides={
            "CHAT_RATE_LIMIT": "0",
            "ASSISTANT_RATE_LIMIT": "0",
            "ASSISTANT_FLUSH_MS": "20",
            "ASSISTANT_MAX_CONCURRENT_PER_ROOM": "4",
            "API_SSE_HEARTBEAT_SECONDS": "2",
            # The webhook tests deliver to a receiver on loopback; the default
            # (refused) is tested on a stack of its own below.
            "WEBHOOK_ALLOW_PRIVATE": "1",
            "WEBHOOK_RETRY_BASE_SECONDS": "0.5",
        },
    ) as running:
        stack_seed(running)
        yield running


@pytest.fixture(scope="module")
def tokens(stack) -> dict[str, str]:
    made = {name: token_make(stack, name) for name in USERS}
    made["echobot"] = token_make(stack, "echobot", bot=True)
    made["otherbot"] = token_make(stack, "otherbot", bot=True)
    return made


@pytest.fixture
def slug(stack) -> str:
    name = f"api-{next(_rooms)}"
    stack.room_create(name)
    return name


def db_value(stack: Stack, expression: str) -> str:
    return stack.manage("shell", "-c", f"print({expression})").stdout.strip().splitlines()[-1]


async def eventually(predicate, what: str, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


def logs_clean(stack: Stack) -> None:
    for name in ("daphne1", "daphne2"):
        assert "Traceback" not in stack.logs(name), stack.logs(name)[-3000:]


# --- Tokens ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_token_auth_cases(stack, tokens, sessions):
    base = stack.url
    stack.room_create("api-private", "--private", "--member", "alice")
    missing = await api(base, None, "GET", "/api/v1/rooms/")
    assert missing.status_code == 401 and missing.json()["code"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    for wrong in ("chs_000000000000_nope", "not-a-token", "x" * 300, tokens["alice"][:-2] + "zz"):
        response = await api(base, wrong, "GET", "/api/v1/rooms/")
        assert response.status_code == 401 and set(response.json()) >= {"code", "detail"}, wrong
    malformed = await api(base, None, "GET", "/api/v1/rooms/", headers={"Authorization": "Basic YWxpY2U6eA=="})
    assert malformed.status_code == 401

    # A token acts as its user: alice sees the private room, bob does not.
    alice = {r["slug"] for r in (await api(base, tokens["alice"], "GET", "/api/v1/rooms/")).json()["rooms"]}
    bob = {r["slug"] for r in (await api(base, tokens["bob"], "GET", "/api/v1/rooms/")).json()["rooms"]}
    assert "api-private" in alice and "api-private" not in bob
    # Invisible is missing: the same 404 as a room that does not exist, on every path.
    for path in ("/api/v1/rooms/{}/messages", "/api/v1/rooms/{}/events"):
        hidden = await api(base, tokens["bob"], "GET", path.format("api-private"))
        absent = await api(base, tokens["bob"], "GET", path.format("api-no-such-room"))
        assert hidden.status_code == absent.status_code == 404
        assert hidden.json() == absent.json()
    posted = await api(base, tokens["bob"], "POST", "/api/v1/rooms/api-private/messages", {"text": "let me in"})
    assert posted.status_code == 404
    ok = await api(base, tokens["alice"], "POST", "/api/v1/rooms/api-private/messages", {"text": "members only"})
    assert ok.status_code == 201

    # The session cookie reads (GET), never writes: a POST needs a token (no CSRF to ride).
    cookie = {"Cookie": f"sessionid={sessions['alice']['sessionid']}"}
    assert (await api(base, None, "GET", "/api/v1/rooms/", headers=cookie)).status_code == 200
    write = await api(base, None, "POST", "/api/v1/rooms/api-private/messages", {"text": "x"}, headers=cookie)
    assert write.status_code == 401

    # Revoked: 401 from the very next request, on both processes; an open stream ends.
    carol = token_make(stack, "carol", name="to revoke")
    stack.room_create("lobby-revoke")
    stream = SseStream(stack.daphne_urls[1], "lobby-revoke", token=carol)
    await stream.open()
    assert (await api(base, carol, "GET", "/api/v1/me")).status_code == 200
    token_revoke(stack, carol)
    for server in stack.daphne_urls:
        revoked = await api(server, carol, "GET", "/api/v1/me")
        assert revoked.status_code == 401 and revoked.json()["code"] == "invalid_token"
        assert "revoked" in revoked.json()["detail"]
    error = await stream.next("error", timeout=5)
    assert error["data"]["code"] == "invalid_token"
    await stream.close()
    logs_clean(stack)


# --- REST -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_rest_post_reaches_a_socket_on_the_other_process_with_the_next_seq(stack, tokens, sessions, slug):
    tab = client_for(stack, sessions, "bob", slug, via=1)  # uvicorn
    await tab.connect()
    first = await tab.say("from the socket")
    response = await api(
        stack.daphne_urls[0], tokens["alice"], "POST", f"/api/v1/rooms/{slug}/messages", {"text": "from REST"}
    )
    assert response.status_code == 201
    posted = response.json()
    assert posted["seq"] == first["seq"] + 1 and posted["author"] == "alice" and posted["html"] == "<p>from REST</p>"
    frame = await tab.next("message")
    assert frame["message"] == posted, "the same message object on both transports"
    page = (await api(stack.url, tokens["carol"], "GET", f"/api/v1/rooms/{slug}/messages")).json()
    assert [m["id"] for m in page["messages"]] == [first["id"], posted["id"]] and page["has_more"] is False
    older = (
        await api(stack.url, tokens["carol"], "GET", f"/api/v1/rooms/{slug}/messages?before={posted['id']}&limit=1")
    ).json()
    assert [m["id"] for m in older["messages"]] == [first["id"]]
    newer = (await api(stack.url, tokens["carol"], "GET", f"/api/v1/rooms/{slug}/messages?after={first['id']}")).json()
    assert [m["id"] for m in newer["messages"]] == [posted["id"]]
    await tab.close()


@pytest.mark.asyncio
async def test_client_id_repeat_returns_the_same_message(stack, tokens, sessions, slug):
    tab = client_for(stack, sessions, "bob", slug, via=0)
    await tab.connect()
    body = {"text": "exactly once", "client_id": "retry-1"}
    first = await api(stack.daphne_urls[0], tokens["alice"], "POST", f"/api/v1/rooms/{slug}/messages", body)
    again = await api(stack.daphne_urls[1], tokens["alice"], "POST", f"/api/v1/rooms/{slug}/messages", body)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == first.json()
    clash = await api(stack.url, tokens["alice"], "POST", f"/api/v1/rooms/{slug}/messages", {**body, "text": "other"})
    assert clash.status_code == 409 and clash.json()["code"] == "conflict"
    await tab.next("message")
    await asyncio.sleep(0.5)
    assert [f["message"]["id"] for f in tab.frames if f["type"] == "message"] == [first.json()["id"]]
    await tab.close()


@pytest.mark.asyncio
async def test_errors_are_json_with_codes(stack, tokens, slug):
    base, token = stack.url, tokens["alice"]
    cases = [
        ("POST", f"/api/v1/rooms/{slug}/messages", b"{not json", 400, "bad_json"),
        ("POST", f"/api/v1/rooms/{slug}/messages", b"[1, 2]", 400, "bad_request"),
        ("POST", f"/api/v1/rooms/{slug}/messages", b'{"text": ""}', 400, "bad_request"),
        ("POST", f"/api/v1/rooms/{slug}/messages", b'{"text": "a\\u0000b"}', 400, "bad_request"),
        ("POST", f"/api/v1/rooms/{slug}/messages", b'{"text": "\\ud800"}', 400, "bad_request"),
        ("POST", f"/api/v1/rooms/{slug}/messages", json.dumps({"text": "x" * 4001}).encode(), 413, "too_long"),
        ("POST", f"/api/v1/rooms/{slug}/messages", b'{"text": "hi", "reply_to": 999999999}', 404, "not_found"),
        ("POST", f"/api/v1/rooms/{slug}/messages", b'{"text": "hi", "client_id": 5}', 400, "bad_request"),
        ("GET", f"/api/v1/rooms/{slug}/messages?limit=1000", None, 400, "bad_request"),
        ("GET", f"/api/v1/rooms/{slug}/messages?after=1&before=2", None, 400, "bad_request"),
        ("GET", f"/api/v1/rooms/{slug}/messages?after=-1", None, 400, "bad_request"),
        ("DELETE", f"/api/v1/rooms/{slug}/messages", None, 405, "method_not_allowed"),
        ("GET", "/api/v1/nothing/here", None, 404, "not_found"),
        ("POST", f"/api/v1/rooms/{slug}/replies/99999999999999999999999/cancel", b"{}", 404, "not_found"),
        ("POST", f"/api/v1/rooms/{slug}/replies", b"{}", 403, "forbidden"),  # not a bot
        ("GET", f"/api/v1/rooms/{slug}/events?after=garbage", None, 400, "bad_request"),
        ("GET", f"/api/v1/rooms/{slug}/events?after=999999", None, 400, "bad_request"),
    ]
    for method, path, raw, status, code in cases:
        response = await api(base, token, method, path, raw=raw if raw is not None else b"")
        assert response.status_code == status, (method, path, response.status_code, response.text[:200])
        assert response.json()["code"] == code and response.json()["detail"], (path, response.json())
    big = await api(base, token, "POST", f"/api/v1/rooms/{slug}/messages", raw=b'{"text": "' + b"a" * 70_000 + b'"}')
    assert big.status_code == 413
    logs_clean(stack)


# --- SSE ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sse_gets_messages_and_a_whole_assistant_reply(stack, tokens, sessions, slug):
    stream = SseStream(stack.url, slug, token=tokens["bob"])
    ready = await stream.open()
    assert ready["data"]["resumed"] is False and ready["id"] == ready["data"]["cursor"]
    assert stream.response_headers["content-type"].startswith("text/event-stream")
    direct = SseStream(stack.daphne_urls[0], slug, token=tokens["bob"])
    await direct.open()
    assert direct.response_headers["x-accel-buffering"] == "no"  # nginx consumes it
    await direct.close()
    posted = (
        await api(stack.url, tokens["alice"], "POST", f"/api/v1/rooms/{slug}/messages", {"text": "hi all"})
    ).json()
    message = await stream.next("message")
    assert message["data"] == {"type": "message", "message": posted}
    asked = await api(
        stack.url,
        tokens["alice"],
        "POST",
        f"/api/v1/rooms/{slug}/messages",
        {"text": "@assistant [[tokens=30]] [[tps=100]] go"},
    )
    assert asked.status_code == 201
    start = await stream.next("assistant.start")
    end = await stream.next("assistant.end", timeout=30)
    view = reply_view(stream.events, start["data"]["reply_id"])
    assert not view["problems"] and view["seqs"] == list(range(1, len(view["seqs"]) + 1)) and view["seqs"]
    assert end["data"]["message"]["status"] == "complete" and view["text"] == end["data"]["message"]["text"]
    # Ids only ever move on, and only on events that move the room's state.
    ids = [e["id"] for e in stream.events]
    assert all(ids), "message, start, delta and end events all carry an id"
    # Heartbeats (API_SSE_HEARTBEAT_SECONDS=2 here) keep a quiet stream open through nginx.
    comments = stream.comments
    await asyncio.sleep(4.5)
    assert stream.comments > comments
    # Live-only: typing from a socket arrives, without an id.
    tab = client_for(stack, sessions, "carol", slug, via=1)
    await tab.connect()
    await tab.send({"type": "typing", "active": True})
    typing = await stream.next("typing")
    assert typing["id"] is None and typing["data"]["username"] == "carol"
    await tab.close()
    await stream.close()


@pytest.mark.asyncio
async def test_sse_reconnect_with_last_event_id_during_a_reply(stack, tokens, sessions, slug):
    """Every event once, in order, across a disconnect in the middle of a reply;
    the text followed equals the saved reply; what was posted meanwhile is replayed."""
    witness = SseStream(stack.url, slug, token=tokens["dave"])  # never disconnects
    await witness.open()
    stream = SseStream(stack.daphne_urls[0], slug, token=tokens["bob"])
    await stream.open()
    await api(
        stack.url,
        tokens["alice"],
        "POST",
        f"/api/v1/rooms/{slug}/messages",
        {"text": "@assistant [[tokens=120]] [[tps=40]] long"},
    )
    start = await stream.next("assistant.start")
    reply_id = start["data"]["reply_id"]
    await stream.until(lambda: len(stream.of("assistant.delta")) >= 5, what="5 deltas")
    cursor = stream.last_id
    first_part = list(stream.events)
    await stream.close()
    # While away: two messages, and the reply goes on.
    for text in ("while away 1", "while away 2"):
        await api(stack.url, tokens["carol"], "POST", f"/api/v1/rooms/{slug}/messages", {"text": text})
    await asyncio.sleep(0.5)
    resumed = SseStream(stack.daphne_urls[1], slug, token=tokens["bob"])  # the other process
    ready = await resumed.open(cursor)
    assert ready["data"]["resumed"] is True
    await resumed.next("assistant.end", timeout=30)
    await witness.until(lambda: witness.of("assistant.end"), what="the witness's end")
    events = [e for e in first_part if e["type"] != "ready"] + [e for e in resumed.events if e["type"] != "ready"]
    view = reply_view(events, reply_id)
    assert not view["problems"], view["problems"]
    assert len(view["seqs"]) == len(set(view["seqs"])), "no delta twice"
    saved = view["final"]
    assert saved["status"] == "complete" and view["text"] == saved["text"]
    assert view["text"] == reply_view(witness.events, reply_id)["text"]

    # Rows: every seq once, in order, on the resumed path as on the witness.
    def rows(seen):  # type: ignore[no-untyped-def]
        return [e["data"]["message"]["seq"] for e in seen if e["type"] in ("message", "assistant.start")]

    assert rows(events) == rows(witness.events) and rows(events) == sorted(set(rows(events)))
    texts = [e["data"]["message"]["text"] for e in events if e["type"] == "message"]
    assert texts.count("while away 1") == texts.count("while away 2") == 1
    ends = [e for e in events if e["type"] == "assistant.end"]
    assert len(ends) == 1
    await witness.close()
    await resumed.close()


@pytest.mark.asyncio
async def test_sse_resume_replays_edits_and_ended_replies_once(stack, tokens, sessions, slug):
    tab = client_for(stack, sessions, "alice", slug, via=0)
    await tab.connect()
    stream = SseStream(stack.url, slug, token=tokens["bob"])
    await stream.open()
    message = await tab.say("before the edit")
    await stream.next("message")
    await tab.say("@assistant [[tokens=30]] [[tps=30]] reply")
    await stream.next("assistant.delta")
    cursor = stream.last_id
    await stream.close()
    await tab.send({"type": "message.edit", "id": message["id"], "text": "after the edit"})
    await tab.next("message.update")
    await tab.wait_for(lambda: any(r["final"] for r in tab.replies.values()), what="reply end", timeout=20)
    resumed = SseStream(stack.url, slug, token=tokens["bob"])
    await resumed.open(cursor)
    updates = resumed.of("message.update")
    assert [u["data"]["message"]["text"] for u in updates] == ["after the edit"]
    assert len(resumed.of("assistant.end")) == 1
    # And from the cursor after that replay: nothing again.
    again = SseStream(stack.url, slug, token=tokens["bob"])
    ready = await again.open(resumed.last_id)
    assert ready["data"]["replayed"] == 0
    await asyncio.gather(tab.close(), resumed.close(), again.close())


@pytest.mark.asyncio
async def test_sse_survives_a_process_restart_by_reconnecting(stack, tokens, slug):
    stream = SseStream(stack.daphne_urls[0], slug, token=tokens["bob"])
    await stream.open()
    await api(stack.url, tokens["alice"], "POST", f"/api/v1/rooms/{slug}/messages", {"text": "before restart"})
    await stream.next("message")
    cursor = stream.last_id
    stack.restart_daphne(0)
    with pytest.raises(ConnectionError):
        await stream.next("message", timeout=10)
    posted = (
        await api(
            stack.daphne_urls[1], tokens["alice"], "POST", f"/api/v1/rooms/{slug}/messages", {"text": "during restart"}
        )
    ).json()
    await stream.open(cursor)
    replayed = stream.of("message")
    assert [m["data"]["message"]["id"] for m in replayed][-1] == posted["id"]
    assert [m["data"]["message"]["text"] for m in replayed].count("during restart") == 1
    await stream.close()


@pytest.mark.asyncio
async def test_sse_with_the_session_cookie(stack, sessions, slug):
    stream = SseStream(stack.url, slug, cookies={"sessionid": sessions["carol"]["sessionid"]})
    ready = await stream.open()
    assert ready["data"]["user"]["username"] == "carol"
    await stream.close()


# --- Bots -----------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_bot_streams_a_reply_is_stopped_and_gets_409(stack, tokens, sessions, slug):
    bot = tokens["echobot"]
    tabs = [client_for(stack, sessions, "alice", slug, via=0), client_for(stack, sessions, "bob", slug, via=1)]
    for tab in tabs:
        await tab.connect()
    question = await tabs[0].say("@echobot say something")
    started = await api(
        stack.daphne_urls[0], bot, "POST", f"/api/v1/rooms/{slug}/replies", {"in_reply_to": question["id"]}
    )
    assert started.status_code == 201
    reply_id = started.json()["reply_id"]
    start = await tabs[1].next("assistant.start")
    assert start["reply_id"] == reply_id and start["message"]["author"] == "echobot" and start["message"]["bot"] is True
    assert start["message"]["seq"] == question["seq"] + 1 and start["in_reply_to"] == question["id"]
    sent = ""
    for seq in range(1, 9):
        piece = f" word{seq}"
        server = stack.daphne_urls[seq % 2]  # every delta may land on either process
        answer = await api(server, bot, "POST", f"/api/v1/replies/{reply_id}/deltas", {"seq": seq, "text": piece})
        assert answer.status_code == 200 and answer.json()["duplicate"] is False
        sent += piece
        await asyncio.sleep(0.06)
    repeat = await api(stack.url, bot, "POST", f"/api/v1/replies/{reply_id}/deltas", {"seq": 8, "text": " word8"})
    assert repeat.status_code == 200 and repeat.json()["duplicate"] is True
    gap = await api(stack.url, bot, "POST", f"/api/v1/replies/{reply_id}/deltas", {"seq": 11, "text": "x"})
    assert gap.status_code == 409 and gap.json()["code"] == "gap" and gap.json()["expected"] == 9
    for tab in tabs:
        await tab.wait_for(
            lambda t=tab: t.replies.get(reply_id, {}).get("text") == sent, what="every delta", timeout=10
        )
        assert not tab.problems
    # Someone else's reply is not yours to write.
    other = tokens["otherbot"]
    assert (
        await api(stack.url, other, "POST", f"/api/v1/replies/{reply_id}/deltas", {"seq": 9, "text": "x"})
    ).status_code == 403
    # Stop from a tab: every tab sees it end cancelled, and the bot's next delta is refused.
    await tabs[1].send({"type": "assistant.cancel", "reply_id": reply_id})
    end = await tabs[0].next("assistant.end", timeout=5)
    assert end["message"]["status"] == "cancelled" and end["message"]["cancelled_by"] == "bob"
    assert end["message"]["text"] == sent
    refused = await api(stack.url, bot, "POST", f"/api/v1/replies/{reply_id}/deltas", {"seq": 9, "text": " more"})
    assert refused.status_code == 409 and refused.json()["code"] == "cancelled"
    ended = await api(stack.url, bot, "POST", f"/api/v1/replies/{reply_id}/end", {"status": "complete"})
    assert ended.status_code == 409 and ended.json()["code"] == "cancelled"
    for tab in tabs:
        await tab.close()


@pytest.mark.asyncio
async def test_a_bot_ends_its_reply_and_a_silent_bot_is_interrupted(stack, tokens, sessions, slug):
    bot = tokens["echobot"]
    stream = SseStream(stack.url, slug, token=tokens["alice"])
    await stream.open()
    reply_id = (await api(stack.url, bot, "POST", f"/api/v1/rooms/{slug}/replies", {})).json()["reply_id"]
    for seq, piece in enumerate(["Hello", ", ", "**world**"], start=1):
        assert (
            await api(stack.url, bot, "POST", f"/api/v1/replies/{reply_id}/deltas", {"seq": seq, "text": piece})
        ).status_code == 200
    done = await api(stack.url, bot, "POST", f"/api/v1/replies/{reply_id}/end", {"status": "complete"})
    assert done.status_code == 200 and done.json()["message"]["html"] == "<p>Hello, <strong>world</strong></p>"
    again = await api(stack.url, bot, "POST", f"/api/v1/replies/{reply_id}/end", {"status": "complete"})
    assert again.status_code == 200, "a retried end answers the same end"
    await stream.next("assistant.end")
    view = reply_view(stream.events, reply_id)
    assert view["text"] == "Hello, **world**" == view["final"]["text"] and not view["problems"]

    silent = (await api(stack.url, bot, "POST", f"/api/v1/rooms/{slug}/replies", {})).json()["reply_id"]
    await api(stack.url, bot, "POST", f"/api/v1/replies/{silent}/deltas", {"seq": 1, "text": "I will go qui"})
    started = time.monotonic()
    end = await stream.next("assistant.end", timeout=20)
    assert end["data"]["reply_id"] == silent and end["data"]["message"]["status"] == "interrupted"
    assert 4 < time.monotonic() - started < 15
    late = await api(stack.url, bot, "POST", f"/api/v1/replies/{silent}/deltas", {"seq": 2, "text": "et"})
    assert late.status_code == 409 and late.json()["code"] == "ended"
    await stream.close()


@pytest.mark.asyncio
async def test_the_example_echo_bot_answers_its_mentions(stack, tokens, sessions, slug):
    bot = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "examples" / "chatsite_client.py"),
        stack.url,
        tokens["echobot"],
        "echo-bot",
        slug,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert bot.stdout is not None
        assert b"echo bot @echobot" in await asyncio.wait_for(bot.stdout.readline(), 15)
        await asyncio.sleep(1.0)  # its stream is open
        tab = client_for(stack, sessions, "alice", slug, via=1)
        await tab.connect()
        await tab.say("@echobot ping pong")
        start = await tab.next("assistant.start", timeout=15)
        await tab.next("assistant.delta")
        await tab.wait_for(lambda: tab.replies[start["reply_id"]]["final"], what="the bot's end", timeout=15)
        final = tab.replies[start["reply_id"]]["final"]
        assert final["text"] == "You said: ping pong" and final["author"] == "echobot" and final["status"] == "complete"
        assert len([f for f in tab.frames if f["type"] == "assistant.delta"]) >= 2, "streamed, not posted whole"
        await tab.close()
    finally:
        bot.terminate()
        await asyncio.wait_for(bot.wait(), 10)


# --- Webhooks ----------------------------------------------------------------------------------------------


class Receiver:
    """An HTTP server on loopback that records requests and answers scripted statuses."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[dict[str, object]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Receiver:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append({"line": lines[0], "headers": headers, "body": body})
            status = self.statuses.pop(0) if self.statuses else 200
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
            await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def webhook_make(stack: Stack, slug: str, url: str, secret: str, event: str = "message", bot: str = "") -> None:
    code = (
        "from rooms.models import Room; from rooms.api.models import Webhook;"
        "from django.contrib.auth import get_user_model;"
        f"bot = get_user_model().objects.filter(username={bot!r}).first();"
        f"Webhook.objects.create(room=Room.objects.get(slug={slug!r}), url={url!r}, secret={secret!r},"
        f" event={event!r}, bot=bot)"
    )
    stack.manage("shell", "-c", code)


@pytest.mark.asyncio
async def test_webhook_signed_and_retried_after_a_500(stack, tokens, slug):
    receiver = await Receiver([500]).start()
    mentions = await Receiver([]).start()
    try:
        webhook_make(stack, slug, f"http://127.0.0.1:{receiver.port}/hook", "s3cret")
        webhook_make(stack, slug, f"http://127.0.0.1:{mentions.port}/hook", "m3ntion", "mention", "echobot")
        await asyncio.sleep(6)  # each process re-reads the room's webhooks within 5 s
        posted = (
            await api(stack.url, tokens["alice"], "POST", f"/api/v1/rooms/{slug}/messages", {"text": "hook me"})
        ).json()
        await eventually(lambda: len(receiver.requests) >= 2, "a delivery and its retry")
        await api(stack.url, tokens["alice"], "POST", f"/api/v1/rooms/{slug}/messages", {"text": "@echobot and me"})
        await eventually(lambda: len(receiver.requests) >= 3 and mentions.requests, "the next message and a mention")
        first, retry = receiver.requests[0], receiver.requests[1]
        for request in (first, retry):
            headers = request["headers"]
            expected = "sha256=" + hmac.new(b"s3cret", request["body"], hashlib.sha256).hexdigest()  # type: ignore[arg-type]
            assert headers["x-chatsite-signature"] == expected
            assert request["line"].startswith("POST /hook ")
        assert first["headers"]["x-chatsite-delivery"] == retry["headers"]["x-chatsite-delivery"]
        assert first["body"] == retry["body"]
        body = json.loads(first["body"])  # type: ignore[arg-type]
        assert body["type"] == "message" and body["trigger"] == "message" and body["message"] == posted
        assert body["delivery"] == first["headers"]["x-chatsite-delivery"]
        # The mention webhook got only the message that mentions its bot.
        [mention] = mentions.requests
        assert json.loads(mention["body"])["message"]["text"] == "@echobot and me"  # type: ignore[arg-type]
        state = db_value(
            stack,
            "list(__import__('rooms.api.models', fromlist=['x']).WebhookDelivery.objects"
            f".filter(webhook__room__slug={slug!r}, message_id={posted['id']}).values_list('status', 'attempts'))",
        )
        assert state == "[('delivered', 2)]"
    finally:
        await receiver.close()
        await mentions.close()


@pytest.mark.asyncio
async def test_webhook_deliveries_pending_across_a_restart_go_out_after_it(stack, tokens, slug):
    """The receiver is down; both server processes restart; it comes up: the
    delivery recorded before the restart arrives (at least once)."""
    port = port_free()
    webhook_make(stack, slug, f"http://127.0.0.1:{port}/later", "later")
    await asyncio.sleep(6)  # each process re-reads the room's webhooks within 5 s
    posted = (await api(stack.url, tokens["alice"], "POST", f"/api/v1/rooms/{slug}/messages", {"text": "later"})).json()
    attempts = f"WebhookDelivery.objects.get(message_id={posted['id']}).attempts"
    prefix = "__import__('rooms.api.models', fromlist=['x'])."
    await eventually(lambda: int(db_value(stack, prefix + attempts)) >= 1, "a failed first attempt")
    stack.restart_daphne(0)
    stack.restart_daphne(1)
    receiver = Receiver([])
    receiver.server = await asyncio.start_server(receiver._handle, "127.0.0.1", port)
    try:
        await eventually(lambda: receiver.requests, "the delivery after the restart", timeout=30)
        assert json.loads(receiver.requests[0]["body"])["message"]["id"] == posted["id"]  # type: ignore[arg-type]
    finally:
        await receiver.close()


@pytest.mark.asyncio
async def test_webhook_never_goes_to_a_private_address_by_default(tmp_path_factory):
    """Default settings (WEBHOOK_ALLOW_PRIVATE off): loopback is refused, the
    receiver hears nothing, the attempt says why."""
    receiver = await Receiver([]).start()
    with Stack(tmp_path_factory.mktemp("api-default"), daphne_count=1, nginx=False) as small:
        small.user_create("alice")
        small.room_create("hooks")
        token = token_make(small, "alice")
        for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]"):
            webhook_make(small, "hooks", f"http://{host}:{receiver.port}/hook", "x")
        await api(small.url, token, "POST", "/api/v1/rooms/hooks/messages", {"text": "to nowhere"})
        await asyncio.sleep(4)
        errors = json.loads(
            db_value(
                small,
                "__import__('json').dumps([d.last_error for d in "
                "__import__('rooms.api.models', fromlist=['x']).WebhookDelivery.objects.all()])",
            )
        )
        assert len(errors) == 3 and all(e.startswith("refused:") for e in errors), errors
        assert any("loopback" in e for e in errors)
        assert receiver.requests == []
    await receiver.close()


# --- Fuzzed bodies ------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(["text", "client_id", "reply_to", "seq", "status", "error", "in_reply_to"])
BODIES = st.one_of(
    st.dictionaries(FIELDS, JSON_VALUES, max_size=4).map(lambda d: json.dumps(d).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


def test_fuzzed_bodies_get_4xx_json_never_500(stack, tokens):
    stack.room_create("api-fuzz")
    bot = tokens["echobot"]
    with httpx.Client(base_url=stack.url, timeout=15) as client:
        reply_id = client.post(
            "/api/v1/rooms/api-fuzz/replies", json={}, headers={"Authorization": f"Bearer {bot}"}
        ).json()["reply_id"]
        paths = [
            "/api/v1/rooms/api-fuzz/messages",
            "/api/v1/rooms/api-fuzz/replies",
            f"/api/v1/rooms/api-fuzz/replies/{reply_id}/cancel",
            f"/api/v1/replies/{reply_id}/deltas",
            f"/api/v1/replies/{reply_id}/end",
        ]

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(body=BODIES, path=st.sampled_from(paths))
        def check(body: bytes, path: str) -> None:
            response = client.post(path, content=body, headers={"Authorization": f"Bearer {bot}"})
            assert response.status_code < 500, (path, body, response.status_code, response.text[:300])
            if response.status_code >= 400:
                payload = response.json()
                assert isinstance(payload["code"], str) and isinstance(payload["detail"], str)

        check()
    logs_clean(stack)
