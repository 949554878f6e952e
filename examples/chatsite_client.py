"""A small client for the Chatsite HTTP API (docs/api.md): post, follow a room's
event stream with resume, and run a bot that answers its mentions by
streaming. Standard library plus one HTTP library: ``httpx`` (or ``httpx2``,
the same API).

    from chatsite_client import Client
    chat = Client("https://chat.example.com", token="chs_...")
    chat.post("lobby", "hello from a script")
    for event in chat.events("lobby"):          # reconnects and resumes by itself
        print(event.type, event.data)

Command line:

    python examples/chatsite_client.py URL TOKEN post ROOM TEXT
    python examples/chatsite_client.py URL TOKEN follow ROOM
    python examples/chatsite_client.py URL TOKEN echo-bot ROOM     # a bot token
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

try:  # the same API under either name
    import httpx
except ImportError:  # pragma: no cover - depends on what is installed
    import httpx2 as httpx  # type: ignore[no-redef]


class ApiError(Exception):
    """An answer other than 2xx: ``status``, ``code`` and ``detail`` from the body."""

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body or {}


@dataclass
class Event:
    type: str
    data: dict[str, Any]
    id: str | None  # the cursor after this event; None for live-only events


def sse_parse(lines: Iterator[str]) -> Iterator[tuple[str, str, str | None]]:
    """Server-Sent Events from text lines: ``(event, data, id)``; comments skipped."""
    event, data, event_id = "", [], None
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            if data:
                yield event or "message", "\n".join(data), event_id
            event, data, event_id = "", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\x00" not in value:
            event_id = value


class Client:
    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0) -> None:
        self.base = base_url.rstrip("/") + "/api/v1"
        self.http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
        # The cursor of the last event seen: a new events() call resumes from it.
        self.last_event_id: dict[str, str] = {}

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        for attempt in range(5):
            response = self.http.request(
                method, self.base + path, json=body, params={k: v for k, v in params.items() if v is not None}
            )
            if response.status_code in (429, 503) and attempt < 4:
                time.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            break
        payload = response.json() if response.content else {}
        if response.status_code >= 400:
            raise ApiError(response.status_code, payload.get("code", ""), payload.get("detail", ""), payload)
        return payload

    # --- REST -------------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        return self._call("GET", "/me")

    def rooms(self) -> list[dict[str, Any]]:
        return self._call("GET", "/rooms/")["rooms"]

    def messages(self, room: str, *, after: int | None = None, before: int | None = None, limit: int = 50) -> Any:
        return self._call("GET", f"/rooms/{room}/messages", after=after, before=before, limit=limit)

    def post(self, room: str, text: str, *, client_id: str | None = None, reply_to: int | None = None) -> Any:
        """Post a message; safe to retry (the same client_id never makes two)."""
        body: dict[str, Any] = {"text": text, "client_id": client_id or uuid.uuid4().hex}
        if reply_to is not None:
            body["reply_to"] = reply_to
        return self._call("POST", f"/rooms/{room}/messages", body)

    def cancel(self, room: str, reply_id: int) -> Any:
        return self._call("POST", f"/rooms/{room}/replies/{reply_id}/cancel", {})

    # --- The event stream --------------------------------------------------------------

    def events(self, room: str, *, after: str | None = None, stop: Callable[[], bool] | None = None) -> Iterator[Event]:
        """The room's events, for ever: on any disconnect it waits (backoff
        with jitter, at most 10 s) and reconnects with Last-Event-ID, so every
        event arrives once, in order."""
        cursor = after or self.last_event_id.get(room)
        failures = 0
        while stop is None or not stop():
            headers = {"Accept": "text/event-stream"}
            if cursor:
                headers["Last-Event-ID"] = cursor
            try:
                with self.http.stream(
                    "GET", f"{self.base}/rooms/{room}/events", headers=headers, timeout=httpx.Timeout(10, read=45)
                ) as response:
                    if response.status_code in (400, 401, 403, 404):
                        payload = json.loads(response.read() or b"{}")
                        raise ApiError(response.status_code, payload.get("code", ""), payload.get("detail", ""))
                    if response.status_code != 200:
                        raise httpx.TransportError(f"HTTP {response.status_code}")
                    failures = 0
                    for kind, data, event_id in sse_parse(response.iter_lines()):
                        if event_id is not None:
                            cursor = self.last_event_id[room] = event_id
                        if kind == "error":
                            break  # the server ended the stream: reconnect (or stop on 401/404)
                        yield Event(kind, json.loads(data), event_id)
                        if stop is not None and stop():
                            return
            except httpx.TransportError:
                pass
            failures += 1
            time.sleep(min(10.0, 0.5 * 2 ** min(failures, 5)) * random.uniform(0.5, 1.0))

    # --- Bots ------------------------------------------------------------------------------

    def reply_start(self, room: str, in_reply_to: int | None = None) -> int:
        body = {} if in_reply_to is None else {"in_reply_to": in_reply_to}
        return self._call("POST", f"/rooms/{room}/replies", body)["reply_id"]

    def reply_delta(self, reply_id: int, seq: int, text: str) -> Any:
        """Raises ApiError with code "cancelled" once someone pressed Stop."""
        return self._call("POST", f"/replies/{reply_id}/deltas", {"seq": seq, "text": text})

    def reply_end(self, reply_id: int, status: str = "complete", error: str = "") -> Any:
        return self._call("POST", f"/replies/{reply_id}/end", {"status": status, "error": error})

    def stream_reply(self, room: str, pieces: Iterator[str], in_reply_to: int | None = None) -> str:
        """Stream ``pieces`` as one reply; returns how it ended."""
        reply_id = self.reply_start(room, in_reply_to)
        try:
            for seq, piece in enumerate(pieces, start=1):
                self.reply_delta(reply_id, seq, piece)
        except ApiError as exc:
            if exc.code in ("cancelled", "ended"):
                return exc.body.get("status", exc.code)
            self.reply_end(reply_id, "error", exc.detail)
            raise
        except Exception as exc:
            self.reply_end(reply_id, "error", str(exc)[:200])
            raise
        self.reply_end(reply_id)
        return "complete"


def echo_pieces(text: str, delay: float = 0.05) -> Iterator[str]:
    """The words of ``text``, one at a time, as a model would stream them."""
    for index, word in enumerate(text.split(" ")):
        time.sleep(delay)
        yield word if index == 0 else " " + word


def run_echo_bot(client: Client, room: str, *, stop: Callable[[], bool] | None = None) -> None:
    """Answer every message that mentions this bot by streaming it back."""
    me = client.me()["username"]
    for event in client.events(room, stop=stop):
        if event.type != "message":
            continue
        message = event.data["message"]
        if message["author"] == me or me not in message.get("mentions", []):
            continue
        said = message["text"].replace(f"@{me}", "").strip() or "(nothing)"
        client.stream_reply(room, echo_pieces(f"You said: {said}"), in_reply_to=message["id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("command", choices=["post", "follow", "echo-bot"])
    parser.add_argument("room")
    parser.add_argument("text", nargs="?", default="")
    args = parser.parse_args(argv)
    client = Client(args.url, args.token)
    if args.command == "post":
        sys.stdout.write(json.dumps(client.post(args.room, args.text)) + "\n")
    elif args.command == "follow":
        for event in client.events(args.room):
            sys.stdout.write(f"{event.type} {json.dumps(event.data)}\n")
            sys.stdout.flush()
    else:
        sys.stdout.write(f"echo bot @{client.me()['username']} in {args.room}\n")
        sys.stdout.flush()
        run_echo_bot(client, args.room)
    return 0


if __name__ == "__main__":
    sys.exit(main())
