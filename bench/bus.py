"""S7: one Redis as the shared bus of N server processes.

Each *subscriber* is a lightweight process running the project's own hub code:
``chatsite.settings`` with the pub/sub channel layer on the bench's Redis, and
``rooms.realtime.hub`` (GroupHub) joined to every room group, with one counting
receiver per group in place of the process's sockets (the per-socket fan-out is
S1's business; here only the bus is measured). A *publisher* process sends room
events as the project does, one ``PUBLISH`` per event on the group's channel,
each the bytes ``RedisPubSubChannelLayer.group_send`` would write (the layer's
own serializer and channel names), carrying a message frame of S1's size. It
pipelines its PUBLISHes so that one Python process can offer the load of many
server processes.

Redis runs alone on the server core; the publisher and every subscriber share
the client core. So on this 2-core machine the subscribers' side saturates
first once N grows (N processes decoding every event on one core): the report
says which side saturated at each N, and projects Redis's own limit from its
CPU per event (read from /proc/<pid>/stat of the bench's redis-server).

Run as ``python -m bench.bus sub|pub``: the first stdin line is a JSON job,
later lines are commands; answers are JSON lines on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import psutil

from bench import procs
from bench.targets import Context

logger = logging.getLogger("bench.bus")

FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt"


def frame_like_s1(number: int) -> str:
    """A `message` frame shaped and sized like the ones S1 delivers (docs/protocol.md)."""
    text = f"~2:{number}:{time.monotonic_ns() // 1000}~ {FILLER}"
    message = {
        "id": 100_000 + number,
        "seq": 1 + number,
        "client_id": f"b2.{number}",
        "author": "bench123",
        "role": "user",
        "text": text,
        "html": f"<p>{text}</p>",
        "created": "2026-11-22T01:02:03.456789+00:00",
        "status": "complete",
        "edited": None,
        "deleted": False,
        "reply_to": None,
        "mentions": [],
    }
    return json.dumps({"type": "message", "message": message}, separators=(",", ":"))


def django_env(redis_url: str, workdir: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "bench-secret-key-only-for-loopback-runs-0123456789abcdef",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": f"sqlite:///{workdir}/bus.sqlite3",
        "REDIS_URL": redis_url,
        "CHANNEL_LAYER_KIND": "pubsub",
        "LOG_LEVEL": "WARNING",
    }


def now_us() -> int:
    return time.monotonic_ns() // 1000


def _lines() -> asyncio.Queue[str]:
    """stdin lines, read by a thread, handed to the loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.strip())
        loop.call_soon_threadsafe(queue.put_nowait, "quit")

    threading.Thread(target=read, daemon=True).start()
    return queue


def _answer(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------
# the subscriber: the project's GroupHub in a process of its own


class Tally:
    """Stands in for a process's sockets in one group: counts each event and its age."""

    def __init__(self, counts: dict[int, int], ages: dict[int, array]) -> None:
        self.counts = counts
        self.ages = ages

    async def group_deliver(self, message: dict[str, Any]) -> None:
        step = message.get("step")
        if step is None:
            return
        self.counts[step] = self.counts.get(step, 0) + 1
        ages = self.ages.get(step)
        if ages is None:
            ages = self.ages[step] = array("q")
        ages.append(now_us() - message["t"])


async def subscriber(job: dict[str, Any]) -> None:
    import django

    django.setup()
    from rooms.realtime import hub

    counts: dict[int, int] = {}
    ages: dict[int, array] = {}
    tally = Tally(counts, ages)
    commands = _lines()
    for group in job["groups"]:
        await hub.join(group, tally)
    _answer({"ready": True, "pid": os.getpid()})
    while True:
        line = await commands.get()
        if line == "quit":
            return
        _, step_s, expected_s = line.split()
        step, expected = int(step_s), int(expected_s)
        last, last_change = -1, time.monotonic()
        while counts.get(step, 0) < expected and time.monotonic() - last_change < 2.0:
            if counts.get(step, 0) != last:
                last, last_change = counts.get(step, 0), time.monotonic()
            await asyncio.sleep(0.02)
        ordered = sorted(ages.pop(step, array("q")))

        def pick(fraction: float, ordered: list[int] = ordered) -> float | None:
            if not ordered:
                return None
            return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] / 1000

        _answer({"step": step, "got": counts.get(step, 0), "p50_ms": pick(0.5), "p99_ms": pick(0.99)})


