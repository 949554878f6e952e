"""Edit and delete, reply-to, read state, mentions and notify (issue 11), through
the consumer (WebsocketCommunicator, in-memory layer) and the admin."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async as mk
from django.test import Client

from rooms import services
from rooms.models import Membership, Message
from tests.fakeopenai import FakeOpenAI
from tests.test_consumers import next_of, open_socket

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("realtime_cleanup")]


async def say(socket, text: str, **fields) -> dict:
    """Send, and return the sender's own copy (skipping others' messages)."""
    await socket.send_json_to({"type": "message.send", "text": text, **fields})
    while True:
        frame = await next_of(socket, "message", skip=("presence", "typing", "assistant.queued", "notify"))
        if frame["message"]["text"] == text:
            return frame["message"]


async def quiet(socket, timeout: float = 0.3) -> bool:
    """Nothing but presence frames arrives within ``timeout``."""
    while not await socket.receive_nothing(timeout=timeout):
        frame = await socket.receive_json_from()
        if frame["type"] != "presence":
            return False
    return True


async def update_of(socket) -> dict:
    return (await next_of(socket, "message.update", skip=("presence", "typing", "message", "notify")))["message"]


async def error_of(socket) -> dict:
    return await next_of(socket, "error", skip=("presence", "typing", "message", "message.update", "notify"))


async def test_edit_reaches_every_tab_and_is_rendered_like_a_send(make_user, make_room):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("edits")
    a1, _ = await open_socket(alice, room.slug)
    a2, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    original = await say(a1, "helo *world*")
    assert original["edited"] is None and original["deleted"] is False
    await a1.send_json_to({"type": "message.edit", "id": original["id"], "text": "hello **world**"})
    for tab in (a1, a2, b1):
        updated = await update_of(tab)
        assert updated["id"] == original["id"] and updated["seq"] == original["seq"]
        assert updated["text"] == "hello **world**" and "<strong>world</strong>" in updated["html"]
        assert updated["edited"] is not None and updated["deleted"] is False
    # Exactly once: no second update, no new message.
    for tab in (a1, a2, b1):
        assert await quiet(tab)
    row = await Message.objects.aget(pk=original["id"])
    assert row.text == "hello **world**" and row.edited is not None
    assert await Message.objects.filter(room=room).acount() == 1
    for tab in (a1, a2, b1):
        await tab.disconnect()


async def test_edits_and_deletes_of_others_are_refused_unless_moderator(make_user, make_room):
    alice, bob, mod = await mk(make_user)("alice"), await mk(make_user)("bob"), await mk(make_user)("mod")
    room = await mk(make_room)("refusals")
    await Membership.objects.acreate(room=room, user=mod, role=Membership.Role.MODERATOR)
    a1, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    m1, _ = await open_socket(mod, room.slug)
    mine = await say(a1, "alice's words")
    await b1.send_json_to({"type": "message.edit", "id": mine["id"], "text": "bob was here"})
    assert (await error_of(b1))["code"] == "forbidden"
    await b1.send_json_to({"type": "message.delete", "id": mine["id"]})
    assert (await error_of(b1))["code"] == "forbidden"
    await b1.send_json_to({"type": "message.edit", "id": 10**12, "text": "x"})
    assert (await error_of(b1))["code"] == "not_found"
    assert (await Message.objects.aget(pk=mine["id"])).text == "alice's words"
    # A room moderator may.
    await m1.send_json_to({"type": "message.edit", "id": mine["id"], "text": "tidied by a moderator"})
    assert (await update_of(a1))["text"] == "tidied by a moderator"
    assert (await update_of(b1))["text"] == "tidied by a moderator"
    await m1.send_json_to({"type": "message.delete", "id": mine["id"]})
    gone = await update_of(b1)
    assert gone["deleted"] is True and gone["text"] == "" and gone["html"] == ""
    # A deleted message can't be edited back.
    await a1.send_json_to({"type": "message.edit", "id": mine["id"], "text": "resurrect"})
    assert (await error_of(a1))["code"] == "bad_request"
    for tab in (a1, b1, m1):
        await tab.disconnect()


async def test_edit_is_validated_like_a_send(make_user, make_room):
    alice = await mk(make_user)("alice")
    room = await mk(make_room)("validate")
    a1, _ = await open_socket(alice, room.slug)
    mine = await say(a1, "fine")
    for text, code in (("\u200b\u200b", "bad_request"), ("x" * 4001, "too_long"), (12, "bad_request")):
        await a1.send_json_to({"type": "message.edit", "id": mine["id"], "text": text})
        assert (await error_of(a1))["code"] == code
    assert (await Message.objects.aget(pk=mine["id"])).text == "fine"
    await a1.disconnect()


async def test_a_tab_away_during_an_edit_gets_it_on_resume_once(make_user, make_room):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("resume-edits")
    a1, _ = await open_socket(alice, room.slug)
    first = await say(a1, "first")
    second = await say(a1, "second")
    b1, hello = await open_socket(bob, room.slug)
    last_seen = max(m["id"] for m in hello["messages"])
    await b1.disconnect()
    await a1.send_json_to({"type": "message.edit", "id": first["id"], "text": "first, edited"})
    await update_of(a1)
    await a1.send_json_to({"type": "message.delete", "id": second["id"]})
    await update_of(a1)
    b2, resumed = await open_socket(bob, room.slug, query=f"after={last_seen}")
    by_id = {}
    for message in resumed["messages"]:
        assert message["id"] not in by_id, "a change came twice"
        by_id[message["id"]] = message
    assert by_id[first["id"]]["text"] == "first, edited" and by_id[first["id"]]["edited"]
    assert by_id[second["id"]]["deleted"] is True
    # A tab that resumes from after the changes gets nothing old again.
    later = await say(a1, "third")
    b4, after_third = await open_socket(bob, room.slug, query=f"after={later['id']}")
    assert after_third["messages"] == []
    for tab in (a1, b2, b4):
        await tab.disconnect()


async def test_reply_to_quotes_the_original(make_user, make_room):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room, other = await mk(make_room)("quotes"), await mk(make_room)("elsewhere")
    a1, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    question = await say(a1, "what time is the meeting? " + "padding " * 30)
    answer = await say(b1, "three o'clock", reply_to=question["id"])
    assert answer["reply_to"]["id"] == question["id"] and answer["reply_to"]["author"] == "alice"
    assert answer["reply_to"]["excerpt"].startswith("what time is the meeting?")
    assert len(answer["reply_to"]["excerpt"]) <= 140
    seen = await next_of(a1, "message")
    assert seen["message"]["reply_to"] == answer["reply_to"]
    # Only messages of this room can be quoted.
    o1, _ = await open_socket(alice, other.slug)
    elsewhere = await say(o1, "in another room")
    await b1.send_json_to({"type": "message.send", "text": "nope", "reply_to": elsewhere["id"], "client_id": "q1"})
    refused = await error_of(b1)
    assert refused["code"] == "not_found" and refused["client_id"] == "q1"
    for tab in (a1, b1, o1):
        await tab.disconnect()


async def test_read_position_is_kept_and_only_moves_forward(make_user, make_room):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("reads")
    a1, _ = await open_socket(alice, room.slug)
    for i in range(5):
        await say(a1, f"m{i}")
    b1, hello = await open_socket(bob, room.slug)
    assert hello["last_read_seq"] == 0
    await b1.send_json_to({"type": "read", "seq": 3})
    await b1.send_json_to({"type": "read", "seq": 2})  # backwards: ignored
    await b1.send_json_to({"type": "read", "seq": 99})  # beyond the room: capped
    await b1.send_json_to({"type": "ping"})
    await next_of(b1, "pong")
    b2, again = await open_socket(bob, room.slug)
    assert again["last_read_seq"] == 5
    await b1.send_json_to({"type": "read", "seq": -1})
    assert (await error_of(b1))["code"] == "bad_request"
    for tab in (a1, b1, b2):
        await tab.disconnect()


async def test_mentions_are_marked_and_notify_the_users_other_tabs(make_user, make_room):
    alice, bob, carol = await mk(make_user)("alice"), await mk(make_user)("bob"), await mk(make_user)("carol")
    room, elsewhere = await mk(make_room)("mentions"), await mk(make_room)("bobs-other-room")
    a1, _ = await open_socket(alice, room.slug)
    bob_away, _ = await open_socket(bob, elsewhere.slug)
    carol_tab, _ = await open_socket(carol, elsewhere.slug)
    message = await say(a1, "@bob and @nobody, look at this `@carol`")
    assert message["mentions"] == ["bob"]
    assert '<span class="mention">@bob</span>' in message["html"] and "@nobody" in message["html"]
    notify = await next_of(bob_away, "notify")
    assert notify["kind"] == "mention" and notify["room"] == {"slug": "mentions", "name": "Mentions"}
    assert notify["message"]["id"] == message["id"] and notify["message"]["author"] == "alice"
    # carol is only in a code span: not mentioned, not notified; the author neither.
    assert await quiet(carol_tab)
    assert await quiet(a1)
    for tab in (a1, bob_away, carol_tab):
        await tab.disconnect()


async def test_mentions_in_private_rooms_reach_members_only(make_user, make_room):
    alice, bob, eve = await mk(make_user)("alice"), await mk(make_user)("bob"), await mk(make_user)("eve")
    room = await mk(make_room)("secret", is_private=True, members=[alice, bob])
    lobby = await mk(make_room)("lobby")
    a1, _ = await open_socket(alice, room.slug)
    eve_tab, _ = await open_socket(eve, lobby.slug)
    message = await say(a1, "@bob @eve")
    assert message["mentions"] == ["bob"]
    assert await quiet(eve_tab)
    for tab in (a1, eve_tab):
        await tab.disconnect()


async def test_room_list_counts_unread_and_mentions(make_user, make_room):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    await mk(make_room)("quiet")
    busy = await mk(make_room)("busy")
    await mk(services.message_create)(room=busy, user=alice, text="one")
    await mk(services.message_create)(room=busy, user=alice, text="hey @bob")
    await mk(services.message_create)(room=busy, user=bob, text="bob's own")

    def rooms_of(user) -> dict:
        client = Client()
        client.force_login(user)
        response = client.get("/")
        assert response.status_code == 200
        return {r.slug: r for r in response.context["rooms"]}

    rooms = await sync_to_async(rooms_of)(bob)
    assert rooms["busy"].unread == 2 and rooms["busy"].mentioned
    assert rooms["quiet"].unread == 0 and not rooms["quiet"].mentioned
    await mk(services.read_mark)(room=busy, user=bob, seq=3)
    rooms = await sync_to_async(rooms_of)(bob)
    assert rooms["busy"].unread == 0 and not rooms["busy"].mentioned


async def test_admin_edit_and_delete_reach_open_tabs(make_user, make_room):
    from django.contrib.auth import get_user_model

    admin_user = await mk(get_user_model().objects.create_superuser)("boss", "boss@example.com", "pw-correct-horse")
    alice = await mk(make_user)("alice")
    room = await mk(make_room)("admin-edits")
    a1, _ = await open_socket(alice, room.slug)
    mine = await say(a1, "typo heer")

    def admin_edit() -> int:
        client = Client()
        client.force_login(admin_user)
        assert client.get("/admin/rooms/message/add/").status_code == 403  # no hand-made rows
        page = client.get(f"/admin/rooms/message/{mine['id']}/change/")
        assert page.status_code == 200
        response = client.post(f"/admin/rooms/message/{mine['id']}/change/", {"text": "typo here"})
        return response.status_code

    assert await sync_to_async(admin_edit)() == 302
    updated = await update_of(a1)
    assert updated["text"] == "typo here" and updated["html"] == "<p>typo here</p>" and updated["edited"]

    def admin_delete() -> int:
        client = Client()
        client.force_login(admin_user)
        response = client.post(
            "/admin/rooms/message/", {"action": "delete_for_everyone", "_selected_action": [mine["id"]]}
        )
        return response.status_code

    assert await sync_to_async(admin_delete)() == 302
    assert (await update_of(a1))["deleted"] is True
    row = await Message.objects.aget(pk=mine["id"])
    assert row.deleted and row.text == "" and row.seq == mine["seq"]
    await a1.disconnect()


async def test_the_assistant_sees_the_quoted_message(make_user, make_room, settings):
    with FakeOpenAI(api_key="sk-test") as fake:
        settings.OPENAI_BASE_URL = fake.base_url
        settings.OPENAI_API_KEY = "sk-test"
        settings.ASSISTANT_RATE_LIMIT = None
        settings.ASSISTANT_CONTEXT_MESSAGES = 2  # the quoted message falls outside the context
        alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
        room = await mk(make_room)("quoted-context")
        a1, _ = await open_socket(alice, room.slug)
        quoted = await say(a1, "the launch code is tangerine")
        for i in range(4):
            await say(a1, f"filler {i}")
        b1, _ = await open_socket(bob, room.slug)
        await say(b1, "@assistant [[echo-context]] what did she say?", reply_to=quoted["id"])
        end = await next_of(
            b1,
            "assistant.end",
            skip=("presence", "typing", "message", "assistant.start", "assistant.delta", "assistant.queued"),
            timeout=20,
        )
        assert "tangerine" in end["message"]["text"]
        context = fake.requests[-1]["messages"]
        assert any("tangerine" in m["content"] for m in context)
        for tab in (a1, b1):
            await tab.disconnect()
