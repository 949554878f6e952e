"""Profiles of the server under test: py-spy attached from the client core, summarised for the report.

py-spy samples the running daphne without stopping it (``--nonblocking``) and runs
pinned with the load generator, so the server core does only the server's work.
The summary keeps the frames that explain where a delivery's time goes: the
heaviest call paths (inclusive) and the heaviest leaves (self).
"""

from __future__ import annotations

import collections
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

from bench import procs

logger = logging.getLogger("bench.profiling")

PY_SPY = str(Path(procs.PYTHON).parent / "py-spy")
# Frames every sample of an asyncio/daphne process goes through: they explain nothing.
NOISE = (
    "runpy",
    "threading.py",
    "daphne/cli.py",
    "daphne/__main__.py",
    "daphne/server.py:155",
    "uvicorn/__main__.py",
    "uvicorn/main.py",
    "uvicorn/server.py",
    "uvicorn/_compat.py",
    "click/core.py",
    "runners.py",
    "asyncioreactor.py:257",
    "base_events.py:607",
    "base_events.py:640",
    "base_events.py:1922",
    "events.py:80",
)


def pyspy_start(pid: int, path: Path, seconds: float) -> subprocess.Popen | None:
    try:
        return subprocess.Popen(
            [
                *(PY_SPY, "record", "--nonblocking", "-p", str(pid), "-r", "100", "-d", str(int(seconds))),
                *("-f", "speedscope", "-o", str(path)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError as exc:
        logger.warning("py-spy unavailable: %s", exc)
        return None


def _frame_label(frame: dict[str, Any]) -> str:
    file = frame.get("file", "")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{frame['name']} ({file}:{frame.get('line', '')})"


def speedscope_summary(path: Path, top: int = 14) -> dict[str, Any] | None:
    """Share of samples per frame: inclusive (on the stack) and self (the leaf)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    frames = data["shared"]["frames"]
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    loop_inclusive: collections.Counter[str] = collections.Counter()
    total = 0.0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=False):
            total += weight
            kind = _thread_kind(profile.get("name", ""), stack, frames)
            threads[kind] += weight
            if kind.startswith("event loop"):
                seen_loop = set()
                for index in stack:
                    label = _frame_label(frames[index])
                    if label not in seen_loop:
                        loop_inclusive[label] += weight
                        seen_loop.add(label)
            seen = set()
            for index in stack:
                label = _frame_label(frames[index])
                if label not in seen:
                    inclusive[label] += weight
                    seen.add(label)
            if stack:
                leaf[_frame_label(frames[stack[-1]])] += weight
    if not total:
        return None

    def shares(counter: collections.Counter[str]) -> list[list[Any]]:
        rows = [(label, value) for label, value in counter.most_common() if not any(n in label for n in NOISE)]
        return [[label, round(100 * value / total, 1)] for label, value in rows[:top]]

    return {
        "samples_s": round(total, 2),
        "inclusive": shares(inclusive),
        "self": shares(leaf),
        "threads": {name: round(100 * value / total, 1) for name, value in threads.most_common()},
        "loop_inclusive": shares(loop_inclusive)[:10],
    }


def _thread_kind(name: str, stack: list[int], frames: list[dict[str, Any]]) -> str:
    """The event loop (py-spy names the main thread), the bench's census thread, or a worker thread
    (channels' database_sync_to_async runs the ORM on one)."""
    if '"MainThread"' in name:
        return "event loop (main thread)"
    if "bench-census" in name:
        return "bench census"
    return "worker threads (database)"
