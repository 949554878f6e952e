"""A real site for the browser tests: SQLite file, migrations, users and rooms,
collected static files, and daphne as a subprocess on a free port, started
through deploy/entrypoint.sh ``web`` so it runs with the production flags (the
128 KiB frame limit, pings, timeouts).

The in-memory channel layer is enough here (one daphne process); the fault and
multi-process suites start Redis themselves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

BASE_DIR = Path(__file__).resolve().parents[2]
ENTRYPOINT = BASE_DIR / "deploy" / "entrypoint.sh"
PASSWORD = "correct-horse-battery-staple-9"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
START_TIMEOUT = 30.0


def port_free() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """One daphne serving the real site from a temp dir's database."""

    def __init__(self, root: Path, *, openai_base_url: str | None, extra_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.db_path = root / "db.sqlite3"
        self.port = port_free()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "daphne.log"
        self._log: IO[bytes] | None = None
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env.update(
            {
                "DATABASE_URL": f"sqlite:///{self.db_path}",
                "DJANGO_DEBUG": "0",
                "DJANGO_SECRET_KEY": "browser-tests-only-secret-key-0123456789-abcdefghijklmnop",
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "DJANGO_SECURE_SSL_REDIRECT": "0",
                # Plain http on loopback: a Secure cookie would never be sent back.
                "DJANGO_SESSION_COOKIE_SECURE": "0",
                "DJANGO_CSRF_COOKIE_SECURE": "0",
                "CHAT_RATE_LIMIT": "0",
                "ASSISTANT_RATE_LIMIT": "0",
                "CHAT_MAX_MESSAGE_CHARS": "20000",
                "ASSISTANT_CONTEXT_CHARS": "100000",
                "ASSISTANT_CONTEXT_MESSAGES": "500",
                "ASSISTANT_DEMO_DELAY_MS": "15",
                "PYTHONUNBUFFERED": "1",
                "LOG_LEVEL": "INFO",
                # deploy/entrypoint.sh `web` (uvicorn, its default) from this interpreter's venv.
                "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
                "ASGI_SERVER": "uvicorn",
                "BIND": "127.0.0.1",
                "PORT": str(self.port),
            }
        )
        if openai_base_url:
            env.update({"OPENAI_BASE_URL": openai_base_url, "OPENAI_API_KEY": "sk-browser-test"})
            env["ASSISTANT_MODEL"] = "fake-model"
        else:
            env["OPENAI_BASE_URL"] = ""
            env["OPENAI_API_KEY"] = ""
        env.update(extra_env or {})
        self.env = env

    # --- set-up -------------------------------------------------------------------

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=BASE_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def prepare(self, users: list[str], rooms: list[str]) -> None:
        self.manage("migrate", "--noinput", "-v", "0")
        # DEBUG off serves from STATIC_ROOT through the manifest, as production does.
        self.manage("collectstatic", "--noinput", "-v", "0")
        # One interpreter for all of it: each manage.py start costs about a second.
        script = (
            "from django.contrib.auth import get_user_model\n"
            "from django.core.management import call_command\n"
            "User = get_user_model()\n"
            f"for name in {users!r}:\n"
            f"    User.objects.create_user(name, password={PASSWORD!r})\n"
            f"for slug in {rooms!r}:\n"
            "    call_command('createroom', slug, name=slug.replace('-', ' ').title())\n"
        )
        self.manage("shell", "-c", script)

    # --- daphne -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "daphne already running"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        # The entrypoint execs daphne: self.proc is daphne itself, so kill() kills the server.
        self.proc = subprocess.Popen(
            ["sh", str(ENTRYPOINT), "web"],
            cwd=BASE_DIR,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_healthy()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"daphne exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url("/healthz"), timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"daphne did not become healthy:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a server dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log_close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log_close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _log_close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 60) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    # --- the database, read directly --------------------------------------------------

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def room_messages(self, slug: str) -> list[tuple[int, int, str, str, str]]:
        """(id, seq, author, role, status) of every row of the room's log, in seq
        order (private replies, which have no seq, are nobody's log)."""
        return [
            (int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]))  # type: ignore[arg-type]
            for r in self.query(
                "SELECT m.id, m.seq, m.author_name, m.role, m.status FROM rooms_message m "
                "JOIN rooms_room r ON r.id = m.room_id WHERE r.slug = ? AND m.visible_to_id IS NULL ORDER BY m.seq",
                (slug,),
            )
        ]
