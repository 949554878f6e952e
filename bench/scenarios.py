"""The scenarios of issue #5: each runs the same load against every target, in turn.

A scenario starts a fresh server per measurement, hands a JSON job to the load
generator (its own process, on the client core), and collects its JSON answer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from bench.profiling import speedscope_summary
from bench.targets import Context, Server, Target

logger = logging.getLogger("bench.scenarios")


# Which rows each scenario runs in `make bench` (the headline run): "default" is the server that
# docker-compose.yml and `make stack` run (bench.targets.default_row). Absent: every chosen row.
HEADLINE_ROWS: dict[str, list[str]] = {
    "S1": ["ceiling", "naive", "ours", "ours-uvicorn"],
    "S2": ["naive", "default"],
    "S3": ["ceiling", "naive", "default"],
    "S5": ["ceiling", "naive", "ours", "ours-uvicorn"],
    "S6": ["ceiling", "naive", "default"],
}


@dataclass
class Plan:
    """Sizes and durations: `--quick` (smoke-testing the harness), the headline run of `make bench`
    (about 20 minutes) or `--full` (`make bench-full`: every row, size and scenario)."""

    quick: bool
    s1_configs: list[tuple[int, int]]  # (members per room, rooms)
    s1_rates: list[int]
    s1_step_s: float
    s1_drain_s: float
    s1_probes: int
    s1_stop_p99_ms: float
    s3_sizes: list[int]
    s3_idle_s: float
    s2_configs: list[tuple[int, int]]  # (concurrent replies, members per room)
    s2_tokens: int
    s2_grace_s: float
    s4_seconds: float
    s4_members: int = 1000
    s4_window_s: float = 10.0
    s4_reply_every_s: float = 10.0
    s4_fallback_dps: int = 500
    mode: str = "full"
    rows: dict[str, list[str]] | None = None
    # S5: sockets per storm, of s5_users distinct users in s5_rooms rooms, each s5_behind messages behind.
    s5_sizes: list[int] = field(default_factory=lambda: [1000, 5000])
    s5_users: int = 1000
    s5_rooms: int = 10
    s5_behind: int = 20
    s5_window_s: float = 1.0
    # S6: s6_rooms rooms of s6_members, one sender each; offered deliveries/s (messages/s x members).
    s6_rooms: int = 500
    s6_members: int = 10
    s6_rates: list[int] = field(
        default_factory=lambda: [1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 50_000, 75_000]
    )
    s6_step_s: float = 3.0
    s6_drain_s: float = 8.0
    s6_stop_p99_ms: float = 1000
    # S7: subscribed hub processes, offered room events/s, groups (rooms) the events spread over.
    s7_subscribers: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    s7_rates: list[int] = field(
        default_factory=lambda: [1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 40_000, 60_000, 80_000]
    )
    s7_step_s: float = 3.0
    s7_groups: int = 100

    @classmethod
    def build(cls, quick: bool, full: bool = False) -> Plan:
        if quick:
            return cls(
                quick=True,
                mode="quick",
                s1_configs=[(300, 1)],
                s1_rates=[5_000, 20_000, 50_000],
                s1_step_s=1.5,
                s1_drain_s=4.0,
                s1_probes=5,
                s1_stop_p99_ms=2000,
                s3_sizes=[500],
                s3_idle_s=3.0,
                s2_configs=[(1, 10), (5, 10)],
                s2_tokens=60,
                s2_grace_s=8.0,
                s4_seconds=20,
                s4_members=100,
                s4_window_s=3.0,
                s4_reply_every_s=5.0,
                s5_sizes=[300],
                s5_users=100,
                s5_rooms=5,
                s6_rooms=50,
                s6_rates=[1_000, 5_000, 20_000],
                s6_step_s=1.5,
                s6_drain_s=4.0,
                s7_subscribers=[1, 2],
                s7_rates=[1_000, 5_000],
                s7_step_s=1.5,
                s7_groups=10,
            )
        if not full:
            return cls(
                quick=False,
                mode="headline",
                rows=HEADLINE_ROWS,
                s1_configs=[(1000, 1)],
                s1_rates=[5_000, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 80_000, 100_000, 120_000, 150_000],
                s1_step_s=3.0,
                s1_drain_s=8.0,
                s1_probes=20,
                s1_stop_p99_ms=1000,
                s3_sizes=[1000],
                s3_idle_s=15.0,
                s2_configs=[(1, 20), (5, 20), (20, 20), (40, 20)],
                s2_tokens=300,
                s2_grace_s=15.0,
                s4_seconds=0,
            )
        return cls(
            quick=False,
            mode="full",
            s1_configs=[(1000, 1), (100, 10), (10, 100)],
            s1_rates=[
                *(1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 40_000, 50_000),
                *(60_000, 70_000, 80_000, 90_000, 100_000, 120_000, 150_000),
            ],
            s1_step_s=4.0,
            s1_drain_s=10.0,
            s1_probes=30,
            s1_stop_p99_ms=2000,
            s3_sizes=[1000, 5000, 10000],
            s3_idle_s=30.0,
            s2_configs=[(1, 20), (2, 20), (5, 20), (10, 20), (20, 20), (30, 20), (40, 20), (50, 20), (100, 20)],
            s2_tokens=300,
            s2_grace_s=20.0,
            s4_seconds=600,
            s6_rates=[
                *(500, 1_000, 2_000, 3_000, 4_000, 5_000, 7_500, 10_000, 12_500, 15_000, 20_000),
                *(25_000, 30_000, 40_000, 50_000, 75_000, 100_000),
            ],
            s6_step_s=4.0,
            s6_drain_s=10.0,
        )

    def rows_for(self, scenario: str, targets: list[Target], default: str) -> list[Target]:
        """The rows `scenario` runs, in the order of `targets` (the headline run picks a few)."""
        wanted = (self.rows or {}).get(scenario)
        if wanted is None:
            return targets
        names = {default if name == "default" else name for name in wanted}
        return [t for t in targets if t.name in names]


def loadgen_run(ctx: Context, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one load-generator process on the client core; its stderr goes to ours."""
    job = {**job, "core": ctx.client_core}
    proc = subprocess.Popen(
        [procs.PYTHON, "-m", "bench.loadgen"],
        cwd=procs.REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        start_new_session=True,
    )
    procs._children.append(proc)
    try:
        out, _ = proc.communicate(json.dumps(job), timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        return {"error": f"load generator timed out after {timeout:.0f}s"}
    finally:
        procs.stop(proc)
    if proc.returncode != 0 or not out.strip():
        return {"error": f"load generator exited with {proc.returncode}"}
    return json.loads(out.strip().splitlines()[-1])


def profile_wanted(ctx: Context, target: Target, first: bool) -> bool:
    """Profile ours rows in the first configuration of S1 and S3 (or every row with --profile)."""
    return ctx.profile == "py-spy" or (first and target.name.startswith("ours"))


def profile_attach(result: dict[str, Any], job: dict[str, Any]) -> None:
    spec = job.get("profile")
    if spec:
        summary = speedscope_summary(Path(spec["path"]))
        if summary:
            result["profile"] = summary


def with_server(ctx: Context, target: Target, rooms: list[str], run: Any, users: int) -> dict[str, Any]:
    """Start `target`, call `run(server)`, always stop it; failures become an `error` entry."""
    started = time.monotonic()
    server: Server | None = None
    result: dict[str, Any] = {"error": "interrupted"}
    try:
        server = target.start(ctx, rooms, users)
        result = run(server)
    except Exception as exc:
        logger.exception("%s failed", target.name)
        result = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if server is not None:
            if server.proc.poll() is not None:
                result.setdefault("error", f"server exited with {server.proc.returncode}")
            target.stop(server)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def server_job(server: Server) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "protocol": server.protocol,
        "headers": server.headers,
        "pids": server.pids(),
        # ours rows: the query census (bench.ourswrap) and the PostgreSQL database to watch.
        "db": {"census": server.extra.get("db_stats"), "pg_name": server.extra.get("pg_name")},
    }


