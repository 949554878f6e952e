"""What the assistants cost, and the budgets that cap it.

A reply's cost comes from ASSISTANT_PRICES (model -> dollars per million
input and output tokens) and its token usage. Budgets cap, per user (charged
to whoever asked) and per room, the tokens or the cost of replies finished in
the current day or month (UTC), across every process (sums over the database).
A request over budget is refused before anything is sent upstream, saying when
the budget resets.

``now()`` is the clock; tests replace it to cross a period boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, F, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from ..models import Message, Room

MILLION = Decimal(1_000_000)


def now() -> datetime:
    return timezone.now()


def cost_of(model: str | None, prompt_tokens: int | None, completion_tokens: int | None) -> Decimal | None:
    """Dollars for one reply's usage, or None if the model has no price."""
    price = settings.ASSISTANT_PRICES.get(model or "")
    if price is None:
        # A dated snapshot ("gpt-4o-mini-2024-07-18") is priced like its alias.
        price = next(
            (p for name, p in settings.ASSISTANT_PRICES.items() if model and model.startswith(name + "-")), None
        )
    if price is None or (prompt_tokens is None and completion_tokens is None):
        return None
    cost = Decimal(str(price.get("input", 0))) * (prompt_tokens or 0) / MILLION
    cost += Decimal(str(price.get("output", 0))) * (completion_tokens or 0) / MILLION
    return cost.quantize(Decimal("0.000001"))


def period_start(period: str, at: datetime) -> datetime:
    at = at.astimezone(UTC)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def period_end(period: str, at: datetime) -> datetime:
    start = period_start(period, at)
    if period == "day":
        return start + timedelta(days=1)
    return (start + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class Limit:
    scope: str  # "user" | "room"
    period: str  # "day" | "month"
    unit: str  # "tokens" | "cost"
    amount: Decimal


@dataclass(frozen=True)
class Exceeded:
    limit: Limit
    used: Decimal
    resets: datetime

    @property
    def detail(self) -> str:
        whose = "your" if self.limit.scope == "user" else "this room's"
        what = f"{int(self.limit.amount):,} tokens" if self.limit.unit == "tokens" else f"${self.limit.amount}"
        return (
            f"{whose} assistant budget for this {self.limit.period} ({what}) is used up; "
            f"it resets at {self.resets:%Y-%m-%d %H:%M} UTC"
        )


def limits_for(room: Room) -> list[Limit]:
    limits: list[Limit] = []
    configured = {
        ("user", "day", "tokens"): settings.ASSISTANT_BUDGET_USER_DAILY_TOKENS,
        ("user", "month", "tokens"): settings.ASSISTANT_BUDGET_USER_MONTHLY_TOKENS,
        ("user", "day", "cost"): settings.ASSISTANT_BUDGET_USER_DAILY_COST,
        ("user", "month", "cost"): settings.ASSISTANT_BUDGET_USER_MONTHLY_COST,
        ("room", "day", "tokens"): _first(room.budget_daily_tokens, settings.ASSISTANT_BUDGET_ROOM_DAILY_TOKENS),
        ("room", "month", "tokens"): _first(room.budget_monthly_tokens, settings.ASSISTANT_BUDGET_ROOM_MONTHLY_TOKENS),
        ("room", "day", "cost"): _first(room.budget_daily_cost, settings.ASSISTANT_BUDGET_ROOM_DAILY_COST),
        ("room", "month", "cost"): _first(room.budget_monthly_cost, settings.ASSISTANT_BUDGET_ROOM_MONTHLY_COST),
    }
    for (scope, period, unit), amount in configured.items():
        if amount:
            limits.append(Limit(scope, period, unit, Decimal(str(amount))))
    return limits


def _first(*values: object) -> object:
    return next((v for v in values if v is not None), None)


def usage(*, period: str, at: datetime, user_id: int | None = None, room_id: int | None = None) -> dict[str, Decimal]:
    """Tokens and cost of the replies finished in the period (charged to
    ``user_id``, or in ``room_id``)."""
    replies = Message.objects.filter(role=Message.Role.ASSISTANT, finished__gte=period_start(period, at))
    replies = replies.filter(finished__lt=period_end(period, at))
    if user_id is not None:
        replies = replies.filter(asked_by_id=user_id)
    if room_id is not None:
        replies = replies.filter(room_id=room_id)
    totals = replies.aggregate(
        tokens=Coalesce(Sum(Coalesce(F("prompt_tokens"), 0) + Coalesce(F("completion_tokens"), 0)), 0),
        cost=Sum("cost"),
    )
    return {"tokens": Decimal(totals["tokens"] or 0), "cost": totals["cost"] or Decimal(0)}


def check(room: Room, user_id: int | None) -> Exceeded | None:
    """The first budget the asker or the room has used up, or None."""
    at = now()
    cache: dict[tuple[str, str], dict[str, Decimal]] = {}
    for limit in limits_for(room):
        if limit.scope == "user" and user_id is None:
            continue
        key = (limit.scope, limit.period)
        if key not in cache:
            who = {"user_id": user_id} if limit.scope == "user" else {"room_id": room.pk}
            cache[key] = usage(period=limit.period, at=at, **who)
        used = cache[key][limit.unit]
        if used >= limit.amount:
            return Exceeded(limit, used, period_end(limit.period, at))
    return None


@dataclass(frozen=True)
class UsageRow:
    day: str
    user: str
    room: str
    assistant: str
    replies: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_rows(since: datetime, until: datetime) -> list[UsageRow]:
    """Replies finished in ``[since, until)``, summed per UTC day, asker, room and assistant."""
    rows = (
        Message.objects.filter(role=Message.Role.ASSISTANT, finished__gte=since, finished__lt=until)
        .annotate(day=TruncDate("finished", tzinfo=UTC))
        .values("day", "asked_by__username", "room__slug", "author_name")
        .annotate(
            replies=Count("pk"),
            prompt=Coalesce(Sum("prompt_tokens"), 0),
            completion=Coalesce(Sum("completion_tokens"), 0),
            spent=Sum("cost"),
        )
        .order_by("day", "room__slug", "asked_by__username", "author_name")
    )
    return [
        UsageRow(
            day=row["day"].isoformat(),
            user=row["asked_by__username"] or "(deleted user)",
            room=row["room__slug"],
            assistant=row["author_name"],
            replies=row["replies"],
            prompt_tokens=row["prompt"],
            completion_tokens=row["completion"],
            cost=row["spent"] or Decimal(0),
        )
        for row in rows
    ]
