"""The rows of every table: how to start each server under test, pinned to the server core.

A target starts fresh for each measurement (so memory and queues never leak from
one scenario into the next) and hands back what the load generator needs: port,
dialect, socket paths, handshake headers, and the pids whose CPU and RSS count as
"server side".
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs

logger = logging.getLogger("bench.targets")


@dataclass
class Context:
    """What every target needs from the run: cores, scratch space, the fake upstream."""

    workdir: Path
    server_core: int
    client_core: int
    redis_core: int
    openai_base_url: str = ""
    upstream_log: str = ""
    profile: str = ""  # "", "pyinstrument" or "py-spy": wrap the server under test


@dataclass
class Server:
    name: str
    protocol: str
    port: int
    proc: subprocess.Popen
    path_template: str
    redis: procs.Redis | None = None
    headers: list[dict[str, str]] = field(default_factory=lambda: [{}])
    extra: dict[str, Any] = field(default_factory=dict)

    def room_path(self, room: str) -> str:
        return self.path_template.format(room=room)

    def pids(self) -> dict[str, int]:
        pids = {"server": self.server_pid()}
        if self.redis and self.redis.proc:
            pids["redis"] = self.redis.proc.pid
        return pids

    def server_pid(self) -> int:
        """The process that serves sockets (py-spy wraps it as a child)."""
        import psutil

        proc = psutil.Process(self.proc.pid)
        for child in proc.children(recursive=True):
            if "python" in child.name():
                return child.pid
        return self.proc.pid

    def stop(self) -> None:
        procs.stop(self.proc, timeout=15.0)
        if self.redis:
            self.redis.stop()


class Target:
    name = ""
    protocol = ""
    needs_redis = False
    has_assistant = True

    def start(self, ctx: Context, rooms: list[str], users: int = 1) -> Server:
        raise NotImplementedError

    def available(self) -> tuple[bool, str]:
        return True, ""

    def stop(self, server: Server) -> None:
        server.stop()


def _origin_headers(port: int) -> dict[str, str]:
    return {"Origin": f"http://127.0.0.1:{port}"}


def _server_command(ctx: Context, name: str, args: list[str]) -> list[str]:
    """The server's command line (profiling attaches to the running process instead of wrapping it)."""
    return args


class Ceiling(Target):
    name = "ceiling"
    protocol = "ceiling"
    # A broadcast server has no model to relay: S2 has no ceiling row, S4 sends it no replies.
    has_assistant = False

    def start(self, ctx: Context, rooms: list[str], users: int = 1) -> Server:
        port = procs.free_port()
        cmd = _server_command(ctx, self.name, [procs.PYTHON, "-m", "bench.ceiling.server", "--port", str(port)])
        proc = procs.spawn(cmd, core=ctx.server_core, log_path=ctx.workdir / f"{self.name}.log")
        procs.wait_port(port, proc)
        return Server(self.name, self.protocol, port, proc, "/room/{room}", headers=[_origin_headers(port)])


def daphne_command(ctx: Context, name: str, port: int, app: str) -> list[str]:
    return _server_command(
        ctx, name, [procs.PYTHON, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port), app]
    )


def uvicorn_command(ctx: Context, name: str, port: int, app: str) -> list[str]:
    # The asyncio event loop, as every other row has (no uvloop), and the sans-I/O
    # websockets protocol; compression off, as daphne and the ceiling have it.
    args = ["--host", "127.0.0.1", "--port", str(port), "--loop", "asyncio", "--http", "auto"]
    args += ["--ws", "websockets-sansio", "--ws-per-message-deflate", "false", "--lifespan", "off"]
    args += ["--log-level", "warning", "--no-access-log", app]
    return _server_command(ctx, name, [procs.PYTHON, "-m", "uvicorn", *args])


def granian_command(ctx: Context, name: str, port: int, app: str) -> list[str]:
    # One worker, one runtime thread (single-threaded runtime), the asyncio loop
    # like the other rows. granian has no WebSocket message-size cap and no
    # server pings to set (docs/deployment.md): measured, not deployed.
    args = ["--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    args += ["--runtime-mode", "st", "--runtime-threads", "1", "--loop", "asyncio", "--log-level", "warning"]
    args += ["--no-access-log", app]
    return _server_command(ctx, name, [procs.PYTHON, "-m", "granian", *args])


class Naive(Target):
    name = "naive"
    protocol = "naive"
    needs_redis = True

    def start(self, ctx: Context, rooms: list[str], users: int = 1) -> Server:
        redis = procs.Redis(core=ctx.redis_core, workdir=ctx.workdir).start()
        port = procs.free_port()
        env = {
            "DJANGO_SETTINGS_MODULE": "bench.naive.settings",
            "BENCH_REDIS_URL": redis.url,
            "OPENAI_BASE_URL": ctx.openai_base_url,
        }
        proc = procs.spawn(
            daphne_command(ctx, self.name, port, "bench.naive.asgi:application"),
            core=ctx.server_core,
            env=env,
            log_path=ctx.workdir / f"{self.name}.log",
        )
        try:
            procs.wait_port(port, proc)
        except Exception:
            procs.stop(proc)
            redis.stop()
            raise
        return Server(
            self.name, self.protocol, port, proc, "/ws/chat/{room}/", redis=redis, headers=[_origin_headers(port)]
        )


def targets_all() -> dict[str, Target]:
    from bench.ours import Ours

    return {
        "ceiling": Ceiling(),
        "naive": Naive(),
        "ours": Ours("ours", layer="pubsub"),
        "ours-core": Ours("ours-core", layer="core"),
        "ours-uvicorn": Ours("ours-uvicorn", layer="pubsub", server="uvicorn"),
        "ours-granian": Ours("ours-granian", layer="pubsub", server="granian"),
    }


SERVER_ROWS = {"daphne": "ours", "uvicorn": "ours-uvicorn", "granian": "ours-granian"}


def default_server() -> str:
    """The ASGI server docker-compose.yml (and so `make stack`) runs unless told otherwise."""
    import re

    for path in (procs.REPO / "docker-compose.yml", procs.REPO / "deploy" / "entrypoint.sh"):
        try:
            found = re.search(r"ASGI_SERVER:-([a-z]+)", path.read_text())
        except OSError:
            continue
        if found:
            return found[1]
    return "daphne"


def default_row() -> str:
    """The row of the default server ("ours" for daphne, "ours-uvicorn" for uvicorn)."""
    return SERVER_ROWS.get(default_server(), "ours")
