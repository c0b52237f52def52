"""rollups: the recorder adds each batch to every rollup with one upsert per rollup table, not one
per row; every other writer (a plain sqlite3 connection, the back-fill's UPDATE) still goes
through the per-row triggers, and both ways give the same tables."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import sqlite3
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from proxy.store import rollups
from proxy.store.records import UsageRecord
from proxy.store.sqlite import (
    MIGRATIONS,
    REQUEST_COLUMNS,
    encode_record,
    insert_requests,
    open_db,
    prepare,
)
from tests.test_report import known_records, rollup_equals_raw
from tests.test_storage import make_record


def plain_insert(path: Path, recs: list[UsageRecord], rowid: int | None = None) -> None:
    """Rows written as a user's sqlite3 shell or an import would: no money parts, the triggers only."""
    columns = ("rowid", *REQUEST_COLUMNS) if rowid is not None else REQUEST_COLUMNS
    marks = ", ".join("?" for _ in columns)
    rows = [((rowid + i,) if rowid is not None else ()) + encode_record(r) for i, r in enumerate(recs)]
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executemany(f"INSERT INTO requests ({', '.join(columns)}) VALUES ({marks})", rows)


def tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {t.table: sorted(db.execute(f"SELECT * FROM {t.table}")) for t in rollups.ROLLUPS}


def clustered(recs: list[UsageRecord], seed: int = 1) -> list[UsageRecord]:
    """The rows with their attribution cut to a few values each over three hours, as a busy proxy's
    batch looks (many rows to each rollup row), so the recorder sums them per batch."""
    rng = random.Random(seed)
    return [
        dataclasses.replace(
            rec,
            started_at=(at := make_record(0).started_at + timedelta(minutes=rng.randrange(180), seconds=rng.randrange(60))),
            finished_at=at + timedelta(seconds=2),
            model=rng.choice(["a/x", None]),
            session=rng.choice(["s1", None]),
            provider="P",
            project="acme",
            client="c",
            key_alias=None,
            key_fingerprint="0123456789abcdef",
            endpoint="messages",
        )
        for rec in recs
    ]


async def recorder_insert(path: Path, recs: list[UsageRecord]) -> int:
    """insert_requests as the recorder calls it; returns the rows it changed, triggers' included."""
    db = await open_db(path)
    try:
        before = db.total_changes
        await insert_requests(db, recs)
        return db.total_changes - before
    finally:
        await db.close()


async def test_a_batch_changes_each_rollup_row_once_not_once_per_row(tmp_path: Path) -> None:
    # 200 rows of one hour and one attribution: one row in each of the three rollups.
    recs = [make_record(n) for n in range(200)]
    changed = await recorder_insert(tmp_path / "u.db", recs)
    rollup_equals_raw(tmp_path / "u.db")
    # The rows, one upsert per rollup row, and a few rows of the batch's own bookkeeping (its flag in
    # `meta`, its sums per hour); not a number that grows with the rows: a per-row trigger changes
    # 200 + 3 x 200.
    assert changed <= 200 + len(rollups.ROLLUPS) + 6, changed


async def test_new_and_duplicate_ids_over_several_hours_and_sessions(tmp_path: Path) -> None:
    """Rows a batch skips (ON CONFLICT DO NOTHING: the id is already there) are not counted, and the
    tables equal those the per-row trigger fills from the same rows."""
    first = clustered(known_records(120))
    rng = random.Random(5)
    # Half the batch are ids already written, with other amounts: the first version stays and only
    # it is counted. The other half are new rows spread over hours, sessions and attributions.
    again = [dataclasses.replace(r, cost_usd=Decimal("9.75"), session="other") for r in rng.sample(first, 60)]
    new = clustered(known_records(200, seed=11)[120:], seed=2)
    batch = [r for pair in zip(again, new) for r in pair] + new[60:]
    rng.shuffle(batch)
    await recorder_insert(tmp_path / "recorder.db", first)
    # Summed per batch: fewer than two rollup rows changed per new row, where a per-row trigger
    # changes one in every rollup for each of the 80 new ones.
    assert len(rollups.ROLLUPS) > 2
    assert await recorder_insert(tmp_path / "recorder.db", batch) < 80 + 2 * 80
    prepare(tmp_path / "plain.db")
    plain_insert(tmp_path / "plain.db", first + new)
    rollup_equals_raw(tmp_path / "recorder.db")
    assert tables(tmp_path / "recorder.db") == tables(tmp_path / "plain.db")
    hours = {row[0] for row in tables(tmp_path / "recorder.db")["spend_hourly"]}
    assert len(hours) > 2


