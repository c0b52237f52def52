from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from proxy.budgets.spec import DEFAULT_WARN_AT, BudgetSpec, parse_budgets, window
from proxy.errors import ConfigError

BERLIN = ZoneInfo("Europe/Berlin")
UTC = timezone.utc


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=BERLIN)


def spec(**kw: Any) -> BudgetSpec:
    base: dict[str, Any] = {"name": "daily", "limit_usd": D("5")}
    base.update(kw)
    return BudgetSpec(**base)


# ---------------------------------------------------------------- config


def test_parse_full_example() -> None:
    raw = [
        {
            "name": "daily",
            "limit_usd": 5,
            "period": "day",
            "scope": "total",
            "match": {},
            "warn_at": [0.8, 0.5],
            "action": "block",
        },
        {"name": "claude", "limit_usd": "2.50", "period": "rolling:5h", "scope": "session", "match": {"model": "anthropic/*"}},
        {"name": "soft", "limit_usd": 0.01, "period": "month", "action": "warn", "warn_at": []},
    ]
    assert parse_budgets(raw) == (
        BudgetSpec("daily", D("5"), "day", None, "total", (), (D("0.5"), D("0.8")), "block"),
        BudgetSpec("claude", D("2.50"), "rolling", 5 * 3600, "session", (("model", "anthropic/*"),), DEFAULT_WARN_AT, "block"),
        BudgetSpec("soft", D("0.01"), "month", None, "total", (), (), "warn"),
    )
    assert parse_budgets(None) == ()


@pytest.mark.parametrize(
    ("period", "seconds"),
    [("rolling:5h", 18000), ("rolling:30m", 1800), ("rolling:2d", 172800), ("rolling:90s", 90)],
)
def test_parse_rolling(period: str, seconds: int) -> None:
    (got,) = parse_budgets([{"name": "r", "limit_usd": 1, "period": period}])
    assert (got.period, got.rolling_seconds) == ("rolling", seconds)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "x"}, "budgets: expected a list of budgets, got a mapping"),
        (["daily"], "budgets[0]: expected a mapping, got 'daily'"),
        ([{"limit_usd": 1}], "budgets[0].name: required"),
        ([{"name": "a", "limit_usd": 1}, {"name": "b", "limit_usd": "ten"}], "budgets[1].limit_usd: expected a number, got 'ten'"),
        ([{"name": "a", "limit_usd": True}], "budgets[0].limit_usd: expected a number, got True"),
        ([{"name": "a", "limit_usd": 0}], "budgets[0].limit_usd: must be greater than 0, got 0"),
        ([{"name": "a", "limit_usd": "nan"}], "budgets[0].limit_usd: expected a number, got 'nan'"),
        ([{"name": "a", "limit_usd": 1, "limt": 2}], "budgets[0].limt: unknown key; expected one of name, limit_usd"),
        ([{"name": "a", "limit_usd": 1, "period": "hourly"}], "budgets[0].period: expected day, week, month or rolling"),
        ([{"name": "a", "limit_usd": 1, "period": "rolling:0h"}], "budgets[0].period: expected day"),
        ([{"name": "a", "limit_usd": 1, "period": "rolling:5y"}], "budgets[0].period: expected day"),
        ([{"name": "a", "limit_usd": 1, "scope": "user"}], "budgets[0].scope: expected one of total, key, project, session, model, got 'user'"),
        ([{"name": "a", "limit_usd": 1, "action": "stop"}], "budgets[0].action: expected one of block, warn, got 'stop'"),
        ([{"name": "a", "limit_usd": 1, "match": "x"}], "budgets[0].match: expected a mapping"),
        ([{"name": "a", "limit_usd": 1, "match": {"user": "x"}}], "budgets[0].match.user: unknown field"),
        ([{"name": "a", "limit_usd": 1, "match": {"project": 42}}], "budgets[0].match.project: expected a glob pattern string, got 42"),
        ([{"name": "a", "limit_usd": 1, "warn_at": 0.5}], "budgets[0].warn_at: expected a list"),
        ([{"name": "a", "limit_usd": 1, "warn_at": [0.5, 1]}], "budgets[0].warn_at[1]: expected a fraction between 0 and 1"),
        ([{"name": "a", "limit_usd": 1, "warn_at": ["half"]}], "budgets[0].warn_at[0]: expected a number, got 'half'"),
        ([{"name": "a", "limit_usd": 1}, {"name": "a", "limit_usd": 2}], "budgets[1].name: duplicate budget name 'a'"),
    ],
)
def test_parse_errors_name_the_path(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_budgets(raw)
    assert str(exc.value).startswith(message)


# ---------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("period", "now", "start", "end", "hours"),
    [
        ("day", at(2026, 11, 27, 12, 0), at(2026, 11, 27), at(2026, 11, 28), 24),
        ("day", at(2026, 11, 27, 0, 0), at(2026, 11, 27), at(2026, 11, 28), 24),
        # Europe/Berlin springs forward on 2026-03-29 and falls back on 2026-10-25.
        ("day", at(2026, 3, 29, 12, 0), at(2026, 3, 29), at(2026, 3, 30), 23),
        ("day", at(2026, 10, 25, 2, 30), at(2026, 10, 25), at(2026, 10, 26), 25),
        ("week", at(2026, 11, 27, 12, 0), at(2026, 11, 23), at(2026, 11, 30), 168),
        ("week", at(2026, 11, 23, 0, 0), at(2026, 11, 23), at(2026, 11, 30), 168),
        ("week", at(2026, 10, 25, 9, 0), at(2026, 10, 19), at(2026, 10, 26), 169),
        ("month", at(2026, 11, 30, 23, 59), at(2026, 11, 1), at(2026, 12, 1), 720),
        ("month", at(2026, 12, 31, 23, 59), at(2026, 12, 1), at(2027, 1, 1), 744),
        ("month", at(2028, 2, 29, 12, 0), at(2028, 2, 1), at(2028, 3, 1), 696),
        ("month", at(2026, 3, 31, 12, 0), at(2026, 3, 1), at(2026, 4, 1), 743),
    ],
)
def test_calendar_windows(period: str, now: datetime, start: datetime, end: datetime, hours: int) -> None:
    got_start, got_end = window(spec(period=period), now, BERLIN)
    assert (got_start, got_end) == (start, end)
    assert got_start.utcoffset() == start.utcoffset()
    assert (got_end.astimezone(UTC) - got_start.astimezone(UTC)) == timedelta(hours=hours)


