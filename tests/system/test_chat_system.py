"""The chat core over the real wire: nginx -> two daphne processes -> Redis."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.system.conftest import client_for

pytestmark = [pytest.mark.system, pytest.mark.asyncio]


async def test_two_users_three_tabs_across_processes(stack, sessions, room_slug):
    alice1 = client_for(stack, sessions, "alice", room_slug, via=0)
    alice2 = client_for(stack, sessions, "alice", room_slug, via=1)
    bob = client_for(stack, sessions, "bob", room_slug, via=1)
    for client in (alice1, alice2, bob):
        await client.connect()
    await bob.wait_for(lambda: bob.frames and _presence(bob) == ["alice", "bob"], what="presence")
    await alice1.wait_for(lambda: _presence(alice1) == ["alice", "bob"], what="presence on the other process")

    sent = [await alice1.say("hello from process 0"), await bob.say("hello from process 1")]
    for client in (alice1, alice2, bob):
        await client.wait_for(lambda c=client: len(c.messages) == 2, what="both messages")
        assert client.texts() == ["hello from process 0", "hello from process 1"]
        assert client.seqs() == [1, 2]
        # Exactly once: each id arrived in one frame only.
        ids = [f["message"]["id"] for f in client.frames if f["type"] == "message"]
        assert sorted(ids) == sorted(m["id"] for m in sent)
    await bob.close()
    await alice1.wait_for(lambda: _presence(alice1) == ["alice"], what="bob left")
    await alice2.close()
    await asyncio.sleep(0.3)
    assert _presence(alice1) == ["alice"], "alice still has a tab open"
    await alice1.close()


def _presence(client) -> list[str] | None:
    frames = [f for f in client.frames if f["type"] in ("presence", "hello")]
    if not frames:
        return None
    last = frames[-1]
    return last["users"] if last["type"] == "presence" else last["presence"]


async def test_reconnect_with_after_has_no_gap_or_duplicate(stack, sessions, room_slug):
    """A third client keeps sending while alice drops and resumes twice."""
    alice = client_for(stack, sessions, "alice", room_slug, via=0)
    carol = client_for(stack, sessions, "carol", room_slug, via=1)
    await alice.connect()
    await carol.connect()
    total = 60
    done = asyncio.Event()

    async def chatter() -> None:
        for i in range(total):
            await carol.say(f"c{i}")
            await asyncio.sleep(0.01)
        done.set()

    sender = asyncio.ensure_future(chatter())
    for _ in range(2):
        await alice.wait_for(lambda: len(alice.messages) >= 5, what="some messages")
        await alice.close()
        await asyncio.sleep(0.15)
        await alice.connect(after=alice.last_id)
    await sender
    await alice.wait_for(lambda: len(alice.messages) == total, what="all messages", timeout=20)
    assert alice.texts() == [f"c{i}" for i in range(total)]
    assert alice.seqs() == list(range(1, total + 1))
    delivered = [f["message"]["id"] for f in alice.frames if f["type"] == "message"]
    delivered += [m["id"] for f in alice.frames if f["type"] == "hello" for m in f["messages"]]
    assert len(delivered) == len(set(delivered)) == total, "each message exactly once across the seams"
    await alice.close()
    await carol.close()


async def test_client_id_retry_after_reconnect(stack, sessions, room_slug):
    alice = client_for(stack, sessions, "alice", room_slug)
    await alice.connect()
    first = await alice.say("only once", client_id="retry-1")
    await alice.close()
    await alice.connect(after=0)
    again = await alice.say("only once", client_id="retry-1")
    assert again["id"] == first["id"]
    assert [m["text"] for m in alice.hello["messages"]] == ["only once"]
    await alice.close()


BAD_INPUT = [
    ("nope", "bad_json"),
    ("[1,2]", "bad_request"),
    ('{"type":"message.send"}', "bad_request"),
    ('{"type":"message.send","text":""}', "bad_request"),
    ('{"type":"message.send","text":"' + "x" * 4001 + '"}', "too_long"),
    ('{"type":"warp.drive"}', "bad_request"),
    ('{"type":"history.fetch","before":1,"limit":1000}', "bad_request"),
]


async def test_bad_input_over_the_wire(stack, sessions, room_slug):
    alice = client_for(stack, sessions, "alice", room_slug)
    await alice.connect()
    for frame, code in BAD_INPUT:
        await alice.send(frame)
        error = await alice.next("error")
        assert error["code"] == code, frame[:40]
    assert (await alice.say("still alive"))["text"] == "still alive"
    assert alice.texts() == ["still alive"]
    await alice.close()


@pytest.mark.parametrize("size", [70 * 1024, 2 * 1024 * 1024])
async def test_oversized_frames_close_the_socket(stack, sessions, room_slug, size):
    alice = client_for(stack, sessions, "alice", room_slug)
    await alice.connect()
    await alice.send(json.dumps({"type": "message.send", "text": "y" * size}))
    await alice.wait_for(lambda: alice.close_code is not None, what="close")
    # 4413 from the consumer; for frames past daphne's own cap the server drops the
    # connection mid-upload (1009 or, seen from a client still sending, 1006).
    assert alice.close_code in (4413, 1009, 1006)
    checker = client_for(stack, sessions, "bob", room_slug)
    hello = await checker.connect()
    assert hello["messages"] == [], "nothing saved"
    await checker.close()


@pytest.mark.parametrize(
    ("user", "slug_kind", "code"),
    [(None, "public", 4401), ("bob", "private", 4404), ("alice", "missing", 4404)],  # invisible = missing
)
async def test_refusals(stack, sessions, user, slug_kind, code):
    slug = {"public": "refuse-public", "private": "refuse-private", "missing": "no-such-room"}[slug_kind]
    if slug_kind == "public":
        stack.room_create(slug)
    elif slug_kind == "private":
        stack.room_create(slug, "--private", "--member", "alice")
    headers = {"Origin": stack.origin}
    if user:
        headers = stack.ws_headers(sessions[user])
    async with websockets.connect(f"{stack.ws_url}/ws/rooms/{slug}/", additional_headers=headers) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == code


@pytest.mark.parametrize("origin", ["https://evil.example", None])
async def test_foreign_or_missing_origin_is_refused(stack, sessions, room_slug, origin):
    headers = {"Cookie": stack.ws_headers(sessions["alice"])["Cookie"]}
    if origin:
        headers["Origin"] = origin
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(f"{stack.ws_url}/ws/rooms/{room_slug}/", additional_headers=headers):
            pass
    assert info.value.response.status_code == 403


async def test_idle_socket_keeps_hearing_past_redis_timeouts(stack, sessions, room_slug):
    """redis-py / channels-redis 5 s timeouts must not kill an idle consumer."""
    listener = client_for(stack, sessions, "alice", room_slug, via=0)
    await listener.connect()
    await asyncio.sleep(8)
    assert listener.close_code is None
    speaker = client_for(stack, sessions, "bob", room_slug, via=1)
    await speaker.connect()
    await speaker.say("after a long silence")
    await listener.wait_for(lambda: "after a long silence" in listener.texts(), what="delivery after idling")
    await listener.close()
    await speaker.close()


async def test_history_paging(stack, sessions, room_slug):
    alice = client_for(stack, sessions, "alice", room_slug)
    await alice.connect()
    for i in range(55):
        await alice.say(f"h{i}")
    await alice.close()
    fresh = client_for(stack, sessions, "bob", room_slug)
    hello = await fresh.connect()
    assert [m["text"] for m in hello["messages"]] == [f"h{i}" for i in range(5, 55)]
    await fresh.send({"type": "history.fetch", "before": hello["messages"][0]["id"], "limit": 100})
    history = await fresh.next("history")
    assert [m["text"] for m in history["messages"]] == [f"h{i}" for i in range(5)]
    assert history["has_more"] is False
    await fresh.close()


async def test_health_endpoint(stack):
    status, body = stack.http_get("/healthz")
    assert status == 200
    assert json.loads(body) == {"database": "ok", "channel_layer": "ok"}


async def test_concurrent_senders_in_many_rooms_keep_every_guarantee(stack, sessions):
    """Five users in four rooms, each socket sending a burst without waiting for
    its acks, through both processes at once: the sends are group-committed in
    batches that span rooms (each process locking its rooms in id order), yet
    every room's log is whole and contiguous, each sender's messages stay in the
    order they were sent, and every member hears each message exactly once."""
    slugs = [f"burst-{n}" for n in range(4)]
    for slug in slugs:
        stack.room_create(slug)
    users = ["alice", "bob", "carol", "dave", "erin"]
    burst = 12
    clients = {
        (slug, user): client_for(stack, sessions, user, slug, via=(i + j) % 2)
        for i, slug in enumerate(slugs)
        for j, user in enumerate(users)
    }
    for client in clients.values():
        await client.connect()

    async def fire(slug: str, user: str) -> None:
        client = clients[(slug, user)]
        for n in range(burst):
            await client.send({"type": "message.send", "text": f"{user}:{n}", "client_id": f"{slug}-{user}-{n}"})

    await asyncio.gather(*(fire(slug, user) for slug, user in clients))
    total = burst * len(users)
    for (slug, user), client in clients.items():
        await client.wait_for(lambda c=client: len(c.messages) >= total, what=f"{slug}: every message", timeout=30)
        assert client.seqs() == list(range(1, total + 1)), f"{slug} as {user}: seqs with holes or repeats"
        assert not [f for f in client.frames if f["type"] == "error"], f"{slug} as {user}: a send was refused"
        texts = client.texts()
        for sender in users:
            mine = [t for t in texts if t.startswith(f"{sender}:")]
            assert mine == [f"{sender}:{n}" for n in range(burst)], f"{slug}: {sender}'s messages out of order"
        delivered = [f["message"]["id"] for f in client.frames if f["type"] == "message"]
        assert len(delivered) == len(set(delivered)) == total, f"{slug} as {user}: not exactly once"
    for client in clients.values():
        await client.close()
