"""The model provider, driven through the real openai SDK against tests.fakeopenai.

Every test talks HTTP to a real local server (in a background thread, or a
separate process for the CLI test); nothing in the SDK is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from rooms.assistant import provider as llm
from rooms.assistant.provider import ChatRequest, Delta, Finished, ProviderError
from tests.fakeopenai import (
    DEFAULT_REPLY_TAIL,
    FakeOpenAI,
    async_wait_until,
    default_reply,
    pieces_split,
)

API_KEY = "sk-test-4f9a1c-SECRET-never-log-me"
MODEL = "fake-model"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=API_KEY) as server:
        yield server


@contextlib.asynccontextmanager
async def configured(fake: FakeOpenAI, **overrides: Any) -> AsyncIterator[None]:
    """Settings pointing the provider at the fake; closes this loop's client after."""
    values: dict[str, Any] = {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": fake.base_url,
        "ASSISTANT_TIMEOUT_SECONDS": 30.0,
        "ASSISTANT_CONNECT_TIMEOUT_SECONDS": 5.0,
        "ASSISTANT_MAX_RETRIES": 2,
    }
    values.update(overrides)
    with override_settings(**values):
        try:
            yield
        finally:
            await llm.client_close()


def request_for(text: str, model: str = MODEL, **options: Any) -> ChatRequest:
    messages = [
        {"role": "system", "content": "You are one participant in a multi-user room."},
        {"role": "user", "content": text},
    ]
    return ChatRequest(messages=messages, model=model, **options)


async def collect(request: ChatRequest) -> tuple[list[Delta], list[Finished]]:
    deltas: list[Delta] = []
    finished: list[Finished] = []
    async with contextlib.aclosing(llm.provider_get().stream(request)) as items:
        async for item in items:
            if isinstance(item, Delta):
                assert not finished, "no Delta may follow Finished"
                deltas.append(item)
            else:
                finished.append(item)
    return deltas, finished


async def collect_error(request: ChatRequest) -> tuple[list[Delta], ProviderError]:
    deltas: list[Delta] = []
    with pytest.raises(ProviderError) as info:
        async with contextlib.aclosing(llm.provider_get().stream(request)) as items:
            async for item in items:
                assert isinstance(item, Delta), "a failed stream must not finish"
                deltas.append(item)
    return deltas, info.value


def assert_clean(exc: ProviderError, caplog: pytest.LogCaptureFixture) -> None:
    """No key, no upstream body, no traceback in the error or in any log line."""
    assert str(exc) == exc.reason
    assert exc.__cause__ is None and exc.__suppress_context__
    for text in (str(exc), repr(exc), caplog.text):
        assert API_KEY not in text
        assert "fake upstream body" not in text
        assert "Incorrect API key provided" not in text
        assert "Traceback" not in text
    assert any(r.name == "rooms.assistant.provider" and r.levelno == logging.WARNING for r in caplog.records)


def capture_all_logs(caplog: pytest.LogCaptureFixture) -> None:
    """DEBUG everywhere, including the SDK and HTTP loggers settings quiet down."""
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx2", "httpcore2", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)


def requests_for(fake: FakeOpenAI, text: str) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["messages"][-1]["content"] == text]


# --- the fake itself, at the wire level -----------------------------------------------


