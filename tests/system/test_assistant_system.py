"""The assistant across real processes: the reply runs in the daphne that got
the mention; every tab on every process sees the same stream."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from tests.system.conftest import client_for

pytestmark = [pytest.mark.system, pytest.mark.asyncio]


def fake_stats(stack) -> dict:
    base = stack.fake_openai_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{base}/_stats", timeout=5) as response:
        return json.loads(response.read())


async def test_same_deltas_in_every_tab_on_both_processes(stack, sessions, room_slug):
    tabs = [
        client_for(stack, sessions, "alice", room_slug, via=0),
        client_for(stack, sessions, "alice", room_slug, via=1),
        client_for(stack, sessions, "bob", room_slug, via=1),
    ]
    for tab in tabs:
        await tab.connect()
    await tabs[0].say("@assistant [[tokens=40]] [[tps=80]] tell us")
    start = await tabs[2].next("assistant.start")
    for tab in tabs:
        await tab.wait_for(lambda t=tab: t.replies.get(start["reply_id"], {}).get("final"), what="end", timeout=20)
    streams = [[(f["seq"], f["text"]) for f in tab.frames if f["type"] == "assistant.delta"] for tab in tabs]
    assert streams[0] == streams[1] == streams[2] and streams[0]
    final = tabs[0].replies[start["reply_id"]]["final"]
    assert final["status"] == "complete"
    assert "".join(text for _, text in streams[0]) == final["text"]
    for tab in tabs:
        assert not tab.problems
        assert [f["type"] for f in tab.frames].count("assistant.end") == 1
        await tab.close()


async def test_tab_opened_mid_stream_continues_without_gap(stack, sessions, room_slug):
    asker = client_for(stack, sessions, "alice", room_slug, via=0)
    await asker.connect()
    await asker.say("@assistant [[tokens=80]] [[tps=40]] a long one")
    start = await asker.next("assistant.start")
    await asker.wait_for(lambda: asker.replies[start["reply_id"]]["seq"] >= 3, what="a few deltas")
    late = client_for(stack, sessions, "bob", room_slug, via=1)
    hello = await late.connect()
    [streaming] = hello["streaming"]
    assert streaming["reply_id"] == start["reply_id"] and streaming["text"]
    await late.wait_for(lambda: late.replies[start["reply_id"]]["final"], what="end", timeout=20)
    reply = late.replies[start["reply_id"]]
    assert reply["text"] == reply["final"]["text"], "hello text + later deltas == final text"
    assert not late.problems
    await asker.close()
    await late.close()


async def test_cancel_from_the_other_process(stack, sessions, room_slug):
    asker = client_for(stack, sessions, "alice", room_slug, via=0)
    stopper = client_for(stack, sessions, "bob", room_slug, via=1)
    await asker.connect()
    await stopper.connect()
    before = fake_stats(stack)["disconnects"]
    await asker.say("@assistant [[long]] go on and on")
    start = await stopper.next("assistant.start")
    await stopper.next("assistant.delta")
    await stopper.send({"type": "assistant.cancel", "reply_id": start["reply_id"]})
    end = await stopper.next("assistant.end", timeout=5)
    assert end["message"]["status"] == "cancelled" and end["message"]["cancelled_by"] == "bob"
    await asker.wait_for(lambda: asker.replies[start["reply_id"]]["final"], what="end on the other process")
    for _ in range(100):
        if fake_stats(stack)["disconnects"] > before:
            break
        await asyncio.sleep(0.05)
    assert fake_stats(stack)["disconnects"] > before, "the upstream request was closed, not left running"
    await asker.close()
    await stopper.close()


async def test_reply_goes_on_after_the_asker_leaves(stack, sessions, room_slug):
    asker = client_for(stack, sessions, "alice", room_slug, via=0)
    watcher = client_for(stack, sessions, "bob", room_slug, via=1)
    await asker.connect()
    await watcher.connect()
    await asker.say("@assistant [[tokens=40]] [[tps=60]] hi")
    start = await asker.next("assistant.start")
    await asker.close()
    await watcher.wait_for(lambda: watcher.replies.get(start["reply_id"], {}).get("final"), what="end", timeout=20)
    assert watcher.replies[start["reply_id"]]["final"]["status"] == "complete"
    await watcher.close()


@pytest.mark.parametrize(
    ("marker", "status"),
    [
        ("[[429]]", "error"),
        ("[[500]]", "error"),
        ("[[cut]]", "error"),
        ("[[500-once]]", "complete"),
        ("[[slow-first]]", "complete"),
    ],
)
async def test_faults_end_once_with_saved_row(stack, sessions, room_slug, marker, status):
    alice = client_for(stack, sessions, "alice", room_slug, via=0)
    await alice.connect()
    await alice.say(f"@assistant {marker} please")
    start = await alice.next("assistant.start")
    end = await alice.next("assistant.end", timeout=20)
    assert end["message"]["status"] == status
    await asyncio.sleep(0.3)
    assert [f["type"] for f in alice.frames].count("assistant.end") == 1
    checker = client_for(stack, sessions, "bob", room_slug, via=1)
    hello = await checker.connect()
    saved = {m["id"]: m for m in hello["messages"]}[start["reply_id"]]
    assert saved["status"] == status and saved["text"] == end["message"]["text"]
    await alice.close()
    await checker.close()


async def test_two_mentions_at_once_on_two_processes(stack, sessions, room_slug):
    alice = client_for(stack, sessions, "alice", room_slug, via=0)
    bob = client_for(stack, sessions, "bob", room_slug, via=1)
    await alice.connect()
    await bob.connect()
    first, second = await asyncio.gather(
        alice.say("@assistant [[tokens=20]] [[tps=60]] from alice"), bob.say("@assistant from bob")
    )
    await alice.wait_for(
        lambda: sum(1 for r in alice.replies.values() if r["final"]) == 2, what="two replies", timeout=30
    )
    starts = [f for f in alice.frames if f["type"] == "assistant.start"]
    ends = [f for f in alice.frames if f["type"] == "assistant.end"]
    in_order = sorted([first, second], key=lambda m: m["seq"])
    assert [s["in_reply_to"] for s in starts] == [m["id"] for m in in_order]
    assert all(e["message"]["status"] == "complete" for e in ends)
    # One at a time: the second started after the first ended.
    frame_types = [(f["type"], f.get("reply_id")) for f in alice.frames if f["type"].startswith("assistant.")]
    first_end = frame_types.index(("assistant.end", starts[0]["reply_id"]))
    second_start = frame_types.index(("assistant.start", starts[1]["reply_id"]))
    assert first_end < second_start
    await alice.close()
    await bob.close()


async def test_catchup_reaches_only_the_askers_sockets_on_both_processes(stack, sessions, room_slug):
    """A private catch-up streams to every socket of its asker, on both server
    processes, and not a byte of it to anyone else's socket, even on the same
    processes in the same room."""
    bob_tabs = [client_for(stack, sessions, "bob", room_slug, via=v) for v in (0, 1)]
    carol_tabs = [client_for(stack, sessions, "carol", room_slug, via=v) for v in (0, 1)]
    for tab in (*bob_tabs, *carol_tabs):
        await tab.connect()
    await carol_tabs[0].say("something bob missed while away")
    await bob_tabs[0].send({"type": "assistant.catchup"})
    for tab in bob_tabs:
        end = await tab.next("assistant.end", timeout=20)
        assert end["private"] is True and end["message"]["seq"] is None
    reply_id = end["reply_id"]
    await asyncio.sleep(1.0)  # anything stray would have arrived by now
    for tab in carol_tabs:
        leaked = [f for f in tab.frames if f.get("reply_id") == reply_id or f.get("private")]
        assert leaked == [], f"{tab.name} received the private reply: {leaked[:2]}"
        assert all(not f["type"].startswith("assistant.") for f in tab.frames)
    for tab in (*bob_tabs, *carol_tabs):
        await tab.close()
