"""The model provider: the only module that imports ``openai``.

``provider_get(endpoint)`` returns an OpenAI-compatible streaming provider for
an endpoint with an API key or a base URL (OpenAI, Ollama, vLLM, LM
Studio...), else a built-in demo provider that needs no network. Each room
assistant has its endpoint (``Endpoint``); the default one comes from
``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``.

``Provider.stream(request)`` is an async generator of ``Delta`` items followed by
exactly one ``Finished``; failures raise ``ProviderError`` whose ``reason`` is
safe to show users. Consume it with ``contextlib.aclosing`` so that breaking
out early closes the upstream HTTP stream at once rather than at garbage
collection::

    async with contextlib.aclosing(provider_get().stream(request)) as items:
        async for item in items:
            ...
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import openai
from django.conf import settings

logger = logging.getLogger(__name__)

# Local servers (Ollama, vLLM) ignore the key, but the SDK insists on one.
PLACEHOLDER_API_KEY = "not-needed"
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEMO_LABEL = "*(demo reply — no model is configured; set OPENAI_API_KEY or OPENAI_BASE_URL)*"
DEMO_GIST_CHARS = 160


@dataclass(frozen=True)
class Endpoint:
    """Where an assistant's model is served, and the key for it (never logged)."""

    api_key: str = ""
    base_url: str | None = None

    def __repr__(self) -> str:
        return f"Endpoint(base_url={self.base_url!r}, api_key={'***' if self.api_key else ''!r})"

    @property
    def configured(self) -> bool:
        return bool(self.api_key or self.base_url)


def endpoint_default() -> Endpoint:
    return Endpoint(api_key=settings.OPENAI_API_KEY, base_url=settings.OPENAI_BASE_URL)


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    model: str
    temperature: float | None = None
    max_tokens: int | None = None
    endpoint: Endpoint | None = None


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: str | None
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None


ERROR_REASONS = {
    "rate_limited": "The model provider is rate limiting us; try again in a minute.",
    "timeout": "The model provider took too long to answer; try again.",
    "connection": "The connection to the model provider failed or was lost; try again.",
    "auth": "The model provider rejected the assistant's API key; an administrator must fix it.",
    "model_not_found": "The model provider does not know the model {model!r}; check the room's model.",
    "bad_request": "The model provider refused the request (the conversation may be too long).",
    "upstream": "The model provider had an internal error; try again shortly.",
}


class ProviderError(Exception):
    """A failed reply, described by a code and a sentence fit for users.

    It never carries the API key, the upstream response body or the SDK's
    exception (raised ``from None``), so logging it cannot leak them.
    """

    def __init__(self, code: str, reason: str | None = None, *, status: int | None = None) -> None:
        self.code = code
        self.reason = reason or ERROR_REASONS.get(code, ERROR_REASONS["upstream"]).format(model="?")
        self.status = status
        super().__init__(self.reason)

    def __str__(self) -> str:
        return self.reason


class Provider(Protocol):
    name: str

    def stream(self, request: ChatRequest) -> AsyncIterator[Delta | Finished]: ...


# --- OpenAI-compatible provider -----------------------------------------------

_ClientKey = tuple[str, str, float, float, int]


@dataclass
class _LoopClients:
    # One client per endpoint and settings (its connection pool is reused).
    clients: dict[_ClientKey, openai.AsyncOpenAI]


# One set of clients per event loop: a client's connection pool is bound to the
# loop that first used it. Weak keys let a closed, collected loop take them along.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = weakref.WeakKeyDictionary()


def _client_key(endpoint: Endpoint) -> _ClientKey:
    return (
        endpoint.api_key or PLACEHOLDER_API_KEY,
        endpoint.base_url or OPENAI_DEFAULT_BASE_URL,
        float(settings.ASSISTANT_TIMEOUT_SECONDS),
        float(settings.ASSISTANT_CONNECT_TIMEOUT_SECONDS),
        int(settings.ASSISTANT_MAX_RETRIES),
    )


def client_get(endpoint: Endpoint | None = None) -> openai.AsyncOpenAI:
    """This event loop's client for ``endpoint`` (the default one if None).

    Clients of older settings stay open (replies may still stream on them)
    until client_close()."""
    loop = asyncio.get_running_loop()
    key = _client_key(endpoint or endpoint_default())
    cached = _clients.setdefault(loop, _LoopClients({}))
    client = cached.clients.get(key)
    if client is not None:
        return client
    api_key, base_url, read_timeout, connect_timeout, max_retries = key
    client = openai.AsyncOpenAI(
        api_key=api_key,
        # Always explicit, so the SDK never falls back to reading the environment.
        base_url=base_url,
        max_retries=max_retries,
        timeout=openai.Timeout(read_timeout, connect=connect_timeout),
    )
    cached.clients[key] = client
    return client


async def client_close() -> None:
    """Close this event loop's clients, if any (shutdown, tests)."""
    cached = _clients.pop(asyncio.get_running_loop(), None)
    if cached is not None:
        for client in cached.clients.values():
            await client.close()


