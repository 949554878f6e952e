"""The database as a dependency that fails (issue 9): PostgreSQL reached
through a TCP forwarder that the tests cut (connections reset, new ones
refused) or hang (nothing relayed, nothing closed).

Needs a PostgreSQL server on 127.0.0.1:5432 (the machine's, as in CI); the
stack gets a database of its own there, reached only through the forwarder.
What must hold: no socket ever closes with 1011 and no traceback is logged;
sends during the fault get an ``error`` (``unavailable``) or their message, and
the browser's retry saves each exactly once afterwards; a reply streaming
through the fault keeps streaming and ends ``complete`` with the model's whole
text; a hanging database turns into errors within DATABASE_CALL_TIMEOUT, not a
silent stall.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time

import pytest

from tests.faults.conftest import LogWatch, db_messages, stack_running, tab_for
from tests.faults.forwarder import Forwarder
from tests.faults.tab import Tab, tabs_wait

pytestmark = [pytest.mark.faults, pytest.mark.asyncio]

CALL_TIMEOUT = 6.0  # DATABASE_CALL_TIMEOUT's default
WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"]
_slugs = itertools.count(1)


def postgres_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def forwarder():
    if not postgres_answers():
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 to put a forwarder in front of")
    with Forwarder(5432) as fwd:
        yield fwd


@pytest.fixture(scope="module")
def stack(tmp_path_factory, forwarder):
    with stack_running(
        tmp_path_factory.mktemp("db-faults"),
        daphne_count=2,
        servers=["daphne", "uvicorn"],
        fake_openai=True,
        database_url=f"postgres://postgres@127.0.0.1:{forwarder.port}/test",
    ) as running:
        yield running


@pytest.fixture
def healthy(stack, forwarder):
    forwarder.restore()
    return stack


def room_new(stack) -> str:
    slug = f"dbfault-{next(_slugs)}"
    stack.room_create(slug)
    return slug


def model_text(tokens: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(tokens))


async def chatter(tabs: list[Tab], stop: asyncio.Event, every: float = 0.25) -> None:
    count = 0
    while not stop.is_set():
        for tab in tabs:
            await tab.post(f"{tab.name} says {count}")
        count += 1
        await asyncio.sleep(every)


async def settled(tabs: list[Tab], stack, slug: str, within: float = 30.0) -> list[dict]:
    """Every send saved (exactly once) and every tab's view equal to the database."""
    await tabs_wait(tabs, lambda t: t.live and not t.pending, within, "every send saved")
    deadline = time.monotonic() + within
    while True:
        rows = db_messages(stack, slug)
        ids = [r["id"] for r in rows]
        if all(sorted(t.view) == sorted(ids) for t in tabs):
            break
        if time.monotonic() > deadline:
            differences = [
                f"{t.name}: missing {sorted(set(ids) - set(t.view))[:5]} extra {sorted(set(t.view) - set(ids))[:5]}"
                for t in tabs
            ]
            pytest.fail("tab views never matched the database: " + "; ".join(differences))
        await asyncio.sleep(0.3)
    texts = [r["text"] for r in rows if r["role"] == "user"]
    assert len(texts) == len(set(texts)), "a message was saved twice"
    sent = {item.text for tab in tabs for item in tab.sends.values()}
    assert sent <= set(texts), f"sends lost: {sorted(sent - set(texts))[:5]}"
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    return rows


def no_1011(tabs: list[Tab]) -> None:
    for tab in tabs:
        codes = [code for _, code in tab.closes]
        assert 1011 not in codes, f"{tab.name} closed with 1011: {codes}"


