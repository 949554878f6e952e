"""A TCP forwarder to put between the servers and a dependency, to break it on cue.

Runs its own event loop in a thread of the test process, so it keeps relaying
while a test's loop waits. Modes:

- ``pass``: bytes flow both ways.
- ``cut``: every open connection is reset and new ones are refused at once
  (accepted and closed): a database that crashed, a network partition the
  kernel reports.
- ``hang``: connections stay open and new ones are accepted, but nothing is
  relayed either way: a frozen server, a network that silently drops packets.
  Nothing on the client's side times out by itself.

    with Forwarder(target_port=5432) as fwd:
        url = f"postgres://postgres@127.0.0.1:{fwd.port}/test"
        fwd.cut(); ...; fwd.restore()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading


class Forwarder:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._resume = asyncio.Event()
        self._thread = threading.Thread(target=self.loop.run_forever, name="forwarder", daemon=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]

    def __enter__(self) -> Forwarder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- control, from the test's thread -------------------------------------------

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close_all(listening=True), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set("cut"), self.loop).result(5)

    def hang(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set("hang"), self.loop).result(5)

    def restore(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set("pass"), self.loop).result(5)

    @property
    def connections(self) -> int:
        return len(self._pairs)

    # --- the loop's side -------------------------------------------------------------

    async def _listen(self) -> None:
        self._resume.set()
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _set(self, mode: str) -> None:
        self.mode = mode
        if mode == "pass":
            self._resume.set()
            return
        self._resume.clear()
        if mode == "cut":
            await self._close_all(listening=False)

    async def _close_all(self, listening: bool) -> None:
        for client, upstream in list(self._pairs):
            for writer in (client, upstream):
                _reset(writer)
        self._pairs.clear()
        if listening and self._server is not None:
            self._server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer, pair)),
            asyncio.ensure_future(self._pipe(up_reader, writer, pair)),
        ]
        try:
            # Either side closing ends both: a client that gave up must not leave
            # its server connection open (and the other way round).
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            self._pairs.discard(pair)
            for w in pair:
                _reset(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: object) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ConnectionError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                # While hanging, hold what came in until the mode changes.
                await self._resume.wait()
                if pair not in self._pairs:
                    break
                writer.write(data)
                await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST (SO_LINGER 0), as a crashed peer would."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(Exception):
        writer.close()
