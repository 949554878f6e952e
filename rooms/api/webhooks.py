"""Outgoing webhooks: recorded with the message, delivered by a background task.

- **Recorded, not sent, by the writer.** A new message is matched against its
  room's webhooks inside the message's own transaction (``rooms.api.signals``),
  and a ``WebhookDelivery`` row with the exact body is inserted there: the
  delivery exists exactly when the message does. Nothing is sent from the
  room's path; the room never waits on a receiver.
- **Delivered by each process's worker** (``tasks.ensure``): it claims due rows
  (a claim expires, so a process that dies mid-send leaves the row to another),
  POSTs the body with ``X-Chatsite-Signature: sha256=<HMAC-SHA256 of the body
  with the webhook's secret>`` and ``X-Chatsite-Delivery: <id>``, within
  ``WEBHOOK_TIMEOUT_SECONDS``, and retries failures with exponential backoff up
  to ``WEBHOOK_MAX_ATTEMPTS``. At least once: a receiver drops repeats by the
  delivery id. Pending rows survive a restart and are picked up again.
- **No server-side request forgery.** Unless ``WEBHOOK_ALLOW_PRIVATE``, the
  host is resolved here, every address it resolves to must be public (not
  private, loopback, link-local, multicast, reserved or unspecified), and the
  request goes to the address that was checked (the URL's host stays in
  ``Host`` and in TLS's server name), so a DNS answer that changes between the
  check and the connection (rebinding) cannot redirect it. Redirects are never
  followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .. import events
from ..db import DatabaseUnavailable, db_run
from ..models import Message
from ..tasks import tasks
from .models import Webhook, WebhookDelivery

logger = logging.getLogger(__name__)

USER_AGENT = "chatsite-webhooks/1"
TARGETS_TTL = 5.0  # seconds a process trusts its list of rooms' webhooks
LOG_KEEP = 20


# --- Recording (inside the message's transaction) -----------------------------------


@dataclass(frozen=True)
class Target:
    webhook_id: int
    event: str
    bot_id: int | None
    bot_name: str  # lower-cased, for mention webhooks


_targets: dict[int, list[Target]] | None = None
_targets_at = 0.0
_targets_lock = threading.Lock()


def targets_forget() -> None:
    global _targets
    with _targets_lock:
        _targets = None


def _room_targets(room_id: int) -> list[Target]:
    """The room's active webhooks, from a per-process list refreshed every few
    seconds (one query for all rooms, not one per message)."""
    global _targets, _targets_at
    with _targets_lock:
        if _targets is None or time.monotonic() - _targets_at > TARGETS_TTL:
            table: dict[int, list[Target]] = {}
            for hook in Webhook.objects.filter(active=True).select_related("bot"):
                name = hook.bot.get_username().lower() if hook.bot is not None else ""
                table.setdefault(hook.room_id, []).append(Target(hook.pk, hook.event, hook.bot_id, name))
            _targets, _targets_at = table, time.monotonic()
        return _targets.get(room_id, [])


def delivery_body(delivery_id: str, trigger: str, message: Message) -> str:
    room = message.room
    return events.dumps(
        {
            "type": events.MESSAGE,
            "trigger": trigger,
            "delivery": delivery_id,
            "room": {"slug": room.slug, "name": room.name},
            "message": events.message_payload(message),
        }
    )


def deliveries_enqueue(message: Message) -> None:
    """Record the deliveries a new message calls for (in its transaction)."""
    if message.role != Message.Role.USER or message.seq is None or getattr(message, "visible_to_id", None):
        return
    targets = _room_targets(message.room_id)
    if not targets:
        return
    mentioned = {name.lower() for name in message.mentions or ()}
    rows = []
    for target in targets:
        if target.event == Webhook.Event.MENTION:
            if not target.bot_name or target.bot_name not in mentioned:
                continue
        elif target.bot_id is not None and target.bot_id == message.author_id:
            continue  # a bot's own messages do not call it back
        row = WebhookDelivery(webhook_id=target.webhook_id, message=message, event=target.event)
        row.body = delivery_body(str(row.delivery_id), target.event, message)
        rows.append(row)
    if rows:
        WebhookDelivery.objects.bulk_create(rows)
        transaction.on_commit(_wake_from_thread)


def _wake_from_thread() -> None:
    """After the commit, on the database thread: wake this process's worker
    (there is no loop in a management command; the servers' workers poll)."""
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(deliveries_wake)


# --- The worker ---------------------------------------------------------------------------

_wakeup: asyncio.Event | None = None
_in_flight = 0
_client: httpx.AsyncClient | None = None


def _reset() -> None:
    global _wakeup, _in_flight, _client
    _wakeup, _in_flight, _client = None, 0, None


tasks.on_new_loop(_reset)


def deliveries_ensure() -> None:
    """Start this process's delivery worker (once); cheap to call often."""
    global _wakeup
    tasks.bind()
    if _wakeup is None:
        _wakeup = asyncio.Event()
    tasks.ensure("webhook-deliveries", _run)


def deliveries_wake() -> None:
    deliveries_ensure()
    assert _wakeup is not None
    _wakeup.set()


async def _run() -> None:
    global _in_flight
    while True:
        assert _wakeup is not None
        _wakeup.clear()
        free = settings.WEBHOOK_CONCURRENCY - _in_flight
        due: list[WebhookDelivery] = []
        if free > 0:
            try:
                due = await db_run(deliveries_claim, free)
            except DatabaseUnavailable:
                due = []
            except Exception:
                logger.exception("claiming webhook deliveries failed")
        for delivery in due:
            _in_flight += 1
            tasks.spawn(_deliver(delivery), name=f"webhook-{delivery.pk}")
        if due and len(due) == free:
            continue  # more may be due
        try:
            await asyncio.wait_for(_wakeup.wait(), settings.WEBHOOK_POLL_SECONDS)
        except TimeoutError:
            pass


def deliveries_claim(limit: int) -> list[WebhookDelivery]:
    """Up to ``limit`` due deliveries, each claimed for this process (one
    winner per row) for long enough to send it."""
    now = timezone.now()
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    due = WebhookDelivery.objects.filter(free, status=WebhookDelivery.Status.PENDING, next_attempt__lte=now)
    candidates = list(due.order_by("next_attempt", "id").values_list("pk", flat=True)[: limit * 2])
    hold = now + timedelta(seconds=settings.WEBHOOK_TIMEOUT_SECONDS + 25)
    claimed: list[int] = []
    for pk in candidates:
        if len(claimed) >= limit:
            break
        if due.filter(pk=pk).update(claimed_until=hold):
            claimed.append(pk)
    return list(WebhookDelivery.objects.select_related("webhook").filter(pk__in=claimed).order_by("id"))


async def _deliver(delivery: WebhookDelivery) -> None:
    global _in_flight
    started = time.monotonic()
    status: int | None = None
    error = ""
    try:
        webhook = delivery.webhook
        if not webhook.active:
            error = "the webhook is turned off"
        else:
            status = await post_signed(
                webhook.url, webhook.secret, delivery.body, str(delivery.delivery_id), delivery.event
            )
            if not 200 <= status < 300:
                error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
    except DeliveryError as exc:
        error = str(exc)[:300]
    except Exception as exc:
        logger.exception("webhook delivery %s failed", delivery.delivery_id)
        error = f"internal error ({type(exc).__name__})"
    finally:
        _in_flight -= 1
    elapsed = int((time.monotonic() - started) * 1000)
    for _ in range(3):
        try:
            await db_run(delivery_record, delivery.pk, status, error, elapsed)
            break
        except DatabaseUnavailable:
            await asyncio.sleep(1.0)  # the claim expires anyway; then it is sent again (at least once)
    if _wakeup is not None:
        _wakeup.set()


def retry_delay(attempts: int) -> float:
    """Seconds before attempt ``attempts + 1``: doubling from the base, capped, ±10%."""
    base = settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1)
    return min(base, settings.WEBHOOK_RETRY_MAX_SECONDS) * random.uniform(0.9, 1.1)


