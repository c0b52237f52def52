"""Budget definitions: `BudgetSpec`, parsed and checked from the config's `budgets:` list, and the
calendar or rolling window a budget covers at a given moment (pure; `now` is passed in).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from proxy.errors import ConfigError, shown

PERIODS = ("day", "week", "month", "rolling")
SCOPES = ("total", "key", "project", "session", "model")
MATCH_FIELDS = ("key", "project", "session", "model")
ACTIONS = ("block", "warn")
DEFAULT_WARN_AT = (Decimal("0.5"), Decimal("0.8"))

UTC = timezone.utc
_ONE = Decimal(1)
_ZERO = Decimal(0)
_KEYS = ("name", "limit_usd", "period", "scope", "match", "warn_at", "action")
_ROLLING = re.compile(r"rolling:(\d+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    name: str
    limit_usd: Decimal
    period: str = "day"
    rolling_seconds: int | None = None
    scope: str = "total"
    match: tuple[tuple[str, str], ...] = ()
    warn_at: tuple[Decimal, ...] = DEFAULT_WARN_AT
    action: str = "block"

    @property
    def period_label(self) -> str:
        if self.rolling_seconds is None:
            return self.period
        return f"rolling:{_duration(self.rolling_seconds)}"

    @property
    def period_phrase(self) -> str:
        """How messages name the window: 'today', 'this week', 'in the last 5h'."""
        if self.rolling_seconds is not None:
            return f"in the last {_duration(self.rolling_seconds)}"
        return {"day": "today", "week": "this week", "month": "this month"}[self.period]


# ---------------------------------------------------------------- config


def parse_budgets(raw: Any, path: str = "budgets") -> tuple[BudgetSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: expected a list of budgets, got {shown(raw)}")
    specs: list[BudgetSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        spec = _parse_one(item, f"{path}[{i}]")
        if spec.name in seen:
            raise ConfigError(f"{path}[{i}].name: duplicate budget name {spec.name!r}")
        seen.add(spec.name)
        specs.append(spec)
    return tuple(specs)


def _parse_one(raw: Any, path: str) -> BudgetSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {shown(raw)}")
    for k in raw:
        if k not in _KEYS:
            raise ConfigError(f"{path}.{k}: unknown key; expected one of {', '.join(_KEYS)}")
    for k in ("name", "limit_usd"):
        if k not in raw:
            raise ConfigError(f"{path}.{k}: required")
    name = raw["name"]
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{path}.name: expected a non-empty string, got {shown(name)}")
    limit = _number(raw["limit_usd"], f"{path}.limit_usd")
    if limit <= 0:
        raise ConfigError(f"{path}.limit_usd: must be greater than 0, got {shown(raw['limit_usd'])}")
    period, seconds = _period(raw.get("period", "day"), f"{path}.period")
    scope = _choice(raw.get("scope", "total"), SCOPES, f"{path}.scope")
    action = _choice(raw.get("action", "block"), ACTIONS, f"{path}.action")
    return BudgetSpec(
        name=name.strip(),
        limit_usd=limit,
        period=period,
        rolling_seconds=seconds,
        scope=scope,
        match=_match(raw.get("match"), f"{path}.match"),
        warn_at=_warn_at(raw["warn_at"], f"{path}.warn_at") if "warn_at" in raw else DEFAULT_WARN_AT,
        action=action,
    )



def _number(value: Any, path: str) -> Decimal:
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            pass
        else:
            if number.is_finite():
                return number
    raise ConfigError(f"{path}: expected a number, got {shown(value)}")


def _choice(value: Any, options: tuple[str, ...], path: str) -> str:
    if isinstance(value, str) and value in options:
        return value
    raise ConfigError(f"{path}: expected one of {', '.join(options)}, got {shown(value)}")


def _period(value: Any, path: str) -> tuple[str, int | None]:
    if isinstance(value, str):
        if value in ("day", "week", "month"):
            return value, None
        m = _ROLLING.fullmatch(value.strip())
        if m and int(m.group(1)) > 0:
            return "rolling", int(m.group(1)) * _UNIT_S[m.group(2)]
    raise ConfigError(f"{path}: expected day, week, month or rolling:<n><s|m|h|d> (e.g. rolling:5h), got {shown(value)}")


def _match(value: Any, path: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping such as {{model: \"anthropic/*\"}}, got {shown(value)}")
    pairs: list[tuple[str, str]] = []
    for k, pattern in value.items():
        if k not in MATCH_FIELDS:
            raise ConfigError(f"{path}.{k}: unknown field; expected one of {', '.join(MATCH_FIELDS)}")
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{path}.{k}: expected a glob pattern string, got {shown(pattern)}")
        pairs.append((k, pattern))
    return tuple(sorted(pairs))


def _warn_at(value: Any, path: str) -> tuple[Decimal, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of fractions such as [0.5, 0.8], got {shown(value)}")
    shares: set[Decimal] = set()
    for i, item in enumerate(value):
        share = _number(item, f"{path}[{i}]")
        if not _ZERO < share < _ONE:
            raise ConfigError(f"{path}[{i}]: expected a fraction between 0 and 1 (exclusive), got {shown(item)}")
        shares.add(share)
    return tuple(sorted(shares))


# ---------------------------------------------------------------- windows


def window(spec: BudgetSpec, now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The budget window containing `now`, as aware datetimes in `tz`.

    Datetimes sharing a tzinfo subtract as wall-clock times in Python, so convert to UTC before doing
    arithmetic on these across a DST change.
    """
    now_u = as_utc(now)
    if spec.rolling_seconds is not None:
        return (now_u - timedelta(seconds=spec.rolling_seconds)).astimezone(tz), now_u.astimezone(tz)
    day = now_u.astimezone(tz).date()
    if spec.period == "day":
        start = day
        end = day + timedelta(days=1)
    elif spec.period == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = date(start.year + 1, 1, 1) if start.month == 12 else date(start.year, start.month + 1, 1)
    return _midnight(start, tz), _midnight(end, tz)


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    # Round-tripping through UTC moves a midnight that a DST jump skips to the first instant that exists.
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC).astimezone(tz)


def as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("budgets need aware datetimes")
    return moment.astimezone(UTC)


def _duration(seconds: int) -> str:
    for unit in ("d", "h", "m"):
        if seconds % _UNIT_S[unit] == 0:
            return f"{seconds // _UNIT_S[unit]}{unit}"
    return f"{seconds}s"