# ---------------------------------------------------------------------------


def s1_fanout(ctx: Context, plan: Plan, targets: list[Target]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size, count in plan.s1_configs:
        key = f"{size}x{count}"
        out[key] = {}
        rooms = [f"s1-{size}-{i}" for i in range(count)]
        for target in targets:
            print(f"S1 {key} {target.name}", file=sys.stderr, flush=True)

            def run(
                server: Server, rooms: list[str] = rooms, size: int = size, count: int = count, target: Target = target
            ) -> dict[str, Any]:
                job = {
                    **server_job(server),
                    "kind": "s1",
                    "rooms": [{"path": server.room_path(room), "size": size} for room in rooms],
                    "rates": plan.s1_rates,
                    "step_s": plan.s1_step_s,
                    "drain_s": plan.s1_drain_s,
                    "probe_messages": plan.s1_probes,
                    "stop_p99_ms": plan.s1_stop_p99_ms,
                }
                if profile_wanted(ctx, target, first=(size, count) == plan.s1_configs[0]):
                    job["profile"] = {"path": str(ctx.workdir / f"s1-{target.name}.speedscope.json"), "seconds": 12}
                timeout = 120 + len(plan.s1_rates) * (plan.s1_step_s + plan.s1_drain_s + 5)
                result = loadgen_run(ctx, job, timeout)
                profile_attach(result, job)
                return result

            out[key][target.name] = with_server(ctx, target, rooms, run, users=size * count)
    return out


def s3_idle(ctx: Context, plan: Plan, targets: list[Target]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in plan.s3_sizes:
        out[str(size)] = {}
        rooms = [f"s3-{i}" for i in range(max(1, size // 1000))]
        for target in targets:
            print(f"S3 {size} {target.name}", file=sys.stderr, flush=True)

            def run(
                server: Server, rooms: list[str] = rooms, size: int = size, target: Target = target
            ) -> dict[str, Any]:
                job = {
                    **server_job(server),
                    "kind": "s3",
                    "room_paths": [server.room_path(room) for room in rooms],
                    "sockets": size,
                    "idle_s": plan.s3_idle_s,
                }
                if profile_wanted(ctx, target, first=size == plan.s3_sizes[0]):
                    job["profile"] = {"path": str(ctx.workdir / f"s3-{target.name}.speedscope.json"), "seconds": 60}
                result = loadgen_run(ctx, job, timeout=300 + size / 20)
                profile_attach(result, job)
                if server.redis:
                    result["redis_keys"] = server.redis.key_count()
                return result

            # One user per socket (the 20 warm-up sockets too).
            out[str(size)][target.name] = with_server(ctx, target, rooms, run, users=size + 20)
    return out


def upstream_start(ctx: Context) -> subprocess.Popen:
    """The stamping fake OpenAI-wire server, on the client core (it is the outside world)."""
    log = ctx.workdir / "upstream.jsonl"
    proc = subprocess.Popen(
        [procs.PYTHON, "-m", "bench.upstream", "--port", "0", "--tokens-per-second", "60", "--log", str(log)],
        cwd=procs.REPO,
        stdout=subprocess.PIPE,
        stderr=open(ctx.workdir / "upstream.err", "ab"),  # noqa: SIM115
        text=True,
        preexec_fn=lambda: procs.os.sched_setaffinity(0, {ctx.client_core}),
        start_new_session=True,
    )
    procs._children.append(proc)
    port = int(proc.stdout.readline().strip())
    ctx.openai_base_url = f"http://127.0.0.1:{port}/v1"
    ctx.upstream_log = str(log)
    return proc


def s2_tokens(ctx: Context, plan: Plan, targets: list[Target]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    upstream = upstream_start(ctx)
    failed: set[str] = set()
    try:
        for step, (replies, members) in enumerate(plan.s2_configs, start=1):
            key = f"{replies}x{members}"
            out[key] = {}
            rooms = [f"s2-{i}" for i in range(replies)]
            for target in targets:
                if not target.has_assistant:
                    continue
                if target.name in failed:
                    out[key][target.name] = {"error": "skipped: failed at a lower concurrency"}
                    continue
                print(f"S2 {key} {target.name}", file=sys.stderr, flush=True)

                def run(server: Server, rooms: list[str] = rooms, members: int = members, step: int = step) -> dict:
                    job = {
                        **server_job(server),
                        "kind": "s2",
                        "rooms": [{"path": server.room_path(room), "size": members} for room in rooms],
                        "tokens": plan.s2_tokens,
                        "tps": 60,
                        "step": 1000 + step,
                        "upstream_log": ctx.upstream_log,
                        "grace_s": plan.s2_grace_s,
                    }
                    return loadgen_run(ctx, job, timeout=120 + plan.s2_tokens / 60 + len(rooms) * members / 50)

                result = with_server(ctx, target, rooms, run, users=replies * members)
                out[key][target.name] = result
                if (
                    "error" in result
                    or result.get("intact") != result.get("replies_expected")
                    or (result.get("overhead_p99_ms") or 0) > 2000
                ):
                    failed.add(target.name)
    finally:
        procs.stop(upstream)
    return out


def s1_knee(s1: dict[str, Any] | None, target: str) -> int | None:
    """The row's S1 knee in the 1000-member room: highest offered rate with p99 < 100 ms, nothing lost."""
    table = next(iter((s1 or {}).values()), {})
    knee = None
    for step in (table.get(target) or {}).get("steps") or []:
        if step["p99_ms"] < 100 and not step["drops"] and step["drained"]:
            knee = step["rate_target"]
    return knee


def s4_soak(ctx: Context, plan: Plan, targets: list[Target], s1: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    upstream = upstream_start(ctx)
    try:
        for target in targets:
            knee = s1_knee(s1, target.name)
            rate = knee // 2 if knee else plan.s4_fallback_dps
            print(f"S4 {target.name}: {plan.s4_seconds:.0f} s at {rate} deliveries/s", file=sys.stderr, flush=True)

            def run(server: Server, rate: int = rate) -> dict[str, Any]:
                job = {
                    **server_job(server),
                    "kind": "s4",
                    "rooms": [{"path": server.room_path("s4-0"), "size": plan.s4_members}],
                    "members_note": "one room",
                    "seconds": plan.s4_seconds,
                    "rate_dps": rate,
                    "churn_per_min": 0.10,
                    "reply_every_s": plan.s4_reply_every_s,
                    "reply_tokens": 120,
                    "window_s": plan.s4_window_s,
                    "redis_port": server.redis.port if server.redis else None,
                }
                return loadgen_run(ctx, job, timeout=plan.s4_seconds + 180)

            result = with_server(ctx, target, ["s4-0"], run, users=plan.s4_members)
            result["rate_source"] = "half the S1 knee" if knee else "fixed (no S1 knee)"
            out[target.name] = result
    finally:
        procs.stop(upstream)
    return out


# ---------------------------------------------------------------------------
# S5: reconnect storm


def s5_storm(ctx: Context, plan: Plan, targets: list[Target]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rooms = [f"s5-{i}" for i in range(plan.s5_rooms)]
    for size in plan.s5_sizes:
        out[str(size)] = {}
        for target in targets:
            print(f"S5 {size} {target.name}", file=sys.stderr, flush=True)

            def run(server: Server, size: int = size, target: Target = target) -> dict[str, Any]:
                job = {
                    **server_job(server),
                    "kind": "s5",
                    "room_paths": [server.room_path(room) for room in rooms],
                    "sockets": size,
                    "users": plan.s5_users,
                    "behind": plan.s5_behind,
                    "window_s": plan.s5_window_s,
                    "concurrency": 50,
                }
                # Every ours row is profiled through its storm: a MISS comes with where the time went.
                if target.name.startswith("ours") or ctx.profile == "py-spy":
                    path = ctx.workdir / f"s5-{size}-{target.name}.speedscope.json"
                    job["profile"] = {"path": str(path), "seconds": 60}
                result = loadgen_run(ctx, job, timeout=240 + size / 10)
                profile_attach(result, job)
                return result

            # The storm's users, then one sender per room.
            out[str(size)][target.name] = with_server(ctx, target, rooms, run, users=plan.s5_users + len(rooms))
    return out


# ---------------------------------------------------------------------------
# S6: many small rooms

DB_MARK = re.compile(r"~(\d+):(\d+):(\d+)~")


def db_markers(server: Server) -> dict[int, dict[str, int]] | None:
    """Per marked step: distinct messages in the server's database, and rows saved more than once."""
    url = server.extra.get("database_url") or ""
    query = "SELECT substr(text, 1, 48) FROM rooms_message WHERE text LIKE '~%'"
    try:
        if url.startswith("sqlite:///"):
            import sqlite3

            with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)) as conn:
                rows = [r[0] for r in conn.execute(query)]
        elif server.extra.get("pg_name"):
            import psycopg

            dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={server.extra['pg_name']}"
            with psycopg.connect(dsn) as conn:
                rows = [r[0] for r in conn.execute(query)]
        else:
            return None
    except Exception as exc:  # noqa: BLE001 - the report says it could not check
        logger.warning("could not read the messages back: %r", exc)
        return None
    seen: dict[int, set[int]] = {}
    out: dict[int, dict[str, int]] = {}
    for text in rows:
        match = DB_MARK.match(text)
        if not match:
            continue
        step, number = int(match[1]), int(match[2])
        numbers = seen.setdefault(step, set())
        entry = out.setdefault(step, {"persisted": 0, "duplicates": 0})
        if number in numbers:
            entry["duplicates"] += 1
        else:
            numbers.add(number)
            entry["persisted"] += 1
    return out


def s6_small_rooms(ctx: Context, plan: Plan, targets: list[Target]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    key = f"{plan.s6_members}x{plan.s6_rooms}"
    out[key] = {}
    rooms = [f"s6-{i}" for i in range(plan.s6_rooms)]
    for target in targets:
        print(f"S6 {key} {target.name}", file=sys.stderr, flush=True)

        def run(server: Server, target: Target = target) -> dict[str, Any]:
            job = {
                **server_job(server),
                "kind": "s1",
                "rooms": [{"path": server.room_path(room), "size": plan.s6_members} for room in rooms],
                "rates": plan.s6_rates,
                "step_s": plan.s6_step_s,
                "drain_s": plan.s6_drain_s,
                "probe_messages": 10,
                "stop_p99_ms": plan.s6_stop_p99_ms,
                "concurrency": 50,
            }
            if target.name.startswith("ours") or ctx.profile == "py-spy":
                job["profile"] = {"path": str(ctx.workdir / f"s6-{target.name}.speedscope.json"), "seconds": 12}
            timeout = 300 + plan.s6_rooms * plan.s6_members / 20 + len(plan.s6_rates) * (plan.s6_step_s + 40)
            result = loadgen_run(ctx, job, timeout)
            profile_attach(result, job)
            if target.name.startswith("ours") and "steps" in result:
                # Persisted before anyone saw it: every message the ramp sent must be a row, once.
                marks = db_markers(server)
                result["db_checked"] = marks is not None
                for step in result["steps"]:
                    found = (marks or {}).get(step.get("step"), {"persisted": 0, "duplicates": 0})
                    step["persisted"] = found["persisted"] if marks is not None else None
                    step["persist_duplicates"] = found["duplicates"] if marks is not None else None
            return result

        out[key][target.name] = with_server(ctx, target, rooms, run, users=plan.s6_rooms * plan.s6_members)
    return out
