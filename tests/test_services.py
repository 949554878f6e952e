"""Services and selectors against the database."""

from __future__ import annotations

import pytest

from rooms import selectors, services
from rooms.assistant import ask
from rooms.assistant import services as assistant_services
from rooms.models import AssistantRequest, Message, Room
from rooms.services import ServiceError

pytestmark = pytest.mark.django_db


def test_room_needs_only_slug_and_name():
    room = Room.objects.create(slug="plain", name="Plain")
    assert room.is_private is False
    assert room.last_seq == 0


def test_new_rooms_have_one_assistant(make_room):
    room = make_room()
    assert [(a.name, a.enabled) for a in room.assistants.all()] == [("assistant", True)]


def test_seq_counts_up_without_holes(make_user, make_room):
    user, room = make_user(), make_room()
    seqs = [services.message_create(room=room, user=user, text=f"m{i}")[0].seq for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]


def test_rejected_input_takes_no_seq(make_user, make_room, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 10
    user, room = make_user(), make_room()
    services.message_create(room=room, user=user, text="one")
    for text, code in [
        ("", "bad_request"),
        ("   ", "bad_request"),
        ("x" * 11, "too_long"),
        (5, "bad_request"),
        ("a\x00b", "bad_request"),
    ]:
        with pytest.raises(ServiceError) as info:
            services.message_create(room=room, user=user, text=text)
        assert info.value.code == code
    assert services.message_create(room=room, user=user, text="two")[0].seq == 2
    assert Message.objects.filter(room=room).count() == 2


def test_client_id_retry_returns_the_original(make_user, make_room):
    user, room = make_user(), make_room()
    first, created = services.message_create(room=room, user=user, text="hi", client_id="abc")
    again, created_again = services.message_create(room=room, user=user, text="hi", client_id="abc")
    assert created and not created_again
    assert again.pk == first.pk
    assert Message.objects.filter(room=room).count() == 1
    # Another user may use the same client_id.
    other, created_other = services.message_create(room=room, user=make_user(), text="hi", client_id="abc")
    assert created_other and other.pk != first.pk
    # The refused duplicate took no seq: the next message follows without a hole.
    assert services.message_create(room=room, user=user, text="next")[0].seq == other.seq + 1


def test_client_id_retry_returns_the_original_after_its_quote_was_deleted(make_user, make_room):
    user, room = make_user(), make_room()
    quoted, _ = services.message_create(room=room, user=user, text="the question")
    first, _ = services.message_create(room=room, user=user, text="the answer", client_id="r1", reply_to=quoted.pk)
    services.message_delete(room=room, user=user, message_id=quoted.pk)
    again, created = services.message_create(
        room=room, user=user, text="the answer", client_id="r1", reply_to=quoted.pk
    )
    assert not created and again.pk == first.pk
    with pytest.raises(ServiceError) as info:  # a new message may not quote it
        services.message_create(room=room, user=user, text="late", client_id="r2", reply_to=quoted.pk)
    assert info.value.code == "not_found"


@pytest.mark.parametrize("client_id", ["", "x" * 65, 12, ["a"]])
def test_client_id_must_be_short_string(make_user, make_room, client_id):
    with pytest.raises(ServiceError) as info:
        services.message_create(room=make_room(), user=make_user(), text="hi", client_id=client_id)
    assert info.value.code == "bad_request"


def test_message_html_is_rendered_and_sanitized(make_user, make_room):
    message, _ = services.message_create(room=make_room(), user=make_user(), text="**bold** <script>alert(1)</script>")
    assert "<strong>bold</strong>" in message.html
    assert "<script" not in message.html


@pytest.mark.parametrize(
    ("text", "mentioned"),
    [
        ("@assistant hi", True),
        ("hey @Assistant, what's up", True),
        ("ask @ASSISTANT.", True),
        ("mail me at me@assistant.com", False),
        ("@assistants are many", False),
        ("no mention here", False),
    ],
)
def test_mention_asks_the_assistant(make_user, make_room, text, mentioned):
    room = make_room()
    asked = ask.assistants_asked(room, text)
    assert bool(asked) is mentioned
    message, _ = services.message_create(room=room, user=make_user(), text=text, asks=asked)
    requests = AssistantRequest.objects.filter(message=message)
    assert requests.count() == (1 if mentioned else 0)
    assert list(requests.values_list("pk", flat=True)) == message.assistant_requests


def test_mentions_follow_the_rooms_assistants_in_mention_order(make_room):
    room = make_room(slug="named", assistant="sage")
    services.assistant_configure(room=room, name="critic", model="critic-model")
    assert [a.name for a in ask.assistants_asked(room, "@critic and @sage, discuss")] == ["critic", "sage"]
    assert ask.assistants_asked(room, "@assistant hi") == []
    services.assistant_configure(room=room, name="sage", enabled=False)
    assert [a.name for a in ask.assistants_asked(room, "@critic and @sage")] == ["critic"]


def test_assistant_names_are_one_word_and_keys_are_env_names(make_room):
    room = make_room()
    for bad in ({"name": "two words"}, {"name": "ok", "key_env": "sk-live-123"}, {"name": "ok", "key_env": "PATH"}):
        with pytest.raises(ServiceError):
            services.assistant_configure(room=room, **bad)
    assistant, created = services.assistant_configure(room=room, name="Ok", key_env="MISTRAL_API_KEY")
    assert created and assistant.key_env == "MISTRAL_API_KEY"
    again, created = services.assistant_configure(room=room, name="ok", model="m2")
    assert not created and again.pk == assistant.pk and again.model == "m2"


def ask_(room, user, text: str) -> tuple[Message, list[int]]:
    message, _ = services.message_create(room=room, user=user, text=text, asks=ask.assistants_asked(room, text))
    return message, message.assistant_requests


def test_private_room_admits_members_only(make_user, make_room):
    member, stranger = make_user(), make_user()
    room = make_room(is_private=True, members=[member])
    assert selectors.room_can_access(room, member)
    assert not selectors.room_can_access(room, stranger)
    assert list(selectors.room_list_for_user(stranger)) == []
    services.membership_remove(room, member)
    assert not selectors.room_can_access(room, member)


def test_resume_after_returns_missing_in_order(make_user, make_room):
    user, room = make_user(), make_room()
    messages = [services.message_create(room=room, user=user, text=f"m{i}")[0] for i in range(10)]
    resume = selectors.message_list_after(room, messages[3].id, limit=500)
    assert [m.seq for m in resume.messages] == list(range(5, 11))
    assert not resume.truncated
    capped = selectors.message_list_after(room, 0, limit=4)
    assert [m.seq for m in capped.messages] == [1, 2, 3, 4] and capped.truncated


def test_history_before(make_user, make_room):
    user, room = make_user(), make_room()
    messages = [services.message_create(room=room, user=user, text=f"m{i}")[0] for i in range(10)]
    rows, has_more = selectors.message_list_before(room, messages[5].id, 3)
    assert [m.seq for m in rows] == [3, 4, 5] and has_more
    rows, has_more = selectors.message_list_before(room, messages[2].id, 3)
    assert [m.seq for m in rows] == [1, 2] and not has_more


def test_reply_queue_one_at_a_time_in_order(make_user, make_room):
    user, room = make_user(), make_room()
    _, [first] = ask_(room, user, "@assistant one")
    _, [second] = ask_(room, user, "@assistant two")
    assert assistant_services.request_claim_turn(second) is None  # not its turn
    reply = assistant_services.request_claim_turn(first)
    assert reply is not None and reply.status == "streaming" and reply.seq == 3
    assert reply.assistant.name == "assistant" and reply.asked_by == user
    assert assistant_services.request_claim_turn(second) is None  # one streams already
    assert assistant_services.request_queue_position(second) == 1
    outcome = assistant_services.ReplyOutcome(status="complete", text="done", stream_seq=1)
    assistant_services.reply_finish(reply.pk, outcome)
    second_reply = assistant_services.request_claim_turn(second)
    assert second_reply is not None and second_reply.seq == 4


def test_reply_finish_only_once(make_user, make_room):
    user, room = make_user(), make_room()
    _, [request] = ask_(room, user, "@assistant hi")
    reply = assistant_services.request_claim_turn(request)
    outcome = assistant_services.ReplyOutcome(status="complete", text="**hi**", stream_seq=2)
    final = assistant_services.reply_finish(reply.pk, outcome)
    assert final.status == "complete" and "<strong>hi</strong>" in final.html and final.finished
    again = assistant_services.ReplyOutcome(status="error", text="", stream_seq=0)
    assert assistant_services.reply_finish(reply.pk, again) is None


def test_sweep_interrupts_stale_replies(make_user, make_room, settings):
    from datetime import timedelta

    from django.utils import timezone

    user, room = make_user(), make_room()
    _, [request] = ask_(room, user, "@assistant hi")
    reply = assistant_services.request_claim_turn(request)
    assert assistant_services.reply_checkpoint_many([(reply.pk, "partial", 3)]) == [True]
    Message.objects.filter(pk=reply.pk).update(heartbeat=timezone.now() - timedelta(seconds=600))
    interrupted, _ = assistant_services.reply_sweep_stale()
    assert [m.pk for m in interrupted] == [reply.pk]
    reply.refresh_from_db()
    assert reply.status == "interrupted" and reply.text == "partial"
    assert assistant_services.reply_sweep_stale() == ([], [])


def test_context_is_budgeted_and_room_scoped(make_user, make_room, settings):
    settings.ASSISTANT_CONTEXT_CHARS = 60
    alice = make_user("alice")
    room_a, room_b = make_room(), make_room()
    services.message_create(room=room_b, user=alice, text="secret of room b")
    for i in range(6):
        services.message_create(room=room_a, user=alice, text=f"message number {i}")
    picked = selectors.context_messages(room_a, before_seq=room_a.messages.count())
    assert picked, "the newest message always fits"
    assert all(m.room_id == room_a.pk for m in picked)
    assert [m.text for m in picked] == [f"message number {i}" for i in range(6)][-len(picked) :]
    assert sum(len(m.text) + len(m.author_name) + 2 for m in picked) <= 60


@pytest.mark.parametrize(("text", "client_id"), [("bad \ud800 text", None), ("fine", "id-\udfff")])
def test_lone_surrogates_are_refused(make_user, make_room, text, client_id):
    with pytest.raises(ServiceError) as info:
        services.message_create(room=make_room(), user=make_user(), text=text, client_id=client_id)
    assert info.value.code == "bad_request"