def sse_events(fake: FakeOpenAI, body: dict[str, Any]) -> list[str]:
    """POST raw HTTP (no SDK) and return the SSE data payloads."""
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/event-stream")
    assert response.getheader("Transfer-Encoding") == "chunked"
    raw = response.read().decode("utf-8")
    conn.close()
    assert raw.endswith("\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(event.startswith("data: ") for event in events)
    return [event.removeprefix("data: ") for event in events]


def test_fake_speaks_the_openai_wire_format(fake: FakeOpenAI) -> None:
    text = "wire check"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = sse_events(fake, body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["id"] == chunks[0]["id"] and chunk["id"].startswith("chatcmpl-")
        assert chunk["model"] == MODEL and isinstance(chunk["created"], int)
    first, *content, final, usage = chunks
    assert first["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == default_reply(text)
    assert final["choices"][0]["delta"] == {} and final["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == len(content)
    assert usage["usage"]["total_tokens"] == (usage["usage"]["prompt_tokens"] + usage["usage"]["completion_tokens"])
    assert all(c["usage"] is None for c in chunks[:-1])

    # Without include_usage there is no usage chunk at all.
    events = sse_events(fake, body | {"stream_options": None})
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["choices"] for chunk in chunks)
    assert all("usage" not in chunk for chunk in chunks)


def test_fake_rejects_non_streaming_and_wrong_keys(fake: FakeOpenAI) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    conn.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {API_KEY}"})
    response = conn.getresponse()
    assert response.status == 400
    assert "error" in json.loads(response.read())
    conn.request("POST", "/v1/chat/completions", body, {"Authorization": "Bearer sk-wrong"})
    response = conn.getresponse()
    assert response.status == 401
    assert json.loads(response.read())["error"]["code"] == "invalid_api_key"
    conn.close()


def test_fake_runs_as_a_process() -> None:
    command = [sys.executable, "-m", "tests.fakeopenai", "--port", "0", "--tokens-per-second", "0"]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        try:
            assert process.stdout is not None
            port = int(process.stdout.readline())
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            body = {"model": MODEL, "messages": [{"role": "user", "content": "[[tokens=5]]"}], "stream": True}
            conn.request("POST", "/v1/chat/completions", json.dumps(body))
            response = conn.getresponse()
            raw = response.read().decode()
            assert response.status == 200 and raw.endswith("data: [DONE]\n\n")
            assert raw.count("data: ") == 5 + 3  # role chunk, 5 tokens, finish chunk, [DONE]
            conn.request("GET", "/_requests")
            assert json.loads(conn.getresponse().read()) == [body]
            conn.request("GET", "/_stats")
            stats = json.loads(conn.getresponse().read())
            assert stats == {"open_streams": 0, "disconnects": 0, "completed": 1, "requests": 1}
            conn.request("POST", "/_reset")
            assert json.loads(conn.getresponse().read())["requests"] == 0
            conn.close()
        finally:
            process.terminate()
    assert process.returncode is not None


# --- normal streams ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stream_text_usage_and_model(fake: FakeOpenAI) -> None:
    text = "@assistant what's up? ünïcödé 🙂 日本語 and more text after forty"
    async with configured(fake):
        provider = llm.provider_get()
        assert provider.name == "openai"
        deltas, finished = await collect(request_for(text, model="fake-latest"))

    # The role-only first chunk yields nothing; every piece arrives intact,
    # including UTF-8 characters the fake split across HTTP chunks.
    expected_pieces = pieces_split("Hello from the fake model. You said: " + text[:40])
    assert [d.text for d in deltas] == expected_pieces + DEFAULT_REPLY_TAIL
    assert "".join(d.text for d in deltas) == default_reply(text)
    assert len(finished) == 1
    done = finished[0]
    assert done.finish_reason == "stop"
    assert done.model == "fake-2025-01-01"  # as the server reported it
    assert done.completion_tokens == len(deltas)
    assert done.prompt_tokens is not None and done.prompt_tokens > 0

    [sent] = fake.requests
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "fake-latest"
    assert sent["messages"][-1] == {"role": "user", "content": text}
    assert "temperature" not in sent and "max_tokens" not in sent
    assert await async_wait_until(lambda: fake.completed == 1)
    assert fake.disconnects == 0


@pytest.mark.asyncio
async def test_options_are_sent_when_set(fake: FakeOpenAI) -> None:
    async with configured(fake):
        _, finished = await collect(request_for("options", temperature=0.2, max_tokens=77))
    assert finished[0].finish_reason == "stop"
    [sent] = fake.requests
    assert sent["temperature"] == 0.2
    assert sent["max_tokens"] == 77


@pytest.mark.asyncio
async def test_context_reaches_the_server_in_order(fake: FakeOpenAI) -> None:
    messages = [
        {"role": "system", "content": "You are the room assistant."},
        {"role": "user", "content": "alice: hi"},
        {"role": "assistant", "content": "Hello alice."},
        {"role": "user", "content": "bob: [[echo-context]] ça va?"},
    ]
    async with configured(fake):
        deltas, _ = await collect(ChatRequest(messages=messages, model=MODEL))
    assert "".join(d.text for d in deltas) == "\n".join(f"{m['role']}: {m['content']}" for m in messages)


@pytest.mark.asyncio
async def test_usage_only_chunk_and_missing_finish_reason(fake: FakeOpenAI) -> None:
    async with configured(fake):
        deltas, finished = await collect(request_for("[[no-finish]] ends without a reason"))
    assert deltas
    assert finished == [
        Finished(
            finish_reason=None,
            model=MODEL,
            prompt_tokens=finished[0].prompt_tokens,
            completion_tokens=len(deltas),
        )
    ]
    assert finished[0].prompt_tokens is not None


@pytest.mark.asyncio
@pytest.mark.parametrize(("marker", "reason"), [("[[length]]", "length"), ("[[filter]]", "content_filter")])
async def test_finish_reasons_are_passed_through(fake: FakeOpenAI, marker: str, reason: str) -> None:
    text = f"{marker} please"
    async with configured(fake):
        deltas, finished = await collect(request_for(text))
    assert "".join(d.text for d in deltas) == default_reply(text)
    assert [f.finish_reason for f in finished] == [reason]


@pytest.mark.asyncio
async def test_slow_first_token_still_arrives(fake: FakeOpenAI) -> None:
    text = "[[slow-first]] take your time"
    async with configured(fake):
        deltas, finished = await collect(request_for(text))
    assert "".join(d.text for d in deltas) == default_reply(text)
    assert finished[0].finish_reason == "stop"


@pytest.mark.asyncio
async def test_many_concurrent_streams(fake: FakeOpenAI) -> None:
    async with configured(fake):
        results = await asyncio.gather(
            *(collect(request_for(f"[[tokens=40]] [[tps=200]] stream {i}")) for i in range(100))
        )
    for deltas, finished in results:
        assert len(deltas) == 40
        assert [f.finish_reason for f in finished] == ["stop"]
    assert await async_wait_until(lambda: fake.completed == 100)
    assert fake.open_streams == 0 and fake.disconnects == 0


# --- faults -------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("marker", ["[[429-once]]", "[[500-once]]"])
async def test_sdk_retries_errors_before_the_first_token(fake: FakeOpenAI, marker: str) -> None:
    text = f"{marker} retry me"
    async with configured(fake):
        deltas, finished = await collect(request_for(text))
    assert "".join(d.text for d in deltas) == default_reply(text)
    assert finished[0].finish_reason == "stop"
    assert len(requests_for(fake, text)) == 2


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("marker", "code", "status"),
    [("[[429]]", "rate_limited", 429), ("[[500]]", "upstream", 500)],
)
async def test_persistent_http_errors(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture, marker: str, code: str, status: int
) -> None:
    capture_all_logs(caplog)
    text = f"{marker} always failing"
    async with configured(fake, ASSISTANT_MAX_RETRIES=2):
        deltas, exc = await collect_error(request_for(text))
    assert deltas == []
    assert exc.code == code and exc.status == status
    assert exc.reason == llm.ERROR_REASONS[code]
    assert len(requests_for(fake, text)) == 3  # the first try and two SDK retries
    assert_clean(exc, caplog)


@pytest.mark.asyncio
async def test_stream_cut_midway_is_a_connection_error(fake: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    capture_all_logs(caplog)
    text = "[[cut]] you will not hear the end"
    async with configured(fake):
        deltas, exc = await collect_error(request_for(text))
    assert [d.text for d in deltas] == pieces_split(default_reply(text))[:3]
    assert exc.code == "connection"
    assert len(requests_for(fake, text)) == 1  # no retry once tokens have flowed
    assert_clean(exc, caplog)


@pytest.mark.asyncio
async def test_wrong_key_is_an_auth_error(fake: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    capture_all_logs(caplog)
    wrong = "sk-test-wrong-key-also-secret"
    async with configured(fake, OPENAI_API_KEY=wrong):
        _, exc = await collect_error(request_for("hello"))
    assert exc.code == "auth" and exc.status == 401
    assert wrong not in caplog.text and wrong not in str(exc)
    assert_clean(exc, caplog)


@pytest.mark.asyncio
async def test_unknown_model(fake: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    capture_all_logs(caplog)
    async with configured(fake):
        _, exc = await collect_error(request_for("hello", model="missing-model"))
    assert exc.code == "model_not_found" and exc.status == 404
    assert "missing-model" in exc.reason
    assert_clean(exc, caplog)


@pytest.mark.asyncio
async def test_read_timeout(fake: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    capture_all_logs(caplog)
    async with configured(fake, ASSISTANT_TIMEOUT_SECONDS=0.3, ASSISTANT_MAX_RETRIES=0):
        deltas, exc = await collect_error(request_for("[[slow-first=5]] too slow"))
    assert deltas == []
    assert exc.code == "timeout"
    assert_clean(exc, caplog)
    assert await async_wait_until(lambda: fake.open_streams == 0)


@pytest.mark.asyncio
async def test_unreachable_server_is_a_connection_error(caplog: pytest.LogCaptureFixture) -> None:
    capture_all_logs(caplog)
    with FakeOpenAI() as gone:
        base_url = gone.base_url
    overrides = {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": base_url,
        "ASSISTANT_MAX_RETRIES": 0,
    }
    with override_settings(**overrides):
        try:
            _, exc = await collect_error(request_for("anyone there?"))
        finally:
            await llm.client_close()
    assert exc.code == "connection"
    assert_clean(exc, caplog)


# --- stopping early: no leaked connections -------------------------------------------------


async def consume_in_task(request: ChatRequest) -> tuple[asyncio.Task[None], asyncio.Event, list[str]]:
    """Start consuming a stream in a task; the event is set at the first delta."""
    first = asyncio.Event()
    texts: list[str] = []

    async def run() -> None:
        async for item in llm.provider_get().stream(request):
            if isinstance(item, Delta):
                texts.append(item.text)
                first.set()

    return asyncio.create_task(run()), first, texts


@pytest.mark.asyncio
async def test_cancelling_the_consumer_closes_the_upstream_stream(fake: FakeOpenAI) -> None:
    async with configured(fake):
        task, first, texts = await consume_in_task(request_for("[[long]] go on forever"))
        await asyncio.wait_for(first.wait(), timeout=10)
        assert fake.open_streams == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await async_wait_until(lambda: fake.open_streams == 0)
        assert fake.disconnects == 1
        assert 0 < len(texts) < 400


@pytest.mark.asyncio
async def test_cancelling_before_the_first_token(fake: FakeOpenAI) -> None:
    async with configured(fake):
        task, _, texts = await consume_in_task(request_for("[[slow-first=30]] never mind"))
        assert await async_wait_until(lambda: fake.open_streams == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await async_wait_until(lambda: fake.open_streams == 0)
    assert fake.disconnects == 1
    assert texts == []


@pytest.mark.asyncio
async def test_breaking_out_with_aclose_closes_the_upstream_stream(fake: FakeOpenAI) -> None:
    async with configured(fake):
        texts: list[str] = []
        async with contextlib.aclosing(llm.provider_get().stream(request_for("[[long]] stop me"))) as items:
            async for item in items:
                assert isinstance(item, Delta)
                texts.append(item.text)
                if len(texts) == 3:
                    break
        assert await async_wait_until(lambda: fake.open_streams == 0)
        assert fake.disconnects == 1
        assert texts == ["lorem", " ipsum", " dolor"]


@pytest.mark.asyncio
async def test_fifty_cancels_leak_nothing(fake: FakeOpenAI) -> None:
    async with configured(fake):
        for i in range(50):
            task, first, _ = await consume_in_task(request_for(f"[[long]] cancel number {i}"))
            await asyncio.wait_for(first.wait(), timeout=10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert await async_wait_until(lambda: fake.open_streams == 0)
        assert fake.disconnects == 50
        assert fake.completed == 0

        text = "still working after all that?"
        deltas, finished = await collect(request_for(text))
    assert "".join(d.text for d in deltas) == default_reply(text)
    assert finished[0].finish_reason == "stop"


# --- selection and the demo ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_base_url_alone_selects_openai_with_a_placeholder_key() -> None:
    # An Ollama-like server: it wants no key, so the provider sends a placeholder.
    with FakeOpenAI(api_key=llm.PLACEHOLDER_API_KEY) as local:
        try:
            with override_settings(OPENAI_API_KEY="", OPENAI_BASE_URL=local.base_url):
                assert llm.provider_get().name == "openai"
                deltas, finished = await collect(request_for("local model"))
        finally:
            await llm.client_close()
    assert "".join(d.text for d in deltas) == default_reply("local model")
    assert finished[0].finish_reason == "stop"


@pytest.mark.asyncio
async def test_one_client_per_loop_rebuilt_when_settings_change(fake: FakeOpenAI) -> None:
    loop_clients: list[object] = []

    def other_loop() -> None:
        async def grab() -> None:
            loop_clients.append(llm.client_get())
            await llm.client_close()

        asyncio.run(grab())

    async with configured(fake):
        first = llm.client_get()
        assert llm.client_get() is first
        await asyncio.to_thread(other_loop)
        assert loop_clients and loop_clients[0] is not first

        # A reply streaming on the old client survives a settings change.
        task, started, texts = await consume_in_task(request_for("[[tokens=30]] [[tps=100]] in flight"))
        await asyncio.wait_for(started.wait(), timeout=10)
        with override_settings(ASSISTANT_TIMEOUT_SECONDS=12.0):
            second = llm.client_get()
            assert second is not first
            assert second.timeout.read == 12.0  # type: ignore[union-attr]
            assert second.timeout.connect == 5.0  # type: ignore[union-attr]
            assert second.max_retries == 2
            _, finished = await collect(request_for("after a settings change"))
        await task
    assert finished[0].finish_reason == "stop"
    assert len(texts) == 30
    assert fake.disconnects == 0


@pytest.mark.asyncio
async def test_demo_provider_without_configuration() -> None:
    with override_settings(OPENAI_API_KEY="", OPENAI_BASE_URL=None, ASSISTANT_DEMO_DELAY_MS=0):
        provider = llm.provider_get()
        assert provider.name == "demo"
        question = "alice: @assistant   how do\nI deploy this?"
        deltas, finished = await collect(request_for(question))
    text = "".join(d.text for d in deltas)
    assert text.startswith(llm.DEMO_LABEL)
    # The gist is what was asked, without the author prefix or the mention.
    assert "> how do I deploy this?" in text and "alice:" not in text
    assert all(d.text for d in deltas) and len(deltas) > 20
    assert finished == [
        Finished(
            finish_reason="stop",
            model="demo",
            prompt_tokens=finished[0].prompt_tokens,
            completion_tokens=len(deltas),
        )
    ]
    assert finished[0].prompt_tokens is not None and finished[0].prompt_tokens > 0


def test_provider_error_defaults() -> None:
    exc = ProviderError("rate_limited")
    assert str(exc) == exc.reason == llm.ERROR_REASONS["rate_limited"]
    assert ProviderError("no_such_code").reason == llm.ERROR_REASONS["upstream"]
