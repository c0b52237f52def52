"""report: --since/--until words, every grouping, breakdown and filter against known rows (exact
Decimal totals equal to the rows), the hourly rollup following inserts, back-fills and upserts,
migration of an old database, retention, and the three output formats."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import io
import json
import random
import sqlite3
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from proxy.cli.report import calendar_period, parse_range, parse_since, render
from proxy.errors import CliError
from proxy.pricing.generation import _FILL
from proxy.store import records, rollups
from proxy.store.engine import open_store
from proxy.store.reader import open_reader
from proxy.store.recorder import Recorder, Statement
from proxy.store.records import UsageRecord
from proxy.store.reports import GROUPINGS, SUMMED, TIME_GROUPINGS, FreeUsage, Filters, Line, Report, as_document, document_text, report
from proxy.store.sqlite import MIGRATIONS, REQUEST_COLUMNS, encode_record, open_db, prepare, prune_raw
from proxy.tables import money
from tests.test_storage import make_record

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
T0 = datetime(2026, 11, 24, 22, 17, 3, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("", None),
        ("30m", NOW - timedelta(minutes=30)),
        ("12h", NOW - timedelta(hours=12)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(days=14)),
        (" 1d ", NOW - timedelta(days=1)),
        ("0d", NOW),
        ("1mo", datetime(2026, 10, 27, 10, 0, tzinfo=UTC)),
        ("today", datetime(2026, 11, 27, tzinfo=UTC)),
        ("yesterday", datetime(2026, 11, 26, tzinfo=UTC)),
        ("this-week", datetime(2026, 11, 23, tzinfo=UTC)),
        ("this-month", datetime(2026, 11, 1, tzinfo=UTC)),
        ("last-month", datetime(2026, 10, 1, tzinfo=UTC)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01 08:30", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
        ("2026-11-01T05:00+02:00", datetime(2026, 11, 1, 3, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str | None, expected: datetime | None) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["someday", "7", "-7d", "7 d", "30 days", "1.5d", "7y", "7D", "2026-13-01", " "])
def test_parse_since_rejects_with_one_line(text: str) -> None:
    with pytest.raises(CliError) as caught:
        parse_since(text, NOW)
    assert str(caught.value).startswith("--since: ")
    assert repr(text) in str(caught.value) and "\n" not in str(caught.value)


def test_one_month_back_from_the_31st_is_the_last_day_of_the_shorter_month() -> None:
    assert parse_since("1mo", datetime(2026, 3, 31, 12, tzinfo=UTC)) == datetime(2026, 2, 28, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("word", "start", "end"),
    [
        ("today", "2026-11-27", "2026-11-28"),
        ("yesterday", "2026-11-26", "2026-11-27"),
        ("this-week", "2026-11-23", "2026-11-30"),
        ("last-week", "2026-11-16", "2026-11-23"),
        ("this-month", "2026-11-01", "2026-12-01"),
        ("last-month", "2026-10-01", "2026-11-01"),
    ],
)
def test_calendar_words_are_periods_in_the_time_zone(word: str, start: str, end: str) -> None:
    tz = ZoneInfo("America/New_York")
    first, last = calendar_period(word, NOW, tz)
    assert (first, last) == (datetime.fromisoformat(start).replace(tzinfo=tz), datetime.fromisoformat(end).replace(tzinfo=tz))
    # --since WORD alone is that period; --until gives its own bound.
    assert parse_range(word, None, NOW, tz) == (first, last)
    assert parse_range(word, "2027-01-01", NOW, tz)[1] == datetime(2027, 1, 1, tzinfo=tz)


def test_until_before_since_is_refused() -> None:
    with pytest.raises(CliError, match="--until"):
        parse_range("today", "2026-01-01", NOW, ZoneInfo("UTC"))


# -- known rows --------------------------------------------------------------------------------

MODELS = ["openai/gpt-4o", "anthropic/claude-sonnet-4.5", "google/gemini-2.5-flash", None]
COSTS = ["0.1", "0.2", "0.000001", None, "1.5", "0.0000005", "0.000000000000000000000001", "0.00001234567891"]


def known_records(count: int = 240, seed: int = 7) -> list[UsageRecord]:
    rng = random.Random(seed)
    out = []
    for n in range(count):
        started = T0 + timedelta(minutes=n * 23 + rng.randrange(20), seconds=rng.randrange(60))
        blocked = n % 17 == 0
        cost = rng.choice(COSTS)
        out.append(
            make_record(
                n,
                started_at=started,
                finished_at=started + timedelta(seconds=2),
                model=rng.choice(MODELS),
                provider=rng.choice(["OpenAI", "Anthropic", None]),
                project=rng.choice(["acme", "web", None]),
                session=f"s{rng.randrange(6)}",
                client=rng.choice(["claude-code", "aider", None]),
                endpoint=rng.choice(["chat/completions", "messages"]),
                key_alias=rng.choice(["ci", None]),
                key_fingerprint=rng.choice(["0123456789abcdef", "fedcba9876543210", None]),
                status=402 if blocked else rng.choice([200, 200, 200, 500]),
                outcome=records.BLOCKED if blocked else rng.choice([records.OK, records.OK, records.ABORTED]),
                is_free=n % 5 == 0,
                input_tokens=None if n % 7 == 0 else rng.randrange(100_000),
                output_tokens=rng.randrange(5_000),
                cache_write_tokens=rng.choice([None, 64]),
                cost_usd=None if blocked or cost is None else Decimal(cost),
            )
        )
    return out


async def write(target: Path | str, recs: Iterable[UsageRecord | Statement]) -> None:
    """Through the store, so the same rows land in SQLite or PostgreSQL (db_target picks)."""
    store = await open_store(target)
    try:
        recorder = Recorder(store)
        for rec in recs:
            recorder.record(rec)
        await recorder.drain()
    finally:
        await store.close()


def reader(target: Path | str) -> Any:
    return open_reader(target)


def key_of(rec: UsageRecord) -> str:
    return rec.key_alias or rec.key_fingerprint or "(none)"


def label(rec: UsageRecord, by: str, tz: ZoneInfo) -> str:
    local = rec.started_at.astimezone(tz)
    if by == "hour":
        return local.strftime("%Y-%m-%d %H:00")
    if by == "day":
        return local.date().isoformat()
    if by == "week":
        return (local.date() - timedelta(days=local.weekday())).isoformat()
    if by == "month":
        return local.strftime("%Y-%m")
    if by == "key":
        return key_of(rec)
    return getattr(rec, by) or "(none)"


def expected(
    recs: list[UsageRecord], levels: list[str], tz: ZoneInfo = ZoneInfo("UTC"), keep: Callable[[UsageRecord], bool] = lambda r: True
) -> dict[tuple[str, ...], dict[str, Any]]:
    """The reference: plain Python over the records, one by one."""
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for rec in recs:
        if not keep(rec):
            continue
        key = tuple(label(rec, level, tz) for level in levels)
        acc = out.setdefault(key, {"requests": 0, "errors": 0, "blocked": 0, "free": 0, "input": 0, "cost": Decimal(0), "unknown": 0})
        acc["requests"] += 1
        blocked = rec.outcome == records.BLOCKED or rec.status == 402
        acc["blocked"] += blocked
        acc["errors"] += rec.outcome != records.OK and not blocked
        acc["free"] += rec.is_free
        acc["input"] += rec.input_tokens or 0
        if rec.cost_usd is None:
            acc["unknown"] += 1
        else:
            acc["cost"] += rec.cost_usd
    return out


def got(result: Report) -> dict[tuple[str, ...], dict[str, Any]]:
    out = {}
    for line in result.lines:
        key = (line.group,) + ((line.breakdown,) if result.breakdown else ())
        out[key] = {
            "requests": line.requests,
            "errors": line.counts["errors"],
            "blocked": line.counts["blocked"],
            "free": line.counts["free_requests"],
            "input": line.tokens["input_tokens"],
            "cost": line.cost_usd,
            "unknown": line.cost_unknown,
        }
    return out


def assert_equal(result: Report, want: dict[tuple[str, ...], dict[str, Any]]) -> None:
    assert got(result) == want
    assert result.total.requests == sum(v["requests"] for v in want.values())
    assert result.total.cost_usd == sum((v["cost"] for v in want.values()), Decimal(0))


@pytest.fixture
async def known(db_target: Path | str) -> tuple[Path | str, list[UsageRecord]]:
    """The known rows on each engine: every report must equal them on SQLite and on PostgreSQL."""
    recs = known_records()
    await write(db_target, recs)
    return db_target, recs


@pytest.fixture
async def known_sqlite(tmp_path: Path) -> tuple[Path, list[UsageRecord]]:
    """For what only SQLite has: the rollups and their retention."""
    recs = known_records()
    path = tmp_path / "usage.db"
    await write(path, recs)
    return path, recs


@pytest.mark.parametrize("by", GROUPINGS)
async def test_every_grouping_equals_the_rows(known: tuple[Path, list[UsageRecord]], by: str) -> None:
    path, recs = known
    with reader(path) as db:
        result = report(db, by)
    assert_equal(result, expected(recs, [by]))
    # Exact to the last digit: 0.1 + 0.2 is 0.3, and a yocto-dollar is not lost.
    assert result.total.cost_usd == sum((r.cost_usd for r in recs if r.cost_usd is not None), Decimal(0))
    assert "E" not in as_document(result)["total"]["cost_usd"]


@pytest.mark.parametrize(("by", "breakdown"), [("day", "model"), ("model", "day"), ("project", "key"), ("hour", "client"), ("session", "endpoint")])
async def test_breakdowns_equal_the_rows(known: tuple[Path, list[UsageRecord]], by: str, breakdown: str) -> None:
    path, recs = known
    with reader(path) as db:
        result = report(db, by, breakdown=breakdown)
    assert_equal(result, expected(recs, [by, breakdown]))


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        (Filters(models=("openai/*",)), lambda r: (r.model or "").startswith("openai/")),
        (Filters(models=("openai/*", "google/*")), lambda r: (r.model or "").startswith(("openai/", "google/"))),
        (Filters(projects=("acme",)), lambda r: r.project == "acme"),
        (Filters(sessions=("s1", "s2")), lambda r: r.session in ("s1", "s2")),
        (Filters(keys=("ci",)), lambda r: r.key_alias == "ci"),
        (Filters(keys=("fedcba98*",)), lambda r: (r.key_fingerprint or "").startswith("fedcba98")),
        (Filters(projects=("web",), models=("anthropic/*",)), lambda r: r.project == "web" and (r.model or "").startswith("anthropic/")),
    ],
)
async def test_filters(known: tuple[Path, list[UsageRecord]], filters: Filters, keep: Callable[[UsageRecord], bool]) -> None:
    path, recs = known
    since = T0 + timedelta(hours=20, minutes=3)

    def keep_since(r: UsageRecord) -> bool:
        return keep(r) and r.started_at >= since

    with reader(path) as db:
        for by in ("model", "day", "session"):
            assert_equal(report(db, by, filters=filters), expected(recs, [by], keep=keep))
            assert_equal(report(db, by, filters=filters, since=since), expected(recs, [by], keep=keep_since))


@pytest.mark.parametrize(
    ("since", "until"),
    [
        (T0 + timedelta(hours=5, minutes=13, seconds=7), None),
        (None, T0 + timedelta(hours=30, minutes=1)),
        (T0 + timedelta(hours=5, minutes=13), T0 + timedelta(hours=40, minutes=59, microseconds=1)),
        (T0 + timedelta(hours=7, minutes=10), T0 + timedelta(hours=7, minutes=40)),  # inside one hour
        (datetime(2026, 11, 25, tzinfo=UTC), datetime(2026, 11, 26, tzinfo=UTC)),  # whole hours only
    ],
)
async def test_ranges_read_edge_hours_from_raw_rows(
    known: tuple[Path, list[UsageRecord]], since: datetime | None, until: datetime | None
) -> None:
    path, recs = known

    def keep(r: UsageRecord) -> bool:
        return (since is None or r.started_at >= since) and (until is None or r.started_at < until)

    with reader(path) as db:
        for by in ("model", "hour", "session"):
            assert_equal(report(db, by, since=since, until=until), expected(recs, [by], keep=keep))


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata", "Europe/Berlin"])
async def test_time_groupings_follow_the_time_zone(known: tuple[Path, list[UsageRecord]], zone: str) -> None:
    path, recs = known
    tz = ZoneInfo(zone)
    for since, until in (
        (None, None),
        (T0 + timedelta(hours=3, minutes=31), None),
        (T0 + timedelta(hours=1, minutes=53), T0 + timedelta(hours=50, minutes=12)),
        (T0 + timedelta(hours=2, minutes=13), T0 + timedelta(hours=50, minutes=42)),
    ):
        def keep(r: UsageRecord) -> bool:
            return (since is None or r.started_at >= since) and (until is None or r.started_at < until)

        with reader(path) as db:
            for by in TIME_GROUPINGS:
                assert_equal(report(db, by, tz=tz, since=since, until=until), expected(recs, [by], tz, keep=keep))
            assert_equal(report(db, "model", breakdown="day", tz=tz, since=since), expected(recs, ["model", "day"], tz, keep=lambda r: since is None or r.started_at >= since))


async def test_blocked_is_its_own_column_not_an_error(db_target: Path | str) -> None:
    path = db_target
    await write(path, [make_record(0), make_record(1, status=402, outcome=records.BLOCKED, cost_usd=None), make_record(2, outcome=records.ABORTED)])
    with reader(path) as db:
        total = report(db, "model").total
    assert (total.requests, total.counts["blocked"], total.counts["errors"]) == (3, 1, 1)


async def test_by_session_shows_first_and_last_seen_models_project_and_client(db_target: Path | str) -> None:
    path = db_target
    base = datetime(2026, 11, 20, 9, 58, tzinfo=UTC)
    recs = [
        make_record(0, session="fix-bug", started_at=base, model="a/x", project="acme", client="claude-code"),
        make_record(1, session="fix-bug", started_at=base + timedelta(minutes=75), model="b/y", project="acme", client="claude-code"),
        make_record(2, session="other", started_at=base, model="a/x"),
    ]
    await write(path, recs)
    with reader(path) as db:
        result = report(db, "session")
    row = next(r for r in as_document(result)["rows"] if r["group"] == "fix-bug")
    assert row["first_seen"] == "2026-11-20T09:58:00.000000Z" and row["last_seen"] == "2026-11-20T11:13:00.000000Z"
    assert row["duration_s"] == 75 * 60 and row["requests"] == 2
    assert row["models"] == ["a/x", "b/y"] and row["projects"] == ["acme"] and row["clients"] == ["claude-code"]
    table = render(result, "table")
    assert "fix-bug" in table and "1h15m" in table and "a/x b/y" in table


# -- the rollup follows every write -------------------------------------------------------------


def rollup_equals_raw(path: Path) -> None:
    """Every period and attribution of each rollup equals the sums of its raw rows."""
    with reader(path) as db:
        for rollup in rollups.ROLLUPS:
            counters = rollup.counters("r", (*rollups.MONEY, *rollups.COMPARED))
            keys = rollup.key_values("r")
            raw = db.execute(
                f"SELECT {', '.join(keys)}, {', '.join(f'SUM({v})' for v in counters.values())} "
                f"FROM requests AS r GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))}"
            ).fetchall()
            kept = db.execute(
                f"SELECT {', '.join(rollup.keys)}, {', '.join(counters)} FROM {rollup.table} WHERE requests != 0"
            ).fetchall()
            assert sorted(map(tuple, raw)) == sorted(map(tuple, kept)), rollup.table


ODD_COSTS = ["0.00575", "7", "0", "999999.999999999999999999", "0.000000000000000000000001", "1234567.5",
             "0.0000000000000000000000001", "-0.25", "0.1234567890123", "100.000000000000000000000000", None]


async def test_the_recorders_money_parts_add_up_as_the_text_does(tmp_path: Path) -> None:
    """The recorder writes each amount's integer parts and the insert trigger reads them; rows
    written by anyone else are cut from their text in SQL. Both must fill every rollup alike, odd
    amounts (negative, past 24 decimals, a million dollars) included; the back-fill's UPDATEs
    (which leave the parts stale) must still move the text's amounts."""
    rng = random.Random(3)
    recs = [
        dataclasses.replace(
            rec,
            cost_usd=None if (c := rng.choice(ODD_COSTS)) is None else Decimal(c),
            cost_reported_usd=None if (c := rng.choice(ODD_COSTS)) is None else Decimal(c),
            cost_catalog_usd=None if (c := rng.choice(ODD_COSTS)) is None else Decimal(c),
        )
        for rec in known_records(200)
    ]
    await write(tmp_path / "recorder.db", recs)
    prepare(tmp_path / "text.db")
    other = sqlite3.connect(tmp_path / "text.db")
    marks = ", ".join("?" for _ in REQUEST_COLUMNS)
    with other:
        other.executemany(f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({marks})", map(encode_record, recs))
    other.close()
    for path in (tmp_path / "recorder.db", tmp_path / "text.db"):
        rollup_equals_raw(path)
    tables = {}
    for path in (tmp_path / "recorder.db", tmp_path / "text.db"):
        with reader(path) as db:
            assert db.execute("SELECT count(*) FROM requests WHERE cost_usd_pico IS NOT NULL").fetchone()[0] == (path.stem == "recorder") * sum(
                1 for r in recs if r.cost_usd is not None and r.cost_usd >= 0 and r.cost_usd < 10**6 and r.cost_usd.as_tuple().exponent >= -24  # type: ignore[operator]
            )
            tables[path.stem] = {t.table: sorted(map(tuple, db.execute(f"SELECT * FROM {t.table}"))) for t in rollups.ROLLUPS}
    assert tables["recorder"] == tables["text"]
    assert any(row for row in tables["text"]["spend_hourly"])
    # A back-fill moves amounts by their text: the parts it leaves behind are never read again.
    with contextlib.closing(sqlite3.connect(tmp_path / "recorder.db")) as db, db:
        db.execute("UPDATE requests SET cost_usd = '0.5', cost_reported_usd = '0.25' WHERE rowid % 3 = 0")
    rollup_equals_raw(tmp_path / "recorder.db")


async def test_rollup_follows_backfill_updates_and_rewritten_rows(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    recs = known_records(120)
    await write(path, recs)
    # A /generation back-fill (the statement generation.py runs) and a row written a second time.
    cut = make_record(500, started_at=T0, cost_usd=None, provider=None, input_tokens=None)
    # Parameters: reported, cost, source, upstream, is_byok, then input, output, cached, reasoning and
    # web search counts, provider, id.
    fill = Statement(_FILL, ("0.00731", "0.00731", records.COST_GENERATION, None, None, 900, 12, None, None, None, "Anthropic", cut.id))
    again = dataclasses.replace(recs[3], model="z/rewritten", cost_usd=Decimal("2.5"))
    await write(path, [cut, fill, again])
    rollup_equals_raw(path)
    # A row written a second time keeps its first version (idempotent on the request id).
    final = list(recs) + [
        dataclasses.replace(cut, cost_usd=Decimal("0.00731"), provider="Anthropic", input_tokens=900)
    ]
    with reader(path) as db:
        assert db.execute("SELECT count(*) FROM requests").fetchone()[0] == 121
        for by in ("model", "provider", "hour"):
            assert_equal(report(db, by), expected(final, [by]))


async def test_a_database_from_an_earlier_version_keeps_every_row_and_its_totals(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    recs = known_records(150)
    # Migrations 1-5 only, rows written as version 5 wrote them, one cost in the old back-fill's '1E-7' form.
    old = sqlite3.connect(path, isolation_level=None)
    for number, migration in enumerate(MIGRATIONS[:5], start=1):
        migration(old)
        old.execute(f"PRAGMA user_version = {number}")
    v5 = [i for i, name in enumerate(REQUEST_COLUMNS) if name != "upstream_cost_usd"]  # added by migration 6
    placeholders = ", ".join("?" for _ in v5)
    old.executemany(
        f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS[i] for i in v5)}) VALUES ({placeholders})",
        ([encode_record(r)[i] for i in v5] for r in recs),
    )
    old.execute("UPDATE requests SET cost_usd = '1E-7' WHERE id = ?", (recs[1].id,))
    old.close()
    recs[1] = dataclasses.replace(recs[1], cost_usd=Decimal("1E-7"))
    with reader(path) as db:
        before = report(db, "model")  # not migrated yet: summed from raw rows, '1E-7' left out and said so
    unread = [dataclasses.replace(r, cost_usd=Decimal(0)) if r.id == recs[1].id else r for r in recs]
    assert_equal(before, expected(unread, ["model"]))
    assert before.notes == ("1 amounts are not fixed-point decimals of at most 24 places and are not in the totals",)
    prepare(path)
    rollup_equals_raw(path)
    with reader(path) as db:
        assert db.execute("SELECT count(*) FROM requests").fetchone()[0] == 150
        for by in ("model", "day", "session"):
            assert_equal(report(db, by), expected(recs, [by]))


