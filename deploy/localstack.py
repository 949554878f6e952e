"""Run the production topology locally, without Docker.

    .venv/bin/python deploy/localstack.py [--daphnes 2] [--server uvicorn|daphne] [--port 8080] [--fake-openai]

nginx on 127.0.0.1 -> N server processes (deploy/entrypoint.sh's, uvicorn by
default; historically named daphne1, daphne2...) -> a private Redis-protocol server and
PostgreSQL from DATABASE_URL (else a SQLite file in the work dir). Waits until
/healthz answers through nginx, prints the URL, and stops everything on Ctrl-C
or SIGTERM. See docs/deployment.md.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.stack import Stack, StackError


def arguments_parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--daphnes", type=int, default=2, help="number of server processes (default 2)")
    parser.add_argument(
        "--server", choices=("uvicorn", "daphne"), default="uvicorn", help="their ASGI server (default uvicorn)"
    )
    parser.add_argument("--port", type=int, default=None, help="nginx port (default: a free one)")
    parser.add_argument("--workdir", type=Path, default=None, help="state and logs (default: a temporary dir)")
    parser.add_argument("--database-url", default=None, help="default: $DATABASE_URL, else SQLite in the work dir")
    parser.add_argument(
        "--fresh-database",
        action="store_true",
        help="with PostgreSQL: create a new database for this run and drop it on exit",
    )
    parser.add_argument("--fake-openai", action="store_true", help="start tests.fakeopenai and point the app at it")
    parser.add_argument("--room", action="append", default=[], help="create this room (slug) after migrating")
    parser.add_argument("--no-nginx", action="store_true", help="server processes only")
    parser.add_argument(
        "--install-nginx", action="store_true", help="apt-get install nginx when it is missing (root only)"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = arguments_parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chatstack-"))
    stack = Stack(
        workdir,
        daphne_count=args.daphnes,
        servers=[args.server] * args.daphnes,
        database_url=args.database_url,
        nginx=not args.no_nginx,
        fake_openai=args.fake_openai,
        fresh_database=args.fresh_database,
        port=args.port,
        install_nginx=args.install_nginx,
    )
    # A plain flag: Event.set() inside a signal handler can deadlock against the
    # main thread's own Event.wait(), which holds the same lock.
    stop_signals: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop_signals.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: stop_signals.append(signum))
    try:
        stack.start()
        for slug in args.room:
            result = stack.manage("createroom", slug, check=False)
            if result.returncode != 0:
                print(f"createroom {slug}: {(result.stderr or result.stdout).strip()[-200:]}", file=sys.stderr)
    except StackError as exc:
        print(f"local stack failed to start: {exc}", file=sys.stderr)
        stack.stop()
        return 1
    print(f"chatsite is up at {stack.url}/  (websockets: {stack.ws_url}/ws/rooms/<slug>/)")
    for index, url in enumerate(stack.daphne_urls, start=1):
        print(f"  {args.server} (daphne{index}): {url}  log: {workdir / 'logs' / f'daphne{index}.log'}")
    print(f"  redis: {stack.redis_url}  database: {stack.database_url}")
    print(f"  manage.py with this stack's settings: see {workdir / 'stack.env'}")
    print("Ctrl-C stops everything.", flush=True)
    env_file = workdir / "stack.env"
    env_file.write_text(
        "".join(
            f"export {key}={shlex.quote(stack.env[key])}\n"
            for key in sorted(stack.env)
            if key.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL", "OPENAI_BASE_URL"))
        )
    )
    env_file.chmod(0o600)
    try:
        while not stop_signals:
            time.sleep(0.5)
            dead = [p.name for p in stack.processes() if not p.running()]
            if dead:
                print(f"process exited: {', '.join(dead)}; stopping the stack", file=sys.stderr)
                return 1
        return 0
    finally:
        stack.stop()
        print("stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
