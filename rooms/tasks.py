"""The one owner of this process's background tasks.

Long-lived per-process loops (the group hub's reader, the publisher, the
Redis health watch, the presence keeper, the reply sweeper...) are started
here by name, at most one of each, on the running event loop; short-lived work
(a reply) is spawned here too, so nothing is garbage-collected mid-flight and
every failure is logged. A process has one event loop for its whole life; the
test suite runs one per test, so when the loop changes everything bound to the
old one is forgotten, and ``tasks_stop()`` ends it all in one call.

Each task starts in a context of its own. One started while an HTTP request is
handled (the API) must not inherit that request's ``ThreadSensitiveContext``
(Django's ASGI handler): its executor thread is gone once the request ends
("CurrentThreadExecutor already quit"), and the task's ``db_run`` calls belong
on the process's database thread like everyone's.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class Tasks:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._named: dict[str, asyncio.Task[Any]] = {}
        self._spawned: set[asyncio.Task[Any]] = set()
        self._on_new_loop: list[Callable[[], None]] = []

    def on_new_loop(self, reset: Callable[[], None]) -> None:
        """Register state to forget when the event loop changes (queues, events)."""
        self._on_new_loop.append(reset)

    def bind(self) -> asyncio.AbstractEventLoop:
        """The running loop; state of an earlier loop is dropped first."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._named = {}
            self._spawned = set()
            for reset in self._on_new_loop:
                reset()
        return loop

    def ensure(self, name: str, factory: Callable[[], Coroutine[Any, Any, Any]]) -> asyncio.Task[Any]:
        """The running task called ``name``, started from ``factory()`` if there is none."""
        loop = self.bind()
        task = self._named.get(name)
        if task is None or task.done():
            task = loop.create_task(factory(), name=name, context=contextvars.Context())
            task.add_done_callback(self._log_failure)
            self._named[name] = task
        return task

    def running(self, name: str) -> bool:
        task = self._named.get(name)
        return task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run short-lived background work (an unreferenced task may be collected mid-flight)."""
        loop = self.bind()
        task = loop.create_task(coro, name=name, context=contextvars.Context())
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
        task.add_done_callback(self._log_failure)
        return task

    @staticmethod
    def _log_failure(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def stop(self) -> None:
        """Cancel every task of the running loop and wait for them (tests)."""
        if self._loop is not asyncio.get_running_loop():
            return
        pending = [t for t in (*self._spawned, *self._named.values()) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=5)
            for task in stuck:
                logger.warning("background task %s did not stop", task.get_name())
        self._named = {}
        self._spawned = set()


tasks = Tasks()


async def tasks_stop() -> None:
    await tasks.stop()
