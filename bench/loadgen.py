"""The load generator: a separate process, pinned to its own core.

Run as ``python -m bench.loadgen`` with a JSON job on stdin; it prints one JSON
result object on stdout. It speaks three dialects, chosen by ``job["protocol"]``:

- ``ceiling``: the text sent is what every member receives;
- ``naive``: the tutorial's ``{"message": text}`` both ways;
- ``ours``: issue #2's ``message.send`` in, ``hello`` then ``message`` frames out.

Latency is measured end to end on one clock (CLOCK_MONOTONIC is shared by all
processes of the machine): each message text carries a marker
``~<step>:<message id>:<send time in µs>~`` and each received frame is scanned for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.wsclient import WSClient, ws_connect

logger = logging.getLogger("bench.loadgen")

MARK = re.compile(rb"~(\d+):(\d+):(\d+)~")
# Padding so every row carries a chat-sized message, not a 20-byte one.
FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt"


def now_us() -> int:
    return time.monotonic_ns() // 1000


def percentile(sorted_values: list[int] | array, fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return float(sorted_values[index])


def latency_summary(values: array) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": percentile(ordered, 0.50) / 1000,
        "p99_ms": percentile(ordered, 0.99) / 1000,
        "max_ms": (ordered[-1] / 1000) if ordered else float("nan"),
    }


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def profile_start(job: dict[str, Any]) -> subprocess.Popen | None:
    """py-spy on the server for the measured phase, when the job asks for it."""
    spec = job.get("profile")
    if not spec:
        return None
    from bench.profiling import pyspy_start

    return pyspy_start(job["pids"]["server"], Path(spec["path"]), spec["seconds"])


def profile_finish(proc: subprocess.Popen | None, stop: bool = False) -> None:
    if proc is None:
        return
    if stop and proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


class Meter:
    """CPU seconds and RSS of the server-side processes, read from /proc."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {}
        for name, pid in pids.items():
            try:
                self.procs[name] = psutil.Process(pid)
            except psutil.Error:
                logger.warning("process %s (%s) is gone", name, pid)

    def cpu(self) -> dict[str, float]:
        out = {"client": client_cpu()}
        # Busy seconds of each core, whoever ran there: the machine is shared, so
        # this shows when something else competed with the server or the client.
        for core, times in enumerate(psutil.cpu_times(percpu=True)):
            out[f"core{core}"] = times.user + times.system + times.nice + times.irq + times.softirq
        for name, proc in self.procs.items():
            try:
                times = proc.cpu_times()
                out[name] = times.user + times.system
            except psutil.Error:
                out[name] = float("nan")
        return out

    def rss(self) -> dict[str, int]:
        out = {}
        for name, proc in self.procs.items():
            try:
                out[name] = proc.memory_info().rss
            except psutil.Error:
                out[name] = 0
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: round(after[name] - before[name], 4) for name in before}


class DbStats:
    """What the server asked of its database: bench.ourswrap's query census (queries and the time the
    server waited on them, per statement) and, on PostgreSQL, the CPU of the backends serving the
    bench's database (read from /proc, cumulative over every backend seen) and pg_stat_database's
    counters (flushed by an idle backend only after ~10 s: read them after a pause)."""

    def __init__(self, spec: dict[str, Any] | None) -> None:
        spec = spec or {}
        self.census: str | None = spec.get("census")
        self.pg_name: str | None = spec.get("pg_name")
        self.conn: Any = None
        self.cpu_seen: dict[int, float] = {}
        self.cpu_total = 0.0
        if self.pg_name:
            try:
                import psycopg

                self.conn = psycopg.connect(
                    "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5", autocommit=True
                )
            except Exception as exc:  # noqa: BLE001 - the census still works without it
                logger.warning("PostgreSQL statistics unavailable: %r", exc)

    @property
    def active(self) -> bool:
        return bool(self.census or self.conn)

    def census_read(self) -> dict[str, Any] | None:
        if not self.census:
            return None
        try:
            with open(self.census) as data:
                return json.load(data)
        except (OSError, ValueError):
            return None

    def pg_cpu(self) -> float:
        if self.conn is None:
            return float("nan")
        try:
            pids = [
                row[0]
                for row in self.conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.pg_name,))
            ]
        except Exception:  # noqa: BLE001
            return self.cpu_total
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            now = times.user + times.system
            self.cpu_total += now - self.cpu_seen.get(pid, 0.0)
            self.cpu_seen[pid] = now
        return self.cpu_total

    async def sample(self) -> dict[str, Any]:
        """Cumulative figures now (the census file is rewritten every 0.2 s: wait for a fresh one)."""
        if not self.active:
            return {}
        await asyncio.sleep(0.25)
        out: dict[str, Any] = {"pg_cpu_s": self.pg_cpu()}
        census = self.census_read()
        if census:
            out.update(queries=census["queries"], query_s=census["seconds"], by_statement=census["by_statement"])
        return out

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any], per: float, top: int = 8) -> dict[str, Any]:
        """Per unit of work (a reconnect, a message) between two samples."""
        if not before or not after:
            return {}
        per = max(per, 1e-9)
        out: dict[str, Any] = {}
        if "queries" in after and "queries" in before:
            out["queries"] = after["queries"] - before["queries"]
            out["queries_per"] = round(out["queries"] / per, 2)
            out["query_ms_per"] = round(1000 * (after["query_s"] - before["query_s"]) / per, 3)
            rows = []
            for key, (count, spent) in after["by_statement"].items():
                was = before["by_statement"].get(key, [0, 0.0])
                if count - was[0] > 0:
                    rows.append([key, round((count - was[0]) / per, 3), round(1000 * (spent - was[1]) / per, 3)])
            rows.sort(key=lambda r: -r[2])
            out["statements"] = rows[:top]
        if not math.isnan(after.get("pg_cpu_s", float("nan"))):
            out["pg_cpu_ms_per"] = round(1000 * (after["pg_cpu_s"] - before["pg_cpu_s"]) / per, 3)
        return out

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def query_add(path: str, param: str) -> str:
    return path + ("&" if "?" in path else "?") + param


def message_encode(protocol: str, text: str, client_id: str) -> str:
    if protocol == "ceiling":
        return text
    if protocol == "naive":
        return json.dumps({"message": text})
    return json.dumps({"type": "message.send", "text": text, "client_id": client_id})


