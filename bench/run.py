"""Entry point of `make bench`: ``python -m bench.run [--quick] [--scenarios S1,S3] [--targets ...]``.

Runs every chosen scenario against every chosen target, in one run, on loopback,
and writes ``bench/results/<date>.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import bus, procs, report, scenarios
from bench.targets import Context, default_row, default_server, targets_all

logger = logging.getLogger("bench.run")

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "S6", "S7")
# The headline run (`make bench`, about 20 minutes); --full adds S4 and S7.
HEADLINE = ("S1", "S2", "S3", "S5", "S6")
TARGETS_DEFAULT = "ceiling,naive,ours,ours-uvicorn,ours-granian,ours-core"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (
        "websockets",
        "Django",
        "channels",
        "channels-redis",
        "daphne",
        "uvicorn",
        "granian",
        "redis",
        "Twisted",
        "psycopg",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the server's code had uncommitted changes (a shared tree)."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=procs.REPO, capture_output=True, text=True, timeout=30)
        return done.stdout.strip()

    try:
        dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if not line[3:].startswith("bench/")]
        return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {}


def args_parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="every scenario briefly, small sizes (~5 min)")
    parser.add_argument(
        "--full", action="store_true", help="every row, size and scenario (S4 soaks, S7): `make bench-full`"
    )
    parser.add_argument(
        "--scenarios", help="comma list of S1..S7 (default: S1,S2,S3,S5,S6; with --full or --quick all of them)"
    )
    parser.add_argument(
        "--targets",
        default=TARGETS_DEFAULT,
        help="comma list of ceiling,naive,ours,ours-uvicorn,ours-granian,ours-core "
        "(the headline run picks its rows among them)",
    )
    parser.add_argument(
        "--ours-db",
        choices=("auto", "sqlite", "postgres"),
        default="auto",
        help="auto: PostgreSQL when 127.0.0.1:5432 answers (production's database), else SQLite",
    )
    parser.add_argument("--s5-sizes", help="override S5's socket counts, e.g. 1000,5000")
    parser.add_argument("--s6-rooms", type=int, help="override S6's number of 10-member rooms")
    parser.add_argument("--s7-subscribers", help="override S7's subscribed processes, e.g. 1,2,4,8")
    parser.add_argument("--soak-seconds", type=float, help="override S4's duration")
    parser.add_argument("--s1-configs", help="override S1's rooms, e.g. 1000x1,10x100 (members x rooms)")
    parser.add_argument("--s2-max", type=int, help="S2: stop the ladder of concurrent replies at this K")
    parser.add_argument("--s3-sizes", help="override S3's socket counts, e.g. 1000,10000")
    parser.add_argument("--profile", choices=("", "py-spy"), default="", help="record a flame graph of each server")
    parser.add_argument(
        "--merge",
        type=Path,
        help="an earlier run's JSON: its scenarios not rerun here join this report (S4 then uses its S1 knees)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    parser.add_argument("--name", help="report file stem (default: the date and time)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = args_parse(argv)
    procs.install_signal_handlers()
    procs.raise_nofile()
    if args.ours_db == "auto":
        args.ours_db = "postgres" if procs.port_open(5432) and shutil.which("psql") else "sqlite"
    default_scenarios = SCENARIOS if (args.full or args.quick) else HEADLINE
    chosen = [s.strip().upper() for s in (args.scenarios or ",".join(default_scenarios)).split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        sys.exit(f"unknown scenarios: {sorted(unknown)}")
    every = targets_all()
    targets = []
    skipped: dict[str, str] = {}
    for name in (t.strip() for t in args.targets.split(",") if t.strip()):
        target = every[name]
        if hasattr(target, "db"):
            target.db = args.ours_db
        ok, why = target.available()
        if ok:
            targets.append(target)
        else:
            skipped[name] = why
            print(f"skipping {name}: {why}", file=sys.stderr)
    if shutil.which("redis-server") is None and any(t.needs_redis for t in targets):
        sys.exit("redis-server is not on PATH (apt-get install redis-server)")

    plan = scenarios.Plan.build(args.quick, args.full)
    if args.targets != TARGETS_DEFAULT:
        plan.rows = None  # rows named on the command line run as named
    if args.soak_seconds:
        plan.s4_seconds = args.soak_seconds
    if args.s1_configs:
        plan.s1_configs = [tuple(int(n) for n in c.split("x")) for c in args.s1_configs.split(",")]
    if args.s2_max:
        plan.s2_configs = [c for c in plan.s2_configs if c[0] <= args.s2_max]
    if args.s3_sizes:
        plan.s3_sizes = [int(n) for n in args.s3_sizes.split(",")]
    if args.s5_sizes:
        plan.s5_sizes = [int(n) for n in args.s5_sizes.split(",")]
    if args.s6_rooms:
        plan.s6_rooms = args.s6_rooms
    if args.s7_subscribers:
        plan.s7_subscribers = [int(n) for n in args.s7_subscribers.split(",")]
    default = default_row()
    server_core, client_core = procs.cores()
    workdir = procs.temp_workdir()
    ctx = Context(workdir=workdir, server_core=server_core, client_core=client_core, redis_core=server_core)
    ctx.profile = args.profile
    started = dt.datetime.now().astimezone()
    results: dict[str, Any] = {
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "quick": args.quick,
            "targets": [t.name for t in targets],
            "skipped_targets": skipped,
            "scenarios": chosen,
            "cores": {"server": server_core, "client": client_core, "redis": ctx.redis_core},
            "machine": {"cpus": len(procs.os.sched_getaffinity(0)), "platform": platform.platform()},
            "versions": versions(),
            "ours_db": args.ours_db,
            "mode": plan.mode,
            "default_server": default_server(),
            "default_row": default,
            "load_before": procs.os.getloadavg(),
            "git": git_state(),
            "plan": plan.__dict__,
            "workdir": str(workdir),
        }
    }
    if args.merge:
        earlier = json.loads(args.merge.read_text())
        earlier_origins = earlier["meta"].get("origins", {})
        for name in SCENARIOS:
            if name not in chosen and name in earlier:
                results[name] = earlier[name]
                results["meta"].setdefault("origins", {})[name] = earlier_origins.get(name) or {
                    "file": args.merge.name,
                    "started": earlier["meta"]["started"],
                }
    clock = time.monotonic()
    stem = args.name or started.strftime("%Y-%m-%d-%H%M")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{stem}.json"
    try:
        runners = {
            "S1": scenarios.s1_fanout,
            "S2": scenarios.s2_tokens,
            "S3": scenarios.s3_idle,
            "S4": scenarios.s4_soak,
            "S5": scenarios.s5_storm,
            "S6": scenarios.s6_small_rooms,
        }
        for name in chosen:
            print(f"== {name} (load average {procs.os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
            results["meta"].setdefault("load", {})[name] = procs.os.getloadavg()
            if name == "S7":
                results[name] = bus.s7_bus(ctx, plan)
            else:
                rows = plan.rows_for(name, targets, default)
                if name == "S4":
                    results[name] = runners[name](ctx, plan, rows, results.get("S1"))
                else:
                    results[name] = runners[name](ctx, plan, rows)
            # Written after every scenario, so an interrupted run still leaves its numbers.
            json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    finally:
        procs.stop_all()
        results["meta"]["duration_s"] = round(time.monotonic() - clock, 1)
        results["meta"]["load_after"] = procs.os.getloadavg()
        json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    md_path = report.report_write(results, args.out, stem)
    print(f"report: {md_path}\nraw:    {json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