async def test_other_writers_still_fill_the_rollups(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    await recorder_insert(path, known_records(80))
    # A batch that fails half way (NOT NULL) rolls back with its flag: nothing of it is counted,
    # and later rows written by anyone else still are.
    db = await open_db(path)
    try:
        with contextlib.suppress(sqlite3.IntegrityError):
            await insert_requests(db, [make_record(n) for n in range(900, 909)] + [make_record(909, outcome=None)])
    finally:
        await db.close()
    plain_insert(path, [make_record(902, session="shell"), make_record(903, started_at=make_record(0).started_at.replace(year=2025))])
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        assert db.execute("SELECT count(*) FROM meta WHERE key LIKE 'rollups%'").fetchone()[0] == 0
        # The /generation back-fill and a user's own UPDATE.
        db.execute("UPDATE requests SET cost_usd = '0.5', provider = 'Elsewhere' WHERE rowid % 4 = 0")
    rollup_equals_raw(path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM requests").fetchone()[0] == 82
        assert db.execute("SELECT requests FROM spend_sessions WHERE session = 'shell'").fetchone() == (1,)


async def test_sums_past_64_bits_are_kept_as_the_per_row_trigger_keeps_them(tmp_path: Path) -> None:
    # Twenty rows of just under a million dollars in one group: their parts sum past 2^63, which
    # SQL's SUM() refuses; the batch must still be written, and counted as the trigger counts it.
    recs = [make_record(n, cost_usd=Decimal("999999.999999999999"), cost_reported_usd=Decimal("999999.5")) for n in range(20)]
    await recorder_insert(tmp_path / "recorder.db", recs)
    prepare(tmp_path / "plain.db")
    plain_insert(tmp_path / "plain.db", recs)
    with contextlib.closing(sqlite3.connect(tmp_path / "recorder.db")) as db:
        assert db.execute("SELECT count(*) FROM requests").fetchone()[0] == 20
    assert tables(tmp_path / "recorder.db") == tables(tmp_path / "plain.db")


async def test_rows_after_the_largest_rowid_are_counted(tmp_path: Path) -> None:
    # After rowid 2^63 - 1 SQLite picks new rowids at random, below it: a batch cannot be told
    # from older rows by rowid then, and must still be counted exactly once.
    path = tmp_path / "u.db"
    prepare(path)
    plain_insert(path, [make_record(0)], rowid=2**63 - 1)
    await recorder_insert(path, [make_record(n, session=f"s{n % 3}") for n in range(1, 40)])
    rollup_equals_raw(path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT sum(requests) FROM spend_sessions").fetchone() == (40,)


async def test_a_database_of_version_14_counts_a_batch_once(tmp_path: Path) -> None:
    # Version 14's insert trigger counted every row, whoever wrote it: migration 16 makes it stand
    # aside for the recorder's batches, which would otherwise be counted twice.
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        for number, migration in enumerate(MIGRATIONS[:14], start=1):
            migration(db)
            db.execute(f"PRAGMA user_version = {number}")
        trigger = db.execute("SELECT sql FROM sqlite_master WHERE name = 'spend_rollups_insert'").fetchone()[0]
        db.execute("DROP TRIGGER spend_rollups_insert")
        db.execute(trigger.replace(f"WHEN NOT EXISTS (SELECT 1 FROM meta WHERE key = '{rollups.BATCHED_KEY}') ", ""))
    plain_insert(path, known_records(30))
    assert await recorder_insert(path, clustered(known_records(90)[30:])) < 60 + 2 * 60
    rollup_equals_raw(path)


async def test_two_writers_at_once_each_count_their_own_batches(tmp_path: Path) -> None:
    # serve --workers N: a recorder per process on one file. SQLite lets one write at a time; each
    # batch's rowid bound must be read under its own write lock, never before another's commit.
    path = tmp_path / "u.db"
    prepare(path)
    rows = clustered(known_records(400), seed=3)
    one, two = await open_db(path), await open_db(path)
    try:
        await asyncio.gather(
            *(insert_requests(db, rows[start : start + 20]) for start in range(0, 400, 40) for db in (one,)),
            *(insert_requests(db, rows[start + 20 : start + 40]) for start in range(0, 400, 40) for db in (two,)),
        )
    finally:
        await one.close()
        await two.close()
    rollup_equals_raw(path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT sum(requests) FROM spend_daily").fetchone() == (400,)


def test_a_batch_reads_its_raw_rows_once_for_every_rollup() -> None:
    # Reading and grouping the batch's rows is most of the writer's per-row cost: one pass feeds
    # all the rollups (it was one per kind of rollup, hourly and what-if: 6.4 -> 4.4 us a row).
    statements = rollups.batch_statements()
    assert len({rollup.table for rollup in rollups.ROLLUPS}) == 5
    assert sum("FROM requests" in sql for sql in statements) == 1, statements
    from_sums = [sql for sql in statements if sql.startswith("INSERT INTO") and f"FROM temp.{rollups.BATCH_TABLE} " in sql]
    assert len(from_sums) == len(rollups.ROLLUPS), statements


def test_rollups_that_count_one_column_in_two_ways_cannot_share_the_batch_sums() -> None:
    odd = dataclasses.replace(rollups.WHATIF_TOTAL, table="odd", counted=lambda r, hinted: {"requests": f"{r}.status"})
    try:
        rollups.batch_statements(tables=(rollups.HOURLY, odd))
    except ValueError as exc:
        assert "'requests'" in str(exc)
    else:
        raise AssertionError("a column counted two ways was summed once")