@dataclass
class StepRecord:
    """What one batch of marked messages did: who got what, how late."""

    number: int
    capacity: int
    room_sizes: list[int] = field(default_factory=list)
    latencies: array = field(default_factory=lambda: array("q"))
    counts: array = field(init=False)
    sent: int = 0
    expected: int = 0
    delivered: int = 0
    first_send: int = 0
    last_recv: int = 0

    def __post_init__(self) -> None:
        self.counts = array("I", [0]) * self.capacity


class Fleet:
    """Every socket of one job, and the frame bookkeeping shared by the scenarios."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.host: str = job["host"]
        self.port: int = job["port"]
        self.protocol: str = job["protocol"]
        self.headers: list[dict[str, str]] = job.get("headers") or [{}]
        self.clients: list[WSClient] = []
        self.steps: dict[int, StepRecord] = {}
        self.late = 0
        self.unexpected_closes = 0
        self.retried = 0
        self.extra_handler: Callable[[WSClient, bytes, int], None] | None = None
        # S4: sees every marked frame (and ours' hello) before the counting below.
        self.observer: Callable[[WSClient, bytes, int, re.Match | None], bool] | None = None
        self.ready: dict[int, asyncio.Future[None]] = {}

    # -- frames ----------------------------------------------------------
    def frame_handle(self, client: WSClient, payload: bytes, now: int) -> None:
        if self.protocol == "ours" and client.frames == 1:
            # `hello` (with history, markers included): the socket is now in its room.
            ready = self.ready.get(client.index)
            if ready is not None and not ready.done():
                ready.set_result(None)
            if self.observer is not None:
                self.observer(client, payload, now, None)
            return
        match = MARK.search(payload)
        if self.observer is not None and not self.observer(client, payload, now, match):
            return
        if match is None:
            if self.extra_handler is not None:
                self.extra_handler(client, payload, now)
            return
        record = self.steps.get(int(match[1]))
        if record is None:
            self.late += 1
            return
        message = int(match[2])
        if message >= record.capacity:
            return
        record.latencies.append(now - int(match[3]))
        record.counts[message] += 1
        record.delivered += 1
        record.last_recv = now

    # -- connections -----------------------------------------------------
    async def connect_one(self, index: int, path: str) -> WSClient:
        headers = self.headers[index % len(self.headers)]
        if self.protocol != "ours":
            return await ws_connect(index, self.host, self.port, path, headers, self.frame_handle)
        # The future stays registered until `hello` resolves it: a server may send
        # `hello` in the same segment as its 101 or in a later one.
        ready = self.ready[index] = asyncio.get_running_loop().create_future()
        client: WSClient | None = None
        try:
            client = await ws_connect(index, self.host, self.port, path, headers, self.frame_handle)
            await asyncio.wait_for(ready, 30)
        except BaseException:
            if client is not None:
                client.close()  # a half-open socket must not count frames as a second member
            raise
        finally:
            self.ready.pop(index, None)
        return client

    async def connect_many(
        self, paths: list[str], concurrency: int, retries: int = 0
    ) -> tuple[list[WSClient], float, int]:
        """Open one socket per path, `concurrency` handshakes in flight; (clients, seconds, failures).

        With `retries`, a refused or reset handshake is tried again after a pause
        (scenarios that measure fan-out need every member, not handshake luck).
        """
        semaphore = asyncio.Semaphore(concurrency)
        base = len(self.clients)
        failures = 0

        async def one(offset: int, path: str) -> WSClient | None:
            nonlocal failures
            for attempt in range(retries + 1):
                async with semaphore:
                    try:
                        return await self.connect_one(base + offset, path)
                    except (OSError, TimeoutError, ConnectionError) as exc:
                        if attempt < retries:
                            self.retried += 1
                        else:
                            failures += 1
                            if failures <= 3:
                                logger.warning("connect %s failed: %r", path, exc)
                await asyncio.sleep(0.5 * (attempt + 1))
            return None

        started = time.perf_counter()
        results = await asyncio.gather(*(one(i, p) for i, p in enumerate(paths)))
        elapsed = time.perf_counter() - started
        opened = [client for client in results if client is not None]
        self.clients.extend(opened)
        return opened, elapsed, failures

    async def close_all(self) -> None:
        for client in self.clients:
            client.close()
        if self.clients:
            await asyncio.wait([asyncio.ensure_future(c.closed) for c in self.clients], timeout=5)
        self.clients.clear()

    def open_count(self) -> int:
        return sum(1 for client in self.clients if client.is_open)

    def close_codes(self) -> dict[str, int]:
        """Why sockets we did not close are closed (e.g. 4503: the server gave up on its layer)."""
        codes: dict[str, int] = {}
        for client in self.clients:
            if not client.is_open:
                key = str(client.close_code)
                codes[key] = codes.get(key, 0) + 1
        return codes

    # -- marked messages ---------------------------------------------------
    def step_open(self, number: int, capacity: int) -> StepRecord:
        record = StepRecord(number=number, capacity=capacity)
        self.steps[number] = record
        return record

    def marked_send(self, record: StepRecord, sender: WSClient, room_size: int, extra: str = "") -> None:
        message = record.sent
        sent_at = now_us()
        text = f"~{record.number}:{message}:{sent_at}~ {extra}{FILLER}"
        sender.send_text(message_encode(self.protocol, text, f"b{record.number}.{message}"))
        if record.sent == 0:
            record.first_send = sent_at
        record.sent += 1
        record.expected += room_size

    async def drain(self, record: StepRecord, cap: float, stall: float = 1.5) -> bool:
        """Wait until every expected delivery arrived, progress stalls, or `cap` seconds pass."""
        deadline = time.monotonic() + cap
        last_seen, last_change = record.delivered, time.monotonic()
        while record.delivered < record.expected:
            now = time.monotonic()
            if now > deadline:
                return False
            if record.delivered != last_seen:
                last_seen, last_change = record.delivered, now
            elif now - last_change > stall:
                return False
            await asyncio.sleep(0.01)
        return True

    def step_close(self, record: StepRecord) -> dict[str, Any]:
        self.steps.pop(record.number, None)
        dupes = 0
        missing = 0
        per_message = record.expected // record.sent if record.sent else 0
        for message in range(min(record.sent, record.capacity)):
            got = record.counts[message]
            if got > per_message:
                dupes += got - per_message
        missing = max(0, record.expected - (record.delivered - dupes))
        return {
            "sent": record.sent,
            "expected": record.expected,
            "delivered": record.delivered,
            "drops": missing,
            "dupes": dupes,
            **latency_summary(record.latencies),
        }


# ---------------------------------------------------------------------------
# S1: fan-out
# ---------------------------------------------------------------------------


async def fanout_run(job: dict[str, Any]) -> dict[str, Any]:
    fleet = Fleet(job)
    meter = Meter(job["pids"])
    dbstats = DbStats(job.get("db"))
    rooms: list[dict[str, Any]] = job["rooms"]
    paths = [room["path"] for room in rooms for _ in range(room["size"])]
    _, connect_s, failures = await fleet.connect_many(paths, job.get("concurrency", 10), retries=5)
    result: dict[str, Any] = {
        "sockets": len(paths),
        "connect_s": round(connect_s, 3),
        "connect_failures": failures,
        "connect_retries": fleet.retried,
    }
    if failures:
        result["error"] = f"{failures} of {len(paths)} sockets failed to connect"
        await fleet.close_all()
        return result
    gc.collect()
    gc.freeze()
    # The first socket of each room sends; every member (the sender too) receives.
    senders: list[tuple[WSClient, int]] = []
    offset = 0
    for room in rooms:
        senders.append((fleet.clients[offset], room["size"]))
        offset += room["size"]
    await asyncio.sleep(job.get("settle_s", 1.0))

    # Warm-up (not counted): first messages pay for lazy imports, caches, connections.
    record = fleet.step_open(0, 8)
    for _ in range(3):
        fleet.marked_send(record, *senders[0])
        await fleet.drain(record, cap=5.0)
    fleet.step_close(record)

    # Probe: one message at a time into the first room, to time one full fan-out.
    probe_count = job["probe_messages"]
    record = fleet.step_open(1, probe_count)
    completions = array("q")
    for _ in range(probe_count):
        fleet.marked_send(record, *senders[0])
        started = now_us()
        await fleet.drain(record, cap=5.0)
        completions.append(record.last_recv - started)
        await asyncio.sleep(0.05)
    probe = fleet.step_close(record)
    probe["all_p50_ms"] = latency_summary(completions)["p50_ms"]
    probe["all_p99_ms"] = latency_summary(completions)["p99_ms"]
    result["probe"] = probe

    # Ramp: rising deliveries/s until p99 blows past the limit, messages drop or it can't drain.
    profiler = profile_start(job)
    steps = []
    room_size = rooms[0]["size"]
    for number, rate in enumerate(job["rates"], start=2):
        message_rate = rate / room_size
        duration = job["step_s"]
        capacity = int(message_rate * duration * 1.2) + 16
        record = fleet.step_open(number, capacity)
        db_before = await dbstats.sample()
        cpu_before = meter.cpu()
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= duration:
                break
            due = min(capacity - 1, int(elapsed * message_rate) + 1)
            while record.sent < due:
                fleet.marked_send(record, *senders[record.sent % len(senders)])
            await asyncio.sleep(0.002)
        send_s = time.monotonic() - started
        drained = await fleet.drain(record, cap=job["drain_s"])
        if not drained:
            # The ramp ends here; give stragglers every chance so that what is still
            # missing afterwards is really lost, not merely late.
            await fleet.drain(record, cap=job.get("final_drain_s", 30.0), stall=3.0)
        wall = max(send_s, (record.last_recv - record.first_send) / 1e6) if record.last_recv else send_s
        cpu = Meter.delta(cpu_before, meter.cpu())
        db = DbStats.delta(db_before, await dbstats.sample(), per=record.sent)
        step = fleet.step_close(record)
        step.update(
            {
                "step": number,
                "db": db,
                "server_cpu_per_message_us": round(
                    1e6 * (cpu.get("server", 0) + cpu.get("redis", 0)) / max(1, record.sent), 1
                ),
                "rate_target": rate,
                "achieved_dps": round(record.delivered / wall, 1),
                "drained": drained,
                "cpu_s": cpu,
                "wall_s": round(wall, 3),
                "server_cpu_per_delivery_us": round(
                    1e6 * (cpu.get("server", 0) + cpu.get("redis", 0)) / max(1, record.delivered), 2
                ),
                "client_busy": round(cpu["client"] / max(wall, 1e-9), 3),
                "open_sockets": fleet.open_count(),
                "close_codes": fleet.close_codes(),
            }
        )
        steps.append(step)
        print(
            f"  rate {rate:>7} dps: p50 {step['p50_ms']:.1f} ms p99 {step['p99_ms']:.1f} ms "
            f"achieved {step['achieved_dps']:.0f} drops {step['drops']} client {step['client_busy']:.0%}"
            + (f" closed by server {step['close_codes']}" if step["close_codes"] else ""),
            file=sys.stderr,
            flush=True,
        )
        if not drained or step["drops"] or step["p99_ms"] > job["stop_p99_ms"] or step["open_sockets"] < len(paths):
            break
    result["steps"] = steps
    profile_finish(profiler)
    dbstats.close()
    result["late_frames"] = fleet.late
    result["open_sockets_end"] = fleet.open_count()
    await fleet.close_all()
    return result


# ---------------------------------------------------------------------------
# S3: idle connections
# ---------------------------------------------------------------------------


async def idle_run(job: dict[str, Any]) -> dict[str, Any]:
    fleet = Fleet(job)
    meter = Meter(job["pids"])
    room_paths: list[str] = job["room_paths"]
    count: int = job["sockets"]
    warm = [room_paths[i % len(room_paths)] for i in range(job.get("warm_sockets", 20))]
    _, _, warm_failures = await fleet.connect_many(warm, 20)
    await asyncio.sleep(job.get("settle_s", 1.0))
    rss_before = meter.rss()
    paths = [room_paths[i % len(room_paths)] for i in range(count)]
    cpu_before = meter.cpu()
    profiler = profile_start(job)
    opened, connect_s, failures = await fleet.connect_many(paths, job.get("concurrency", 50))
    profile_finish(profiler, stop=True)
    cpu_connect = Meter.delta(cpu_before, meter.cpu())
    await asyncio.sleep(job.get("settle_s", 1.0))
    rss_connected = meter.rss()
    cpu_before = meter.cpu()
    open_before = sum(1 for client in opened if client.is_open)
    await asyncio.sleep(job["idle_s"])
    open_after = sum(1 for client in opened if client.is_open)
    cpu_idle = Meter.delta(cpu_before, meter.cpu())
    rss_idle = meter.rss()
    result = {
        "sockets": count,
        "opened": len(opened),
        "connect_failures": failures + warm_failures,
        "connect_s": round(connect_s, 3),
        "handshakes_per_s": round(len(opened) / connect_s, 1) if connect_s else None,
        "connect_cpu_s": cpu_connect,
        "idle_s": job["idle_s"],
        "idle_cpu_s": cpu_idle,
        "idle_cpu_pct": {k: round(100 * v / job["idle_s"], 2) for k, v in cpu_idle.items()},
        "open_after_idle": open_after,
        "close_codes": fleet.close_codes(),
        "closed_during_idle": open_before - open_after,
        "rss_before": rss_before,
        "rss_connected": rss_connected,
        "rss_idle": rss_idle,
        "rss_per_conn_bytes": {
            name: round((max(rss_idle[name], rss_connected[name]) - rss_before[name]) / max(1, len(opened)))
            for name in rss_before
        },
    }
    await fleet.close_all()
    return result


# ---------------------------------------------------------------------------
# S2: token relay
# ---------------------------------------------------------------------------


@dataclass
class ReplyView:
    """One member's view of the reply streaming into its room."""

    pieces: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # cumulative characters after each frame
    times: list[int] = field(default_factory=list)
    frames: int = 0
    done: bool = False
    final_text: str | None = None


