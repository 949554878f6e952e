"""The "ours" rows: the project as shipped, on daphne, with the bench's own Redis.

Each start gets a fresh SQLite database in the run's scratch directory (or a
PostgreSQL database the bench creates and drops, with ``--ours-db postgres``),
migrates it, creates the bench users and public rooms, and gives every user a
logged-in session. The websocket handshake then carries ``Cookie: sessionid=...``
and an ``Origin`` that is an allowed host, as a browser's would.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

from bench import procs
from bench.targets import Context, Server, Target, daphne_command, uvicorn_command

logger = logging.getLogger("bench.ours")

BENCH_SECRET = "bench-secret-key-only-for-loopback-runs-0123456789abcdef"

# Run inside `manage.py shell`: users, rooms, and one logged-in session per user.
SETUP_SCRIPT = r"""
import json, sys
from importlib import import_module
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from rooms.models import Room

spec = json.loads(sys.stdin.read())
User = get_user_model()
store_class = import_module(settings.SESSION_ENGINE).SessionStore
sessions = []
for i in range(spec["users"]):
    user, created = User.objects.get_or_create(username=f"bench{i}")
    if created:
        user.set_password("bench-password-0")
        user.save()
    store = store_class()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    sessions.append(store.session_key)
for slug in spec["rooms"]:
    Room.objects.get_or_create(slug=slug, defaults={"name": slug})
print("BENCH-SETUP " + json.dumps({"cookie": settings.SESSION_COOKIE_NAME, "sessions": sessions}))
"""


def consumer_ready() -> tuple[bool, str]:
    """Is the project far enough along to be benchmarked? (`manage.py check` and a consumer)."""
    if not (procs.REPO / "rooms" / "consumers.py").exists():
        return False, "rooms/consumers.py does not exist yet"
    if not (procs.REPO / "chatsite" / "asgi.py").exists():
        return False, "chatsite/asgi.py does not exist yet"
    check = subprocess.run(
        [procs.PYTHON, "manage.py", "check"],
        cwd=procs.REPO,
        env={**procs.os.environ, "DJANGO_DEBUG": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check.returncode != 0:
        return False, "manage.py check fails: " + (check.stderr.strip().splitlines() or ["?"])[-1]
    return True, ""


class Ours(Target):
    protocol = "ours"
    needs_redis = True

    def __init__(
        self, name: str, layer: str, db: str = "sqlite", app: str = "chatsite.asgi:application", server: str = "daphne"
    ) -> None:
        self.name = name
        self.server = server
        self.layer = layer
        self.db = db
        self.app = app
        self._ready: tuple[bool, str] | None = None
        self._starts = 0

    def available(self) -> tuple[bool, str]:
        if self._ready is None:
            self._ready = consumer_ready()
        return self._ready

    def env_build(self, ctx: Context, redis: procs.Redis, database_url: str) -> dict[str, str]:
        return {
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": BENCH_SECRET,
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "DJANGO_SECURE_SSL_REDIRECT": "0",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis.url,
            "CHANNEL_LAYER_KIND": self.layer,
            "CHAT_RATE_LIMIT": "0",
            "ASSISTANT_RATE_LIMIT": "0",
            # S2 runs many replies in one room at once.
            "ASSISTANT_MAX_CONCURRENT_PER_ROOM": "1000",
            "OPENAI_BASE_URL": ctx.openai_base_url or "http://127.0.0.1:9/v1",
            "OPENAI_API_KEY": "bench",
            "LOG_LEVEL": "WARNING",
        }

    def database_create(self, ctx: Context) -> tuple[str, str | None]:
        self._starts += 1
        if self.db == "postgres":
            name = f"bench_{self.name.replace('-', '_')}_{self._starts}_{procs.os.getpid()}"
            _psql(f'DROP DATABASE IF EXISTS "{name}"')
            _psql(f'CREATE DATABASE "{name}"')
            return f"postgres://postgres@127.0.0.1:5432/{name}", name
        path = ctx.workdir / f"{self.name}-{self._starts}.sqlite3"
        return f"sqlite:///{path}", None

    def start(self, ctx: Context, rooms: list[str], users: int = 20) -> Server:
        redis = procs.Redis(core=ctx.redis_core, workdir=ctx.workdir).start()
        database_url, pg_name = self.database_create(ctx)
        env = self.env_build(ctx, redis, database_url)
        log_path = ctx.workdir / f"{self.name}.log"
        try:
            _manage(["migrate", "--noinput"], env, log_path)
            setup = _manage(
                ["shell", "-c", SETUP_SCRIPT], env, log_path, stdin=json.dumps({"users": users, "rooms": rooms})
            )
            line = next(line for line in setup.splitlines() if line.startswith("BENCH-SETUP "))
            info = json.loads(line.removeprefix("BENCH-SETUP "))
            port = procs.free_port()
            command = uvicorn_command if self.server == "uvicorn" else daphne_command
            proc = procs.spawn(
                command(ctx, self.name, port, self.app),
                core=ctx.server_core,
                env=env,
                log_path=log_path,
            )
            procs.wait_port(port, proc)
        except Exception:
            redis.stop()
            if pg_name:
                _psql(f'DROP DATABASE IF EXISTS "{pg_name}"')
            raise
        origin = f"http://127.0.0.1:{port}"
        headers = [{"Cookie": f"{info['cookie']}={session}", "Origin": origin} for session in info["sessions"]]
        server = Server(self.name, self.protocol, port, proc, "/ws/rooms/{room}/", redis=redis, headers=headers)
        server.extra["pg_name"] = pg_name
        server.extra["database_url"] = database_url
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        if server.extra.get("pg_name"):
            _psql(f'DROP DATABASE IF EXISTS "{server.extra["pg_name"]}" WITH (FORCE)')


def _manage(args: list[str], env: dict[str, str], log_path: Path, stdin: str | None = None) -> str:
    done = subprocess.run(
        [procs.PYTHON, "manage.py", *args],
        cwd=procs.REPO,
        env={**procs.os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    with open(log_path, "a") as log:
        log.write(done.stdout[-4000:])
        log.write(done.stderr[-4000:])
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {args[0]} failed: {done.stderr.strip()[-800:]}")
    return done.stdout


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        capture_output=True,
        timeout=60,
    )
