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
import time
from pathlib import Path

from bench import procs
from bench.targets import Context, Server, Target, daphne_command, granian_command, uvicorn_command

logger = logging.getLogger("bench.ours")

BENCH_SECRET = "bench-secret-key-only-for-loopback-runs-0123456789abcdef"

# Run inside `manage.py shell`: users, rooms, and one logged-in session per user.
# Distinct users (one per socket) need thousands of them quickly: one password
# hash for all (hashing is what is slow, and nobody logs in with it), users and
# sessions written with bulk_create, each session encoded exactly as Django's
# own store would (its auth hash included, so get_user() accepts it).
SETUP_SCRIPT = r"""
import json, sys, time
from datetime import timedelta
from importlib import import_module
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.hashers import make_password
from django.utils import timezone
from django.utils.crypto import get_random_string
from rooms import services
from rooms.models import Room

started = time.monotonic()
spec = json.loads(sys.stdin.read())
User = get_user_model()
names = [f"bench{i}" for i in range(spec["users"])]
have = set(User.objects.filter(username__in=names).values_list("username", flat=True))
hashed = make_password("bench-password-0")
User.objects.bulk_create([User(username=n, password=hashed) for n in names if n not in have], batch_size=2000)
users = {u.username: u for u in User.objects.filter(username__in=names)}
engine = import_module(settings.SESSION_ENGINE)
store_class = engine.SessionStore
backend = "django.contrib.auth.backends.ModelBackend"
sessions = []
if settings.SESSION_ENGINE in ("django.contrib.sessions.backends.db", "django.contrib.sessions.backends.cached_db"):
    model = store_class.get_model_class()
    expire = timezone.now() + timedelta(seconds=settings.SESSION_COOKIE_AGE)
    encoder = store_class()
    rows = []
    for name in names:
        user = users[name]
        data = {SESSION_KEY: str(user.pk), BACKEND_SESSION_KEY: backend, HASH_SESSION_KEY: user.get_session_auth_hash()}
        key = get_random_string(32, "abcdefghijklmnopqrstuvwxyz0123456789")
        rows.append(model(session_key=key, session_data=encoder.encode(data), expire_date=expire))
        sessions.append(key)
    model.objects.bulk_create(rows, batch_size=2000)
else:
    for name in names:
        user = users[name]
        store = store_class()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = backend
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.create()
        sessions.append(store.session_key)
for slug in spec["rooms"]:
    # As `manage.py createroom` makes them: with the room's @assistant.
    if not Room.objects.filter(slug=slug).exists():
        services.room_create(slug=slug, name=slug)
print("BENCH-SETUP " + json.dumps({
    "cookie": settings.SESSION_COOKIE_NAME, "sessions": sessions, "seconds": round(time.monotonic() - started, 2),
}))
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
        self, name: str, layer: str, db: str = "sqlite", app: str = "bench.ourswrap:application", server: str = "daphne"
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
            if self._ready[0] and self.server == "granian":
                import importlib.util

                if importlib.util.find_spec("granian") is None:
                    self._ready = (False, "granian is not installed (requirements-bench.txt)")
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
            # ... and no site-wide cap (production's default of 8 would queue S2's replies).
            "ASSISTANT_MAX_CONCURRENT": "0",
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
        # The query census of bench.ourswrap (what a reconnect or a message costs the database).
        db_stats = ctx.workdir / f"{self.name}-{self._starts}.dbstats.json"
        env["BENCH_DB_STATS"] = str(db_stats)
        log_path = ctx.workdir / f"{self.name}.log"
        try:
            _manage(["migrate", "--noinput"], env, log_path)
            setup = _manage(
                ["shell", "-c", SETUP_SCRIPT], env, log_path, stdin=json.dumps({"users": users, "rooms": rooms})
            )
            line = next(line for line in setup.splitlines() if line.startswith("BENCH-SETUP "))
            info = json.loads(line.removeprefix("BENCH-SETUP "))
            port = procs.free_port()
            command = {"uvicorn": uvicorn_command, "granian": granian_command}.get(self.server, daphne_command)
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
        # As the browser connects: presence as versioned deltas (issue 14), the full list only in hello.
        path = "/ws/rooms/{room}/?presence=delta"
        server = Server(self.name, self.protocol, port, proc, path, redis=redis, headers=headers)
        server.extra["pg_name"] = pg_name
        server.extra["database_url"] = database_url
        server.extra["db_stats"] = str(db_stats)
        server.extra["setup_s"] = info.get("seconds")
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
    """Run one statement on the shared PostgreSQL; a busy server (other test runs' connections) is retried."""
    last = ""
    for attempt in range(6):
        done = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode == 0:
            return
        last = done.stderr.strip()[-300:]
        logger.warning("psql failed (attempt %s): %s", attempt + 1, last)
        time.sleep(2 + 2 * attempt)
    raise RuntimeError(f"psql {sql[:60]!r} failed: {last}")
