"""The database as a dependency that can fail.

Sockets and background tasks reach the ORM only through ``db_run``. It runs a
synchronous function on one of the process's DATABASE_THREADS database
threads (each call hands its connection back to the pool when it ends) under a
deadline, and turns every way the database can be away into one exception,
``DatabaseUnavailable``:

- refused or reset connections, a pool with no free connection, a statement
  the server cancelled (``statement_timeout``): Django's ``OperationalError`` /
  ``InterfaceError``;
- a database that stopped answering altogether (a frozen server, a network that
  drops packets): the deadline. Nothing on the client side would ever time out
  a read on a healthy-looking TCP connection, so on the deadline the call's
  connection is shut down under it (its socket for PostgreSQL,
  ``interrupt()`` for SQLite); the stuck thread then fails at once and the
  calls queued behind it run (or fail) instead of waiting forever.

The deadline runs from when a database thread takes the call: waiting for
one (a reconnect storm queues thousands of calls on a healthy database) is
bounded separately, by DATABASE_QUEUE_TIMEOUT, and giving up there
(``DatabaseBusy``) says nothing about the database.

Once a call has failed, the process stops queueing work behind a database
that is away: further calls fail at once, calls already queued fail as soon
as they notice, and one call at a time (every PROBE_SECONDS) is let through
to find out whether it is back. So during an
outage sends are answered ``unavailable`` immediately, a streaming reply keeps
broadcasting without waiting on its saves, and the first probe that succeeds
opens the way again.

Callers answer ``DatabaseUnavailable`` with an ``error`` frame (code
``unavailable``) or a 4503 close; nothing is logged per socket beyond one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, close_old_connections, connections

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class DatabaseUnavailable(Exception):
    """The database could not be reached, or did not answer within the deadline."""


class DatabaseBusy(DatabaseUnavailable):
    """The call waited DATABASE_QUEUE_TIMEOUT for a database thread and never
    started: the process is overloaded, not the database away. Callers answer
    it as ``DatabaseUnavailable`` (the client retries with backoff); it does
    not trip the breaker."""


PROBE_SECONDS = 0.5
QUEUE_POLL_SECONDS = 0.25


class DatabaseHealth:
    """When this process last saw the database fail, whether it is failing now,
    and who may try it meanwhile (one probe at a time).

    The reply sweeper reads it too: a reply cannot check in while the database
    is away, so its heartbeat is not evidence of a dead worker until the
    database has been back for a while.
    """

    def __init__(self) -> None:
        self.last_failure = 0.0  # time.monotonic() of the latest failure
        self.failing = False
        self.probing = False
        self.last_probe = 0.0

    def admit(self) -> bool:
        """May a call go to the database now? Always while it works; while it
        fails, one probe at a time, every PROBE_SECONDS."""
        if not self.failing:
            return True
        now = time.monotonic()
        if self.probing or now - self.last_probe < PROBE_SECONDS:
            return False
        self.probing = True
        self.last_probe = now
        return True

    def failed(self, exc: BaseException | None) -> None:
        self.last_failure = time.monotonic()
        if not self.failing:
            self.failing = True
            logger.warning("database unavailable: %s", type(exc).__name__ if exc else "timeout")

    def succeeded(self) -> None:
        if self.failing:
            self.failing = False
            logger.warning("database reachable again")

    def quiet_for(self) -> float:
        """Seconds since the last failure (a large number if there never was one)."""
        return time.monotonic() - self.last_failure if self.last_failure else float("inf")


db_health = DatabaseHealth()


class _Call:
    """One db_run call as the database thread sees it, so the event loop can
    abort the connection it is stuck on."""

    __slots__ = ("abandoned", "connection", "lock", "probe", "started")

    def __init__(self, probe: bool = False) -> None:
        self.probe = probe  # the one call let through while the breaker is open
        self.abandoned = False
        self.connection: Any = None
        self.started: float | None = None  # when a database thread took it
        self.lock = threading.Lock()  # started versus abandoned: one wins

    def start(self) -> bool:
        with self.lock:
            if self.abandoned:
                return False
            self.started = time.monotonic()
            return True

    def abandon_unstarted(self) -> bool:
        """Give up a call no thread has taken yet; False if one just did."""
        with self.lock:
            if self.started is not None:
                return False
            self.abandoned = True
            return True

    def abort(self) -> None:
        raw = self.connection
        if raw is None:
            return
        with contextlib.suppress(Exception):
            pgconn = getattr(raw, "pgconn", None)
            if pgconn is not None:
                # PostgreSQL (psycopg 3): shutting the socket down wakes the
                # blocked read with an error; the connection is then discarded.
                # (A duplicate, closed exactly once by its socket object: the
                # connection's own descriptor stays psycopg's to close.)
                with socket.socket(fileno=os.dup(pgconn.socket)) as duplicate:
                    duplicate.shutdown(socket.SHUT_RDWR)
            elif hasattr(raw, "interrupt"):
                raw.interrupt()  # sqlite3: abort the running statement


def _runner(call: _Call, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
    if not call.start():
        raise DatabaseBusy("abandoned before it started")
    if db_health.failing and not call.probe:
        # Queued before the database went away: fail now, as new calls do,
        # rather than each waiting out a connect timeout of its own.
        raise DatabaseUnavailable("the database is unavailable")
    # As channels' database_sync_to_async: a connection left unusable by an
    # earlier call is dropped first, and this one goes back when done.
    close_old_connections()
    try:
        wrapper = connections[DEFAULT_DB_ALIAS]
        wrapper.ensure_connection()
        call.connection = wrapper.connection
        try:
            return fn(*args, **kwargs)
        finally:
            call.connection = None
    finally:
        close_old_connections()


async def _call_wait(task: asyncio.Future[R], call: _Call) -> R:
    """The call's result. Its deadline runs from when a database thread takes
    it: time spent queued behind other sockets' calls (a reconnect storm on a
    busy process) says nothing about the database. A call still queued after
    DATABASE_QUEUE_TIMEOUT is given up as ``DatabaseBusy``; a running one past
    DATABASE_CALL_TIMEOUT raises ``TimeoutError`` (the database did not answer)."""
    limit = settings.DATABASE_CALL_TIMEOUT
    queued_until = time.monotonic() + settings.DATABASE_QUEUE_TIMEOUT
    try:
        while True:
            started = call.started
            if started is None and db_health.failing and not call.probe and call.abandon_unstarted():
                # The database went away while this call waited (its threads
                # may be stuck where nothing can interrupt them): fail now.
                raise DatabaseUnavailable("the database is unavailable")
            remaining = (started + limit if started is not None else queued_until) - time.monotonic()
            if remaining > 0:
                # While queued, look at the breaker now and then.
                wait = remaining if started is not None else min(remaining, QUEUE_POLL_SECONDS)
                done, _ = await asyncio.wait({task}, timeout=wait)
                if done:
                    return task.result()
            elif started is not None:
                raise TimeoutError
            elif call.abandon_unstarted():
                raise DatabaseBusy("no database thread was free in time")
    except BaseException:
        task.cancel()  # the thread's work (if any) ends on its own; nobody waits for it
        raise


class _Threads:
    """The process's database threads (PostgreSQL: several, so the round trips
    of different sockets overlap; SQLite: one writer at a time anyway)."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=settings.DATABASE_THREADS, thread_name_prefix="db")
        return self._executor


_threads = _Threads()


async def db_run(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` on the database thread, within DATABASE_CALL_TIMEOUT.

    Raises ``DatabaseUnavailable`` when the database is away; every other
    exception (``IntegrityError``, a ``ServiceError``, a bug) passes through.
    """
    probe = db_health.failing
    if not db_health.admit():
        raise DatabaseUnavailable("the database is unavailable")
    call = _Call(probe)
    try:
        runner = SyncToAsync(_runner, thread_sensitive=False, executor=_threads.executor())
        result = await _call_wait(asyncio.ensure_future(runner(call, fn, args, kwargs)), call)
    except DatabaseUnavailable:
        raise  # busy, or given up while queued: not a new failure of the database
    except TimeoutError:
        call.abandoned = True
        call.abort()
        db_health.failed(None)
        raise DatabaseUnavailable("the database did not answer in time") from None
    except (OperationalError, InterfaceError) as exc:
        db_health.failed(exc)
        raise DatabaseUnavailable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    finally:
        if probe:
            db_health.probing = False
    db_health.succeeded()
    return result
