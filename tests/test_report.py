"""report: the one --since parser (report and whatif), grouping, exact Decimal totals, unknown costs, and the three output formats."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from proxy.errors import CliError
from proxy.cli.report import TOKEN_FIELDS, group_of, parse_since, render, summarise
from proxy.tables import money

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def row(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "started_at": "2026-11-26T23:30:00.000000Z",
        "model": "openai/gpt-4o",
        "provider": "OpenAI",
        "project": "acme",
        "session": "s1",
        "client": "aider",
        "endpoint": "chat/completions",
        "key_alias": None,
        "key_fingerprint": "0123456789abcdef",
        "outcome": "ok",
        "is_free": 0,
        "input_tokens": 100,
        "output_tokens": 10,
        "cached_tokens": 50,
        "cache_write_tokens": None,
        "reasoning_tokens": 5,
        "cost_usd": "0.1",
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("", None),
        ("30m", NOW - timedelta(minutes=30)),
        ("12h", NOW - timedelta(hours=12)),
        ("7d", NOW - timedelta(days=7)),
        ("30d", NOW - timedelta(days=30)),
        ("2w", NOW - timedelta(days=14)),
        ("7w", NOW - timedelta(weeks=7)),
        (" 1d ", NOW - timedelta(days=1)),
        ("0d", NOW),
        ("90m", NOW - timedelta(hours=1, minutes=30)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T08:30:00", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
        ("2026-11-01 08:30", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
        ("2026-11-01T08:30:00+02:00", datetime(2026, 11, 1, 8, 30, tzinfo=timezone(timedelta(hours=2)))),
        ("2026-11-01T05:00+02:00", datetime(2026, 11, 1, 3, tzinfo=UTC)),
        ("2026-11-01T05:00Z", datetime(2026, 11, 1, 5, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str | None, expected: datetime | None) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize(
    "text",
    ["yesterday", "7", "d7", "-7d", "-3d", "7 d", "30 days", "1.5d", "7y", "7s", "7D", "2026-13-01", " "],
)
def test_parse_since_rejects_with_one_line(text: str) -> None:
    with pytest.raises(CliError) as caught:
        parse_since(text, NOW)
    assert str(caught.value).startswith("--since: ")
    assert repr(text) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("by", "changes", "group"),
    [
        ("model", {}, "openai/gpt-4o"),
        ("model", {"model": None}, "(none)"),
        ("provider", {}, "OpenAI"),
        ("project", {"project": None}, "(none)"),
        ("session", {}, "s1"),
        ("client", {}, "aider"),
        ("endpoint", {}, "chat/completions"),
        ("key", {}, "0123456789abcdef"),
        ("key", {"key_alias": "ci"}, "ci"),
        ("key", {"key_fingerprint": None}, "(none)"),
        ("day", {}, "2026-11-26"),
    ],
)
def test_group_of(by: str, changes: dict[str, Any], group: str) -> None:
    assert group_of(row(**changes), by, ZoneInfo("UTC")) == group


def test_day_follows_the_time_zone() -> None:
    assert group_of(row(), "day", ZoneInfo("Europe/Berlin")) == "2026-11-27"
    assert group_of(row(), "day", ZoneInfo("America/New_York")) == "2026-11-26"


def test_summarise_totals_are_exact_sums() -> None:
    rows = [row(cost_usd="0.1")] * 3 + [row(model="b", cost_usd="0.2", outcome="aborted", is_free=1,
                                            input_tokens=None, cache_write_tokens=7)]
    lines, total = summarise(rows, "model")
    assert [line.group for line in lines] == ["openai/gpt-4o", "b"]  # most expensive first
    assert lines[0].cost_usd == Decimal("0.3")  # not 0.30000000000000004
    assert total.cost_usd == Decimal("0.5")
    assert total.requests == 4 and total.errors == 1 and total.free_requests == 1
    assert total.tokens["input_tokens"] == 300  # an unknown count adds nothing
    assert total.tokens["cache_write_tokens"] == 7
    for name in TOKEN_FIELDS:
        assert total.tokens[name] == sum(line.tokens[name] for line in lines)


def test_unknown_cost_is_counted_not_zeroed() -> None:
    lines, total = summarise([row(cost_usd=None), row(cost_usd="0.01")], "model")
    assert total.cost_unknown == 1 and total.cost_usd == Decimal("0.01")
    text = render(lines, total, "model", "table")
    assert "$0.01*" in text and "no known cost" in text


def test_days_sort_by_date() -> None:
    rows = [row(started_at="2026-11-27T01:00:00.000000Z", cost_usd="9"), row(started_at="2026-11-25T01:00:00.000000Z")]
    lines, _ = summarise(rows, "day")
    assert [line.group for line in lines] == ["2026-11-25", "2026-11-27"]


def test_json_format() -> None:
    lines, total = summarise([row(), row(model="x", cost_usd="0.000001")], "model")
    data = json.loads(render(lines, total, "model", "json"))
    assert data["by"] == "model"
    assert [r["group"] for r in data["rows"]] == ["openai/gpt-4o", "x"]
    assert data["total"]["cost_usd"] == "0.100001"
    assert data["total"]["requests"] == 2 == sum(r["requests"] for r in data["rows"])


def test_csv_format() -> None:
    lines, total = summarise([row(), row(session="s2")], "session")
    parsed = list(csv.DictReader(io.StringIO(render(lines, total, "session", "csv"))))
    assert [r["group"] for r in parsed] == ["s1", "s2"]
    assert parsed[0]["cost_usd"] == "0.1" and parsed[0]["input_tokens"] == "100"


def test_csv_quotes_hostile_group_names() -> None:
    lines, total = summarise([row(session='a,"b"\nc')], "session")
    parsed = list(csv.DictReader(io.StringIO(render(lines, total, "session", "csv"))))
    assert parsed[0]["group"] == 'a,"b"\nc'


def test_table_format() -> None:
    lines, total = summarise([row(input_tokens=1234567)], "model")
    text = render(lines, total, "model", "table").splitlines()
    assert text[0].split() == ["model", "requests", "errors", "input", "output", "cached", "reasoning", "cost_usd"]
    assert set(text[1]) <= {"-", " "}
    assert text[2].split() == ["openai/gpt-4o", "1", "0", "1,234,567", "10", "50", "5", "$0.10"]
    assert text[-1].split()[0] == "total"
    assert len({len(line) for line in text}) == 1  # columns line up


def test_empty_report() -> None:
    lines, total = summarise([], "model")
    assert lines == [] and total.requests == 0
    assert json.loads(render(lines, total, "model", "json"))["total"]["cost_usd"] == "0"
    assert "total" in render(lines, total, "model", "table")


@pytest.mark.parametrize(("amount", "text"), [("0", "$0.00"), ("0.01", "$0.01"), ("0.1", "$0.10"), ("1234.5", "$1,234.50")])
def test_money_to_the_cent(amount: str, text: str) -> None:
    assert money(Decimal(amount)) == text


@pytest.mark.parametrize("amount", ["0.004", "0.005", "0.0062", "0.000123"])
def test_money_below_a_cent_keeps_its_digits(amount: str) -> None:
    # A single cheap call must not read as $0.00.
    text = money(Decimal(amount))
    assert text.startswith("$0.00")
    assert Decimal(text[1:]) == Decimal(amount)