# ---------------------------------------------------------------------------
# the publisher: room events at a rising rate


async def publisher(job: dict[str, Any]) -> None:
    import django

    django.setup()
    import redis.asyncio as aioredis
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    loop_layer = layer._get_layer()  # its own channel names, as group_send uses them
    channels = [loop_layer._get_group_channel_name(group) for group in job["groups"]]
    client = aioredis.Redis.from_url(job["redis_url"])
    commands = _lines()
    template = {"type": "room.event", "kind": "message", "id": 0, "frame": frame_like_s1(0)}
    size = len(layer.serialize({**template, "group": job["groups"][0], "step": 0, "n": 0, "t": now_us()}))
    _answer({"ready": True, "pid": os.getpid(), "event_bytes": size, "frame_bytes": len(template["frame"])})
    while True:
        line = await commands.get()
        if line == "quit":
            break
        _, step_s, rate_s, seconds_s = line.split()
        step, rate, seconds = int(step_s), int(rate_s), float(seconds_s)
        sent = 0
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) + 1
            if due > sent:
                pipe = client.pipeline(transaction=False)
                for number in range(sent, min(due, sent + 2000)):
                    group = job["groups"][number % len(channels)]
                    message = {**template, "id": number, "group": group, "step": step, "n": number, "t": now_us()}
                    pipe.publish(channels[number % len(channels)], layer.serialize(message))
                sent = min(due, sent + 2000)
                await pipe.execute()
            await asyncio.sleep(0.001)
        elapsed = time.monotonic() - started
        _answer({"step": step, "published": sent, "elapsed_s": round(elapsed, 3)})
    await client.aclose()


# ---------------------------------------------------------------------------
# the orchestration (in the bench's own process)


class Child:
    def __init__(self, role: str, job: dict[str, Any], env: dict[str, str], core: int, log: str) -> None:
        self.proc = procs.spawn(
            [procs.PYTHON, "-m", "bench.bus", role],
            core=core,
            env=env,
            log_path=Path(log),
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )
        self.send(json.dumps(job))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"{self.proc.args[-1]} did not answer in {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args[-1]} exited with {self.proc.poll()}")
        return json.loads(line)

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send("quit")
        procs.stop(self.proc, timeout=5)


