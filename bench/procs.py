"""Process plumbing for the benchmark: free ports, pinned child processes, our own Redis.

Every child is started in its own session so it (and anything it forks) can be
stopped by process group; every child is registered so an interrupted run still
cleans up after itself.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

logger = logging.getLogger("bench.procs")

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

_children: list[subprocess.Popen] = []


def cores() -> tuple[int, int]:
    """The (server core, client core) pair: different cores when there are two."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) >= 2:
        return available[0], available[1]
    return available[0], available[0]


def raise_nofile() -> int:
    """Lift the soft open-files limit to the hard one (10k sockets need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def _preexec(core: int | None) -> Callable[[], None]:
    def run() -> None:
        if core is not None:
            os.sched_setaffinity(0, {core})
        raise_nofile()

    return run


def spawn(
    args: Sequence[str],
    *,
    core: int | None,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    stdout: int | None = None,
    stdin: int | None = None,
) -> subprocess.Popen:
    """Start a child pinned to `core`, in its own session, output to `log_path`."""
    full_env = {**os.environ, **(env or {})}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        list(args),
        cwd=REPO,
        env=full_env,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=stdout if stdout is not None else out,
        stderr=out,
        preexec_fn=_preexec(core),
        start_new_session=True,
    )
    if log_path:
        out.close()
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """SIGTERM the child's process group, then SIGKILL if it lingers."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    with contextlib.suppress(ValueError):
        _children.remove(proc)


@atexit.register
def stop_all() -> None:
    for proc in list(_children):
        stop(proc, timeout=2.0)


def _on_signal(signum: int, _frame: object) -> None:
    stop_all()
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return times.user + times.system


def rss_bytes(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


@dataclass
class Redis:
    """A private redis-server on a free port (never the shared one on 6379)."""

    core: int | None
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        if self.port == 6379:
            raise RuntimeError("refusing to use the shared Redis port")
        self.proc = spawn(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "20000",
                "--dir",
                str(self.workdir),
            ],
            core=self.core,
            log_path=self.workdir / f"redis-{self.port}.log",
        )
        wait_port(self.port, self.proc)
        return self

    def key_count(self) -> int:
        import redis  # the project's pinned redis-py

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        try:
            return int(client.dbsize())
        finally:
            client.close()

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None


def temp_workdir(prefix: str = "bench-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        return True
    return False
