"""A minimal, fast WebSocket client for the load generator.

The `websockets` client costs tens of microseconds per received frame, which at
70k deliveries/s would make the client, not the server, the bottleneck. This
client is an `asyncio.Protocol` that parses the server's unmasked frames in a
tight loop and hands each payload (bytes) and the chunk's arrival time to a
callback. It answers pings and close frames; it never compresses.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable

FrameHandler = Callable[["WSClient", bytes, int], None]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def frame_encode(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.3: clients must mask)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    mask = os.urandom(4)
    if length:
        repeated = (mask * (length // 4 + 1))[:length]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
    else:
        masked = b""
    return header + mask + masked


class WSClient(asyncio.Protocol):
    """One client socket. `opened` resolves on 101, `closed` when the TCP connection ends."""

    __slots__ = (
        "buf",
        "close_code",
        "closed",
        "frames",
        "handshake",
        "index",
        "info",
        "is_open",
        "on_frame",
        "opened",
        "partial",
        "transport",
    )

    def __init__(self, index: int, handshake: bytes, on_frame: FrameHandler) -> None:
        loop = asyncio.get_running_loop()
        self.index = index
        self.handshake = handshake
        self.on_frame = on_frame
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.partial = bytearray()
        self.is_open = False
        self.close_code: int | None = None
        self.frames = 0
        self.info: object = None  # the scenario's own bookkeeping

    # -- asyncio.Protocol ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.handshake)

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_open = False
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during handshake: {exc!r}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    def data_received(self, data: bytes) -> None:
        if self.opened.done() and not self.is_open:
            return  # refused or closed: nothing more to parse
        now = time.monotonic_ns() // 1000
        buf = self.buf
        buf += data
        if not self.is_open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status:
                # Refused (e.g. 503 under a storm): fail once, ignore whatever else arrives.
                buf.clear()
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(status.decode("latin-1")))
                self.transport.close()
                return
            self.is_open = True
            self.opened.set_result(None)
        self.frames_parse(now)

    # -- frames ------------------------------------------------------------
    def frames_parse(self, now: int) -> None:
        buf = self.buf
        size = len(buf)
        pos = 0
        while size - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > size:
                break
            payload = bytes(buf[pos + head : end])
            pos = end
            opcode = b0 & 0x0F
            if opcode in (OP_TEXT, OP_BINARY):
                if b0 & 0x80:
                    self.frames += 1
                    self.on_frame(self, payload, now)
                else:
                    self.partial = bytearray(payload)
            elif opcode == OP_CONT:
                self.partial += payload
                if b0 & 0x80:
                    self.frames += 1
                    self.on_frame(self, bytes(self.partial), now)
                    self.partial = bytearray()
            elif opcode == OP_PING:
                self.transport.write(frame_encode(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if self.is_open:
                    self.is_open = False
                    self.transport.write(frame_encode(OP_CLOSE, payload[:2]))
                self.transport.close()
                break
        del buf[:pos]

    def send_text(self, text: str) -> None:
        if self.is_open:
            self.transport.write(frame_encode(OP_TEXT, text.encode()))

    def close(self) -> None:
        if self.transport is None:
            return
        if self.is_open:
            self.is_open = False
            self.transport.write(frame_encode(OP_CLOSE, (1000).to_bytes(2, "big")))
        # The server closes TCP after the closing handshake; don't wait for it forever.
        asyncio.get_running_loop().call_later(2.0, self.transport.abort)


def handshake_build(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


HANDSHAKE_TIMEOUT = 30.0


async def ws_connect(
    index: int, host: str, port: int, path: str, headers: dict[str, str], on_frame: FrameHandler
) -> WSClient:
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(
            lambda: WSClient(index, handshake_build(host, port, path, headers), on_frame), host, port
        ),
        HANDSHAKE_TIMEOUT,
    )
    await asyncio.wait_for(client.opened, HANDSHAKE_TIMEOUT)
    return client