def reply_frame_handle(protocol: str, views: dict[int, ReplyView]) -> Callable[[WSClient, bytes, int], None]:
    def handle(client: WSClient, payload: bytes, now: int) -> None:
        view = views.get(client.index)
        if view is None:
            return
        if protocol == "naive":
            if not payload.startswith(b'{"token"'):
                return
            event = json.loads(payload)
            if event["done"]:
                view.done = True
                return
            text = event["token"]
        else:
            if b'"assistant.' not in payload[:40]:
                return
            event = json.loads(payload)
            kind = event["type"]
            if kind == "assistant.end":
                view.done = True
                view.final_text = event["message"]["text"]
                return
            if kind != "assistant.delta":
                return
            text = event["text"]
        view.frames += 1
        view.pieces.append(text)
        view.lengths.append((view.lengths[-1] if view.lengths else 0) + len(text))
        view.times.append(now)

    return handle


def upstream_read(path: str, keys: set[str], timeout: float) -> dict[str, dict[str, Any]]:
    """The upstream's log entries for `keys` (it writes one line as each stream ends)."""
    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, Any]] = {}
    while True:
        try:
            with open(path) as log:
                for line in log:
                    entry = json.loads(line)
                    if entry["key"] in keys:
                        found[entry["key"]] = entry
        except FileNotFoundError:
            pass
        if len(found) >= len(keys) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