# -- formats ------------------------------------------------------------------------------------


def test_table_format_lines_up_and_time_groupings_get_a_bar() -> None:
    line = Line("2026-11-26")
    line.sums[SUMMED.index("requests")] = 2
    line.sums[SUMMED.index("input_tokens")] = 1234567
    line.sums[SUMMED.index("cost_usd_pico")] = 100_000_000_000
    small = Line("2026-11-27")
    small.sums[SUMMED.index("requests")] = 1
    small.sums[SUMMED.index("cost_usd_pico")] = 25_000_000_000
    total = Line("total")
    total.merge(line)
    total.merge(small)
    text = render(Report("day", None, None, None, [line, small], total), "table").splitlines()
    assert text[0].split() == ["day", "requests", "errors", "blocked", "input", "output", "cached", "reasoning", "cost_usd"]
    assert text[2].split()[:2] == ["2026-11-26", "2"] and "1,234,567" in text[2] and "$0.10" in text[2]
    assert text[2].endswith("█" * 16) and text[3].endswith("████")
    assert text[-1].split()[0] == "total" and "$0.125" in text[-1]


async def test_json_and_csv(known: tuple[Path, list[UsageRecord]]) -> None:
    path, recs = known
    with reader(path) as db:
        result = report(db, "day", breakdown="model")
    data = json.loads(render(result, "json"))
    assert data["by"] == "day" and data["breakdown"] == "model"
    assert Decimal(data["total"]["cost_usd"]) == sum((Decimal(r["cost_usd"]) for r in data["rows"]), Decimal(0))
    parsed = list(csv.DictReader(io.StringIO(render(result, "csv"))))
    assert [(r["group"], r["breakdown"]) for r in parsed] == [(r["group"], r["breakdown"]) for r in data["rows"]]


