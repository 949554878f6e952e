"""Assistants for teams (issue 13): several per room, who may call and stop
them, regenerate, private catch-up, usage and budgets, the migration from one
assistant per room. Through the consumer with the real openai SDK against the
local wire-compatible server (tests/fakeopenai.py), which records every request."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async as mk
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client

from rooms import services
from rooms.assistant import budget
from rooms.models import Membership, Message, Room
from tests.fakeopenai import FakeOpenAI
from tests.test_consumers import open_socket

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("realtime_cleanup")]

SKIP = ("presence", "presence.delta", "typing", "message", "message.update", "notify", "assistant.queued")


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI(api_key="sk-team") as server:
        yield server


@pytest.fixture
def model(fake, settings):
    settings.OPENAI_BASE_URL = fake.base_url
    settings.OPENAI_API_KEY = "sk-team"
    settings.ASSISTANT_RATE_LIMIT = None
    settings.ASSISTANT_FLUSH_MS = 20
    settings.ASSISTANT_PRICES = {"fake-a": {"input": 1.0, "output": 2.0}, "critic-model": {"input": 3.0, "output": 4.0}}
    fake.reset()
    return fake


async def frame_of(socket, kind: str, skip: tuple[str, ...] = SKIP, timeout: float = 20) -> dict:
    while True:
        frame = await socket.receive_json_from(timeout=timeout)
        if frame["type"] == kind:
            return frame
        assert frame["type"] in skip or frame["type"].startswith("assistant."), frame


async def replies_until_ended(socket, count: int) -> list[dict]:
    """The ``count`` replies that start next, each to its end, in start order."""
    started: list[int] = []
    ended: dict[int, dict] = {}
    while len(ended) < count or len(started) < count:
        frame = await socket.receive_json_from(timeout=30)
        if frame["type"] == "assistant.start":
            started.append(frame["reply_id"])
        elif frame["type"] == "assistant.end":
            ended[frame["reply_id"]] = frame["message"]
    return [ended[reply_id] for reply_id in started[:count]]


async def two_assistant_room(make_room, slug: str) -> Room:
    room = await mk(make_room)(slug)
    await mk(services.assistant_configure)(room=room, name="assistant", model="fake-a", system_prompt="You are A.")
    await mk(services.assistant_configure)(room=room, name="critic", model="critic-model", system_prompt="You are C.")
    return room


async def test_two_assistants_answer_their_own_mentions_with_their_own_model_and_prompt(make_user, make_room, model):
    alice = await mk(make_user)("alice")
    room = await two_assistant_room(make_room, "duo")
    a1, hello = await open_socket(alice, room.slug)
    assert hello["room"]["assistants"] == [
        {"name": "assistant", "model": "fake-a"},
        {"name": "critic", "model": "critic-model"},
    ]
    assert hello["room"]["assistant"] == "assistant"
    await a1.send_json_to({"type": "message.send", "text": "@critic [[tokens=5]] review this"})
    [reply] = await replies_until_ended(a1, 1)
    assert reply["author"] == "critic" and reply["model"] == "critic-model" and reply["status"] == "complete"
    sent = model.requests[-1]
    assert sent["model"] == "critic-model" and sent["messages"][0]["content"] == "You are C."
    await a1.send_json_to({"type": "message.send", "text": "@assistant [[tokens=5]] and you?"})
    [reply] = await replies_until_ended(a1, 1)
    assert reply["author"] == "assistant" and model.requests[-1]["model"] == "fake-a"
    assert model.requests[-1]["messages"][0]["content"] == "You are A."
    await a1.disconnect()


async def test_one_message_mentioning_both_gets_two_replies_in_mention_order(make_user, make_room, model):
    alice = await mk(make_user)("alice")
    room = await two_assistant_room(make_room, "both")
    a1, _ = await open_socket(alice, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "@critic then @assistant [[tokens=4]] please"})
    first, second = await replies_until_ended(a1, 2)
    assert [first["author"], second["author"]] == ["critic", "assistant"]
    assert first["seq"] < second["seq"] and first["in_reply_to"] == second["in_reply_to"]
    assert [r["model"] for r in model.requests[-2:]] == ["critic-model", "fake-a"]
    # Each answers the question on its own: it is the last word both were shown.
    for request in model.requests[-2:]:
        assert request["messages"][-1]["content"] == "alice: @critic then @assistant [[tokens=4]] please"
    await a1.disconnect()


async def test_invoke_and_stop_permissions_are_refused_with_forbidden(make_user, make_room, model):
    alice, bob, mod = await mk(make_user)("alice"), await mk(make_user)("bob"), await mk(make_user)("mod")
    room = await mk(make_room)("rules")
    await Membership.objects.acreate(room=room, user=mod, role=Membership.Role.MODERATOR)
    await Room.objects.filter(pk=room.pk).aupdate(assistant_invoke=Room.Invoke.MODERATORS)
    a1, _ = await open_socket(alice, room.slug)
    before = len(model.requests)
    await a1.send_json_to({"type": "message.send", "text": "@assistant hi", "client_id": "f1"})
    refused = await frame_of(a1, "error")
    assert refused["code"] == "forbidden" and refused["client_id"] == "f1"
    assert not await Message.objects.filter(room=room).aexists(), "nothing saved"
    # A moderator may ask; only the asker (or a moderator) may stop when the room says so.
    await Room.objects.filter(pk=room.pk).aupdate(assistant_invoke=Room.Invoke.EVERYONE, assistant_stop=Room.Stop.ASKER)
    m1, _ = await open_socket(mod, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "@assistant [[long]] tell me a story"})
    start = await frame_of(b1, "assistant.start")
    await frame_of(b1, "assistant.delta")  # the model has been asked (a stop before that never asks it)
    await b1.send_json_to({"type": "assistant.cancel", "reply_id": start["reply_id"]})
    assert (await frame_of(b1, "error", skip=(*SKIP, "assistant.delta")))["code"] == "forbidden"
    await m1.send_json_to({"type": "assistant.cancel", "reply_id": start["reply_id"]})
    end = await frame_of(a1, "assistant.end", skip=(*SKIP, "assistant.start", "assistant.delta"))
    assert end["message"]["status"] == "cancelled" and end["message"]["cancelled_by"] == "mod"
    assert len(model.requests) == before + 1
    for tab in (a1, b1, m1):
        await tab.disconnect()


async def test_regenerate_keeps_both_versions(make_user, make_room, model):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("again")
    a1, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "@assistant [[tokens=6]] first try"})
    [first] = await replies_until_ended(a1, 1)
    assert first["versions"] == []
    # Only the asker (or a moderator) may regenerate.
    await b1.send_json_to({"type": "assistant.regenerate", "reply_id": first["id"]})
    assert (await frame_of(b1, "error", skip=(*SKIP, "assistant.start", "assistant.delta", "assistant.end")))[
        "code"
    ] == "forbidden"
    await a1.send_json_to({"type": "assistant.regenerate", "reply_id": first["id"]})
    [second] = await replies_until_ended(a1, 1)
    assert second["id"] != first["id"] and second["in_reply_to"] == first["in_reply_to"]
    assert second["versions"] == [first["id"]] and second["seq"] > first["seq"]
    old = await Message.objects.aget(pk=first["id"])
    assert old.versions == [second["id"]] and old.status == "complete", "the first version stays"
    # The context of the new version is the one the first saw: the question, not the first answer.
    assert all(first["text"] not in m["content"] for m in model.requests[-1]["messages"])
    for tab in (a1, b1):
        await tab.disconnect()


async def test_catchup_is_private_and_summarises_only_unread(make_user, make_room, model):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("catchup")
    for i in range(3):
        await mk(services.message_create)(room=room, user=bob, text=f"read before {i}")
    await mk(services.read_mark)(room=room, user=alice, seq=3)
    for i in range(2):
        await mk(services.message_create)(room=room, user=bob, text=f"unread news {i}")
    await mk(services.message_create)(room=room, user=bob, text="last one [[echo-context]]")
    a1, _ = await open_socket(alice, room.slug)
    a2, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    await a1.send_json_to({"type": "assistant.catchup"})
    start = await frame_of(a1, "assistant.start")
    assert start["private"] is True and start["message"]["seq"] is None and start["message"]["private"] is True
    end = await frame_of(a1, "assistant.end", skip=(*SKIP, "assistant.delta"))
    assert end["private"] is True and end["message"]["status"] == "complete"
    text = end["message"]["text"]
    assert "unread news 0" in text and "unread news 1" in text and "read before" not in text
    # Alice's other tab got it too; Bob got nothing of it.
    assert (await frame_of(a2, "assistant.end", skip=(*SKIP, "assistant.start", "assistant.delta")))["private"]
    while not await b1.receive_nothing(timeout=0.5):
        frame = await b1.receive_json_from()
        assert not frame["type"].startswith("assistant."), frame
    row = await Message.objects.aget(pk=end["reply_id"])
    assert row.visible_to_id == alice.pk and row.seq is None and row.asked_by_id == alice.pk
    # It is saved for her: after a reload it is in her hello, never in Bob's.
    a3, hello = await open_socket(alice, room.slug)
    assert [m["id"] for m in hello.get("private", [])] == [end["reply_id"]]
    b2, bob_hello = await open_socket(bob, room.slug)
    assert "private" not in bob_hello and end["reply_id"] not in [m["id"] for m in bob_hello["messages"]]
    for tab in (a1, a2, a3, b1, b2):
        await tab.disconnect()


async def test_budget_refuses_before_any_upstream_request_and_resets(
    make_user, make_room, model, settings, monkeypatch
):
    settings.ASSISTANT_BUDGET_USER_DAILY_TOKENS = 30
    alice = await mk(make_user)("alice")
    room = await mk(make_room)("budget")
    a1, _ = await open_socket(alice, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "@assistant [[tokens=40]] spend it all"})
    [reply] = await replies_until_ended(a1, 1)
    row = await Message.objects.aget(pk=reply["id"])
    assert row.prompt_tokens + row.completion_tokens >= 30 and row.asked_by_id == alice.pk
    asked = len(model.requests)
    await a1.send_json_to({"type": "message.send", "text": "@assistant once more", "client_id": "b2"})
    refused = await frame_of(a1, "error")
    assert refused["code"] == "budget_exceeded" and refused["client_id"] == "b2"
    tomorrow = budget.period_end("day", budget.now())
    assert refused["resets"] == tomorrow.isoformat()
    assert len(model.requests) == asked, "nothing was sent upstream"
    # The next day the budget is fresh.
    monkeypatch.setattr(budget, "now", lambda: tomorrow + timedelta(minutes=1))
    await a1.send_json_to({"type": "message.send", "text": "@assistant [[tokens=3]] a new day"})
    [again] = await replies_until_ended(a1, 1)
    assert again["status"] == "complete" and len(model.requests) == asked + 1
    await a1.disconnect()


async def test_usage_in_the_admin_equals_the_sum_of_replies(make_user, make_room, model):
    from django.contrib.auth import get_user_model

    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await two_assistant_room(make_room, "costs")
    a1, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "@assistant [[tokens=7]] one"})
    await replies_until_ended(a1, 1)
    await b1.send_json_to({"type": "message.send", "text": "@critic [[tokens=9]] two"})
    await replies_until_ended(a1, 1)  # alice's tab sees bob's reply too, next
    replies = [m async for m in Message.objects.filter(room=room, role="assistant")]
    assert all(m.cost is not None for m in replies), "priced models"
    boss = await mk(get_user_model().objects.create_superuser)("boss", "b@example.com", "pw-correct-horse")

    def admin_pages() -> tuple[str, str]:
        client = Client()
        client.force_login(boss)
        page = client.get("/admin/rooms/assistantusage/")
        exported = client.get("/admin/rooms/assistantusage/?format=csv")
        assert page.status_code == 200 and exported.status_code == 200
        return page.content.decode(), exported.content.decode()

    page, exported = await sync_to_async(admin_pages)()
    rows = list(csv.DictReader(io.StringIO(exported)))
    tokens = sum(int(r["prompt_tokens"]) + int(r["completion_tokens"]) for r in rows)
    assert tokens == sum(m.prompt_tokens + m.completion_tokens for m in replies)
    cost = sum(float(r["cost_usd"]) for r in rows)
    assert cost == pytest.approx(float(sum(m.cost for m in replies)))
    assert {(r["user"], r["assistant"]) for r in rows} == {("alice", "assistant"), ("bob", "critic")}
    assert "<svg" in page and str(tokens) in page
    for tab in (a1, b1):
        await tab.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_migration_from_one_assistant_keeps_rooms_working(make_user):
    def migrate_and_check() -> tuple[list[tuple[str, str, bool]], int]:
        executor = MigrationExecutor(connection)
        executor.migrate([("rooms", "0003_api")])
        apps = executor.loader.project_state([("rooms", "0003_api")]).apps
        OldRoom = apps.get_model("rooms", "Room")
        OldMessage = apps.get_model("rooms", "Message")
        OldUser = apps.get_model("auth", "User")
        author = OldUser.objects.create(username="old-timer")
        room = OldRoom.objects.create(
            slug="legacy", name="Legacy", assistant_name="sage", assistant_model="old-model", assistant_enabled=True
        )
        OldMessage.objects.create(
            room=room, seq=1, author=author, author_name="old-timer", text="@sage hi", reply_state="pending"
        )
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
        migrated = Room.objects.get(slug="legacy")
        assistants = [(a.name, a.model, a.enabled) for a in migrated.assistants.all()]
        pending = migrated.assistant_requests.filter(state="pending").count()
        return assistants, pending

    assistants, pending = await sync_to_async(migrate_and_check)()
    assert assistants == [("sage", "old-model", True)]
    assert pending == 1