async def relay_run(job: dict[str, Any]) -> dict[str, Any]:
    fleet = Fleet(job)
    meter = Meter(job["pids"])
    rooms: list[dict[str, Any]] = job["rooms"]
    paths = [room["path"] for room in rooms for _ in range(room["size"])]
    views: dict[int, ReplyView] = {}
    fleet.extra_handler = reply_frame_handle(fleet.protocol, views)
    _, connect_s, failures = await fleet.connect_many(paths, job.get("concurrency", 10), retries=5)
    result: dict[str, Any] = {
        "sockets": len(paths),
        "connect_s": round(connect_s, 3),
        "connect_failures": failures,
        "connect_retries": fleet.retried,
    }
    if failures:
        result["error"] = f"{failures} of {len(paths)} sockets failed to connect"
        await fleet.close_all()
        return result
    await asyncio.sleep(job.get("settle_s", 1.0))
    gc.collect()
    gc.freeze()
    for client in fleet.clients:
        views[client.index] = ReplyView()
    step = job["step"]
    record = fleet.step_open(step, len(rooms) + 1)
    keys: dict[int, str] = {}
    cpu_before = meter.cpu()
    started = time.monotonic()
    offset = 0
    for number, room in enumerate(rooms):
        sender = fleet.clients[offset]
        sent_at = now_us()
        keys[number] = f"~{step}:{number}:{sent_at}~"
        text = f"@assistant [[tokens={job['tokens']}]] [[tps={job['tps']}]] {keys[number]} {FILLER}"
        sender.send_text(message_encode(fleet.protocol, text, f"r{step}.{number}"))
        record.sent += 1
        record.expected += room["size"]
        offset += room["size"]
    deadline = started + job["tokens"] / job["tps"] + job.get("grace_s", 20.0)
    while time.monotonic() < deadline and not all(view.done for view in views.values()):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    wall = time.monotonic() - started
    cpu = Meter.delta(cpu_before, meter.cpu())
    messages = fleet.step_close(record)
    sources = upstream_read(job["upstream_log"], set(keys.values()), timeout=5.0)

    overheads = array("q")
    intact = 0
    frames = []
    tokens_delivered = 0
    offset = 0
    for number, room in enumerate(rooms):
        source = sources.get(keys[number])
        members = fleet.clients[offset : offset + room["size"]]
        offset += room["size"]
        if source is None:
            continue
        text = "".join(source["pieces"])
        ends = []
        total = 0
        for piece in source["pieces"]:
            total += len(piece)
            ends.append(total)
        emitted = source["times"]
        for client in members:
            view = views[client.index]
            frames.append(view.frames)
            received = "".join(view.pieces)
            if view.done and received == text:
                intact += 1
            # Each token counts as delivered by the first frame that completes it.
            frame = 0
            for token, end in enumerate(ends):
                while frame < len(view.lengths) and view.lengths[frame] < end:
                    frame += 1
                if frame == len(view.lengths) or token >= len(emitted):
                    break
                overheads.append(view.times[frame] - emitted[token])
                tokens_delivered += 1
    server_cpu = cpu.get("server", 0) + cpu.get("redis", 0)
    summary = latency_summary(overheads)
    result.update(
        {
            "replies": len(rooms),
            "members": rooms[0]["size"] if rooms else 0,
            "replies_expected": len(paths),
            "intact": intact,
            "sources_found": len(sources),
            "done": sum(1 for view in views.values() if view.done),
            "overhead_p50_ms": summary["p50_ms"],
            "overhead_p99_ms": summary["p99_ms"],
            "overhead_max_ms": summary["max_ms"],
            "frames_per_reply": round(sum(frames) / max(1, len(frames)), 1),
            "tokens_per_reply": job["tokens"],
            "tokens_delivered": tokens_delivered,
            "server_cpu_per_token_us": round(1e6 * server_cpu / max(1, tokens_delivered), 2),
            "cpu_s": cpu,
            "wall_s": round(wall, 2),
            "client_busy": round(cpu["client"] / max(wall, 1e-9), 3),
            "messages": messages,
            "open_sockets": fleet.open_count(),
            "close_codes": fleet.close_codes(),
        }
    )
    print(
        f"  {len(rooms)}x{result['members']}: overhead p50 {summary['p50_ms']:.1f} p99 {summary['p99_ms']:.1f} ms, "
        f"intact {intact}/{len(paths)}, frames/reply {result['frames_per_reply']}",
        file=sys.stderr,
        flush=True,
    )
    await fleet.close_all()
    return result