async def test_csv_quotes_hostile_group_names(db_target: Path | str) -> None:
    path = db_target
    await write(path, [make_record(0, session='a,"b"\nc')])
    with reader(path) as db:
        parsed = list(csv.DictReader(io.StringIO(render(report(db, "session"), "csv"))))
    assert parsed[0]["group"] == 'a,"b"\nc'


def test_empty_report(tmp_path: Path) -> None:
    prepare(tmp_path / "e.db")
    with reader(tmp_path / "e.db") as db:
        result = report(db, "model")
    assert result.lines == [] and result.total.requests == 0
    assert json.loads(render(result, "json"))["total"]["cost_usd"] == "0"
    assert "total" in render(result, "table")


@pytest.mark.parametrize(("amount", "text"), [("0", "$0.00"), ("0.01", "$0.01"), ("0.1", "$0.10"), ("1234.5", "$1,234.50")])
def test_money_to_the_cent(amount: str, text: str) -> None:
    assert money(Decimal(amount)) == text


# -- retention ----------------------------------------------------------------------------------


async def test_retention_deletes_raw_rows_yet_every_report_stays_equal(known_sqlite: tuple[Path, list[UsageRecord]]) -> None:
    path, recs = known_sqlite
    with reader(path) as db:
        before = {by: as_document(report(db, by)) for by in GROUPINGS}
    cutoff = T0 + timedelta(days=2, minutes=30)
    db = await open_db(path)
    try:
        deleted = await prune_raw(db, cutoff)
    finally:
        await db.close()
    pruned = [r for r in recs if r.started_at < cutoff.replace(minute=0)]
    assert deleted == len(pruned) > 100
    with reader(path) as db:
        assert db.execute("SELECT count(*) FROM requests").fetchone()[0] == len(recs) - deleted
        for by in GROUPINGS:
            assert as_document(report(db, by)) == before[by]
        # Whole hours and ranges starting after the cut are exact as before.
        since = datetime(2026, 11, 25, 3, tzinfo=UTC)
        assert_equal(report(db, "model", since=since), expected(recs, ["model"], keep=lambda r: r.started_at >= since))
        late = cutoff + timedelta(hours=2, minutes=7)
        assert_equal(report(db, "day", since=late), expected(recs, ["day"], keep=lambda r: r.started_at >= late))
        # A range starting inside a pruned hour reads that whole hour, and says so.
        inside = datetime(2026, 11, 25, 3, 20, tzinfo=UTC)
        result = report(db, "model", since=inside)
        assert_equal(result, expected(recs, ["model"], keep=lambda r: r.started_at >= since))
        assert result.notes and "pruned" in result.notes[0]


