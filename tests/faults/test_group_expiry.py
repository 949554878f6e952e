"""Fault test 6: a socket idle past ``group_expiry`` is never silently deaf.

channels-redis's core layer forgets a group member ``group_expiry`` seconds
after its ``group_add`` (channels #999); the consumer re-adds itself every
GROUP_REFRESH_SECONDS. Here the expiry is 4 s and the refresh 1 s, and the
listener idles for 10 s. The pub/sub layer (the default) has no group expiry
but has its own idle timeouts; its run is in test_flow.py on the shared stack.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.conftest import LogWatch, stack_running, tab_for
from tests.faults.tab import tabs_wait

pytestmark = [pytest.mark.faults, pytest.mark.asyncio]

GROUP_EXPIRY = 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = {"CHANNEL_LAYER_KIND": "core", "CHANNEL_GROUP_EXPIRY": str(GROUP_EXPIRY), "GROUP_REFRESH_SECONDS": "1"}
    with stack_running(tmp_path_factory.mktemp("group-expiry"), env=env, daphne_count=2) as running:
        yield running


async def idle_then_hear(stack, slug: str, idle_seconds: float) -> None:
    """A listener on each daphne idles, then a third tab speaks: each listener
    hears it on the socket it had, or that socket was closed before the send
    (and the tab caught up after reconnecting)."""
    watch = LogWatch(stack)
    listeners = [tab_for(stack, "alice", slug, via=0).start(), tab_for(stack, "bob", slug, via=1).start()]
    await tabs_wait(listeners, lambda t: t.live, 15, "first hello")
    await asyncio.sleep(idle_seconds)
    speaker = tab_for(stack, "carol", slug, via=1).start()
    await speaker.wait_for(lambda: speaker.live, 15, "speaker hello")
    sent_at = time.monotonic()
    await speaker.post("anyone still there?")
    await tabs_wait(listeners, lambda t: "anyone still there?" in t.received_texts(), 10, "the message after idling")
    for tab in listeners:
        [(socket_no, arrived_at)] = [
            (n, at) for n, at, f in tab.frames if f["type"] == "message" and f["message"]["text"].startswith("anyone")
        ] or [(tab.socket_no, None)]
        if socket_no == 1 and arrived_at is not None:
            continue  # heard live on the socket it idled on
        assert tab.closes and tab.closes[0][0] < sent_at, f"{tab.name} was deaf: no close before the send"
    assert not watch.unexpected(), watch.unexpected()
    await asyncio.gather(*(tab.stop() for tab in [*listeners, speaker]))


async def test_idle_socket_is_not_deaf_core_layer(stack):
    stack.room_create("idle-core")
    await idle_then_hear(stack, "idle-core", idle_seconds=GROUP_EXPIRY * 2.5)