# ---------------------------------------------------------------------------
# S5: reconnect storm
# ---------------------------------------------------------------------------

S5_HISTORY_STEP = 4999
S5_STEP = 5000
PRESENCE_FRAME = re.compile(rb'"type":\s*"presence')


@dataclass
class StormSocket:
    """One socket of the storm: where it goes, what it had seen, when it came back."""

    index: int
    room: int
    path: str
    headers: dict[str, str]
    client: WSClient | None = None
    generation: int = 0
    hello: asyncio.Future[None] | None = None
    cursor: int = 0
    live: int = 0
    attempt_first: int = 0
    attempts: int = 0
    ready_at: int = 0
    missed: int = -1
    hello_bytes: int = 0
    presence_frames: int = 0
    presence_bytes: int = 0
    gave_up: bool = False
    failures: list[str] = field(default_factory=list)


class Storm:
    """S5: every socket dropped at once, every one back within the window, resuming from its cursor."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.host: str = job["host"]
        self.port: int = job["port"]
        self.protocol: str = job["protocol"]
        self.ours = self.protocol == "ours"
        self.meter = Meter(job["pids"])
        self.dbstats = DbStats(job.get("db"))
        headers: list[dict[str, str]] = job.get("headers") or [{}]
        self.rooms: list[str] = job["room_paths"]
        self.users: int = job["users"]
        self.behind: int = job["behind"]
        self.window: float = job["window_s"]
        count: int = job["sockets"]
        self.sockets: list[StormSocket] = []
        for index in range(count):
            user = index % self.users
            room = user % len(self.rooms)
            self.sockets.append(
                StormSocket(index, room, self.rooms[room], headers[user % len(headers)] if headers else {})
            )
        # One sender per room (ours only: the other rows have nothing to resume), users after the storm's.
        self.senders: list[StormSocket] = []
        if self.ours:
            for room, path in enumerate(self.rooms):
                user = self.users + room
                self.senders.append(StormSocket(count + room, room, path, headers[user % len(headers)]))
        self.sender_acks = [0] * len(self.rooms)
        self.counting = False
        self.rng = random.Random(14)

    # -- frames ------------------------------------------------------------
    def frame_handler(self, sock: StormSocket, generation: int) -> Callable[[WSClient, bytes, int], None]:
        def handle(client: WSClient, payload: bytes, now: int) -> None:
            if generation != sock.generation:
                return
            if self.ours and client.frames == 1:
                marks = {m[2] for m in MARK.finditer(payload) if int(m[1]) == S5_STEP}
                ids = [int(x) for x in HELLO_ID.findall(payload)]
                sock.hello_bytes = len(payload)
                sock.missed = len(marks)
                if sock.cursor == 0 and not self.counting:
                    sock.cursor = max(ids, default=0)
                sock.ready_at = now
                if sock.hello is not None and not sock.hello.done():
                    sock.hello.set_result(None)
                return
            if self.counting and PRESENCE_FRAME.search(payload, 0, 48):
                sock.presence_frames += 1
                sock.presence_bytes += len(payload)
                return
            match = MARK.search(payload)
            if match is None:
                return
            if sock.index >= len(self.sockets):
                self.sender_acks[sock.room] += 1
            elif int(match[1]) == S5_STEP:
                sock.live += 1

        return handle

    # -- connections -------------------------------------------------------
    async def open(self, sock: StormSocket, resume: bool) -> bool:
        """One attempt: True once the socket is ready (ours: its hello is here)."""
        loop = asyncio.get_running_loop()
        sock.generation += 1
        sock.attempts += 1
        sock.hello = loop.create_future() if self.ours else None
        path = query_add(sock.path, f"after={sock.cursor}") if resume and self.ours else sock.path
        handler = self.frame_handler(sock, sock.generation)
        try:
            client = await ws_connect(sock.index, self.host, self.port, path, sock.headers, handler)
        except (OSError, TimeoutError, ConnectionError) as exc:
            sock.failures.append(type(exc).__name__ + (f" {str(exc)[:40]}" if isinstance(exc, ConnectionError) else ""))
            return False
        sock.client = client
        if not self.ours:
            sock.ready_at = now_us()
            return True
        assert sock.hello is not None
        await asyncio.wait({sock.hello, client.closed}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if sock.hello.done():
            return True
        sock.failures.append(f"closed {client.close_code}" if client.closed.done() else "no hello in 30 s")
        client.close()
        return False

    async def first_connect(self, socks: list[StormSocket], concurrency: int) -> tuple[float, int]:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(sock: StormSocket) -> bool:
            for attempt in range(6):
                async with semaphore:
                    if await self.open(sock, resume=False):
                        return True
                await asyncio.sleep(0.5 * (attempt + 1))
            return False

        started = time.perf_counter()
        results = await asyncio.gather(*(one(sock) for sock in socks))
        return time.perf_counter() - started, results.count(False)

    async def storm_reconnect(self, sock: StormSocket, t0: float, deadline: float) -> None:
        """The browser's schedule (rooms/static/rooms/protocol.js): ceiling = base * 2^attempt, capped at
        10 s, delay uniform in its upper half. base = the storm window, so first attempts spread over its
        second half (all within the window); later ones back off."""
        attempt = 0
        delay = self.window / 2 + self.rng.random() * self.window / 2
        await asyncio.sleep(max(0.0, t0 + delay - time.monotonic()))
        sock.attempt_first = now_us()
        while True:
            if await self.open(sock, resume=True):
                return
            attempt += 1
            ceiling = min(10.0, self.window * 2**attempt)
            pause = ceiling / 2 + self.rng.random() * ceiling / 2
            if time.monotonic() + pause > deadline:
                sock.gave_up = True
                return
            await asyncio.sleep(pause)

    # -- messages ------------------------------------------------------------
    def post(self, step: int, per_room: int) -> None:
        for sender in self.senders:
            assert sender.client is not None
            for k in range(per_room):
                number = sender.room * per_room + k
                text = f"~{step}:{number}:{now_us()}~ {FILLER}"
                sender.client.send_text(message_encode(self.protocol, text, f"s{step}.{number}"))

    async def wait_for(self, condition: Callable[[], bool], cap: float) -> bool:
        deadline = time.monotonic() + cap
        while not condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    # -- the run ---------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        job = self.job
        count = len(self.sockets)
        result: dict[str, Any] = {
            "sockets": count,
            "users": self.users,
            "rooms": len(self.rooms),
            "behind": self.behind if self.ours else 0,
            "window_s": self.window,
        }
        if self.senders:
            _, failed = await self.first_connect(self.senders, 10)
            if failed:
                return {**result, "error": f"{failed} senders failed to connect"}
            history = job.get("history", 30)
            self.post(S5_HISTORY_STEP, history)
            if not await self.wait_for(lambda: min(self.sender_acks) >= history, 60):
                return {**result, "error": "the history messages were not acknowledged"}
        connect_s, failed = await self.first_connect(self.sockets, job.get("concurrency", 50))
        result["first_connect_s"] = round(connect_s, 2)
        result["first_joins_per_s"] = round(count / connect_s, 1) if connect_s else None
        if failed:
            await self.close_all()
            return {**result, "error": f"{failed} of {count} sockets failed to connect"}
        await asyncio.sleep(1.0)
        if self.senders:
            # The messages every socket will have missed: its cursor stays where its hello left it.
            self.sender_acks = [0] * len(self.rooms)
            self.post(S5_STEP, self.behind)
            delivered = await self.wait_for(
                lambda: min(self.sender_acks) >= self.behind and all(s.live >= self.behind for s in self.sockets), 60
            )
            result["behind_delivered_live"] = delivered
            await asyncio.sleep(0.5)
        gc.collect()
        gc.freeze()
        await asyncio.sleep(1.0)
        db_before = await self.dbstats.sample()
        cpu_before = self.meter.cpu()
        profiler = profile_start(job)
        for sock in self.sockets:
            sock.ready_at = 0
            sock.missed = -1
            sock.attempts = 0
            sock.failures = []
        # The drop: every client socket killed at once (no closing handshake).
        self.counting = True
        t0 = time.monotonic()
        t0_us = now_us()
        for sock in self.sockets:
            sock.generation += 1
            if sock.client is not None and sock.client.transport is not None:
                sock.client.is_open = False
                sock.client.transport.abort()
        deadline = t0 + job.get("give_up_s", 90.0)
        await asyncio.gather(*(self.storm_reconnect(sock, t0, deadline) for sock in self.sockets))
        back = [s for s in self.sockets if s.ready_at and not s.gave_up]
        last = max((s.ready_at for s in back), default=t0_us)
        cpu_storm = Meter.delta(cpu_before, self.meter.cpu())
        await asyncio.sleep(job.get("presence_settle_s", 1.0))  # coalesced presence still on its way
        self.counting = False
        profile_finish(profiler, stop=True)
        cpu = Meter.delta(cpu_before, self.meter.cpu())
        db = DbStats.delta(db_before, await self.dbstats.sample(), per=count)
        first = min((s.attempt_first for s in self.sockets if s.attempt_first), default=t0_us)
        to_hello = array("q", [s.ready_at - s.attempt_first for s in back])
        summary = latency_summary(to_hello)
        timeline = [0] * (int((last - t0_us) / 100_000) + 1)
        for s in back:
            timeline[int((s.ready_at - t0_us) / 100_000)] += 1
        failures: dict[str, int] = {}
        for s in self.sockets:
            for reason in s.failures:
                failures[reason] = failures.get(reason, 0) + 1
        per_room = count / len(self.rooms)
        frames = sum(s.presence_frames for s in self.sockets)
        pbytes = sum(s.presence_bytes for s in self.sockets)
        server_s = cpu_storm.get("server", 0) + cpu_storm.get("redis", 0)
        result.update(
            {
                "back": len(back),
                "gave_up": sum(1 for s in self.sockets if s.gave_up),
                "back_all_s": round((last - t0_us) / 1e6, 3),
                "first_attempt_s": round((first - t0_us) / 1e6, 3),
                "ready_per_s": round(len(back) / max(1e-6, (last - first) / 1e6), 1),
                "to_hello_p50_ms": summary["p50_ms"],
                "to_hello_p99_ms": summary["p99_ms"],
                "to_hello_max_ms": summary["max_ms"],
                "retries": sum(max(0, s.attempts - 1) for s in self.sockets),
                "failures": failures,
                "missed_complete": sum(1 for s in back if s.missed == self.behind) if self.ours else None,
                "hello_bytes_mean": round(sum(s.hello_bytes for s in back) / max(1, len(back))) if self.ours else None,
                "cpu_storm_s": cpu_storm,
                "cpu_s": cpu,
                "server_cpu_per_reconnect_ms": round(1000 * server_s / count, 3),
                "server_busy": round(cpu_storm.get("server", 0) / max(1e-6, (last - t0_us) / 1e6), 3),
                "client_busy": round(cpu_storm["client"] / max(1e-6, (last - t0_us) / 1e6), 3),
                "db": db,
                "presence_frames": frames,
                "presence_bytes": pbytes,
                "presence_frames_per_socket": round(frames / count, 2),
                "presence_bytes_per_socket": round(pbytes / count, 1),
                "presence_frames_per_join_per_socket": round(frames / count / per_room, 4),
                "presence_bytes_per_join_per_socket": round(pbytes / count / per_room, 2),
                "timeline_100ms": timeline,
            }
        )
        print(
            f"  storm {count} sockets: all back in {result['back_all_s']:.2f} s ({len(back)}/{count}), "
            f"to hello p50 {summary['p50_ms']:.0f} p99 {summary['p99_ms']:.0f} ms, retries {result['retries']}, "
            f"presence {result['presence_frames_per_socket']} frames/socket, "
            f"{result['presence_bytes_per_join_per_socket']} B/join/socket, queries/reconnect {db.get('queries_per')}",
            file=sys.stderr,
            flush=True,
        )
        self.dbstats.close()
        await self.close_all()
        return result

    async def close_all(self) -> None:
        clients = [s.client for s in self.sockets + self.senders if s.client is not None]
        for client in clients:
            client.close()
        if clients:
            await asyncio.wait([asyncio.ensure_future(c.closed) for c in clients], timeout=5)


async def storm_run(job: dict[str, Any]) -> dict[str, Any]:
    return await Storm(job).run()


# ---------------------------------------------------------------------------
# S4: soak
# ---------------------------------------------------------------------------

MESSAGE_ID = re.compile(rb'"message":\{"id":(\d+)')
HELLO_ID = re.compile(rb'"id":(\d+)')
SOAK_STEP = 3000


@dataclass
class Member:
    """One logical client of the soak: it may reconnect, it remembers what it saw."""

    logical: int
    capacity: int
    client: WSClient | None = None
    ready_at: int = 0
    first_ready: int = 0
    closing_at: int | None = None
    last_id: int = 0
    churning: bool = False
    seen: bytearray = field(init=False)

    def __post_init__(self) -> None:
        self.seen = bytearray(self.capacity)


class Soak:
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.fleet = Fleet(job)
        self.meter = Meter(job["pids"])
        room = job["rooms"][0]
        self.path: str = room["path"]
        self.size: int = room["size"]
        self.seconds: float = job["seconds"]
        self.message_rate = job["rate_dps"] / self.size
        self.capacity = int(self.message_rate * self.seconds * 1.1) + 200
        self.record = self.fleet.step_open(SOAK_STEP, self.capacity)
        self.expected = array("I", [0]) * self.capacity
        self.received = array("I", [0]) * self.capacity
        self.sent_at = array("q", [0]) * self.capacity
        self.members = [Member(i, self.capacity) for i in range(self.size)]
        self.eligible_now = 0
        self.reconnects = 0
        self.reconnect_failures = 0
        self.unexpected_closes = 0
        self.reply_ends = 0
        self.replies_sent = 0
        self.sender_gaps = 0
        self.tasks: set[asyncio.Task] = set()
        self.skipped = 0
        self.fleet.observer = self.observe
        self.fleet.extra_handler = self.reply_observe

    # -- frames ------------------------------------------------------------
    def observe(self, client: WSClient, payload: bytes, now: int, match: re.Match | None) -> bool:
        member = self.members[client.index] if client.index < self.size else None
        if member is None or (member.client is not None and member.client is not client and member.ready_at):
            return False
        if match is None:
            if self.fleet.protocol == "ours" and client.frames == 1:
                # hello: what a resumed socket missed comes here, exactly once.
                for found in MARK.finditer(payload):
                    if int(found[1]) == SOAK_STEP and int(found[2]) < self.capacity:
                        member.seen[int(found[2])] = 1
                ids = [int(x) for x in HELLO_ID.findall(payload)]
                if ids:
                    member.last_id = max(member.last_id, *ids)
            return True
        if int(match[1]) != SOAK_STEP:
            return True
        number = int(match[2])
        if number >= self.capacity:
            return False
        member.seen[number] = 1
        if self.fleet.protocol == "ours":
            found = MESSAGE_ID.search(payload)
            if found:
                member.last_id = max(member.last_id, int(found[1]))
        sent = int(match[3])
        if member.ready_at and member.ready_at < sent and (member.closing_at is None or sent < member.closing_at):
            self.received[number] += 1
            return True
        return False

    def reply_observe(self, client: WSClient, payload: bytes, now: int) -> None:
        if b'"done": true' in payload or b'"type":"assistant.end"' in payload[:40]:
            self.reply_ends += 1

    # -- membership --------------------------------------------------------
    def member_ready(self, member: Member, client: WSClient) -> None:
        member.client = client
        member.ready_at = now_us()
        member.first_ready = member.first_ready or member.ready_at
        member.closing_at = None
        self.eligible_now += 1

    def member_leaving(self, member: Member) -> None:
        if member.closing_at is None and member.ready_at:
            member.closing_at = now_us()
            self.eligible_now -= 1

    async def member_connect(self, member: Member) -> bool:
        path = self.path
        if self.fleet.protocol == "ours" and member.last_id:
            path = query_add(path, f"after={member.last_id}")
        member.ready_at = 0
        for attempt in range(5):
            try:
                client = await self.fleet.connect_one(member.logical, path)
            except (OSError, TimeoutError, ConnectionError):
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            self.member_ready(member, client)
            return True
        return False

    async def member_churn(self, member: Member, grace: float) -> None:
        member.churning = True
        try:
            self.member_leaving(member)
            # Stay open a little: messages already sent to it must still arrive.
            await asyncio.sleep(grace)
            if member.client is not None:
                member.client.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(member.client.closed), 5)
            await asyncio.sleep(0.2)
            if await self.member_connect(member):
                self.reconnects += 1
            else:
                self.reconnect_failures += 1
        finally:
            member.churning = False

    async def watch_closes(self, stop: asyncio.Event) -> None:
        """Sockets the server closed on its own: count them, then reconnect (and resume)."""
        while not stop.is_set():
            for member in self.members:
                client = member.client
                if client is not None and client.closed.done() and not member.churning:
                    self.unexpected_closes += 1
                    member.client = None
                    self.member_leaving(member)
                    member.churning = True
                    task = asyncio.ensure_future(self.member_reconnect(member))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
            await asyncio.sleep(0.5)

    async def member_reconnect(self, member: Member) -> None:
        try:
            if await self.member_connect(member):
                self.reconnects += 1
            else:
                self.reconnect_failures += 1
        finally:
            member.churning = False

    # -- the run -------------------------------------------------------------
    def send(self, text_extra: str = "") -> bool:
        number = self.record.sent
        if number >= self.capacity:
            return False
        sender = self.members[0].client
        if sender is None or not sender.is_open:
            # The sender is reconnecting: this tick's messages are skipped, not queued.
            self.sender_gaps += 1
            return False
        self.expected[number] = self.eligible_now
        self.sent_at[number] = now_us()
        self.fleet.marked_send(self.record, sender, self.eligible_now, text_extra)
        return True

    async def window_sample(self, redis_client: Any, started: float, latencies_from: int) -> dict[str, Any]:
        latencies = self.record.latencies[latencies_from:]
        summary = latency_summary(array("q", latencies))
        keys = None
        if redis_client is not None:
            with contextlib.suppress(Exception):
                keys = int(await redis_client.dbsize())
        rss = self.meter.rss()
        return {
            "t": round(time.monotonic() - started, 1),
            "sent": self.record.sent,
            "deliveries": len(latencies),
            "p50_ms": summary["p50_ms"],
            "p99_ms": summary["p99_ms"],
            "rss_server": rss.get("server", 0),
            "rss_redis": rss.get("redis", 0),
            "redis_keys": keys,
            "open": sum(1 for m in self.members if m.client is not None and m.client.is_open),
            "cpu": self.meter.cpu(),
        }

    async def run(self) -> dict[str, Any]:
        job = self.job
        fleet = self.fleet
        semaphore = asyncio.Semaphore(10)

        async def first(member: Member) -> bool:
            async with semaphore:
                return await self.member_connect(member)

        connected = await asyncio.gather(*(first(m) for m in self.members))
        if not all(connected):
            return {"error": f"{connected.count(False)} of {self.size} sockets failed to connect"}
        redis_client = None
        if job.get("redis_port"):
            import redis.asyncio as aioredis

            redis_client = aioredis.Redis(host="127.0.0.1", port=job["redis_port"], socket_timeout=5)
        await asyncio.sleep(1.0)
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        watcher = asyncio.ensure_future(self.watch_closes(stop))
        churn_interval = 60.0 / max(1e-9, job["churn_per_min"] * self.size)
        next_churn = time.monotonic() + churn_interval
        next_reply = time.monotonic() + job["reply_every_s"] / 2
        window_s = job["window_s"]
        started = time.monotonic()
        next_window = started + window_s
        latencies_from = 0
        windows = []
        churns: set[asyncio.Task] = set()
        rng = __import__("random").Random(5)
        while (now := time.monotonic()) < started + self.seconds:
            due = int((now - started) * self.message_rate) + 1 - self.skipped
            while self.record.sent < min(due, self.capacity - 1):
                if not self.send():
                    self.skipped += due - self.record.sent
                    break
            if now >= next_reply:
                next_reply += job["reply_every_s"]
                self.replies_sent += 1
                self.send(f"@assistant [[tokens={job['reply_tokens']}]] [[tps=60]] ")
            if now >= next_churn:
                next_churn += churn_interval
                member = self.members[rng.randrange(1, self.size)]
                if not member.churning and member.client is not None:
                    task = asyncio.ensure_future(self.member_churn(member, grace=2.0))
                    churns.add(task)
                    task.add_done_callback(churns.discard)
            if now >= next_window:
                next_window += window_s
                windows.append(await self.window_sample(redis_client, started, latencies_from))
                latencies_from = len(self.record.latencies)
            await asyncio.sleep(0.005)
        # Drain: let in-flight deliveries, churns and replies finish.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (churns or sum(self.received) < sum(self.expected[: self.record.sent])):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        stop.set()
        await watcher
        sent = self.record.sent
        lost = sum(max(0, self.expected[n] - self.received[n]) for n in range(sent))
        dupes = sum(max(0, self.received[n] - self.expected[n]) for n in range(sent))
        # Coverage: every message sent while a logical client existed reached it live or in its resume.
        gaps = 0
        cutoff = self.sent_at[sent - 1] - 3_000_000 if sent else 0
        for member in self.members:
            for n in range(sent):
                if member.first_ready < self.sent_at[n] < cutoff and not member.seen[n]:
                    gaps += 1
        result = {
            "seconds": self.seconds,
            "rate_dps": job["rate_dps"],
            "sockets": self.size,
            "sent": sent,
            "expected": sum(self.expected[:sent]),
            "delivered": sum(self.received[:sent]),
            "lost": lost,
            "dupes": dupes,
            "coverage_gaps": gaps,
            "reconnects": self.reconnects,
            "reconnect_failures": self.reconnect_failures,
            "unexpected_closes": self.unexpected_closes,
            "sender_gaps": self.sender_gaps,
            "replies_sent": self.replies_sent,
            "reply_ends": self.reply_ends,
            "windows": windows,
            "drift": drift_compute(windows),
        }
        if redis_client is not None:
            await redis_client.aclose()
        for member in self.members:
            if member.client is not None:
                fleet.clients.append(member.client)
        await fleet.close_all()
        return result


def drift_compute(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """First quarter of the windows against the last quarter: is anything climbing?"""
    if len(windows) < 4:
        return {"no_upward_drift": None, "note": "too few windows"}
    quarter = max(1, len(windows) // 4)
    # The first window includes warm-up (imports, caches): compare from the second.
    head, tail = windows[1 : 1 + quarter], windows[-quarter:]

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        values = [row[key] for row in rows if row.get(key) is not None and not math.isnan(row[key])]
        return sum(values) / len(values) if values else float("nan")

    out = {
        "p99_first_ms": mean(head, "p99_ms"),
        "p99_last_ms": mean(tail, "p99_ms"),
        "rss_first_mib": mean(head, "rss_server") / 2**20,
        "rss_last_mib": mean(tail, "rss_server") / 2**20,
        "keys_first": mean(head, "redis_keys"),
        "keys_last": mean(tail, "redis_keys"),
    }
    rss_ok = out["rss_last_mib"] <= max(out["rss_first_mib"] * 1.10, out["rss_first_mib"] + 5)
    p99_ok = out["p99_last_ms"] <= max(out["p99_first_ms"] * 1.5, out["p99_first_ms"] + 20)
    keys_ok = math.isnan(out["keys_first"]) or out["keys_last"] <= out["keys_first"] * 1.10 + 5
    out.update(
        {"rss_ok": rss_ok, "p99_ok": p99_ok, "keys_ok": keys_ok, "no_upward_drift": rss_ok and p99_ok and keys_ok}
    )
    return out


async def soak_run(job: dict[str, Any]) -> dict[str, Any]:
    return await Soak(job).run()


JOBS = {"s1": fanout_run, "s2": relay_run, "s3": idle_run, "s4": soak_run, "s5": storm_run}


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="loadgen %(levelname)s %(message)s")
    job = json.load(sys.stdin)
    if job.get("core") is not None:
        os.sched_setaffinity(0, {job["core"]})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:  # requirements-bench.txt pins it; without it the client may be the bottleneck
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    result = runner(JOBS[job["kind"]](job))
    result["client_loop"] = "uvloop" if uvloop is not None else "asyncio"
    result["client_cpu_total_s"] = round(client_cpu(), 3)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