def _cpu(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return times.user + times.system


def _redis_info(port: int) -> dict[str, Any]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        info = client.info("stats")
        clients = client.info("clients")
    finally:
        client.close()
    keep = {k: v for k, v in info.items() if "disconnection" in k or k in ("total_commands_processed",)}
    keep["connected_clients"] = clients.get("connected_clients")
    return keep


def bus_one(ctx: Context, plan: Any, subscribers: int) -> dict[str, Any]:
    redis = procs.Redis(core=ctx.redis_core, workdir=ctx.workdir).start()
    env = django_env(redis.url, str(ctx.workdir))
    groups = [f"room.{i + 1}" for i in range(plan.s7_groups)]
    job = {"groups": groups, "redis_url": redis.url}
    subs: list[Child] = []
    pub: Child | None = None
    steps: list[dict[str, Any]] = []
    result: dict[str, Any] = {"subscribers": subscribers, "groups": len(groups)}
    try:
        for i in range(subscribers):
            subs.append(Child("sub", job, env, ctx.client_core, str(ctx.workdir / f"bus-sub-{i}.log")))
        pids = [sub.read(60)["pid"] for sub in subs]
        pub = Child("pub", job, env, ctx.client_core, str(ctx.workdir / "bus-pub.log"))
        hello = pub.read(60)
        result.update(event_bytes=hello["event_bytes"], frame_bytes=hello["frame_bytes"])
        assert redis.proc is not None
        redis_pid = redis.proc.pid
        # Redis's own tick (serverCron, the hubs' health reads) while nothing is published.
        idle_from, idle_at = _cpu(redis_pid), time.monotonic()
        time.sleep(2.0)
        idle = (_cpu(redis_pid) - idle_from) / (time.monotonic() - idle_at)
        result["redis_idle_busy"] = round(idle, 4)
        for number, rate in enumerate(plan.s7_rates, start=1):
            before = {"redis": _cpu(redis_pid), "subs": sum(_cpu(p) for p in pids), "pub": _cpu(hello["pid"])}
            wall = time.monotonic()
            pub.send(f"go {number} {rate} {plan.s7_step_s}")
            sent = pub.read(plan.s7_step_s + 120)
            during = {"redis": _cpu(redis_pid), "subs": sum(_cpu(p) for p in pids)}
            reports = []
            for sub in subs:
                sub.send(f"report {number} {sent['published']}")
            for sub in subs:
                reports.append(sub.read(120))
            wall = time.monotonic() - wall
            after = {"redis": _cpu(redis_pid), "subs": sum(_cpu(p) for p in pids), "pub": _cpu(hello["pid"])}
            published = sent["published"]
            got = sum(r["got"] for r in reports)
            p99 = max((r["p99_ms"] or 0) for r in reports) if reports else None
            step = {
                "rate_target": rate,
                "published": published,
                "publish_rate": round(published / max(1e-6, sent["elapsed_s"]), 1),
                "expected": published * subscribers,
                "delivered": got,
                "lost": published * subscribers - got,
                "p50_ms": max((r["p50_ms"] or 0) for r in reports) if reports else None,
                "p99_ms": p99,
                "redis_busy": round((during["redis"] - before["redis"]) / max(1e-6, sent["elapsed_s"]), 3),
                "subs_busy": round((during["subs"] - before["subs"]) / max(1e-6, sent["elapsed_s"]), 3),
                "redis_us_per_event": round(1e6 * (after["redis"] - before["redis"]) / max(1, published), 2),
                "redis_us_net_per_event": round(
                    1e6 * max(0.0, after["redis"] - before["redis"] - idle * wall) / max(1, published), 2
                ),
                "subs_us_per_event": round(1e6 * (after["subs"] - before["subs"]) / max(1, published), 2),
                "pub_us_per_event": round(1e6 * (after["pub"] - before["pub"]) / max(1, published), 2),
                "wall_s": round(wall, 2),
            }
            step["ok"] = bool(
                step["lost"] == 0 and p99 is not None and p99 < 100 and step["publish_rate"] >= 0.95 * rate
            )
            steps.append(step)
            print(
                f"  S7 {subscribers} subscribers, {rate} events/s: published {step['publish_rate']:.0f}/s, "
                f"lost {step['lost']}, p99 {p99} ms, redis {step['redis_busy']:.0%} "
                f"({step['redis_us_per_event']} µs/event), subscribers {step['subs_busy']:.0%}",
                file=sys.stderr,
                flush=True,
            )
            if not step["ok"]:
                break
        result["redis_info"] = _redis_info(redis.port)
    except Exception as exc:
        logger.exception("S7 with %s subscribers failed", subscribers)
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for child in [*subs, *([pub] if pub else [])]:
            child.stop()
        redis.stop()
    result["steps"] = steps
    return result


def s7_bus(ctx: Context, plan: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for subscribers in plan.s7_subscribers:
        print(f"S7 {subscribers} subscribed processes", file=sys.stderr, flush=True)
        out[str(subscribers)] = bus_one(ctx, plan, subscribers)
    return out


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    role = sys.argv[1]
    job = json.loads(sys.stdin.readline())
    runner = subscriber if role == "sub" else publisher
    asyncio.run(runner(job))


if __name__ == "__main__":
    main()