def _error_code(exc: BaseException) -> str:
    # Order matters: APITimeoutError is an APIConnectionError.
    if isinstance(exc, openai.RateLimitError):
        return "rate_limited"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return "auth"
    if isinstance(exc, openai.NotFoundError):
        return "model_not_found"
    if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
        return "bad_request"
    return "upstream"


def provider_error(exc: BaseException, model: str, *, started: bool) -> ProviderError:
    """Translate an SDK failure; logs the code and HTTP status, never the body."""
    code = _error_code(exc)
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    logger.warning(
        "model provider failed: code=%s status=%s model=%s mid_stream=%s",
        code,
        status,
        model,
        started,
    )
    return ProviderError(code, ERROR_REASONS[code].format(model=model), status=status)


class OpenAIProvider:
    """Streams chat completions from any OpenAI-compatible server."""

    name = "openai"

    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta | Finished]:
        client = client_get(request.endpoint)
        options: dict[str, Any] = {}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.max_tokens is not None:
            options["max_tokens"] = request.max_tokens
        try:
            # The SDK retries connection errors, 408/409/429/5xx here, before any
            # token has arrived; once streaming, a failure is final.
            upstream = await client.chat.completions.create(
                model=request.model,
                messages=request.messages,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
                **options,
            )
        except (openai.OpenAIError, ValueError) as exc:
            raise provider_error(exc, request.model, started=False) from None

        finish_reason: str | None = None
        model = request.model
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        started = False
        try:
            async for chunk in upstream:
                if chunk.model:
                    model = chunk.model
                if chunk.usage is not None:
                    prompt_tokens = chunk.usage.prompt_tokens
                    completion_tokens = chunk.usage.completion_tokens
                # The usage chunk has no choices; n=1 means only index 0 matters.
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
                    delta = choice.delta
                    text = (delta.content or "") if delta is not None else ""
                    refusal = getattr(delta, "refusal", None) if delta is not None else None
                    if not text and isinstance(refusal, str):
                        text = refusal
                    if text:
                        started = True
                        yield Delta(text)
        except (openai.OpenAIError, ValueError) as exc:
            # ValueError: a malformed SSE payload (JSON that does not parse).
            raise provider_error(exc, request.model, started=started) from None
        finally:
            # Every exit (end, error, aclose, cancellation) releases the connection;
            # shielded so a second cancellation cannot interrupt the close.
            await asyncio.shield(upstream.close())
        yield Finished(
            finish_reason=finish_reason,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )


# --- Demo provider ----------------------------------------------------------------

_PIECE_RE = re.compile(r"\s*\S+|\s+")


def _demo_gist(messages: list[dict[str, str]]) -> str:
    last = next(
        (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"),
        "",
    )
    # The room's context prefixes each message with its author ("ben: @assistant
    # hi"); the person asked "hi".
    gist = re.sub(r"^[\w.@+-]+: ", "", " ".join(str(last).split()))
    gist = re.sub(r"^(@[\w.@+-]+[,:]?\s*)+", "", gist)
    if len(gist) > DEMO_GIST_CHARS:
        gist = gist[: DEMO_GIST_CHARS - 1].rstrip() + "…"
    return gist or "(nothing)"


def demo_text(messages: list[dict[str, str]]) -> str:
    """The demo reply to a conversation: labelled, echoing the last user message."""
    return (
        f"{DEMO_LABEL}\n\n"
        "Hi! I'm the built-in demo assistant. You said:\n\n"
        f"> {_demo_gist(messages)}\n\n"
        "A real model would answer here. Everyone in the room sees this reply "
        "**stream in** word by word, and anyone can press *Stop*.\n\n"
        "- Markdown renders: **bold**, *italic*, `code`\n"
        "- Point `OPENAI_BASE_URL` at Ollama or vLLM, or set `OPENAI_API_KEY`\n\n"
        '```python\nprint("hello, room")\n```\n'
    )


class DemoProvider:
    """A network-free stand-in so a fresh checkout shows the whole flow."""

    name = "demo"

    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta | Finished]:
        pieces = _PIECE_RE.findall(demo_text(request.messages))
        delay = max(0, settings.ASSISTANT_DEMO_DELAY_MS) / 1000
        for index, piece in enumerate(pieces):
            if index:
                await asyncio.sleep(delay)
            yield Delta(piece)
        prompt_chars = sum(len(str(m.get("content", ""))) for m in request.messages)
        yield Finished(
            finish_reason="stop",
            model="demo",
            prompt_tokens=prompt_chars // 4 + 1,
            completion_tokens=len(pieces),
        )


def provider_get(endpoint: Endpoint | None = None) -> Provider:
    """The provider for ``endpoint`` (the default one if None): OpenAI-compatible
    when it has a key or a base URL, else the demo."""
    if (endpoint or endpoint_default()).configured:
        return OpenAIProvider()
    return DemoProvider()
