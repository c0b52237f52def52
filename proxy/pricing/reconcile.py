"""Reconcile: what OpenRouter says was spent against what this proxy recorded, one line per figure.

Pure: parse the `GET /key` and `GET /activity` payloads, work out the UTC windows `/key` counts in,
and compare them with sums the store read. Fetching and reading happen elsewhere (pricing/books.py,
store/activity.py); this module only decides what each gap is and what it means.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from proxy.store.activity import ActivityRow, Recorded

WINDOWS = ("day", "week", "month")
# OpenRouter reports dollars as JSON floats; a difference below a micro-dollar is float noise.
NOISE = Decimal("0.000001")
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """`GET /key`: credits the key spent, and what BYOK providers charged, per UTC window."""

    usage: Mapping[str, Decimal]
    byok: Mapping[str, Decimal]


NOTHING = Recorded(_ZERO, _ZERO, 0, 0)


@dataclass(frozen=True, slots=True)
class Line:
    scope: str  # "key" or "activity"
    what: str  # "day", "byok week", "2026-11-30 openai/gpt-4o", ...
    openrouter: Decimal
    ours: Decimal | None
    gap: Decimal | None  # openrouter - ours: positive when OpenRouter billed more than we saw
    gap_ratio: Decimal | None  # gap / openrouter; None when OpenRouter says 0
    within: bool
    meaning: str
    openrouter_requests: int | None = None
    our_requests: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "what": self.what,
            "openrouter_usd": str(self.openrouter),
            "ours_usd": None if self.ours is None else str(self.ours),
            "gap_usd": None if self.gap is None else str(self.gap),
            "gap_percent": None if self.gap_ratio is None else str(round(self.gap_ratio * 100, 4)),
            "within_tolerance": self.within,
            "meaning": self.meaning,
            "openrouter_requests": self.openrouter_requests,
            "our_requests": self.our_requests,
        }


def _money(value: Any, path: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{path}: expected a number, got {value!r}")
    return Decimal(str(value))


def _count(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{path}: expected a count, got {value!r}")
    return int(value)


def parse_key(payload: Any) -> KeyUsage:
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        raise ValueError("no `data` object")
    names = {"day": "daily", "week": "weekly", "month": "monthly"}
    usage = {w: _money(data.get(f"usage_{n}"), f"usage_{n}") for w, n in names.items()}
    # Keys on accounts without BYOK may omit the BYOK fields; absent means nothing was charged.
    byok = {w: _money(data.get(f"byok_usage_{n}", 0), f"byok_usage_{n}") for w, n in names.items()}
    return KeyUsage(usage, byok)


def parse_activity(payload: Any) -> list[ActivityRow]:
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise ValueError("no `data` list")
    rows = []
    for index, item in enumerate(data):
        path = f"data[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{path}: expected an object")
        date, model = item.get("date"), item.get("model")
        if not isinstance(date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date[:10]):
            raise ValueError(f"{path}.date: expected YYYY-MM-DD, got {date!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"{path}.model: expected a model id")
        permaslug, provider = item.get("model_permaslug"), item.get("provider_name")
        rows.append(
            ActivityRow(
                date=date[:10],
                model=model,
                model_permaslug=permaslug if isinstance(permaslug, str) else None,
                endpoint_id=str(item.get("endpoint_id") or ""),
                provider=provider if isinstance(provider, str) else None,
                usage_usd=_money(item.get("usage"), f"{path}.usage"),
                byok_usage_usd=_money(item.get("byok_usage_inference", 0), f"{path}.byok_usage_inference"),
                requests=_count(item.get("requests", 0), f"{path}.requests"),
                prompt_tokens=_count(item.get("prompt_tokens", 0), f"{path}.prompt_tokens"),
                completion_tokens=_count(item.get("completion_tokens", 0), f"{path}.completion_tokens"),
                reasoning_tokens=_count(item.get("reasoning_tokens", 0), f"{path}.reasoning_tokens"),
            )
        )
    return rows


def window_starts(now: datetime) -> dict[str, datetime]:
    """Where OpenRouter's daily, weekly (Monday to Sunday) and monthly counters start, in UTC."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return {"day": day, "week": day - timedelta(days=day.weekday()), "month": day.replace(day=1)}


def parse_tolerance(text: str) -> Decimal:
    """`1%`, `0.5%` or a plain share such as `0.01`."""
    raw = text.strip()
    try:
        value = Decimal(raw[:-1]) / 100 if raw.endswith("%") else Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"expected a percentage such as 1%, got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"expected a percentage >= 0, got {text!r}")
    return value