async def test_database_cut_during_sends_and_a_streaming_reply(healthy, forwarder):
    stack = healthy
    watch = LogWatch(stack)
    slug = room_new(stack)
    tabs = [tab_for(stack, user, slug, via=via).start() for user, via in (("alice", 0), ("bob", 1), ("carol", None))]
    await tabs_wait(tabs, lambda t: t.live, 15, "first hello")
    await tabs[0].post("@assistant [[tokens=160]] [[tps=16]] a ten second story")
    await tabs_wait(tabs, lambda t: any(s["seq"] >= 1 for s in t.streams.values()), 15, "the reply streaming")
    [reply_id] = {m["id"] for m in tabs[0].view.values() if m["role"] == "assistant"}

    stop = asyncio.Event()
    talking = asyncio.ensure_future(chatter(tabs, stop))
    await asyncio.sleep(1.0)
    forwarder.cut()
    cut_at = time.monotonic()
    await asyncio.sleep(5.0)
    forwarder.restore()
    await asyncio.sleep(2.0)
    stop.set()
    await talking

    # During the cut sends were answered with "unavailable" (and later retried), not left hanging.
    errors = [e for tab in tabs for e in tab.errors]
    assert errors and {e["code"] for e in errors} == {"unavailable"}, {e["code"] for e in errors}
    # The reply kept streaming to every tab while the database was away.
    for tab in tabs:
        during = [f for _, at, f in tab.frames if f["type"] == "assistant.delta" and cut_at < at < cut_at + 5]
        assert during, f"{tab.name}: no delta during the cut"
    await tabs_wait(tabs, lambda t: t.view[reply_id]["status"] != "streaming", 30, "the reply's end")
    rows = await settled(tabs, stack, slug)
    [reply] = [r for r in rows if r["id"] == reply_id]
    assert reply["status"] == "complete" and reply["text"] == model_text(160)
    for tab in tabs:
        assert tab.view[reply_id]["text"] == model_text(160)
    no_1011(tabs)
    assert not watch.unexpected(), watch.unexpected()
    await asyncio.gather(*(tab.stop() for tab in tabs))


async def test_connects_during_a_cut_are_told_to_come_back(healthy, forwarder):
    stack = healthy
    watch = LogWatch(stack)
    slug = room_new(stack)
    forwarder.cut()
    try:
        tab = tab_for(stack, "dave", slug).start()
        await tab.wait_for(lambda: len(tab.closes) >= 2, within=15, what="refused connects")
        assert {code for _, code in tab.closes} == {4503}, tab.closes
        assert not tab.live
    finally:
        forwarder.restore()
    await tab.wait_for(lambda: tab.live, within=15, what="back after the cut")
    await tab.stop()
    assert not watch.unexpected(), watch.unexpected()


async def test_hanging_database_turns_into_errors_within_the_bound(healthy, forwarder):
    stack = healthy
    watch = LogWatch(stack)
    slug = room_new(stack)
    tabs = [tab_for(stack, user, slug, via=via).start() for user, via in (("alice", 0), ("bob", 1))]
    await tabs_wait(tabs, lambda t: t.live, 15, "first hello")
    forwarder.hang()
    hung_at = time.monotonic()
    try:
        ids = [(tab, await tab.post(f"{tab.name} while the database hangs")) for tab in tabs]
        await tabs_wait(
            tabs,
            lambda t: all(t.sends[c].answered_at for tt, c in ids if tt is t) or not t.live,
            CALL_TIMEOUT + 2,
            "an answer while the database hangs",
        )
        for tab, client_id in ids:
            item = tab.sends[client_id]
            assert item.answered_at is not None, f"{tab.name}: silent stall"
            assert item.answered_at - hung_at <= CALL_TIMEOUT + 1.5
            assert item.answer is not None and item.answer["type"] == "error"
            assert item.answer["code"] == "unavailable" and item.answer["client_id"] == client_id
        # A new socket during the hang is refused with 4503 within the bound too.
        late = tab_for(stack, "carol", slug).start()
        await late.wait_for(lambda: late.closes, within=CALL_TIMEOUT + 3, what="a refusal")
        assert late.closes[0][1] == 4503
    finally:
        forwarder.restore()
    tabs.append(late)
    await settled(tabs, stack, slug, within=40)
    no_1011(tabs)
    assert not watch.unexpected(), watch.unexpected()
    await asyncio.gather(*(tab.stop() for tab in tabs))
