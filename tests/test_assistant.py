"""The assistant end to end in one process: consumer -> reply task -> the real
openai SDK -> a local server speaking the Chat Completions wire format."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async as mk

from rooms.models import Message
from tests.fakeopenai import FakeOpenAI
from tests.test_consumers import SKIPPABLE, open_socket
from tests.test_consumers import next_of as _next_of


async def next_of(socket, kind: str, timeout: float = 10) -> dict:
    # Chat messages interleave with the reply's frames here.
    return await _next_of(socket, kind, timeout, skip=(*SKIPPABLE, "message", "assistant.start", "assistant.delta"))


pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("realtime_cleanup")]


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI(api_key="sk-test-canary-key-0000") as server:
        yield server


@pytest.fixture
def model_server(fake, settings):
    settings.OPENAI_BASE_URL = fake.base_url
    settings.OPENAI_API_KEY = "sk-test-canary-key-0000"
    settings.ASSISTANT_MAX_RETRIES = 2
    settings.ASSISTANT_RATE_LIMIT = None
    settings.ASSISTANT_FLUSH_MS = 20
    return fake


async def collect_reply(socket, timeout: float = 20) -> tuple[dict, list[dict], dict]:
    """start, deltas, end for the next reply seen on ``socket``."""
    start = await next_of(socket, "assistant.start", timeout)
    deltas = []
    while True:
        frame = await socket.receive_json_from(timeout=timeout)
        if frame["type"] == "assistant.delta":
            assert frame["reply_id"] == start["reply_id"]
            deltas.append(frame)
        elif frame["type"] == "assistant.end":
            assert frame["reply_id"] == start["reply_id"]
            return start, deltas, frame


async def test_reply_streams_to_every_tab_and_is_saved(make_user, make_room, model_server, caplog):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("ai")
    a1, _ = await open_socket(alice, room.slug)
    a2, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "@assistant what is up?"})
    request = (await next_of(a1, "message"))["message"]
    results = [await collect_reply(tab) for tab in (a1, a2, b1)]
    texts = {"".join(d["text"] for d in deltas) for _, deltas, _ in results}
    assert len(texts) == 1
    text = texts.pop()
    assert "Hello from the fake model. You said: alice: @assistant what is up?" in text
    assert "héllo wörld 🙂" in text
    for start, deltas, end in results:
        assert start["in_reply_to"] == request["id"]
        assert start["message"]["status"] == "streaming" and start["message"]["role"] == "assistant"
        assert start["message"]["seq"] == request["seq"] + 1 and start["message"]["text"] == ""
        assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
        final = end["message"]
        assert final["status"] == "complete" and final["text"] == text and final["role"] == "assistant"
        assert final["html"].startswith("<p>")
    row = await Message.objects.aget(pk=results[0][0]["reply_id"])
    assert row.status == "complete" and row.text == text
    assert row.prompt_tokens and row.completion_tokens and row.first_token_ms is not None and row.total_ms
    assert row.context_ids == [request["id"]]
    sent = model_server.requests[-1]
    assert sent["messages"][0]["role"] == "system" and "group chat" in sent["messages"][0]["content"]
    assert sent["messages"][-1] == {"role": "user", "content": "alice: @assistant what is up?"}
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert "sk-test-canary-key-0000" not in caplog.text
    for tab in (a1, a2, b1):
        await tab.disconnect()


async def test_late_tab_joins_mid_stream_without_gap(make_user, make_room, model_server):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("late")
    a1, _ = await open_socket(alice, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "@assistant [[tokens=60]] [[tps=40]] go"})
    start = await next_of(a1, "assistant.start")
    for _ in range(3):
        await next_of(a1, "assistant.delta")
    b1, hello = await open_socket(bob, room.slug)
    [streaming] = hello["streaming"]
    assert streaming["reply_id"] == start["reply_id"] and streaming["seq"] >= 3 and streaming["text"]
    assert streaming["message_seq"] == start["message"]["seq"]
    text = streaming["text"]
    expected_seq = streaming["seq"] + 1
    while True:
        frame = await b1.receive_json_from(timeout=20)
        if frame["type"] == "assistant.delta":
            assert frame["seq"] == expected_seq, "no gap, no repeat"
            expected_seq += 1
            text += frame["text"]
        elif frame["type"] == "assistant.end":
            assert frame["message"]["text"] == text
            break
    await a1.disconnect()
    await b1.disconnect()


async def test_cancel_from_another_user_stops_upstream(make_user, make_room, model_server):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("stop")
    a1, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    disconnects_before = model_server.disconnects
    await a1.send_json_to({"type": "message.send", "text": "@assistant [[long]] talk a lot"})
    start = await next_of(b1, "assistant.start")
    await next_of(b1, "assistant.delta")
    await b1.send_json_to({"type": "assistant.cancel", "reply_id": start["reply_id"]})
    end = await next_of(a1, "assistant.end")
    assert end["message"]["status"] == "cancelled" and end["message"]["cancelled_by"] == "bob"
    row = await Message.objects.aget(pk=start["reply_id"])
    assert row.status == "cancelled" and row.text == end["message"]["text"] and row.text
    for _ in range(100):
        if model_server.disconnects > disconnects_before:
            break
        await asyncio.sleep(0.05)
    assert model_server.disconnects > disconnects_before, "the upstream stream was closed"
    assert (await next_of(b1, "assistant.end"))["message"]["status"] == "cancelled"
    await b1.send_json_to({"type": "assistant.cancel", "reply_id": start["reply_id"]})
    assert (await next_of(b1, "error"))["code"] == "not_found"
    await a1.disconnect()
    await b1.disconnect()


async def test_reply_survives_the_asker_leaving(make_user, make_room, model_server):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("leave")
    a1, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "@assistant [[tokens=30]] [[tps=60]] hi"})
    await next_of(a1, "assistant.start")
    await a1.disconnect()
    _, _, end = await collect_reply_after_start(b1)
    assert end["message"]["status"] == "complete"
    await b1.disconnect()


async def collect_reply_after_start(socket):
    deltas = []
    while True:
        frame = await socket.receive_json_from(timeout=20)
        if frame["type"] == "assistant.delta":
            deltas.append(frame)
        elif frame["type"] == "assistant.end":
            return None, deltas, frame


@pytest.mark.parametrize(
    ("marker", "status", "code"),
    [
        ("[[429]]", "error", "rate_limited"),
        ("[[500]]", "error", "upstream"),
        ("[[cut]]", "error", "connection"),
        ("[[500-once]]", "complete", ""),
        ("[[429-once]]", "complete", ""),
        ("[[slow-first]]", "complete", ""),
        ("[[length]]", "complete", ""),
    ],
)
async def test_faults_end_in_one_terminal_state(make_user, make_room, model_server, marker, status, code, caplog):
    alice = await mk(make_user)("alice")
    room = await mk(make_room)(f"fault-{marker.strip('[]')}")
    a1, _ = await open_socket(alice, room.slug)
    await a1.send_json_to({"type": "message.send", "text": f"@assistant {marker} please"})
    start, _, end = await collect_reply(a1)
    final = end["message"]
    assert final["status"] == status
    row = await Message.objects.aget(pk=start["reply_id"])
    assert row.status == status and row.error_code == code
    if status == "error":
        assert final["error"] and "Traceback" not in final["error"] and "sk-test" not in final["error"]
    if marker == "[[length]]":
        assert final["finish_reason"] == "length"
    # Exactly one end: nothing else about this reply follows.
    assert await a1.receive_nothing(timeout=0.3)
    assert "sk-test-canary-key-0000" not in caplog.text
    await a1.disconnect()


async def test_two_mentions_are_answered_in_order(make_user, make_room, model_server):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("queue")
    a1, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "@assistant [[tokens=20]] [[tps=40]] first"})
    await b1.send_json_to({"type": "message.send", "text": "@assistant second"})
    first_start, _, first_end = await collect_reply(a1)
    second_start, _, second_end = await collect_reply(a1)
    requests = await mk(lambda: list(Message.objects.filter(room=room, role="user").order_by("seq")))()
    assert first_start["in_reply_to"] == requests[0].pk
    assert second_start["in_reply_to"] == requests[1].pk
    assert first_end["message"]["status"] == second_end["message"]["status"] == "complete"
    assert second_start["message"]["seq"] > first_end["message"]["seq"]
    await a1.disconnect()
    await b1.disconnect()


async def test_assistant_rate_limit(make_user, make_room, model_server, settings):
    settings.ASSISTANT_RATE_LIMIT = (1, 60)
    alice = await mk(make_user)("alice")
    room = await mk(make_room)("ailimit")
    a1, _ = await open_socket(alice, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "@assistant one", "client_id": "resend-me"})
    original = (await next_of(a1, "message"))["message"]
    await collect_reply(a1)
    # A resend of the same client_id is the same message, not a second request.
    await a1.send_json_to({"type": "message.send", "text": "@assistant one", "client_id": "resend-me"})
    assert (await next_of(a1, "message"))["message"]["id"] == original["id"]
    await a1.send_json_to({"type": "message.send", "text": "@assistant two", "client_id": "c-2"})
    error = await next_of(a1, "error")
    assert error["code"] == "rate_limited" and error["client_id"] == "c-2"
    await a1.send_json_to({"type": "message.send", "text": "plain chat still works"})
    assert (await next_of(a1, "message"))["message"]["text"] == "plain chat still works"
    await a1.disconnect()


async def test_resume_returns_reply_that_ended_while_away(make_user, make_room, model_server):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("away")
    a1, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    await b1.send_json_to({"type": "message.send", "text": "@assistant [[tokens=40]] [[tps=40]] hi"})
    start = await next_of(a1, "assistant.start")
    await b1.send_json_to({"type": "message.send", "text": "something after the start"})
    last_seen = (await next_of(a1, "message"))["message"]["id"]
    assert last_seen > start["reply_id"]
    await a1.disconnect()
    # Reconnect mid-stream: the reply is in `streaming` though its id < after.
    a2, hello = await open_socket(alice, room.slug, f"after={last_seen}")
    assert [s["reply_id"] for s in hello["streaming"]] == [start["reply_id"]]
    await a2.disconnect()
    await collect_reply_after_start(b1)
    # Reconnect after it ended: the final reply comes back in messages.
    a3, hello = await open_socket(alice, room.slug, f"after={last_seen}")
    finals = [m for m in hello["messages"] if m["id"] == start["reply_id"]]
    assert len(finals) == 1 and finals[0]["status"] == "complete" and hello["streaming"] == []
    await a3.disconnect()
    await b1.disconnect()


async def test_demo_provider_without_key(make_user, make_room, settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = None
    settings.ASSISTANT_RATE_LIMIT = None
    alice = await mk(make_user)("alice")
    room = await mk(make_room)("demo")
    a1, _ = await open_socket(alice, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "@assistant hello there"})
    _, deltas, end = await collect_reply(a1)
    assert len(deltas) >= 1
    assert end["message"]["status"] == "complete" and "demo" in end["message"]["text"].lower()
    assert end["message"]["model"] == "demo"
    await a1.disconnect()


async def test_disabled_assistant_stays_silent(make_user, make_room, model_server):
    alice = await mk(make_user)("alice")
    room = await mk(make_room)("quiet")
    await room.assistants.aupdate(enabled=False)
    a1, _ = await open_socket(alice, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "@assistant are you there?"})
    await next_of(a1, "message")
    assert await a1.receive_nothing(timeout=0.5)
    await a1.disconnect()


async def test_checkpoints_of_concurrent_replies_share_commits(make_room, batch_sizes):
    """Group commit: replies flushing at once are saved in a few transactions, each
    save returns only once committed, and a swept reply is told so."""
    from rooms.assistant import services, stream

    room = await mk(make_room)()
    replies = [
        await Message.objects.acreate(
            room=room, seq=1000 + i, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING
        )
        for i in range(20)
    ]
    reply_ids = [reply.pk for reply in replies]
    swept = reply_ids[-1]
    await Message.objects.filter(pk=swept).aupdate(status=Message.Status.INTERRUPTED)
    batches = batch_sizes(services, "reply_checkpoint_many")
    writer = stream.CheckpointWriter()
    results = await asyncio.gather(*(writer.save(pk, f"text of {pk}", 7) for pk in reply_ids))
    assert results == [True] * 19 + [False]
    assert sum(batches) == 20 and len(batches) < 20, batches
    saved = {m.pk: (m.text, m.stream_seq) async for m in Message.objects.filter(pk__in=reply_ids[:-1])}
    assert saved == {pk: (f"text of {pk}", 7) for pk in reply_ids[:-1]}
