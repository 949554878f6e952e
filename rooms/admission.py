"""How many sockets one process opens at once.

A reconnect storm (a deploy, a network blip) brings every socket back within
a second or two. Left alone, thousands of opens each start their database and
Redis round trips together: the event loop falls seconds behind, Redis
answers look late to their timeouts, and each refusal (4503) brings the
client back for another handshake. Opens therefore pass a gate of
CHAT_CONNECT_CONCURRENCY at a time; the rest wait their turn before doing any
work, which costs them nothing but the wait.
"""

from __future__ import annotations

import asyncio
import weakref

from django.conf import settings

_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def connect_gate() -> asyncio.Semaphore:
    """The running loop's gate (tests run many loops in one process)."""
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = asyncio.Semaphore(settings.CHAT_CONNECT_CONCURRENCY)
    return gate
