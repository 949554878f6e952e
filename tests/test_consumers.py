"""The room consumer through channels.testing.WebsocketCommunicator, with the
in-memory channel layer and a real (transactional) database."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest
from channels.db import database_sync_to_async as mk
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from rooms import services
from rooms.models import Message
from rooms.routing import websocket_urlpatterns

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("realtime_cleanup")]

app = URLRouter(websocket_urlpatterns)


async def open_socket(user, slug: str, query: str = "") -> tuple[WebsocketCommunicator, dict]:
    path = f"/ws/rooms/{slug}/" + (f"?{query}" if query else "")
    communicator = WebsocketCommunicator(app, path)
    communicator.scope["user"] = user
    communicator.scope["session"] = None
    connected, _ = await communicator.connect()
    assert connected
    hello = await communicator.receive_json_from(timeout=5)
    return communicator, hello


SKIPPABLE = ("presence", "typing", "assistant.queued")


async def next_of(
    communicator: WebsocketCommunicator, kind: str, timeout: float = 5, skip: tuple[str, ...] = SKIPPABLE
) -> dict:
    """The next frame of type ``kind``, skipping the frame types in ``skip``."""
    while True:
        frame = await communicator.receive_json_from(timeout=timeout)
        if frame["type"] == kind:
            return frame
        assert frame["type"] in skip, frame


async def test_hello_then_messages_reach_every_tab(make_user, make_room):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("lobby")
    a1, hello = await open_socket(alice, room.slug)
    assert hello["type"] == "hello"
    assert hello["room"]["slug"] == "lobby" and hello["user"] == {"username": "alice", "moderator": False}
    assert hello["messages"] == [] and hello["streaming"] == [] and hello["presence"] == ["alice"]
    a2, _ = await open_socket(alice, room.slug)
    b1, hello_b = await open_socket(bob, room.slug)
    assert hello_b["presence"] == ["alice", "bob"]

    await b1.send_json_to({"type": "message.send", "text": "hi all", "client_id": "c-1"})
    for tab in (a1, a2, b1):
        frame = await next_of(tab, "message")
        message = frame["message"]
        assert message["text"] == "hi all" and message["author"] == "bob" and message["client_id"] == "c-1"
        assert message["role"] == "user" and message["status"] == "complete" and message["seq"] == 1
        assert set(message) >= {"id", "seq", "client_id", "author", "role", "text", "html", "created", "status"}
    # Exactly once: nothing else queued for the sender.
    assert await b1.receive_nothing(timeout=0.3)
    for tab in (a1, a2, b1):
        await tab.disconnect()


async def test_presence_counts_users_once_and_leaves_with_last_tab(make_user, make_room):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("pres")
    b1, _ = await open_socket(bob, room.slug)
    assert (await next_of(b1, "presence"))["users"] == ["bob"]  # its own arrival
    a1, _ = await open_socket(alice, room.slug)
    assert (await next_of(b1, "presence"))["users"] == ["alice", "bob"]
    a2, _ = await open_socket(alice, room.slug)
    await a1.disconnect()
    assert await b1.receive_nothing(timeout=0.3), "alice still has a tab open"
    await a2.disconnect()
    assert (await next_of(b1, "presence"))["users"] == ["bob"]
    await b1.disconnect()


async def test_reconnect_after_gets_missing_messages_once(make_user, make_room):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("resume")
    a1, _ = await open_socket(alice, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "first"})
    seen = (await next_of(a1, "message"))["message"]["id"]
    await a1.disconnect()
    for i in range(3):
        await services.message_send(room=room, user=bob, text=f"while away {i}")
    a2, hello = await open_socket(alice, room.slug, f"after={seen}")
    assert [m["text"] for m in hello["messages"]] == ["while away 0", "while away 1", "while away 2"]
    assert [m["seq"] for m in hello["messages"]] == [2, 3, 4]
    await a2.disconnect()


async def test_hello_without_after_has_last_50(make_user, make_room):
    alice = await mk(make_user)("alice")
    room = await mk(make_room)("long")
    for i in range(60):
        await services.message_send(room=room, user=alice, text=f"m{i}")
    a1, hello = await open_socket(alice, room.slug)
    assert [m["seq"] for m in hello["messages"]] == list(range(11, 61))
    await a1.send_json_to({"type": "history.fetch", "before": hello["messages"][0]["id"], "limit": 100})
    history = await next_of(a1, "history")
    assert [m["seq"] for m in history["messages"]] == list(range(1, 11)) and history["has_more"] is False
    await a1.disconnect()


async def test_duplicate_client_id_returns_existing(make_user, make_room):
    alice = await mk(make_user)("alice")
    room = await mk(make_room)("dup")
    a1, _ = await open_socket(alice, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "once", "client_id": "same"})
    first = (await next_of(a1, "message"))["message"]
    await a1.send_json_to({"type": "message.send", "text": "once", "client_id": "same"})
    again = (await next_of(a1, "message"))["message"]
    assert again["id"] == first["id"]
    assert await Message.objects.filter(room=room).acount() == 1
    await a1.disconnect()


BAD_FRAMES = [
    ("not json", "bad_json"),
    ("{", "bad_json"),
    ("[]", "bad_request"),
    ('"text"', "bad_request"),
    ("{}", "bad_request"),
    ('{"type": 5}', "bad_request"),
    ('{"type": "nope"}', "bad_request"),
    ('{"type": "message.send"}', "bad_request"),
    ('{"type": "message.send", "text": 5}', "bad_request"),
    ('{"type": "message.send", "text": ""}', "bad_request"),
    ('{"type": "message.send", "text": "hi", "client_id": 7}', "bad_request"),
    ('{"type": "message.send", "text": "hi", "client_id": "' + "x" * 65 + '"}', "bad_request"),
    ('{"type": "typing", "active": "yes"}', "bad_request"),
    ('{"type": "history.fetch", "before": "1", "limit": 5}', "bad_request"),
    ('{"type": "history.fetch", "before": 1, "limit": 101}', "bad_request"),
    ('{"type": "history.fetch", "before": true, "limit": 5}', "bad_request"),
    ('{"type": "assistant.cancel", "reply_id": 999999}', "not_found"),
    ('{"type": "assistant.cancel"}', "bad_request"),
]


@pytest.mark.parametrize(("frame", "code"), BAD_FRAMES)
async def test_bad_frames_get_error_and_keep_socket(make_user, make_room, frame, code):
    alice = await mk(make_user)("alice")
    room = await mk(make_room)("bad")
    a1, _ = await open_socket(alice, room.slug)
    await a1.send_to(text_data=frame)
    error = await next_of(a1, "error")
    assert error["code"] == code and error["detail"]
    # Still open and working, and nothing was saved.
    assert await Message.objects.filter(room=room).acount() == 0
    await a1.send_json_to({"type": "message.send", "text": "still here"})
    assert (await next_of(a1, "message"))["message"]["text"] == "still here"
    await a1.disconnect()


async def test_too_long_text(make_user, make_room, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 20
    alice = await mk(make_user)("alice")
    room = await mk(make_room)("cap")
    a1, _ = await open_socket(alice, room.slug)
    await a1.send_json_to({"type": "message.send", "text": "x" * 21})
    assert (await next_of(a1, "error"))["code"] == "too_long"
    assert await Message.objects.filter(room=room).acount() == 0
    await a1.disconnect()


async def test_binary_frame_is_refused_politely(make_user, make_room):
    alice = await mk(make_user)("alice")
    room = await mk(make_room)("bin")
    a1, _ = await open_socket(alice, room.slug)
    await a1.send_to(bytes_data=b"\x00\x01")
    assert (await next_of(a1, "error"))["code"] == "bad_request"
    await a1.disconnect()


async def test_oversized_frame_closes_and_saves_nothing(make_user, make_room):
    alice = await mk(make_user)("alice")
    room = await mk(make_room)("big")
    a1, _ = await open_socket(alice, room.slug)
    await a1.send_to(text_data=json.dumps({"type": "message.send", "text": "x" * (70 * 1024)}))
    closed = await a1.receive_output(timeout=5)
    while closed["type"] != "websocket.close":
        closed = await a1.receive_output(timeout=5)
    assert closed["code"] == 4413
    assert await Message.objects.filter(room=room).acount() == 0


async def test_rate_limit(make_user, make_room, settings):
    settings.CHAT_RATE_LIMIT = (3, 60)
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("flood")
    a1, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    for i in range(3):
        await a1.send_json_to({"type": "message.send", "text": f"m{i}"})
        await next_of(a1, "message")
    await a1.send_json_to({"type": "message.send", "text": "too many"})
    assert (await next_of(a1, "error"))["code"] == "rate_limited"
    await b1.send_json_to({"type": "message.send", "text": "bob is fine"})
    texts = [(await next_of(b1, "message"))["message"]["text"] for _ in range(4)]
    assert texts == ["m0", "m1", "m2", "bob is fine"]
    assert await Message.objects.filter(room=room).acount() == 4
    for s in (a1, b1):
        await s.disconnect()


@pytest.mark.parametrize(
    ("who", "code"),
    # A private room a stranger may not see answers exactly like a missing one.
    [("anonymous", 4401), ("stranger", 4404), ("missing-room", 4404)],
)
async def test_refusals_close_with_codes(make_user, make_room, who, code):
    from django.contrib.auth.models import AnonymousUser

    member, stranger = await mk(make_user)("member"), await mk(make_user)("stranger")
    room = await mk(make_room)("secret", is_private=True, members=[member])
    user = {"anonymous": AnonymousUser(), "stranger": stranger, "missing-room": member}[who]
    slug = "nowhere" if who == "missing-room" else room.slug
    communicator = WebsocketCommunicator(app, f"/ws/rooms/{slug}/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    output = await communicator.receive_output(timeout=5)
    assert output == {"type": "websocket.close", "code": code}


async def test_member_of_private_room_is_let_in(make_user, make_room):
    member = await mk(make_user)("member")
    room = await mk(make_room)("secret", is_private=True, members=[member])
    a1, hello = await open_socket(member, room.slug)
    assert hello["type"] == "hello"
    await a1.disconnect()


async def test_typing_reaches_others_not_typist(make_user, make_room):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("typing")
    a1, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    await a1.send_json_to({"type": "typing", "active": True})
    assert await next_of(b1, "typing") == {"type": "typing", "username": "alice", "active": True}
    frames = []
    while not await a1.receive_nothing(timeout=0.3):
        frames.append(await a1.receive_json_from())
    assert all(f["type"] != "typing" for f in frames)
    for s in (a1, b1):
        await s.disconnect()


async def test_bad_after_is_reported_not_fatal(make_user, make_room):
    alice = await mk(make_user)("alice")
    room = await mk(make_room)("after")
    a1, hello = await open_socket(alice, room.slug, "after=abc")
    assert hello["type"] == "hello"
    assert (await next_of(a1, "error"))["code"] == "bad_request"
    await a1.disconnect()


async def test_pong_reports_room_state(make_user, make_room):
    alice = await mk(make_user)("alice")
    room = await mk(make_room)("pong")
    a1, _ = await open_socket(alice, room.slug)
    await a1.send_json_to({"type": "ping"})
    assert await next_of(a1, "pong") == {"type": "pong", "last_seq": 0, "streaming": []}
    await a1.send_json_to({"type": "message.send", "text": "one"})
    await next_of(a1, "message")
    await a1.send_json_to({"type": "ping"})
    assert (await next_of(a1, "pong"))["last_seq"] == 1
    await a1.disconnect()


async def test_presence_of_a_dead_process_ages_out(make_user, make_room, settings):
    """A socket that stopped refreshing (its process was killed) leaves the list
    at the next refresh, and the room is told."""
    import time

    from rooms import presence

    alice = await mk(make_user)("alice")
    room = await mk(make_room)("ghosts")
    a1, _ = await open_socket(alice, room.slug)
    await next_of(a1, "presence")
    # An entry written by another process, announced, and then that process died.
    entries = presence._local.setdefault(f"chat:presence:{room.pk}", {})
    entries["ghost|dead-socket"] = time.time() + 60
    await presence.presence_announce(room.pk)
    assert (await next_of(a1, "presence"))["users"] == ["alice", "ghost"]
    entries["ghost|dead-socket"] = time.time() - 1
    await presence.presence_refresh()
    assert (await next_of(a1, "presence"))["users"] == ["alice"]
    await a1.disconnect()


async def test_presence_deltas_cost_a_few_bytes_per_join(make_user, make_room):
    """A client that asks for deltas (?presence=delta) gets who joined and who
    left, numbered so they continue its hello exactly; others get whole lists."""
    alice, bob, carol = await mk(make_user)("alice"), await mk(make_user)("bob"), await mk(make_user)("carol")
    room = await mk(make_room)("deltas")
    a1, hello = await open_socket(alice, room.slug, query="presence=delta")
    assert hello["presence"] == ["alice"]
    first = await next_of(a1, "presence.delta")
    assert first["joined"] == ["alice"] and first["left"] == [] and first["since"] == hello["presence_version"]
    old_style, _ = await open_socket(carol, room.slug)
    b1, _ = await open_socket(bob, room.slug, query="presence=delta")
    seen = [first]
    while [n for d in seen for n in d["joined"]].count("bob") == 0:
        seen.append(await next_of(a1, "presence.delta"))
    for earlier, later in itertools.pairwise(seen):
        assert later["since"] == earlier["version"]
    assert "alice" not in [n for d in seen[1:] for n in d["joined"]], "a delta names only the change"
    whole = await next_of(old_style, "presence")
    assert "carol" in whole["users"]
    await b1.disconnect()
    gone = await next_of(a1, "presence.delta")
    assert gone["left"] == ["bob"] and gone["joined"] == [] and gone["since"] == seen[-1]["version"]
    # A client that lost one asks for the whole set.
    await a1.send_json_to({"type": "presence.fetch"})
    snapshot = await next_of(a1, "presence")
    assert snapshot["users"] == ["alice", "carol"] and snapshot["version"] == gone["version"]
    for tab in (a1, old_style):
        await tab.disconnect()


async def test_typing_flood_is_not_amplified(make_user, make_room):
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("typeflood")
    a1, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    for _ in range(50):
        await a1.send_json_to({"type": "typing", "active": True})
    await a1.send_json_to({"type": "typing", "active": False})
    seen = []
    # The change to false waits out CHAT_TYPING_INTERVAL (1 s) after the true.
    while not await b1.receive_nothing(timeout=1.5):
        frame = await b1.receive_json_from()
        if frame["type"] == "typing":
            seen.append(frame["active"])
    assert seen == [True, False]
    for s in (a1, b1):
        await s.disconnect()


async def test_typing_toggles_are_limited_and_end_in_the_last_state(make_user, make_room, settings):
    """Alternating true/false is a change every time: it is relayed at most once
    per CHAT_TYPING_INTERVAL, and the last state always arrives."""
    settings.CHAT_TYPING_INTERVAL = 0.2
    alice, bob = await mk(make_user)("alice"), await mk(make_user)("bob")
    room = await mk(make_room)("toggles")
    a1, _ = await open_socket(alice, room.slug)
    b1, _ = await open_socket(bob, room.slug)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(400):
        await a1.send_json_to({"type": "typing", "active": i % 2 == 0})
    await a1.send_json_to({"type": "typing", "active": False})
    sent_for = loop.time() - started
    seen = []
    while not await b1.receive_nothing(timeout=0.6):
        frame = await b1.receive_json_from()
        if frame["type"] == "typing":
            seen.append(frame["active"])
    # One at once, then at most one per interval for as long as the flood lasted.
    assert 1 <= len(seen) <= 2 + sent_for / 0.2, (len(seen), sent_for)
    assert seen[-1] is False
    for s in (a1, b1):
        await s.disconnect()
