"""Test clients of the HTTP API against real processes: REST calls and a
Server-Sent Events reader that keeps every event (type, data, id) and every
comment, and can reconnect with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2 as httpx

from tests.stack import Stack


def token_make(stack: Stack, username: str, *, bot: bool = False, name: str = "test") -> str:
    args = ["createapitoken", username, "--name", name] + (["--bot"] if bot else [])
    return stack.manage(*args).stdout.strip().splitlines()[-1]


def token_revoke(stack: Stack, token: str) -> None:
    key_id = token.removeprefix("chs_").split("_", 1)[0]
    code = (
        "from django.utils import timezone; from rooms.api.models import ApiToken;"
        f"t = ApiToken.objects.get(key_id={key_id!r}); t.revoked = timezone.now(); t.save(update_fields=['revoked'])"
    )
    stack.manage("shell", "-c", code)


async def api(
    base: str, token: str | None, method: str, path: str, body: Any = None, *, raw: bytes | None = None, **kw: Any
) -> httpx.Response:
    headers = dict(kw.pop("headers", {}) or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(base_url=base, timeout=15) as client:
        if raw is not None:
            return await client.request(method, path, content=raw, headers=headers, **kw)
        return await client.request(method, path, json=body, headers=headers, **kw)


class SseStream:
    """One connection to ``/api/v1/rooms/<slug>/events`` (reconnect: ``open`` again)."""

    def __init__(self, base: str, slug: str, *, token: str | None = None, cookies: dict[str, str] | None = None):
        self.base = base
        self.slug = slug
        self.headers: dict[str, str] = {"Accept": "text/event-stream"}
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        if cookies:
            self.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        self.events: list[dict[str, Any]] = []  # {"type", "data", "id"}
        self.comments = 0
        self.last_id: str | None = None
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    async def open(self, last_event_id: str | None = None, *, after: str | None = None) -> dict[str, Any]:
        """Connect (resuming from ``last_event_id``) and return the ``ready`` event."""
        await self.close()
        headers = dict(self.headers)
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        params = {"after": after} if after is not None else None
        self._inbox = asyncio.Queue()
        self._client = httpx.AsyncClient(base_url=self.base, timeout=httpx.Timeout(10, read=60))
        request = self._client.build_request("GET", f"/api/v1/rooms/{self.slug}/events", headers=headers, params=params)
        response = await self._client.send(request, stream=True)
        self.status = response.status_code
        self.response_headers = dict(response.headers)
        if response.status_code != 200:
            body = await response.aread()
            await response.aclose()
            raise ConnectionRefusedError(f"HTTP {response.status_code}: {body[:300]!r}")
        self._task = asyncio.ensure_future(self._read(response))
        return await self.next("ready")

    async def _read(self, response: httpx.Response) -> None:
        kind, data, event_id = "", [], None
        try:
            async for line in response.aiter_lines():
                if not line:
                    if data:
                        event = {"type": kind or "message", "data": json.loads("\n".join(data)), "id": event_id}
                        if event_id is not None:
                            self.last_id = event_id
                        self.events.append(event)
                        self._inbox.put_nowait(event)
                    kind, data, event_id = "", [], None
                elif line.startswith(":"):
                    self.comments += 1
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        kind = value
                    elif name == "data":
                        data.append(value)
                    elif name == "id":
                        event_id = value
        except (httpx.HTTPError, asyncio.CancelledError):
            pass
        finally:
            await response.aclose()
            self._inbox.put_nowait({"type": "__closed__"})

    async def next(self, *kinds: str, timeout: float = 15) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no {kinds} event within {timeout} s")
            event = await asyncio.wait_for(self._inbox.get(), remaining)
            if event["type"] == "__closed__":
                raise ConnectionError(f"stream closed while waiting for {kinds}")
            if not kinds or event["type"] in kinds:
                return event

    async def until(self, predicate, timeout: float = 20, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise TimeoutError(f"{what} not reached within {timeout} s")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def reply_view(events: list[dict[str, Any]], reply_id: int) -> dict[str, Any]:
    """What a client following ``events`` knows of a reply: its text (start or
    snapshot, then deltas in order), the delta seqs it applied, and its end."""
    text, seq, seqs, final, problems = "", 0, [], None, []
    for event in events:
        data = event["data"]
        if data.get("reply_id") != reply_id:
            continue
        if event["type"] == "assistant.start":
            text, seq = data["message"]["text"], 0
        elif event["type"] == "assistant.snapshot" and "streaming" in data:
            text, seq = data["streaming"]["text"], data["streaming"]["seq"]
        elif event["type"] == "assistant.delta":
            if data["seq"] != seq + 1:
                problems.append(f"delta {data['seq']} after {seq}")
            seqs.append(data["seq"])
            text, seq = text + data["text"], data["seq"]
        elif event["type"] == "assistant.end":
            final = data["message"]
    return {"text": text, "seqs": seqs, "final": final, "problems": problems}
