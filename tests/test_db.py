"""rooms.db.db_run under load: time spent queued behind other calls is not
the database failing (a reconnect storm used to trip the breaker and close
sockets with 4503 while the database was fine)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rooms import db

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def one_thread(settings, monkeypatch):
    """One database thread, 1 s to start and 1 s to answer; the breaker starts closed."""
    settings.DATABASE_CALL_TIMEOUT = 1.0
    settings.DATABASE_QUEUE_TIMEOUT = 1.0
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-test")
    monkeypatch.setattr(db._threads, "_executor", executor)
    monkeypatch.setattr(db, "db_health", db.DatabaseHealth())
    yield
    executor.shutdown(wait=True)


def _work(seconds: float, ran: list[int], n: int) -> int:
    time.sleep(seconds)
    ran.append(n)
    return n


async def test_queued_time_does_not_count_against_the_deadline(one_thread):
    ran: list[int] = []
    # One thread: the second call waits 0.6 s, then runs 0.6 s, 1.2 s after it
    # was made, past the 1 s deadline, yet the database answered each in time.
    first, second = await asyncio.gather(db.db_run(_work, 0.6, ran, 1), db.db_run(_work, 0.6, ran, 2))
    assert (first, second) == (1, 2)
    assert ran == [1, 2]
    assert not db.db_health.failing


async def test_a_call_queued_past_the_deadline_is_busy_and_never_runs(one_thread):
    ran: list[int] = []
    results = await asyncio.gather(
        db.db_run(_work, 0.7, ran, 1),
        db.db_run(_work, 0.7, ran, 2),
        db.db_run(_work, 0.7, ran, 3),  # would start 1.4 s after it was made
        return_exceptions=True,
    )
    assert results[:2] == [1, 2]
    assert isinstance(results[2], db.DatabaseBusy)
    assert isinstance(results[2], db.DatabaseUnavailable)  # callers answer it as such: 4503, unavailable
    await asyncio.sleep(0.2)
    assert ran == [1, 2]  # given up before it started: no half-done write
    assert not db.db_health.failing  # overload is not an outage: the breaker stays closed


async def test_a_running_call_past_the_deadline_trips_the_breaker(one_thread):
    ran: list[int] = []
    with pytest.raises(db.DatabaseUnavailable) as caught:
        await db.db_run(_work, 1.5, ran, 1)
    assert not isinstance(caught.value, db.DatabaseBusy)
    assert db.db_health.failing


async def test_calls_queued_behind_a_failure_fail_at_once_without_touching_the_database(one_thread, settings):
    settings.DATABASE_QUEUE_TIMEOUT = 5.0  # the second call waits for the thread, then starts
    ran: list[int] = []
    results = await asyncio.gather(
        db.db_run(_work, 1.5, ran, 1),  # runs past its deadline: the breaker opens
        db.db_run(_work, 0.1, ran, 2),  # queued behind it, admitted while all looked well
        return_exceptions=True,
    )
    assert all(isinstance(r, db.DatabaseUnavailable) for r in results)
    assert not isinstance(results[1], db.DatabaseBusy)
    await asyncio.sleep(0.7)  # the first call's thread finishes its sleep
    assert ran == [1], "the queued call never ran"
