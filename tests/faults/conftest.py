"""Fault tests (issue 4, tests 1-8): real nginx, daphne, Redis and fake-OpenAI
processes that the tests kill, stop and starve.

Every module that breaks something starts its own Stack (its own Redis on a
free port, never the shared one on 6379), so a fault never leaks into another
module. Clients are ``tests.faults.tab.Tab``: the browser's reconnect and repair
logic over real sockets.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.faults.tab import Tab
from tests.stack import Stack

USERS = ["alice", "bob", "carol", "dave"]
PASSWORD = "correct-horse-battery-staple"
BASE_ENV = {
    "CHAT_RATE_LIMIT": "0",
    "ASSISTANT_RATE_LIMIT": "0",
    "ASSISTANT_FLUSH_MS": "20",
}


@contextlib.contextmanager
def stack_running(workdir: Path, env: Mapping[str, str] | None = None, **kwargs: object) -> Iterator[Stack]:
    """A started stack with USERS created and the ``sessions`` attribute set."""
    with Stack(workdir, env_overrides={**BASE_ENV, **(env or {})}, **kwargs) as stack:
        code = (
            "from django.contrib.auth import get_user_model;U=get_user_model();"
            f"[U.objects.create_user(username=n, password={PASSWORD!r}) for n in {USERS!r}]"
        )
        stack.manage("shell", "-c", code)
        stack.sessions = {name: stack.login(name) for name in USERS}  # type: ignore[attr-defined]
        yield stack


def tab_for(stack: Stack, user: str, slug: str, via: int | None = None, **kwargs: object) -> Tab:
    """A tab through nginx, or straight to daphne number ``via``."""
    base = stack.ws_url if via is None else "ws" + stack.daphne_urls[via].removeprefix("http")
    origin = stack.origin if via is None else stack.daphne_urls[via]
    headers = stack.ws_headers(stack.sessions[user], origin=origin)  # type: ignore[attr-defined]
    return Tab(base, slug, headers, name=f"{user}@{'nginx' if via is None else via}", **kwargs)  # type: ignore[arg-type]


def db_messages(stack: Stack, slug: str) -> list[dict]:
    """The room's rows as the database has them, in seq order."""
    code = (
        "import json;from rooms.models import Message;"
        f"print(json.dumps(list(Message.objects.filter(room__slug={slug!r}).order_by('seq')"
        ".values('id','seq','role','status','text','author_name','client_id'))))"
    )
    out = stack.manage("shell", "-c", code).stdout
    return json.loads(out.strip().splitlines()[-1])


def view_matches_db(tab: Tab, rows: list[dict]) -> list[str]:
    """Differences between a tab's final view and the database (empty: equal)."""
    problems: list[str] = []
    view = tab.ordered()
    if [m["id"] for m in view] != [r["id"] for r in rows]:
        missing = sorted({r["id"] for r in rows} - {m["id"] for m in view})
        extra = sorted({m["id"] for m in view} - {r["id"] for r in rows})
        problems.append(f"{tab.name}: ids differ (missing {missing[:10]}, extra {extra[:10]})")
        return problems
    for message, row in zip(view, rows, strict=True):
        for key in ("seq", "status", "text"):
            if message.get(key) != row[key]:
                problems.append(f"{tab.name}: message {row['id']} {key} {message.get(key)!r:.60} != {row[key]!r:.60}")
    return problems


def fake_stats(stack: Stack) -> dict:
    base = (stack.fake_openai_url or "").removesuffix("/v1")
    with urllib.request.urlopen(f"{base}/_stats", timeout=5) as response:
        return json.loads(response.read())


# --- logs ----------------------------------------------------------------------

_TRACEBACK = "Traceback (most recent call last):"


class LogWatch:
    """What the daphne processes logged since the watch began.

    ``unexpected()`` lists each traceback block (the log line that introduced it
    plus the exception line) that matches none of the ``allowed`` patterns, and
    every "Task was destroyed but it is pending" (never allowed).
    """

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.offsets = {p.name: len(p.logs()) for p in stack.daphnes}

    def text(self, name: str) -> str:
        process = next(p for p in self.stack.daphnes if p.name == name)
        return process.logs()[self.offsets.get(name, 0) :]

    def texts(self) -> dict[str, str]:
        return {p.name: self.text(p.name) for p in self.stack.daphnes}

    def unexpected(self, allowed: list[str] = ()) -> list[str]:  # type: ignore[assignment]
        found: list[str] = []
        for name, text in self.texts().items():
            if "Task was destroyed but it is pending" in text:
                found.append(f"{name}: Task was destroyed but it is pending")
            for block in traceback_blocks(text):
                if not any(re.search(pattern, block) for pattern in allowed):
                    found.append(f"{name}: {block}")
        return found


def traceback_blocks(text: str) -> list[str]:
    """Each traceback (a chain counts once) as
    'introducing line | exception line(s) | in: function > function > ...'."""
    lines = text.splitlines()
    blocks: list[tuple[list[str], list[str]]] = []
    for index, line in enumerate(lines):
        if _TRACEBACK not in line:
            continue
        before = [entry for entry in lines[max(0, index - 3) : index] if entry.strip()]
        chained = bool(before) and before[-1].startswith(("During handling", "The above exception"))
        end = index + 1
        functions = []
        while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
            match = re.match(r'\s+File ".*", line \d+, in (\S+)', lines[end])
            if match:
                functions.append(match.group(1))
            end += 1
        exception = lines[end].strip() if end < len(lines) else ""
        if chained and blocks:
            blocks[-1][0].append(exception)
            blocks[-1][1][:] = functions
        else:
            blocks.append(([before[-1].strip() if before else "", exception], functions))
    return [" | ".join(parts) + " | in: " + " > ".join(functions) for parts, functions in blocks]
