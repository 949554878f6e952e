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
import gc
import json
import logging
import os
import re
import resource
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
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
        self.extra_handler: Callable[[WSClient, bytes, int], None] | None = None
        self.ready: dict[int, asyncio.Future[None]] = {}

    # -- frames ----------------------------------------------------------
    def frame_handle(self, client: WSClient, payload: bytes, now: int) -> None:
        if self.protocol == "ours" and client.frames == 1:
            # `hello` (with history, markers included): the socket is now in its room.
            ready = self.ready.get(client.index)
            if ready is not None and not ready.done():
                ready.set_result(None)
            return
        match = MARK.search(payload)
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
        if self.protocol == "ours":
            self.ready[index] = asyncio.get_running_loop().create_future()
        client = await ws_connect(index, self.host, self.port, path, headers, self.frame_handle)
        if self.protocol == "ours":
            await asyncio.wait_for(self.ready.pop(index), 30)
        return client

    async def connect_many(self, paths: list[str], concurrency: int) -> tuple[list[WSClient], float, int]:
        """Open one socket per path, `concurrency` handshakes in flight; (clients, seconds, failures)."""
        semaphore = asyncio.Semaphore(concurrency)
        base = len(self.clients)
        failures = 0

        async def one(offset: int, path: str) -> WSClient | None:
            nonlocal failures
            async with semaphore:
                try:
                    return await self.connect_one(base + offset, path)
                except (OSError, TimeoutError, ConnectionError) as exc:
                    failures += 1
                    if failures <= 3:
                        logger.warning("connect %s failed: %r", path, exc)
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
    rooms: list[dict[str, Any]] = job["rooms"]
    paths = [room["path"] for room in rooms for _ in range(room["size"])]
    _, connect_s, failures = await fleet.connect_many(paths, job.get("concurrency", 50))
    result: dict[str, Any] = {"sockets": len(paths), "connect_s": round(connect_s, 3), "connect_failures": failures}
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
    steps = []
    room_size = rooms[0]["size"]
    for number, rate in enumerate(job["rates"], start=2):
        message_rate = rate / room_size
        duration = job["step_s"]
        capacity = int(message_rate * duration * 1.2) + 16
        record = fleet.step_open(number, capacity)
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
        step = fleet.step_close(record)
        step.update(
            {
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
            }
        )
        steps.append(step)
        print(
            f"  rate {rate:>7} dps: p50 {step['p50_ms']:.1f} ms p99 {step['p99_ms']:.1f} ms "
            f"achieved {step['achieved_dps']:.0f} drops {step['drops']} client {step['client_busy']:.0%}",
            file=sys.stderr,
            flush=True,
        )
        if not drained or step["drops"] or step["p99_ms"] > job["stop_p99_ms"] or step["open_sockets"] < len(paths):
            break
    result["steps"] = steps
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
    opened, connect_s, failures = await fleet.connect_many(paths, job.get("concurrency", 50))
    cpu_connect = Meter.delta(cpu_before, meter.cpu())
    await asyncio.sleep(job.get("settle_s", 1.0))
    rss_connected = meter.rss()
    cpu_before = meter.cpu()
    open_before = fleet.open_count()
    await asyncio.sleep(job["idle_s"])
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
        "open_after_idle": fleet.open_count(),
        "closed_during_idle": open_before - fleet.open_count(),
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


JOBS = {"s1": fanout_run, "s3": idle_run}


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="loadgen %(levelname)s %(message)s")
    job = json.load(sys.stdin)
    if job.get("core") is not None:
        os.sched_setaffinity(0, {job["core"]})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(JOBS[job["kind"]](job))
    result["client_cpu_total_s"] = round(client_cpu(), 3)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