def delivery_record(pk: int, status: int | None, error: str, elapsed_ms: int) -> None:
    now = timezone.now()
    with transaction.atomic():
        row = WebhookDelivery.objects.select_for_update().filter(pk=pk).first()
        if row is None or row.status != WebhookDelivery.Status.PENDING:
            return
        row.attempts += 1
        row.log = [*row.log, {"at": now.isoformat(), "status": status, "error": error, "ms": elapsed_ms}][-LOG_KEEP:]
        row.last_status = status
        row.last_error = error
        row.claimed_until = None
        if not error:
            row.status = WebhookDelivery.Status.DELIVERED
            row.delivered = now
        elif row.attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
            row.status = WebhookDelivery.Status.FAILED
        else:
            row.next_attempt = now + timedelta(seconds=retry_delay(row.attempts))
        row.save(
            update_fields=[
                "attempts",
                "log",
                "last_status",
                "last_error",
                "claimed_until",
                "status",
                "delivered",
                "next_attempt",
            ]
        )


def delivery_retry_now(pks: list[int]) -> int:
    """The admin's "retry now": failed or waiting deliveries become due again."""
    return (
        WebhookDelivery.objects.filter(pk__in=pks)
        .exclude(status=WebhookDelivery.Status.DELIVERED)
        .update(status=WebhookDelivery.Status.PENDING, next_attempt=timezone.now(), claimed_until=None)
    )


