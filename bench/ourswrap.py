"""ASGI entry of the ours rows: the project's application, unchanged, plus a query census.

``bench.ourswrap:application`` *is* ``chatsite.asgi:application``; importing it
also hooks a Django execute wrapper onto every database connection the process
opens (``connection_created``), so the bench can count the queries a reconnect
or a message costs, and the time the server waited on them, from outside the
project's code. With ``BENCH_DB_STATS=<path>`` a daemon thread writes the
running totals there as JSON every 0.2 s (atomically, by rename); the load
generator reads them at step boundaries.

The wrapper is one Python call and a lock per query (a few µs, against a
query's 50-500 µs); it sees every statement Django runs, on SQLite and
PostgreSQL alike. It does not see the psycopg pool's own connection checks.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from typing import Any

from django.db.backends.signals import connection_created

from chatsite.asgi import application  # noqa: F401 - re-exported for the server

_lock = threading.Lock()
_total = {"queries": 0, "seconds": 0.0, "errors": 0}
_by_statement: dict[str, list[float]] = {}
_MAX_KEYS = 300
_LISTS = re.compile(r"\((?:%s, )+%s\)")
_SPACE = re.compile(r"\s+")


def _fingerprint(sql: str) -> str:
    text = _SPACE.sub(" ", _LISTS.sub("(%s, ...)", sql)).strip()
    return text[:160]


def _census(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    started = time.perf_counter()
    failed = False
    try:
        return execute(sql, params, many, context)
    except Exception:
        failed = True
        raise
    finally:
        spent = time.perf_counter() - started
        key = _fingerprint(sql)
        with _lock:
            _total["queries"] += 1
            _total["seconds"] += spent
            if failed:
                _total["errors"] += 1
            entry = _by_statement.get(key)
            if entry is not None:
                entry[0] += 1
                entry[1] += spent
            elif len(_by_statement) < _MAX_KEYS:
                _by_statement[key] = [1, spent]


def _hook(sender: Any, connection: Any, **kwargs: Any) -> None:
    if _census not in connection.execute_wrappers:
        connection.execute_wrappers.append(_census)


connection_created.connect(_hook, dispatch_uid="bench-query-census")


def snapshot() -> dict[str, Any]:
    with _lock:
        return {
            "t": time.monotonic(),
            **_total,
            "by_statement": {k: [int(v[0]), round(v[1], 6)] for k, v in _by_statement.items()},
        }


def _writer(path: str) -> None:
    tmp = f"{path}.tmp"
    while True:
        try:
            with open(tmp, "w") as out:
                json.dump(snapshot(), out)
            os.replace(tmp, path)
        except OSError:
            pass
        time.sleep(0.2)


if os.environ.get("BENCH_DB_STATS"):
    threading.Thread(target=_writer, args=(os.environ["BENCH_DB_STATS"],), daemon=True, name="bench-census").start()
