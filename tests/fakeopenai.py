"""A local server that speaks the OpenAI Chat Completions streaming wire format.

It is real HTTP/1.1 on a real socket (hand-written on ``asyncio.start_server``,
keep-alive, chunked transfer encoding, SSE ``data:`` lines, ``data: [DONE]``),
so the real ``openai`` SDK and its HTTP stack are exercised end to end. It
serves many concurrent streams from one event loop and notices clients that go
away mid-stream (it watches the socket for EOF while writing).

In-process use (tests)::

    with FakeOpenAI(api_key="sk-test") as fake:
        ...  # point the SDK at fake.base_url (ends in /v1)
        fake.requests       # JSON bodies received, in order (a copy; thread-safe)
        fake.open_streams   # streams being written right now
        fake.disconnects    # streams whose client went away before the end
        fake.completed      # streams written to the end ([DONE] sent)

As a process (integration tests, benchmarks)::

    python -m tests.fakeopenai --port 0 [--host 127.0.0.1] [--tokens-per-second 60] [--api-key KEY]

Once listening it prints exactly one line to stdout, the port number (so
``--port 0`` is usable), and nothing else to stdout; logs go to stderr. It runs
until SIGINT/SIGTERM. Inspect it over HTTP: ``GET /_requests`` (the JSON list
of received request bodies), ``GET /_stats`` (``open_streams``, ``disconnects``,
``completed``, ``requests``), ``POST /_reset`` (clear all of those).

Behaviour is scripted by markers in the content of the LAST user message:

- (none): a deterministic reply, ``Hello from the fake model. You said: <first
  40 characters of the last user message> — héllo wörld 🙂 — 日本語``, in
  small pieces after a role-only first chunk, ``finish_reason`` ``stop``, then
  (with ``stream_options.include_usage``) a usage chunk with ``choices: []``.
  Events carrying non-ASCII text are written as two HTTP chunks split inside a
  UTF-8 character, so the client's decoder must join bytes across reads.
- ``[[slow-first]]`` (or ``[[slow-first=S]]``): headers at once, then ~1.5 s
  (S s) before the first chunk.
- ``[[429]]`` / ``[[500]]``: that HTTP status with an OpenAI-style JSON error
  body, on every attempt. ``[[429-once]]`` / ``[[500-once]]``: only the first
  request with this exact last-user-message content fails; the retry succeeds.
  Error responses carry ``Retry-After: 0`` and ``retry-after-ms: 10`` so the
  SDK's own retries are quick.
- ``[[cut]]`` (or ``[[cut=N]]``): N (default 3) content chunks, then the TCP
  connection is closed without the terminating chunk or ``[DONE]``.
- ``[[long]]``: 400 tokens at 20 tokens/s (for cancel tests).
- ``[[length]]`` / ``[[filter]]``: ``finish_reason`` ``length`` / ``content_filter``.
- ``[[no-finish]]``: ``[DONE]`` without any ``finish_reason``.
- ``[[tokens=N]]``, ``[[tps=R]]``: N word tokens at R tokens/s (R=0: no pacing).
  The default rate is the server's ``tokens_per_second``.
- ``[[echo-context]]``: the reply is one ``role: content`` line per message
  received, in order.
- ``[[vary]]``: the default reply ends with `` (take N)``, N counting the
  requests with this exact last user message (a regenerated reply differs).

Other rules: a bearer token other than ``api_key`` (when one is set) gets 401
``invalid_api_key``; model ``missing-model`` gets 404 ``model_not_found``; a
request without ``"stream": true`` gets 400. A model ending in ``-latest`` is
reported as a dated snapshot (``-2025-01-01``), as OpenAI reports aliases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

logger = logging.getLogger("tests.fakeopenai")

DEFAULT_TOKENS_PER_SECOND = 200.0
DEFAULT_REPLY_HEAD = "Hello from the fake model. You said: "
# Hand-split so multi-byte characters sit at piece boundaries.
DEFAULT_REPLY_TAIL = [" —", " hé", "llo", " wö", "rld", " 🙂", " —", " 日本", "語"]
SLOW_FIRST_SECONDS = 1.5
LONG_TOKENS = 400
LONG_TPS = 20.0
CUT_AFTER = 3
WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"]
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024

_MARKER_RE = re.compile(r"\[\[([a-z0-9-]+)(?:=([0-9]+(?:\.[0-9]+)?))?\]\]")
_PIECE_RE = re.compile(r"\s*\S{1,4}|\s+")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


class _BadHTTP(Exception):
    """The client sent something that is not HTTP/1.1 we understand."""


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Failure:
    status: int
    error_type: str
    code: str | None
    message: str


@dataclass
class _Plan:
    """What one streamed response will contain and how fast."""

    model: str
    pieces: list[str]
    finish_reason: str | None = "stop"
    include_usage: bool = False
    first_delay: float = 0.0
    token_delay: float = 0.0
    cut_after: int | None = None
    split_bytes: bool = False
    prompt_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _content_text(content: Any) -> str:
    """A message's text, whether content is a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _markers(text: str) -> dict[str, str]:
    return {match.group(1): match.group(2) or "" for match in _MARKER_RE.finditer(text)}