def test_window_from_utc_now_uses_local_day() -> None:
    # 23:30 UTC on the 27th is already the 28th in Berlin.
    start, end = window(spec(), datetime(2026, 11, 27, 23, 30, tzinfo=UTC), BERLIN)
    assert (start, end) == (at(2026, 11, 28), at(2026, 11, 29))


def test_midnight_skipped_by_dst_starts_day_at_first_instant() -> None:
    # America/Santiago skipped 00:00-01:00 on 2026-09-06.
    santiago = ZoneInfo("America/Santiago")
    start, end = window(spec(), datetime(2026, 9, 6, 12, tzinfo=santiago), santiago)
    assert start.strftime("%Y-%m-%d %H:%M") == "2026-09-06 01:00"
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=23)


def test_rolling_window_counts_real_seconds_across_dst() -> None:
    now = at(2026, 3, 29, 5, 0)  # CEST; 5 real hours back is 23:00 CET the day before
    start, end = window(spec(period="rolling", rolling_seconds=5 * 3600), now, BERLIN)
    assert end == now
    assert start == at(2026, 3, 28, 23, 0)
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=5)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError):
        window(spec(), datetime(2026, 11, 27), BERLIN)


@pytest.mark.parametrize(
    ("period", "seconds", "label", "phrase"),
    [
        ("day", None, "day", "today"),
        ("week", None, "week", "this week"),
        ("month", None, "month", "this month"),
        ("rolling", 5 * 3600, "rolling:5h", "in the last 5h"),
        ("rolling", 2 * 86400, "rolling:2d", "in the last 2d"),
        ("rolling", 90 * 60, "rolling:90m", "in the last 90m"),
        ("rolling", 90, "rolling:90s", "in the last 90s"),
    ],
)
def test_period_label_and_phrase(period: str, seconds: int | None, label: str, phrase: str) -> None:
    s = spec(period=period, rolling_seconds=seconds)
    assert (s.period_label, s.period_phrase) == (label, phrase)