def compare(scope: str, what: str, openrouter: Decimal, ours: Decimal | None, tolerance: Decimal,
            *, recorded: Recorded = NOTHING, openrouter_requests: int | None = None) -> Line:
    if ours is None:
        return Line(scope, what, openrouter, None, None, None, True,
                    "not compared: this database does not record BYOK provider charges")
    gap = openrouter - ours
    ratio = gap / openrouter if openrouter else None
    within = abs(gap) <= NOISE or (openrouter != 0 and abs(gap) <= tolerance * abs(openrouter))
    our_requests = recorded.requests if openrouter_requests is not None else None
    return Line(scope, what, openrouter, ours, gap, ratio, within,
                _meaning(gap, within, recorded, openrouter_requests), openrouter_requests, our_requests)


def _meaning(gap: Decimal, within: bool, recorded: Recorded, openrouter_requests: int | None) -> str:
    if within:
        if openrouter_requests is not None and openrouter_requests != recorded.requests:
            return f"dollars match; request counts differ ({openrouter_requests} at OpenRouter, {recorded.requests} here)"
        return "matches"
    if gap > 0:
        if recorded.requests == 0:
            return "no rows here: all of it went around this proxy (another client, machine or key holder)"
        if openrouter_requests is not None and openrouter_requests > recorded.requests:
            missing = openrouter_requests - recorded.requests
            return f"{missing} requests OpenRouter counted are not in the log: traffic that bypassed the proxy, or rows missing"
        if recorded.priced_by_us:
            return f"OpenRouter billed more: pricing drift in the {recorded.priced_by_us} rows we priced ourselves, or traffic that bypassed the proxy"
        return "OpenRouter billed more than the log shows: traffic that bypassed the proxy, or rows missing"
    if recorded.priced_by_us:
        return f"the log shows more: pricing drift in the {recorded.priced_by_us} rows we priced ourselves (catalog or estimate)"
    if openrouter_requests is not None and openrouter_requests < recorded.requests:
        return f"the log has {recorded.requests - openrouter_requests} requests OpenRouter did not bill, or counts them on another day or model"
    return "the log shows more than OpenRouter billed: its counters may lag a few minutes, or rows were counted twice"


def compare_key(key: KeyUsage, ours: Mapping[str, Recorded], tolerance: Decimal) -> list[Line]:
    lines = [compare("key", w, key.usage[w], ours[w].credits, tolerance, recorded=ours[w]) for w in WINDOWS]
    for w in WINDOWS:
        byok_ours = ours[w].byok
        lines.append(compare("key", f"byok {w}", key.byok[w], byok_ours, tolerance,
                             recorded=Recorded(byok_ours or _ZERO, byok_ours, ours[w].requests, 0)))
    return lines


# /activity covers the last 30 completed UTC days.
ACTIVITY_DAYS = 30


def activity_days(rows: list[ActivityRow], since: datetime, last_completed: datetime) -> tuple[str, str]:
    """The first and last UTC day to compare: from `since` (no earlier than the 30 days OpenRouter
    keeps), through the last day it covers (its last completed day, or a later one its reply has)."""
    oldest = (last_completed - timedelta(days=ACTIVITY_DAYS - 1)).date()
    last = max([last_completed.date().isoformat(), *(r.date for r in rows)])
    return max(since.date(), oldest).isoformat(), last


def compare_activity(rows: list[ActivityRow], ours: Mapping[tuple[str, str], Recorded], first_day: str,
                     tolerance: Decimal) -> list[Line]:
    """Day by day, model by model; OpenRouter's providers of one model are summed, since the log's
    provider names need not match its endpoint names. A day x model only we have is a line too."""
    theirs: dict[tuple[str, str], tuple[Decimal, int]] = {}
    permaslugs: dict[str, str] = {}
    for row in rows:
        if row.date < first_day:
            continue
        usage, requests = theirs.get((row.date, row.model), (_ZERO, 0))
        theirs[(row.date, row.model)] = (usage + row.usage_usd, requests + row.requests)
        if row.model_permaslug:
            permaslugs[row.model_permaslug] = row.model
    mine: dict[tuple[str, str], Recorded] = {}
    for (day, model), rec in ours.items():
        cell = (day, permaslugs.get(model, model))
        prior = mine.get(cell)
        mine[cell] = rec if prior is None else Recorded(
            prior.credits + rec.credits, None, prior.requests + rec.requests, prior.priced_by_us + rec.priced_by_us
        )
    lines = []
    for day, model in sorted(theirs.keys() | mine.keys()):
        usage, requests = theirs.get((day, model), (_ZERO, 0))
        rec = mine.get((day, model), NOTHING)
        lines.append(compare("activity", f"{day} {model}", usage, rec.credits, tolerance,
                             recorded=rec, openrouter_requests=requests))
    return lines