def default_reply(last_user_text: str) -> str:
    """The text of the default scripted reply to this last user message."""
    return DEFAULT_REPLY_HEAD + last_user_text[:40] + "".join(DEFAULT_REPLY_TAIL)


def pieces_split(text: str) -> list[str]:
    """Split text into small token-like pieces whose concatenation is the text."""
    return _PIECE_RE.findall(text)


def _error_body(failure: _Failure) -> bytes:
    error = {
        "message": failure.message,
        "type": failure.error_type,
        "param": None,
        "code": failure.code,
    }
    return json.dumps({"error": error}).encode()


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _utf8_split_point(data: bytes) -> int | None:
    """An index inside the first multi-byte UTF-8 character, or None."""
    for index, byte in enumerate(data):
        if byte >= 0xC0:
            return index + 1
    return None


class FakeServer:
    """The server itself; runs on whatever event loop calls ``start``."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        tokens_per_second: float = DEFAULT_TOKENS_PER_SECOND,
    ) -> None:
        self.api_key = api_key
        self.tokens_per_second = tokens_per_second
        self.open_streams = 0
        self.disconnects = 0
        self.completed = 0
        self.port = 0
        self._requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._failed_once: set[tuple[str, str]] = set()
        self._takes: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # --- inspection (safe from any thread) ---------------------------------

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests)

    def stats(self) -> dict[str, int]:
        with self._lock:
            count = len(self._requests)
        return {
            "open_streams": self.open_streams,
            "disconnects": self.disconnects,
            "completed": self.completed,
            "requests": count,
        }

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._failed_once.clear()
            self._takes.clear()
        self.disconnects = 0
        self.completed = 0

    # --- lifecycle ------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._connection_handle, host, port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("fake OpenAI server listening on %s:%d", host, self.port)
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # --- HTTP ------------------------------------------------------------------

    async def _connection_handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = _Connection(reader, writer)
        try:
            while True:
                request = await conn.request_read()
                if request is None:
                    break
                if not await self._request_dispatch(conn, request):
                    break
        except _BadHTTP as exc:
            logger.info("bad HTTP from client: %s", exc)
            with contextlib.suppress(ConnectionError):
                await conn.json_respond(
                    400,
                    {"error": {"message": str(exc), "type": "invalid_request_error"}},
                    False,
                )
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Server shutdown. Ending normally matters: asyncio's stream callback
            # logs an error for a connection task that ends cancelled.
            pass
        finally:
            conn.close()
            self._connections.discard(task)

    async def _request_dispatch(self, conn: _Connection, request: _Request) -> bool:
        """Answer one request; return whether the connection stays open."""
        path = request.path.split("?", 1)[0]
        if request.method == "GET" and path == "/_requests":
            return await conn.json_respond(200, self.requests)
        if request.method == "GET" and path == "/_stats":
            return await conn.json_respond(200, self.stats())
        if request.method == "POST" and path == "/_reset":
            self.reset()
            return await conn.json_respond(200, self.stats())
        if request.method == "GET" and path == "/v1/models":
            models = [
                {
                    "id": "fake-model",
                    "object": "model",
                    "created": 0,
                    "owned_by": "fake",
                }
            ]
            return await conn.json_respond(200, {"object": "list", "data": models})
        if path != "/v1/chat/completions":
            return await self._failure_respond(conn, _Failure(404, "invalid_request_error", None, "Unknown path."))
        if request.method != "POST":
            return await self._failure_respond(conn, _Failure(405, "invalid_request_error", None, "Use POST."))

        failure = self._auth_check(request)
        if failure is not None:
            return await self._failure_respond(conn, failure)
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            failure = _Failure(
                400,
                "invalid_request_error",
                None,
                "We could not parse the JSON body of your request.",
            )
            return await self._failure_respond(conn, failure)
        with self._lock:
            self._requests.append(body)

        outcome = self._plan_make(body)
        if isinstance(outcome, _Failure):
            return await self._failure_respond(conn, outcome)
        return await self._stream(conn, outcome)

    def _auth_check(self, request: _Request) -> _Failure | None:
        if self.api_key is None:
            return None
        if request.headers.get("authorization", "") == f"Bearer {self.api_key}":
            return None
        message = (
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
        )
        return _Failure(401, "invalid_request_error", "invalid_api_key", message)

    async def _failure_respond(self, conn: _Connection, failure: _Failure) -> bool:
        headers = {"retry-after": "0", "retry-after-ms": "10"} if failure.status in (429, 500) else {}
        return await conn.raw_respond(failure.status, _error_body(failure), headers)

    def _plan_make(self, body: dict[str, Any]) -> _Plan | _Failure:
        messages = body.get("messages")
        model = body.get("model")
        if not isinstance(messages, list) or not isinstance(model, str):
            return _Failure(
                400,
                "invalid_request_error",
                None,
                "'model' and 'messages' are required.",
            )
        if body.get("stream") is not True:
            return _Failure(
                400,
                "invalid_request_error",
                None,
                "This fake server only answers streaming requests.",
            )
        if model == "missing-model":
            message = f"The model `{model}` does not exist or you do not have access to it."
            return _Failure(404, "invalid_request_error", "model_not_found", message)

        last = _last_user_text(messages)
        marks = _markers(last)
        for status in ("429", "500"):
            failure = self._status_failure(int(status))
            if status in marks:
                return failure
            if f"{status}-once" in marks:
                key = (status, last)
                with self._lock:
                    first_time = key not in self._failed_once
                    self._failed_once.add(key)
                if first_time:
                    return failure

        stream_options = body.get("stream_options") or {}
        tps = self.tokens_per_second
        plan = _Plan(
            model=model,
            pieces=[],
            include_usage=bool(stream_options.get("include_usage")),
        )
        if model.endswith("-latest"):
            plan.model = model.removesuffix("-latest") + "-2025-01-01"
        if "echo-context" in marks:
            lines = [f"{m.get('role')}: {_content_text(m.get('content'))}" for m in messages if isinstance(m, dict)]
            plan.pieces = pieces_split("\n".join(lines))
        elif "long" in marks or "tokens" in marks:
            count = int(float(marks.get("tokens") or LONG_TOKENS))
            if "long" in marks:
                tps = LONG_TPS
            plan.pieces = [("" if i == 0 else " ") + WORDS[i % len(WORDS)] for i in range(count)]
        else:
            plan.pieces = pieces_split(DEFAULT_REPLY_HEAD + last[:40]) + DEFAULT_REPLY_TAIL
            plan.split_bytes = True
            if "vary" in marks:
                with self._lock:
                    take = self._takes[last] = self._takes.get(last, 0) + 1
                plan.pieces.append(f" (take {take})")
        if "tps" in marks:
            tps = float(marks["tps"] or 0)
        plan.token_delay = 1.0 / tps if tps > 0 else 0.0
        if "slow-first" in marks:
            plan.first_delay = float(marks["slow-first"] or SLOW_FIRST_SECONDS)
        if "cut" in marks:
            plan.cut_after = int(float(marks["cut"] or CUT_AFTER))
        if "length" in marks:
            plan.finish_reason = "length"
        elif "filter" in marks:
            plan.finish_reason = "content_filter"
        elif "no-finish" in marks:
            plan.finish_reason = None
        plan.prompt_tokens = sum(len(_content_text(m.get("content"))) // 4 + 4 for m in messages if isinstance(m, dict))
        return plan

    @staticmethod
    def _status_failure(status: int) -> _Failure:
        if status == 429:
            message = "Rate limit reached for requests (fake upstream body 429). Please try again in 0s."
            return _Failure(429, "requests", "rate_limit_exceeded", message)
        return _Failure(
            500,
            "server_error",
            None,
            "The server had an error (fake upstream body 500).",
        )

    async def _stream(self, conn: _Connection, plan: _Plan) -> bool:
        """Write one SSE response while watching for the client going away."""
        self.open_streams += 1
        writer_task = asyncio.create_task(self._stream_write(conn, plan))
        try:
            while True:
                watch = conn.watch_start()
                if watch is None:  # the client had already half-closed
                    await writer_task
                    return False
                done, _ = await asyncio.wait({writer_task, watch}, return_when=asyncio.FIRST_COMPLETED)
                if writer_task in done:
                    break
                if not conn.watch_collect():
                    writer_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                        await writer_task
                    self.disconnects += 1
                    return False
            try:
                keep_alive = writer_task.result()
            except ConnectionError:
                self.disconnects += 1
                return False
            if keep_alive:
                self.completed += 1
            return keep_alive
        finally:
            self.open_streams -= 1
            if not writer_task.done():
                writer_task.cancel()

    async def _stream_write(self, conn: _Connection, plan: _Plan) -> bool:
        writer = conn.writer
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        headers = [
            "HTTP/1.1 200 OK",
            "Content-Type: text/event-stream; charset=utf-8",
            "Transfer-Encoding: chunked",
            "Cache-Control: no-cache",
            f"x-request-id: req_{uuid.uuid4().hex}",
            "openai-processing-ms: 1",
        ]
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode())
        await writer.drain()
        if plan.first_delay:
            await asyncio.sleep(plan.first_delay)

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            payload: dict[str, Any] = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": plan.model,
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
            }
            if plan.include_usage:
                payload["usage"] = None
            return payload

        await self._event_write(
            writer,
            _sse(chunk({"role": "assistant", "content": "", "refusal": None}, None)),
            plan,
        )
        for index, piece in enumerate(plan.pieces):
            if plan.cut_after is not None and index >= plan.cut_after:
                # Drop the connection: no terminating chunk, no [DONE].
                writer.close()
                return False
            if index and plan.token_delay:
                await asyncio.sleep(plan.token_delay)
            await self._event_write(writer, _sse(chunk({"content": piece}, None)), plan)
        tail = _sse(chunk({}, plan.finish_reason)) if plan.finish_reason else b""
        if plan.include_usage:
            completion_tokens = len(plan.pieces)
            usage = {
                "prompt_tokens": plan.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": plan.prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            }
            usage_chunk = chunk({}, None) | {"choices": [], "usage": usage}
            tail += _sse(usage_chunk)
        tail += _sse("[DONE]")
        writer.write(_http_chunk(tail) + b"0\r\n\r\n")
        await writer.drain()
        return True

    @staticmethod
    async def _event_write(writer: asyncio.StreamWriter, event: bytes, plan: _Plan) -> None:
        split = _utf8_split_point(event) if plan.split_bytes else None
        if split is None:
            writer.write(_http_chunk(event))
        else:
            # Two HTTP chunks, two TCP writes, the cut inside a UTF-8 character.
            writer.write(_http_chunk(event[:split]))
            await writer.drain()
            await asyncio.sleep(0.002)
            writer.write(_http_chunk(event[split:]))
        await writer.drain()


class _Connection:
    """One client connection: buffered request parsing plus an EOF watcher."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.eof = False
        self.watch: asyncio.Future[bytes] | None = None

    def watch_start(self) -> asyncio.Future[bytes] | None:
        """A pending read whose completion means data or EOF from the client."""
        if self.eof:
            return None
        if self.watch is None:
            self.watch = asyncio.ensure_future(self.reader.read(65536))
        return self.watch

    def watch_collect(self) -> bool:
        """Take a finished watch's data into the buffer; False on EOF or error."""
        assert self.watch is not None and self.watch.done()
        watch, self.watch = self.watch, None
        if watch.cancelled() or watch.exception() is not None:
            self.eof = True
            return False
        data = watch.result()
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def _fill(self) -> None:
        watch = self.watch_start()
        if watch is None:
            return
        await asyncio.wait({watch})
        self.watch_collect()

    async def request_read(self) -> _Request | None:
        while b"\r\n\r\n" not in self.buffer:
            if self.eof:
                return None
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise _BadHTTP("request head too large")
            await self._fill()
        head, _, _ = bytes(self.buffer).partition(b"\r\n\r\n")
        del self.buffer[: len(head) + 4]
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, path, _version = lines[0].split(" ", 2)
        except ValueError:
            raise _BadHTTP("malformed request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _BadHTTP("chunked request bodies are not supported")
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY_BYTES:
            raise _BadHTTP("request body too large")
        while len(self.buffer) < length:
            if self.eof:
                return None
            await self._fill()
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return _Request(method, path, headers, body)

    async def raw_respond(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> bool:
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            f"x-request-id: req_{uuid.uuid4().hex}",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        return True

    async def json_respond(self, status: int, payload: Any, keep_alive: bool = True) -> bool:
        await self.raw_respond(status, json.dumps(payload).encode())
        return keep_alive

    def close(self) -> None:
        if self.watch is not None:
            self.watch.cancel()
        self.writer.close()


class FakeOpenAI:
    """The fake server on a background thread with its own event loop."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        tokens_per_second: float = DEFAULT_TOKENS_PER_SECOND,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.server = FakeServer(api_key=api_key, tokens_per_second=tokens_per_second)
        self.host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.server.start(self.host, self._port))
            except (OSError, RuntimeError) as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self.server.close(), self._loop)
        future.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = None
        self._thread = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.server.port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.server.requests

    @property
    def open_streams(self) -> int:
        return self.server.open_streams

    @property
    def disconnects(self) -> int:
        return self.server.disconnects

    @property
    def completed(self) -> int:
        return self.server.completed

    def reset(self) -> None:
        self.server.reset()


def wait_until(predicate: Callable[[], bool], within: float = 10.0, interval: float = 0.02) -> bool:
    """Poll predicate until true or ``within`` seconds pass; return its last value."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)
    return True


async def async_wait_until(predicate: Callable[[], bool], within: float = 10.0, interval: float = 0.02) -> bool:
    """Like wait_until, but sleeps without blocking the event loop."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        await asyncio.sleep(interval)
    return True


async def _serve(host: str, port: int, tokens_per_second: float, api_key: str | None) -> None:
    server = FakeServer(api_key=api_key, tokens_per_second=tokens_per_second)
    bound = await server.start(host, port)
    # The one line of stdout: the port, for callers that asked for port 0.
    sys.stdout.write(f"{bound}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI Chat Completions streaming server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=60.0,
        help="default pacing; 0 = unpaced",
    )
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    asyncio.run(_serve(args.host, args.port, args.tokens_per_second, args.api_key))


if __name__ == "__main__":
    main()
