"""The pure reconcile core and the store sums it compares: tables of payloads, windows and gaps."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from proxy.pricing.reconcile import (
    activity_days, compare, compare_activity, compare_key, parse_activity, parse_key, parse_tolerance, window_starts,
)
from proxy.store.activity import ActivityRow, Recorded, recorded_by_day_model, recorded_by_window
from proxy.store.sqlite import prepare

D = Decimal


def test_parse_key_reads_every_window_and_defaults_absent_byok_to_zero() -> None:
    key = parse_key({"data": {"usage_daily": 1.5, "usage_weekly": 2, "usage_monthly": 25.5, "byok_usage_daily": 0.25}})
    assert key.usage == {"day": D("1.5"), "week": D("2"), "month": D("25.5")}
    assert key.byok == {"day": D("0.25"), "week": D(0), "month": D(0)}


@pytest.mark.parametrize("payload", [None, {}, {"data": []}, {"data": {"usage_daily": "1", "usage_weekly": 1, "usage_monthly": 1}},
                                     {"data": {"usage_daily": True, "usage_weekly": 1, "usage_monthly": 1}},
                                     {"data": {"usage_daily": float("nan"), "usage_weekly": 1, "usage_monthly": 1}}])
def test_parse_key_refuses_what_is_not_the_documented_shape(payload: object) -> None:
    with pytest.raises(ValueError):
        parse_key(payload)


def test_parse_activity_documented_item() -> None:
    (row,) = parse_activity({"data": [{
        "date": "2025-08-24", "model": "openai/gpt-4.1", "model_permaslug": "openai/gpt-4.1-2025-04-14",
        "endpoint_id": "550e8400", "provider_name": "OpenAI", "usage": 0.015, "byok_usage_inference": 0.012,
        "requests": 5, "prompt_tokens": 50, "completion_tokens": 125, "reasoning_tokens": 25}]})
    assert row == ActivityRow("2025-08-24", "openai/gpt-4.1", "openai/gpt-4.1-2025-04-14", "550e8400", "OpenAI",
                              D("0.015"), D("0.012"), 5, 50, 125, 25)
    for bad in ({"data": [{"date": "yesterday", "model": "m", "usage": 1}]}, {"data": [{"date": "2025-08-24", "usage": 1}]},
                {"data": [{"date": "2025-08-24", "model": "m", "usage": 1, "requests": -1}]}, {"data": {}}):
        with pytest.raises(ValueError):
            parse_activity(bad)


@pytest.mark.parametrize(("now", "week", "month"), [
    ("2026-12-02T07:44:00", "2026-11-30", "2026-12-01"),  # a Wednesday: the week began Monday, in November
    ("2026-11-30T00:00:00", "2026-11-30", "2026-11-01"),  # Monday midnight starts a week
    ("2026-11-29T23:59:59", "2026-11-23", "2026-11-01"),  # Sunday still belongs to the week before
])
def test_windows_are_utc_day_monday_week_and_month(now: str, week: str, month: str) -> None:
    starts = window_starts(datetime.fromisoformat(now).replace(tzinfo=UTC))
    assert starts["day"].isoformat() == now[:10] + "T00:00:00+00:00"
    assert starts["week"].date().isoformat() == week and starts["month"].date().isoformat() == month


def test_tolerance_forms() -> None:
    assert parse_tolerance("1%") == D("0.01") and parse_tolerance("0.5%") == D("0.005") and parse_tolerance("0.02") == D("0.02")
    for bad in ("x", "-1%", "nan"):
        with pytest.raises(ValueError):
            parse_tolerance(bad)


@pytest.mark.parametrize(("theirs", "ours", "recorded", "within", "meaning"), [
    ("1.00", "1.00", Recorded(D(1), D(0), 3, 0), True, "matches"),
    ("1.00", "0.995", Recorded(D("0.995"), D(0), 3, 0), True, "matches"),  # inside 1%
    ("0", "0.0000004", Recorded(D("0.0000004"), D(0), 1, 0), True, "matches"),  # float noise
    ("1.00", "0", Recorded(D(0), D(0), 0, 0), False, "no rows here"),
    ("1.00", "0.50", Recorded(D("0.5"), D(0), 3, 0), False, "traffic that bypassed the proxy"),
    ("1.00", "0.90", Recorded(D("0.9"), D(0), 3, 2), False, "pricing drift in the 2 rows we priced ourselves"),
    ("1.00", "1.20", Recorded(D("1.2"), D(0), 3, 1), False, "the log shows more: pricing drift"),
    ("1.00", "1.20", Recorded(D("1.2"), D(0), 3, 0), False, "counters may lag"),
    ("0", "0.20", Recorded(D("0.2"), D(0), 1, 0), False, "counters may lag"),
])
def test_compare_gap_tolerance_and_meaning(theirs: str, ours: str, recorded: Recorded, within: bool, meaning: str) -> None:
    line = compare("key", "day", D(theirs), D(ours), D("0.01"), recorded=recorded)
    assert line.gap == D(theirs) - D(ours) and line.within is within and meaning in line.meaning
    assert line.gap_ratio == (None if D(theirs) == 0 else line.gap / D(theirs))


def test_byok_lines_are_judged_only_when_the_log_records_the_provider_part() -> None:
    key = parse_key({"data": {"usage_daily": 0.05, "usage_weekly": 0.05, "usage_monthly": 0.05,
                              "byok_usage_daily": 1, "byok_usage_weekly": 1, "byok_usage_monthly": 1}})
    unknown = {w: Recorded(D("0.05"), None, 1, 0) for w in ("day", "week", "month")}
    assert all(x.within for x in compare_key(key, unknown, D("0.01")))
    known = {w: Recorded(D("0.05"), D("0.5"), 1, 0) for w in ("day", "week", "month")}
    byok = [x for x in compare_key(key, known, D("0.01")) if x.what.startswith("byok")]
    assert [x.gap for x in byok] == [D("0.5")] * 3 and not any(x.within for x in byok)


def _activity(date: str, model: str, usage: str, requests: int, permaslug: str | None = None, endpoint: str = "e1") -> ActivityRow:
    return ActivityRow(date, model, permaslug, endpoint, "P", D(usage), D(0), requests, 0, 0, 0)


def test_activity_sums_providers_maps_permaslugs_and_shows_cells_only_we_have() -> None:
    rows = [_activity("2026-11-30", "openai/gpt-4o", "1.0", 2, "openai/gpt-4o-2024-08-06"),
            _activity("2026-11-30", "openai/gpt-4o", "0.5", 1, endpoint="e2"),
            _activity("2026-11-20", "openai/gpt-4o", "9", 9)]  # before --since: not compared
    ours = {("2026-11-30", "openai/gpt-4o-2024-08-06"): Recorded(D("1.5"), None, 3, 0),
            ("2026-12-01", "x/y"): Recorded(D("0.1"), None, 1, 0)}
    lines = compare_activity(rows, ours, "2026-11-25", D("0.01"))
    assert [(x.what, x.within, x.openrouter_requests, x.our_requests) for x in lines] == [
        ("2026-11-30 openai/gpt-4o", True, 3, 3), ("2026-12-01 x/y", False, 0, 1)]
    assert "did not bill" in lines[1].meaning


def test_activity_days_reach_the_last_day_openrouter_reports() -> None:
    since, yesterday = datetime(2026, 11, 25, 8, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    assert activity_days([], since, yesterday) == ("2026-11-25", "2026-12-01")
    assert activity_days([_activity("2026-12-02", "m", "1", 1)], since, yesterday) == ("2026-11-25", "2026-12-02")
    # --since 90d: OpenRouter keeps 30 days, so older days of the log have nothing to match.
    assert activity_days([], datetime(2026, 9, 1, tzinfo=UTC), yesterday) == ("2026-11-02", "2026-12-01")


def test_free_requests_that_bypass_the_proxy_show_in_the_counts() -> None:
    line = compare("activity", "2026-12-01 m:free", D(0), D(0), D("0.01"), recorded=Recorded(D(0), None, 2, 0),
                   openrouter_requests=5)
    assert line.within and line.meaning == "dollars match; request counts differ (5 at OpenRouter, 2 here)"


def _db(tmp_path: Path, *, upstream_column: bool) -> sqlite3.Connection:
    path = tmp_path / "r.db"
    prepare(path)
    db = sqlite3.connect(path)
    if not upstream_column:  # a database an earlier version wrote, not yet migrated by `serve`
        for trigger in ("insert", "update"):  # the later rollup migration's triggers name the column
            db.execute(f"DROP TRIGGER spend_rollups_{trigger}")
        db.execute("ALTER TABLE requests DROP COLUMN upstream_cost_usd")
    return db


def _row(db: sqlite3.Connection, rid: str, at: str, cost: str | None, *, fp: str = "f1", model: str = "m",
         source: str = "reported", outcome: str = "ok", upstream: str | None = None) -> None:
    cols = ["id", "started_at", "finished_at", "method", "endpoint", "model", "key_fingerprint", "streamed", "status",
            "outcome", "cost_usd", "cost_source", "is_free", "duration_ms"]
    values: list[object] = [rid, at, at, "POST", "chat/completions", model, fp, 0, 200, outcome, cost, source, 0, 1.0]
    if upstream is not None:
        cols.append("upstream_cost_usd")
        values.append(upstream)
    db.execute(f"INSERT INTO requests ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values)
    db.commit()


def test_recorded_by_window_filters_by_key_and_splits_byok_when_recorded(tmp_path: Path) -> None:
    db = _db(tmp_path, upstream_column=True)
    _row(db, "a", "2026-12-02T01:00:00.000000Z", "0.10")
    _row(db, "b", "2026-12-01T01:00:00.000000Z", "1.05", upstream="1.00", source="catalog")  # BYOK: fee 0.05
    _row(db, "c", "2026-11-30T01:00:00.000000Z", "0.20", fp="other")
    _row(db, "d", "2026-11-29T01:00:00.000000Z", "0.40")  # a Sunday: last week, and November
    _row(db, "e", "2026-12-02T02:00:00.000000Z", None, outcome="blocked", source="none")
    starts = window_starts(datetime(2026, 12, 2, 8, tzinfo=UTC))
    mine = recorded_by_window(db, starts, "f1")
    assert mine["day"] == Recorded(D("0.10"), D(0), 1, 0)
    assert mine["week"] == Recorded(D("0.15"), D("1.00"), 2, 1)
    assert mine["month"] == mine["week"]  # Dec 1 is in this week; Nov 29 is not this month
    assert recorded_by_window(db, starts, None)["week"].credits == D("0.35")


def test_without_the_byok_column_byok_is_unknown_and_cost_counts_as_credits(tmp_path: Path) -> None:
    db = _db(tmp_path, upstream_column=False)
    _row(db, "a", "2026-12-02T01:00:00.000000Z", "1.05")
    mine = recorded_by_window(db, window_starts(datetime(2026, 12, 2, 8, tzinfo=UTC)), "f1")
    assert mine["day"] == Recorded(D("1.05"), None, 1, 0)


def test_recorded_by_day_model_uses_every_key_and_skips_requests_that_never_reached_a_model(tmp_path: Path) -> None:
    db = _db(tmp_path, upstream_column=False)
    _row(db, "a", "2026-11-30T23:59:59.999999Z", "0.10", model="a/b")
    _row(db, "b", "2026-12-01T00:00:00.000000Z", "0.20", model="a/b", fp="other")
    _row(db, "c", "2026-12-01T00:00:01.000000Z", None, model="a/b", outcome="proxy_error", source="none")
    _row(db, "d", "2026-12-02T00:00:01.000000Z", "0.30", model="a/b")  # after the last day
    assert recorded_by_day_model(db, "2026-11-30", "2026-12-01") == {
        ("2026-11-30", "a/b"): Recorded(D("0.10"), None, 1, 0), ("2026-12-01", "a/b"): Recorded(D("0.20"), None, 1, 0)}


def test_a_database_serve_never_salted_has_no_rows_of_any_key(tmp_path: Path) -> None:
    from proxy.pricing.books import key_lines

    db = _db(tmp_path, upstream_column=False)
    _row(db, "a", "2026-12-02T01:00:00.000000Z", "0.10")
    db.close()
    key = parse_key({"data": {"usage_daily": 0.1, "usage_weekly": 0.1, "usage_monthly": 0.1}})
    now = datetime(2026, 12, 2, 8, tzinfo=UTC)
    lines = key_lines(tmp_path / "r.db", key, lambda salt: "f1", now, D("0.01"))
    assert [x.ours for x in lines[:3]] == [D(0)] * 3 and "no rows here" in lines[0].meaning
    # Every row (managed-key mode) needs no fingerprint.
    assert all(x.within for x in key_lines(tmp_path / "r.db", key, None, now, D("0.01")))


def test_serve_rereads_only_yesterday_and_today_once_older_days_are_settled(tmp_path: Path) -> None:
    from proxy.pricing.books import SettledDays, key_lines

    db = _db(tmp_path, upstream_column=False)
    db.execute("INSERT INTO meta (key, value) VALUES ('fingerprint_salt', '00')")
    _row(db, "a", "2026-12-20T01:00:00.000000Z", "1.00", fp="k")
    _row(db, "b", "2026-12-29T01:00:00.000000Z", "0.10", fp="k")
    key = parse_key({"data": {"usage_daily": 0.1, "usage_weekly": 0.1, "usage_monthly": 1.1}})
    now, settled = datetime(2026, 12, 31, 8, tzinfo=UTC), SettledDays()  # a Thursday
    path = tmp_path / "r.db"
    first = key_lines(path, key, lambda salt: "k", now, D("0.01"), settled)
    assert [x.ours for x in first[:3]] == [D(0), D("0.10"), D("1.10")]
    assert settled.filled and set(settled.days) == {"2026-12-20", "2026-12-29"}
    _row(db, "c", "2026-12-30T02:00:00.000000Z", "0.05", fp="k")  # yesterday: re-read
    _row(db, "d", "2026-12-31T02:00:00.000000Z", "0.20", fp="k")  # today: read
    _row(db, "e", "2026-12-29T02:00:00.000000Z", "5.00", fp="k")  # a settled day: not read again
    again = key_lines(path, key, lambda salt: "k", now, D("0.01"), settled)
    assert [x.ours for x in again[:3]] == [D("0.20"), D("0.35"), D("1.35")]
    fresh = key_lines(path, key, lambda salt: "k", now, D("0.01"))
    assert (fresh[1].ours, fresh[2].ours) == (D("5.35"), D("6.35"))
