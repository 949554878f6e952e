"""Fault test 4: the channel layer drops 10% of room group sends.

Real nginx, two real daphne processes and Redis; only the layer class differs
(``tests.faults.droplayer``, logged drops). Clients repair what they miss the
way the browser does: a ``seq`` jump triggers ``history.fetch``.

A loss at the very end of a conversation is invisible until the next event
(nothing tells a quiet client that it missed the last message), so the test
closes with "sync" messages until one of them is not dropped: the first event
that does arrive reveals every hole below it.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.faults.conftest import LogWatch, db_messages, stack_running, tab_for, view_matches_db
from tests.faults.tab import tabs_wait

pytestmark = [pytest.mark.faults, pytest.mark.asyncio]

ROUNDS = 40
_DROPPED = re.compile(r"dropped group send to room\.\d+: kind=(\S+) id=(\S+)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with stack_running(
        tmp_path_factory.mktemp("group-drops"),
        env={"DJANGO_SETTINGS_MODULE": "tests.faults.drop_settings"},
        daphne_count=2,
    ) as running:
        yield running


def dropped_ids(watch: LogWatch) -> set[int]:
    ids = set()
    for text in watch.texts().values():
        for kind, value in _DROPPED.findall(text):
            if kind == "message":
                ids.add(int(value))
    return ids


async def test_lost_group_messages_are_repaired(stack):
    watch = LogWatch(stack)
    slug = "drops"
    stack.room_create(slug)
    tabs = [tab_for(stack, user, slug, via=via).start() for user in ("alice", "bob") for via in (0, 1)]
    tabs += [tab_for(stack, user, slug).start() for user in ("carol", "dave")]
    await tabs_wait(tabs, lambda t: t.live, 15, "first hello")

    for round_no in range(ROUNDS):
        for tab in tabs:
            await tab.post(f"{tab.name} #{round_no}")
        await asyncio.sleep(0.02)
    await tabs_wait(tabs, lambda t: not t.pending, 30, "all sends acknowledged")

    # Close with messages until one reaches everyone (its group send not dropped).
    closer = tabs[0]
    for attempt in range(20):
        client_id = await closer.post(f"sync {attempt}")
        await closer.wait_for(lambda c=client_id: closer.sends[c].answer is not None, 10, "sync echo")
        answer = closer.sends[client_id].answer
        assert answer["type"] == "message"
        if answer["message"]["id"] not in dropped_ids(watch):
            break
    else:
        pytest.fail("20 sync messages in a row were dropped at a 10% rate")

    rows = db_messages(stack, slug)
    await tabs_wait(tabs, lambda t: not view_matches_db(t, rows), 20, "view equal to the database")
    dropped = dropped_ids(watch)
    assert dropped, "the layer dropped nothing: the test proved nothing"
    repaired = sum(1 for tab in tabs for _, _, f in tab.frames if f["type"] == "history")
    assert repaired, "no tab had to fetch a hole"
    # Every dropped message reached every other tab anyway, once in its view.
    for tab in tabs:
        assert dropped <= set(tab.view), tab.name
        assert not tab.closes, f"{tab.name} was disconnected: the repair must work on a live socket"
    assert not watch.unexpected()
    await asyncio.gather(*(tab.stop() for tab in tabs))