async def test_the_writer_prunes_by_raw_days(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    recs = known_records(60)
    await write(path, recs)
    db = await open_db(path)
    try:
        recorder = Recorder(db, raw_days=1, clock=lambda: T0 + timedelta(days=1, hours=3))
        task = asyncio.create_task(recorder.run())
        recorder.record(make_record(1000, started_at=T0 + timedelta(days=1, hours=3)))
        for _ in range(200):
            if recorder.written:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await recorder.drain()
    finally:
        await db.close()
    kept = [r for r in recs if r.started_at >= T0.replace(minute=0) + timedelta(hours=3)]
    assert recorder.pruned == len(recs) - len(kept) > 0
    with reader(path) as db:
        assert db.execute("SELECT count(*) FROM requests").fetchone()[0] == len(kept) + 1
        assert_equal(report(db, "model"), expected([*recs, make_record(1000, started_at=T0 + timedelta(days=1, hours=3))], ["model"]))


async def test_short_sessions_inside_and_straddling_a_range(db_target: Path | str) -> None:
    # Sessions of 5 requests 7 minutes apart: most lie wholly inside the range (read from the
    # per-session rollup), a few straddle its ends (read from the hourly rollup and raw rows).
    path = db_target
    recs = [
        make_record(n, session=f"t{n // 5}", started_at=T0 + timedelta(minutes=7 * n), model=MODELS[n % 3], cost_usd=Decimal(COSTS[n % 3]))
        for n in range(300)
    ]
    await write(path, recs)
    since, until = T0 + timedelta(hours=3, minutes=50), T0 + timedelta(hours=27, minutes=10)
    with reader(path) as db:
        for breakdown in (None, "model"):
            levels = ["session"] + ([breakdown] if breakdown else [])
            result = report(db, "session", breakdown=breakdown, since=since, until=until)
            assert_equal(result, expected(recs, levels, keep=lambda r: since <= r.started_at < until))
        line = next(line for line in report(db, "session", since=since, until=until).lines if line.group == "t6")
        assert line.first_at == "2026-11-25T02:08:03.000000Z" and line.requests == 2  # only its rows in range


async def test_limit_keeps_the_costliest_groups_and_the_whole_total(known: tuple[Path, list[UsageRecord]]) -> None:
    path, recs = known
    with reader(path) as db:
        full = report(db, "model")
        top = report(db, "model", limit=2)
        days = report(db, "day", limit=2)
    assert [line.group for line in top.lines] == [line.group for line in full.lines[:2]]
    assert top.total.sums == full.total.sums
    assert top.notes[-1] == f"2 of {len(full.lines)} model groups shown; the total covers all"
    assert [line.group for line in days.lines] == [line.group for line in report_days(path)[-2:]]
    with reader(path) as db:
        sessions = report(db, "session", since=T0 + timedelta(hours=2, minutes=1))
        top_sessions = report(db, "session", since=T0 + timedelta(hours=2, minutes=1), limit=2)
    assert [line.as_dict(True) for line in top_sessions.lines] == [line.as_dict(True) for line in sessions.lines[:2]]
    assert top_sessions.lines[0].models


async def test_the_costliest_sessions_with_exact_ties_are_the_full_reports_first_lines(db_target: Path | str) -> None:
    # Costs that tie exactly, and costs apart only in their 24th decimal (below what a float or a
    # pico-dollar sum tells apart); sessions across a range's edges (per-session rollup, hourly
    # rollup and raw rows at once); a session with no name. The first N lines of the full report
    # (ordered by exact cost, then name) are what a limit of N keeps, with the same total.
    costs = ["0.1", "0.1", "0.100000000000000000000001", "0.05", "0.1", "0.000000000000000000000001", "0.05"]
    recs = []
    for n in range(140):
        session = None if n % 7 == 6 else f"t{(n * 3) % 7}"
        recs.append(make_record(n, session=session, started_at=T0 + timedelta(minutes=11 * n), model=MODELS[n % 3],
                                project=["acme", None][n % 2], cost_usd=Decimal(costs[n % 7])))
    # Names tied on cost whose order differs by collation: code points (Python's order) put 'Z' <
    # 'a' < 'é' < '\uff5a' < '\U0001f600', as UTF-8 bytes do; a locale or UTF-16 order would not.
    for n, name in enumerate(["\U0001f600", "é", "a", "\uff5a", "Z"]):
        recs.append(make_record(500 + n, session=name, started_at=T0 + timedelta(hours=30), cost_usd=Decimal("0.05")))
    await write(db_target, recs)
    ranges = [(None, None), (T0 + timedelta(hours=3, minutes=50), T0 + timedelta(hours=20, minutes=10)), (T0 + timedelta(hours=5), None)]
    with reader(db_target) as db:
        for since, until in ranges:
            for breakdown in (None, "model"):
                full = report(db, "session", breakdown=breakdown, since=since, until=until)
                groups = list(dict.fromkeys(line.group for line in full.lines))
                assert len(groups) >= 5 and "(none)" in groups
                for limit in range(len(groups) + 1):
                    top = report(db, "session", breakdown=breakdown, since=since, until=until, limit=limit)
                    kept = set(groups[:limit])
                    want = [line.as_dict(True) for line in full.lines if line.group in kept]
                    assert [line.as_dict(True) for line in top.lines] == want, (since, until, breakdown, limit)
                    assert top.total.as_dict() == full.total.as_dict()
                    shown = [f"{limit} of {len(groups)} session groups shown; the total covers all"] if limit < len(groups) else []
                    assert list(top.notes) == [*full.notes, *shown]


def report_days(path: Path) -> list[Line]:
    with reader(path) as db:
        return report(db, "day").lines


# -- BYOK split and imported /activity days (issue 10) -----------------------------------------


async def test_table_and_csv_show_the_byok_part_beside_the_whole_cost(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    at = datetime(2026, 11, 26, 9, tzinfo=UTC)
    await write(path, [
        make_record(0, started_at=at, cost_usd=Decimal("1.05"), upstream_cost_usd=Decimal("1")),
        make_record(1, started_at=at, model="x/plain", cost_usd=Decimal("0.25")),
    ])
    with reader(path) as db:
        result = report(db, "model")
    text = render(result, "table").splitlines()
    headers = text[0].split()
    assert headers[-2:] == ["cost_usd", "byok_usd"]
    byok_row = next(line for line in text if line.startswith("openai/gpt-4o"))
    assert byok_row.split()[-2:] == ["$1.05", "$1.00"]
    assert next(line for line in text if line.startswith("total")).split()[-2:] == ["$1.30", "$1.00"]
    parsed = list(csv.DictReader(io.StringIO(render(result, "csv"))))
    assert {r["group"]: Decimal(r["upstream_cost_usd"]) for r in parsed} == {"openai/gpt-4o": 1, "x/plain": 0}
    # Without any BYOK part the table keeps its usual columns.
    with reader(path) as db:
        plain = report(db, "model", filters=Filters(models=("x/*",)))
    assert "byok_usd" not in render(plain, "table").splitlines()[0]


def activity(day: str, model: str, usage: str, byok: str = "0", requests: int = 1, provider: str = "OpenAI", endpoint: str = "e1") -> Any:
    from proxy.store.activity import ActivityRow

    return ActivityRow(day, model, None, endpoint, provider, Decimal(usage), Decimal(byok), requests, 100, 10, 1)


async def imported_db(path: Path | str) -> Path | str:
    """Log rows on 2026-11-26 only; imported days 2026-11-25 (not in the log) and 2026-11-26 (in it)."""
    from proxy.store.activity import store_activity
    from proxy.store.reader import open_writer

    at = datetime(2026, 11, 26, 9, tzinfo=UTC)
    await write(path, [
        make_record(0, started_at=at, cost_usd=Decimal("0.5"), project="acme"),
        make_record(1, started_at=at, model="anthropic/claude-sonnet-4.5", provider="Anthropic", cost_usd=Decimal("0.25")),
    ])
    rows = [
        activity("2026-11-25", "openai/gpt-4o", "0.1", requests=3),
        activity("2026-11-25", "anthropic/claude-sonnet-4.5", "0.05", byok="2", requests=2, provider="Anthropic"),
        activity("2026-11-25", "anthropic/claude-sonnet-4.5", "0.000000000000000000000001", requests=1, provider="Anthropic", endpoint="e2"),
        # A day the log covers: never added (no double counting).
        activity("2026-11-26", "openai/gpt-4o", "9", requests=9),
    ]
    db = open_writer(path)
    try:
        store_activity(db, rows, NOW)
        store_activity(db, rows, NOW)  # re-importing changes nothing
    finally:
        db.close()
    return path


async def test_imported_days_are_added_only_where_the_log_has_no_rows(db_target: Path | str) -> None:
    path = await imported_db(db_target)
    with reader(path) as db:
        by_day = report(db, "day")
        by_model = report(db, "model")
        by_provider = report(db, "provider", breakdown="day")
    days = {(line.group, line.imported): line for line in by_day.lines}
    assert set(days) == {("2026-11-25", True), ("2026-11-26", False)}
    imported = days["2026-11-25", True]
    # Whole spend is credits plus the BYOK provider part, exactly.
    assert imported.cost_usd == Decimal("2.150000000000000000000001")
    assert imported.money("upstream_cost_usd") == Decimal(2)
    assert imported.requests == 6 and imported.tokens["input_tokens"] == 300 and imported.tokens["output_tokens"] == 30
    assert days["2026-11-26", False].cost_usd == Decimal("0.75")
    assert by_day.total.cost_usd == Decimal("2.900000000000000000000001") == by_model.total.cost_usd == by_provider.total.cost_usd
    assert by_day.total.requests == 8
    assert any("imported" in note and "never" in note for note in by_day.notes)
    models = {(line.group, line.imported): line.cost_usd for line in by_model.lines}
    assert models == {
        ("openai/gpt-4o", False): Decimal("0.5"),
        ("openai/gpt-4o", True): Decimal("0.1"),
        ("anthropic/claude-sonnet-4.5", False): Decimal("0.25"),
        ("anthropic/claude-sonnet-4.5", True): Decimal("2.050000000000000000000001"),
    }
    assert {(line.group, line.breakdown, line.imported) for line in by_provider.lines} == {
        ("OpenAI", "2026-11-25", True), ("OpenAI", "2026-11-26", False),
        ("Anthropic", "2026-11-25", True), ("Anthropic", "2026-11-26", False),
    }
    data = json.loads(render(by_day, "json"))
    assert [row.get("imported", False) for row in data["rows"]] == [True, False]
    assert Decimal(data["total"]["cost_usd"]) == sum((Decimal(r["cost_usd"]) for r in data["rows"]), Decimal(0))
    table = render(by_day, "table")
    assert "2026-11-25 †" in table or "2026-11-25†" in table
    assert "† imported" in table
    parsed = list(csv.DictReader(io.StringIO(render(by_day, "csv"))))
    assert [r["imported"] for r in parsed] == ["true", ""]
    # A range that ends before the imported day, or starts after it, leaves it out.
    with reader(path) as db:
        later = report(db, "day", since=datetime(2026, 11, 26, tzinfo=UTC))
        model_filtered = report(db, "model", filters=Filters(models=("openai/*",)))
    assert [line.imported for line in later.lines] == [False]
    assert {(line.group, line.imported) for line in model_filtered.lines} == {("openai/gpt-4o", False), ("openai/gpt-4o", True)}


@pytest.mark.parametrize("by", ["project", "session", "key", "client", "endpoint", "hour"])
async def test_other_groupings_say_imported_days_are_not_included(db_target: Path | str, by: str) -> None:
    path = await imported_db(db_target)
    with reader(path) as db:
        result = report(db, by)
        empty = report(db, by, since=datetime(2026, 11, 26, tzinfo=UTC))
    assert not any(line.imported for line in result.lines)
    assert result.total.cost_usd == Decimal("0.75")
    assert any(note.startswith("imported days (OpenRouter's /activity) have no") and "not included" in note for note in result.notes)
    assert not any("imported" in note for note in empty.notes)


async def test_imported_days_are_utc_days(db_target: Path | str) -> None:
    path = await imported_db(db_target)
    tz = ZoneInfo("America/New_York")
    with reader(path) as db:
        local_days = report(db, "day", tz=tz)
        models = report(db, "model", tz=tz)
        utc_month = report(db, "month")
    assert not any(line.imported for line in local_days.lines)
    assert any("UTC days" in note and "America/New_York" in note for note in local_days.notes)
    assert models.total.cost_usd == Decimal("2.900000000000000000000001")
    assert sorted((line.group, line.imported) for line in utc_month.lines) == [("2026-11", False), ("2026-11", True)]
    assert utc_month.total.cost_usd == models.total.cost_usd


# -- what a session report lists, and its JSON text, at speed --------------------------------------


def odd_records() -> list[UsageRecord]:
    """known_records() plus values a joined list could mistake: commas, quotes, non-ASCII, empty."""
    odd = [
        make_record(900 + n, started_at=T0 + timedelta(hours=n), session=session, model=model, project=project, client=client,
                    cost_usd=Decimal("0.25"))
        for n, (session, model, project, client) in enumerate([
            ("s1", "a/x,b/y", "acme,web", "claude-code"),
            ("s1", "a/x", "acme", "cli\u00e9nt \"q\""),
            ('s\u00e9ss "7"\n', "b/y", None, None),
            (None, "a/x", "", "aider"),
        ])
    ]
    return [*known_records(), *odd]


def distinct_extras(recs: list[UsageRecord], levels: list[str], keep: Callable[[UsageRecord], bool]) -> dict[tuple[str, ...], tuple[set[str], ...]]:
    out: dict[tuple[str, ...], tuple[set[str], ...]] = {}
    for rec in recs:
        if keep(rec):
            found = out.setdefault(tuple(label(rec, level, ZoneInfo("UTC")) for level in levels), (set(), set(), set()))
            for values, value in zip(found, (rec.model, rec.project, rec.client)):
                if value:
                    values.add(value)
    return out


@pytest.mark.parametrize("with_commas", [False, True])
async def test_session_models_projects_and_clients_equal_the_rows(tmp_path: Path, with_commas: bool) -> None:
    # Read in the same pass as the sums (joined lists), or, when a value holds a comma, apart.
    recs = odd_records() if with_commas else known_records()
    path = tmp_path / "u.db"
    await write(path, recs)
    ranges = [(None, None), (T0 + timedelta(hours=3, minutes=10), T0 + timedelta(hours=50, minutes=5))]
    with reader(path) as db:
        for since, until in ranges:
            def keep(r: UsageRecord, since: datetime | None = since, until: datetime | None = until) -> bool:
                return (since is None or r.started_at >= since) and (until is None or r.started_at < until)

            for breakdown, limit in ((None, None), ("model", None), (None, 3)):
                levels = ["session"] + ([breakdown] if breakdown else [])
                result = report(db, "session", breakdown=breakdown, since=since, until=until, limit=limit)
                want = distinct_extras(recs, levels, keep)
                for line in result.lines:
                    key = (line.group,) + ((line.breakdown,) if breakdown else ())
                    assert (line.models, line.projects, line.clients) == want[key], (key, since, breakdown, limit)
                assert len(result.lines) == (len(want) if limit is None else limit)


async def test_json_output_is_json_dumps_of_the_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.cli.main import main
    from proxy.store.reports import free_usage

    path = tmp_path / "u.db"
    await write(path, odd_records() + [make_record(2000 + n, session=f"many{n}") for n in range(1200)])
    # The CLI writes the document in chunks (hundreds of rows each): the same bytes, and a newline.
    assert main(["report", "--db", str(path), "--by", "session", "--format", "json"]) == 0
    printed = capsys.readouterr().out
    with reader(path) as db:
        whole = as_document(report(db, "session"), free_usage(db, datetime.now(UTC), 50))
    assert printed == json.dumps(whole, indent=2) + "\n"
    assert len(whole["rows"]) > 1200
    with reader(path) as db:
        results = [
            report(db, "session"),
            report(db, "session", breakdown="model", limit=2),
            report(db, "day", breakdown="client"),
            report(db, "model", since=T0 + timedelta(days=400)),  # no rows at all
            report(db, "key", filters=Filters(sessions=("s1",))),
        ]
    imported = tmp_path / "i.db"
    await imported_db(imported)
    with reader(imported) as db:
        results += [report(db, "day"), report(db, "model", breakdown="day")]  # with "imported": true
    assert any(line.imported for line in results[-1].lines)
    # Byte for byte as json.dumps writes it, indented (the CLI) and in its default form (/-/report).
    free = FreeUsage(3, 50, 2)
    for result in results:
        assert render(result, "json") == json.dumps(as_document(result), indent=2)
        assert render(result, "json", free) == json.dumps(as_document(result, free), indent=2)
        assert document_text(result, free, indent=False) == json.dumps(as_document(result, free))


def test_money_text_is_the_decimal_text() -> None:
    rng = random.Random(5)
    values = [(0, 0), (1, 0), (0, 1), (-1, 0), (0, -1), (-3, 999_999_999_999), (10**12, 0), (123_456_789, 10**12 - 1)]
    values += [(rng.randrange(-(10**18), 10**18), rng.randrange(-(10**15), 10**15)) for _ in range(2000)]
    for pico, yocto in values:
        assert rollups.money_text(pico, yocto) == format(rollups.money_value(pico, yocto), "f"), (pico, yocto)
    assert rollups.money_text(None, None) == "0"


async def test_a_session_table_shows_the_costliest_fifty_unless_told(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.cli.main import main

    path = tmp_path / "u.db"
    await write(path, [make_record(n, session=f"w{n:03d}", cost_usd=Decimal(n) / 100) for n in range(60)])

    def lines(*flags: str) -> list[str]:
        assert main(["report", "--db", str(path), "--by", "session", *flags]) == 0
        return capsys.readouterr().out.splitlines()

    table = lines()
    shown = [line.split()[0] for line in table if line.startswith("w")]
    assert shown == [f"w{n:03d}" for n in range(59, 9, -1)]
    assert "50 of 60 session groups shown; the total covers all (--limit 0 lists them all)" in table
    assert any(line.startswith("total") and "$17.70" in line for line in table)  # 0.00 + ... + 0.59
    assert len([line for line in lines("--limit", "0") if line.startswith("w")]) == 60
    assert len([line for line in lines("--limit", "5") if line.startswith("w")]) == 5
    assert len(json.loads("\n".join(lines("--format", "json")))["rows"]) == 60
    assert len(lines("--format", "csv")) == 61
    assert len([line for line in lines("--since", "2000-01-01", "--by", "model") if line.startswith("openai")]) == 1


async def test_report_does_not_import_the_server(tmp_path: Path) -> None:
    # aiohttp costs a report ~0.2-0.4 s of CPU at start-up (it loads the system's CA store on import).
    import os
    import subprocess
    import sys

    path = tmp_path / "u.db"
    await write(path, known_records(10))
    code = (
        "import sys\nfrom proxy.cli.main import main\n"
        f"assert main(['report', '--db', {str(path)!r}, '--by', 'session']) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'prometheus_client')))\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True,
                                   timeout=60, env={**os.environ, "PYTHONPATH": str(root)}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