# --- Sending ---------------------------------------------------------------------------------


class DeliveryError(Exception):
    """The attempt failed before an HTTP status: refused address, DNS, connect, timeout."""


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def address_refusal(address: str) -> str | None:
    """Why ``address`` may not be a webhook's destination, or None if it is public."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address} is not an IP address"
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        for embedded in (ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None):
            if embedded is not None:
                candidates.append(embedded)
    for candidate in candidates:
        for label, test in (
            ("loopback", candidate.is_loopback),
            ("private", candidate.is_private),
            ("link-local", candidate.is_link_local),
            ("multicast", candidate.is_multicast),
            ("unspecified", candidate.is_unspecified),
            ("reserved", candidate.is_reserved),
            ("not public", not candidate.is_global),
        ):
            if test:
                return f"{address} is a {label} address"
    return None


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (a literal address resolves to itself)."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), settings.WEBHOOK_TIMEOUT_SECONDS
        )
    except (OSError, TimeoutError) as exc:
        raise DeliveryError(f"cannot resolve {host}: {type(exc).__name__}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise DeliveryError(f"{host} has no address")
    return addresses


@dataclass
class Destination:
    url: str  # what is connected to
    headers: dict[str, str]
    extensions: dict[str, Any]


async def destination(url: str) -> Destination:
    """Where to send a POST for ``url``: resolved and checked, pinned to the
    checked address unless WEBHOOK_ALLOW_PRIVATE."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise DeliveryError("the webhook's URL is not valid") from None
    if parts.scheme not in ("http", "https") or not host:
        raise DeliveryError("the webhook's URL must be http or https")
    if parts.username or parts.password:
        raise DeliveryError("the webhook's URL must not carry credentials")
    if settings.WEBHOOK_ALLOW_PRIVATE:
        return Destination(url, {}, {})
    addresses = await resolve(host, port)
    for address in addresses:
        why = address_refusal(address)
        if why is not None:
            raise DeliveryError(f"refused: {host} resolves to {why}")
    pinned = addresses[0]
    netloc = f"[{pinned}]" if ":" in pinned else pinned
    if parts.port is not None:
        netloc += f":{parts.port}"
    target = parts._replace(netloc=netloc).geturl()
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        host_header += f":{parts.port}"
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return Destination(target, {"Host": host_header}, extensions)


def _http_client() -> httpx.AsyncClient:
    global _client
    if _client is None:
        timeout = settings.WEBHOOK_TIMEOUT_SECONDS
        _client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=timeout),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the address checked is the one connected to
            limits=httpx.Limits(max_connections=max(4, settings.WEBHOOK_CONCURRENCY), max_keepalive_connections=4),
        )
    return _client


async def post_signed(url: str, secret: str, body: str, delivery_id: str, event: str) -> int:
    """POST ``body`` to ``url``, signed; returns the HTTP status (the response
    body is not read). Raises ``DeliveryError`` when no status came back."""
    data = body.encode("utf-8")
    target = await destination(url)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Chatsite-Signature": signature(secret, data),
        "X-Chatsite-Delivery": delivery_id,
        "X-Chatsite-Event": event,
        **target.headers,
    }
    client = _http_client()
    try:
        async with asyncio.timeout(settings.WEBHOOK_TIMEOUT_SECONDS + 1):
            request = client.build_request(
                "POST", target.url, content=data, headers=headers, extensions=target.extensions
            )
            response = await client.send(request, stream=True)
            await response.aclose()
    except (httpx.HTTPError, OSError, TimeoutError) as exc:
        raise DeliveryError(f"{type(exc).__name__} after at most {settings.WEBHOOK_TIMEOUT_SECONDS:g} s") from None
    return response.status_code
