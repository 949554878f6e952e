"""The admin's assistant usage page: tokens and cost by user, room, assistant
and day, a chart of the days (plain server-rendered SVG), and a CSV export."""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import escape

from .assistant import budget
from .models import AssistantUsage

CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 720, 180, 28


def _range(request: HttpRequest) -> tuple[datetime, datetime, int]:
    try:
        days = max(1, min(366, int(request.GET.get("days", "30"))))
    except ValueError:
        days = 30
    until = budget.period_end("day", budget.now())
    return until - timedelta(days=days), until, days


def _totals(rows: list[budget.UsageRow], key: str) -> list[tuple[str, int, int, Decimal]]:
    sums: dict[str, list] = defaultdict(lambda: [0, 0, Decimal(0)])
    for row in rows:
        entry = sums[getattr(row, key)]
        entry[0] += row.replies
        entry[1] += row.tokens
        entry[2] += row.cost
    return sorted(((name, *values) for name, values in sums.items()), key=lambda t: -t[2])


def usage_chart(rows: list[budget.UsageRow], since: datetime, days: int) -> str:
    """Tokens per day as an SVG bar chart (numbers and escaped labels only)."""
    per_day: dict[str, int] = defaultdict(int)
    for row in rows:
        per_day[row.day] += row.tokens
    dates = [(since + timedelta(days=i)).date().isoformat() for i in range(days)]
    peak = max([per_day[d] for d in dates] + [1])
    width = (CHART_WIDTH - 2 * CHART_PAD) / max(1, len(dates))
    bars = []
    for i, day in enumerate(dates):
        height = (CHART_HEIGHT - 2 * CHART_PAD) * per_day[day] / peak
        x = CHART_PAD + i * width
        y = CHART_HEIGHT - CHART_PAD - height
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(1.0, width - 2):.1f}" height="{height:.1f}" fill="#3b5bdb">'
            f"<title>{escape(day)}: {per_day[day]:,} tokens</title></rect>"
        )
    first, last = escape(dates[0]), escape(dates[-1])
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" '
        f'width="{CHART_WIDTH}" height="{CHART_HEIGHT}" role="img" aria-label="Tokens per day">'
        f'<line x1="{CHART_PAD}" y1="{CHART_HEIGHT - CHART_PAD}" x2="{CHART_WIDTH - CHART_PAD}" '
        f'y2="{CHART_HEIGHT - CHART_PAD}" stroke="#888"/>'
        + "".join(bars)
        + f'<text x="{CHART_PAD}" y="{CHART_HEIGHT - 8}" font-size="11" fill="#555">{first}</text>'
        f'<text x="{CHART_WIDTH - CHART_PAD}" y="{CHART_HEIGHT - 8}" font-size="11" fill="#555" '
        f'text-anchor="end">{last}</text>'
        f'<text x="{CHART_PAD}" y="16" font-size="11" fill="#555">peak {peak:,} tokens/day</text>'
        "</svg>"
    )


@admin.register(AssistantUsage)
class AssistantUsageAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.is_active and request.user.is_staff

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        since, until, days = _range(request)
        rows = budget.usage_rows(since, until)
        if request.GET.get("format") == "csv":
            response = HttpResponse(content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="assistant-usage-{days}d.csv"'
            writer = csv.writer(response)
            writer.writerow(
                ["day", "user", "room", "assistant", "replies", "prompt_tokens", "completion_tokens", "cost_usd"]
            )
            for row in rows:
                writer.writerow(
                    [
                        row.day,
                        row.user,
                        row.room,
                        row.assistant,
                        row.replies,
                        row.prompt_tokens,
                        row.completion_tokens,
                        f"{row.cost:.6f}",
                    ]
                )
            return response
        context = {
            **self.admin_site.each_context(request),
            "title": "Assistant usage",
            "opts": self.model._meta,
            "days": days,
            "since": since,
            "until": until,
            "rows": rows,
            "total_replies": sum(r.replies for r in rows),
            "total_tokens": sum(r.tokens for r in rows),
            "total_cost": sum((r.cost for r in rows), Decimal(0)),
            "by_user": _totals(rows, "user"),
            "by_room": _totals(rows, "room"),
            "by_assistant": _totals(rows, "assistant"),
            "chart": usage_chart(rows, since, days),
            "generated": timezone.now(),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/rooms/usage.html", context)
