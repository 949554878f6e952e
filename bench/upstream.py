"""The upstream of S2: the project's fake OpenAI-wire server, stamping every token it emits.

``python -m bench.upstream --port 0 --tokens-per-second 60 --log PATH`` serves
exactly what ``tests.fakeopenai`` serves, and after each stream appends one JSON
line to PATH: the stream's key (the ``~step:room:time~`` marker found in the last
user message), the pieces it sent (the source text) and the monotonic time in µs
at which each content piece was handed to the socket. The load generator reads
it to compute relay overhead (emitted upstream → received by a member) and to
check that every member reassembled exactly the source.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import sys
import time
from typing import Any

from tests.fakeopenai import FakeServer, _last_user_text, _Plan

logger = logging.getLogger("bench.upstream")

KEY = re.compile(r"~\d+:\d+:\d+~")


class StampingServer(FakeServer):
    """FakeServer plus a per-stream log of emission times (hooks its plan and writes)."""

    def __init__(self, log_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log = open(log_path, "a", buffering=1)  # noqa: SIM115 - open for the server's life

    def _plan_make(self, body: dict[str, Any]) -> Any:
        plan = super()._plan_make(body)
        if isinstance(plan, _Plan):
            match = KEY.search(_last_user_text(body.get("messages") or []))
            plan.extra["key"] = match.group(0) if match else ""
            plan.extra["times"] = []
        return plan

    @staticmethod
    async def _event_write(writer: asyncio.StreamWriter, event: bytes, plan: _Plan) -> None:
        await FakeServer._event_write(writer, event, plan)
        if b'"role"' not in event and "times" in plan.extra:
            plan.extra["times"].append(time.monotonic_ns() // 1000)

    async def _stream(self, conn: Any, plan: _Plan) -> bool:
        try:
            return await super()._stream(conn, plan)
        finally:
            entry = {"key": plan.extra.get("key", ""), "pieces": plan.pieces, "times": plan.extra.get("times", [])}
            self.log.write(json.dumps(entry) + "\n")


async def serve(port: int, tokens_per_second: float, log_path: str) -> None:
    server = StampingServer(log_path, tokens_per_second=tokens_per_second)
    bound = await server.start("127.0.0.1", port)
    sys.stdout.write(f"{bound}\n")
    sys.stdout.flush()
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    await stop
    await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens-per-second", type=float, default=60.0)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.port, args.tokens_per_second, args.log))


if __name__ == "__main__":
    main()
