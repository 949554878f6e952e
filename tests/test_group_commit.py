"""Group commit of messages: ``message_create_many`` against the database, and
the process's ``MessageWriter`` that batches the messages sockets send."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from rooms import db, services
from rooms.access import AccessLost
from rooms.models import Message, Room
from rooms.services import MessageRequest, ServiceError


def _seqs(room: Room) -> list[int]:
    return list(Message.objects.filter(room=room).order_by("seq").values_list("seq", flat=True))


@pytest.mark.django_db
def test_a_batch_gives_each_room_consecutive_seqs_in_request_order(make_user, make_room):
    alice, bob = make_user(), make_user()
    one, two = make_room(), make_room()
    services.message_create(room=two, user=alice, text="already there")
    requests = [
        MessageRequest(one, alice, "one-a"),
        MessageRequest(two, bob, "two-a"),
        MessageRequest(one, bob, "one-b", client_id="c1"),
        MessageRequest(two, alice, "**two-b**"),
        MessageRequest(one, alice, "one-c"),
    ]
    results = services.message_create_many(requests)
    saved = [message for message, created in results if created]
    assert [m.text for m in saved] == ["one-a", "two-a", "one-b", "**two-b**", "one-c"]
    assert [(m.room_id, m.seq) for m in saved] == [(one.pk, 1), (two.pk, 2), (one.pk, 2), (two.pk, 3), (one.pk, 3)]
    assert all(m.pk for m in saved)
    # Within a room ids follow seqs (readers page by either), and the rows are
    # what a single send would have written.
    rows = list(Message.objects.filter(room=one).order_by("seq"))
    assert [r.pk for r in rows] == sorted(r.pk for r in rows)
    assert rows[1].client_id == "c1" and rows[1].author_id == bob.pk and rows[1].author_name == bob.username
    assert "<strong>two-b</strong>" in Message.objects.get(room=two, seq=3).html
    one.refresh_from_db()
    two.refresh_from_db()
    assert (one.last_seq, two.last_seq) == (3, 3)


@pytest.mark.django_db
def test_a_refused_request_fails_alone_and_takes_no_seq(make_user, make_room):
    alice, gone_user, stranger = make_user(), make_user(), make_user()
    gone_user.is_active = False
    gone_user.save()
    public = make_room()
    private = make_room(is_private=True, members=[alice])
    deleted = make_room()
    deleted_ref = Room.objects.get(pk=deleted.pk)
    deleted.delete()
    results = services.message_create_many(
        [
            MessageRequest(public, alice, "kept 1"),
            MessageRequest(public, alice, ""),  # bad input
            MessageRequest(public, gone_user, "deactivated"),
            MessageRequest(private, stranger, "not a member"),
            MessageRequest(private, alice, "member"),
            MessageRequest(deleted_ref, alice, "room gone"),
            MessageRequest(public, alice, "kept 2", reply_to=10**12),  # quotes nothing
            MessageRequest(public, alice, "kept 3"),
        ]
    )
    assert isinstance(results[1], ServiceError) and results[1].code == "bad_request"
    assert isinstance(results[2], AccessLost) and results[2].what == "user"
    assert isinstance(results[3], AccessLost) and results[3].what == "room"
    assert isinstance(results[5], AccessLost) and results[5].what == "gone"
    assert isinstance(results[6], ServiceError) and results[6].code == "not_found"
    assert [r[0].seq for r in (results[0], results[7])] == [1, 2]
    assert results[4][0].seq == 1
    # No holes: the next message follows on.
    assert services.message_create(room=public, user=alice, text="next")[0].seq == 3
    assert services.message_create(room=private, user=alice, text="next")[0].seq == 2
    assert _seqs(public) == [1, 2, 3] and _seqs(private) == [1, 2]


@pytest.mark.django_db
def test_a_repeated_client_id_returns_the_original_and_the_rest_are_saved(make_user, make_room):
    alice, bob = make_user(), make_user()
    room = make_room()
    first, _ = services.message_create(room=room, user=alice, text="hi", client_id="retry-1")
    results = services.message_create_many(
        [
            MessageRequest(room, bob, "before"),
            MessageRequest(room, alice, "hi", client_id="retry-1"),  # a resend after reconnect
            MessageRequest(room, bob, "twice", client_id="tab"),
            MessageRequest(room, bob, "twice", client_id="tab"),  # two tabs retried at once
            MessageRequest(room, alice, "after"),
        ]
    )
    assert results[1][0].pk == first.pk and results[1][1] is False
    assert results[2][1] is True and results[3][1] is False and results[3][0].pk == results[2][0].pk
    assert results[0][1] and results[4][1]
    assert [r[0].text for r in results] == ["before", "hi", "twice", "twice", "after"]
    assert _seqs(room) == [1, 2, 3, 4]
    assert Message.objects.filter(room=room, client_id="tab").count() == 1


@pytest.mark.django_db
def test_a_resend_whose_quote_was_deleted_gets_its_original(make_user, make_room):
    user, room = make_user(), make_room()
    quoted, _ = services.message_create(room=room, user=user, text="question")
    first, _ = services.message_create(room=room, user=user, text="answer", client_id="q1", reply_to=quoted.pk)
    services.message_delete(room=room, user=user, message_id=quoted.pk)
    [result] = services.message_create_many([MessageRequest(room, user, "answer", client_id="q1", reply_to=quoted.pk)])
    assert result[0].pk == first.pk and result[1] is False


# --- The writer -------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_concurrent_sends_share_batches_and_keep_every_guarantee(
    make_user, make_room, batch_sizes, realtime_cleanup
):
    batches = batch_sizes(services, "message_create_many")
    users = [await sync_to_async(make_user)() for _ in range(4)]
    rooms = [await sync_to_async(make_room)() for _ in range(3)]
    sends = [
        services.message_send(room=rooms[i % 3], user=users[i % 4], text=f"m{i}", client_id=f"c{i}") for i in range(60)
    ]
    results = await asyncio.gather(*sends)
    assert all(created for _, created in results)
    assert sum(batches) == 60
    assert len(batches) < 60  # sends that arrived during a write went into the next one
    for room in rooms:
        seqs = await sync_to_async(_seqs)(room)
        assert seqs == list(range(1, 21))
    # A resend through the writer gets the original back.
    again, created = await services.message_send(room=rooms[0], user=users[0], text="m0", client_id="c0")
    assert not created and again.pk == results[0][0].pk


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_refusal_reaches_its_sender_only(make_user, make_room, realtime_cleanup):
    alice, stranger = await sync_to_async(make_user)(), await sync_to_async(make_user)()
    room = await sync_to_async(make_room)(is_private=True, members=[alice])
    results = await asyncio.gather(
        services.message_send(room=room, user=alice, text="hello"),
        services.message_send(room=room, user=stranger, text="let me in"),
        services.message_send(room=room, user=alice, text="x" * 10**6),
        return_exceptions=True,
    )
    assert results[0][1] is True
    assert isinstance(results[1], AccessLost) and results[1].what == "room"
    assert isinstance(results[2], ServiceError) and results[2].code == "too_long"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_database_outage_fails_every_waiting_sender_and_the_writer_recovers(
    make_user, make_room, monkeypatch, realtime_cleanup
):
    user, room = await sync_to_async(make_user)(), await sync_to_async(make_room)()
    real = services.message_create_many
    monkeypatch.setattr(db, "db_health", db.DatabaseHealth())

    def away(requests):
        raise db.OperationalError("connection refused")

    monkeypatch.setattr(services, "message_create_many", away)
    results = await asyncio.gather(
        *(services.message_send(room=room, user=user, text=f"m{i}") for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, db.DatabaseUnavailable) for r in results), results
    assert await sync_to_async(_seqs)(room) == []
    monkeypatch.setattr(services, "message_create_many", real)
    monkeypatch.setattr(db, "db_health", db.DatabaseHealth())  # the breaker's probe interval is not under test
    message, created = await services.message_send(room=room, user=user, text="back")
    assert created and message.seq == 1


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_message_saved_after_its_sender_left_is_still_announced(
    make_user, make_room, monkeypatch, realtime_cleanup
):
    user, room = await sync_to_async(make_user)(), await sync_to_async(make_room)()
    announced: list[str] = []
    monkeypatch.setattr(services, "_message_announce", lambda room, message: announced.append(message.text))
    release = asyncio.Event()
    real = services.message_create_many

    def slow(requests):
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
        return real(requests)

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(services, "message_create_many", slow)
    sender = asyncio.ensure_future(services.message_send(room=room, user=user, text="said and gone"))
    await asyncio.sleep(0.2)  # the batch is in the database thread
    sender.cancel()  # the socket closed
    release.set()
    for _ in range(100):
        if announced:
            break
        await asyncio.sleep(0.05)
    assert announced == ["said and gone"]
    assert await sync_to_async(_seqs)(room) == [1]


@pytest.mark.django_db(transaction=True)
def test_a_message_whose_quote_vanishes_mid_batch_fails_alone(make_user, make_room, monkeypatch):
    """The quote is checked before the transaction; if its row is gone by the
    commit (the foreign key fails), that message is refused and the rest of the
    batch is still saved, without holes."""
    user, room = make_user(), make_room()
    quoted, _ = services.message_create(room=room, user=user, text="the question")
    real = services._reply_to_get

    def vanishing(room_id, reply_to):
        found = real(room_id, reply_to)
        if found is not None:
            found.pk = found.id = 10**12  # as if deleted between the check and the insert
        return found

    monkeypatch.setattr(services, "_reply_to_get", vanishing)
    results = services.message_create_many(
        [
            MessageRequest(room, user, "before", client_id="b"),
            MessageRequest(room, user, "quoting", reply_to=quoted.pk),
            MessageRequest(room, user, "after"),
        ]
    )
    assert isinstance(results[1], ServiceError) and results[1].code == "not_found"
    assert [r[0].text for r in (results[0], results[2])] == ["before", "after"]
    assert results[0][1] and results[2][1]
    assert _seqs(room) == [1, 2, 3]


@pytest.mark.django_db
def test_a_batch_sends_the_signals_a_save_would(make_user, make_room):
    """The API hooks into message saves: a bot's message is marked as it is
    inserted, and webhook deliveries are recorded with each message."""
    from rooms.api import webhooks
    from rooms.api.models import Webhook, WebhookDelivery

    author, bot = make_user(), make_user("batchbot")
    bot._chat_is_bot = True  # as the API's authentication marks a bot's requests
    room = make_room()
    Webhook.objects.create(room=room, url="http://example.com/all", secret="a")
    webhooks.targets_forget()
    results = services.message_create_many(
        [MessageRequest(room, author, "from a person"), MessageRequest(room, bot, "from a bot")]
    )
    person, robot = (result[0] for result in results)
    assert Message.objects.get(pk=robot.pk).author_bot and not Message.objects.get(pk=person.pk).author_bot
    deliveries = list(WebhookDelivery.objects.order_by("id").values_list("message_id", "event"))
    assert deliveries == [(person.pk, "message"), (robot.pk, "message")]
