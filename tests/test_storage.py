"""Storage: a private file, WAL, idempotent numbered migrations, exact row encoding, the salt, read queries."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from proxy.store import records
from proxy.store.engine import Store, open_store
from proxy.store import rollups
from proxy.store.records import UsageRecord
from proxy.store.sqlite import (
    MIGRATIONS,
    REQUEST_COLUMNS,
    connect_readonly,
    encode_time,
    insert_requests,
    migrate,
    open_db,
    prepare,
    read_requests,
    salt,
)

T0 = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)


def make_record(n: int = 0, **changes: Any) -> UsageRecord:
    """A complete row; tests change only what they look at."""
    base: dict[str, Any] = dict(
        id=f"req-{n:06d}",
        started_at=T0 + timedelta(seconds=n),
        finished_at=T0 + timedelta(seconds=n, milliseconds=250),
        method="POST",
        endpoint="chat/completions",
        model_requested="openai/gpt-4o",
        model="openai/gpt-4o",
        provider="OpenAI",
        generation_id=f"gen-{n}",
        key_fingerprint="0123456789abcdef",
        key_alias=None,
        project="acme",
        session="s1",
        client="test",
        streamed=True,
        status=200,
        outcome=records.OK,
        error=None,
        input_tokens=1200,
        output_tokens=300,
        cached_tokens=200,
        cache_write_tokens=None,
        reasoning_tokens=50,
        web_search_requests=None,
        cost_usd=Decimal("0.0055"),
        cost_reported_usd=Decimal("0.0055"),
        cost_catalog_usd=Decimal("0.00550"),
        cost_source=records.COST_REPORTED,
        is_free=False,
        is_byok=None,
        ttfb_ms=12.5,
        duration_ms=250.0,
    )
    base.update(changes)
    return UsageRecord(**base)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    connection = await open_db(tmp_path / "usage.db")
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def umask_open() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _schema(path: Path) -> list[tuple[str, str]]:
    connection = sqlite3.connect(path)
    try:
        return sorted(connection.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
    finally:
        connection.close()


async def test_db_and_its_wal_files_are_private_even_with_an_open_umask(tmp_path: Path, umask_open: None) -> None:
    path = tmp_path / "nested" / "dir" / "usage.db"
    connection = await open_db(path)
    try:
        await insert_requests(connection, [make_record()])
        assert _mode(path) == 0o600
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                assert _mode(side) == 0o600, suffix
    finally:
        await connection.close()


def test_prepare_creates_private_file(tmp_path: Path, umask_open: None) -> None:
    path = tmp_path / "u.db"
    prepare(path)
    assert _mode(path) == 0o600


async def test_wal_mode_is_on(db: aiosqlite.Connection, tmp_path: Path) -> None:
    async with db.execute("PRAGMA journal_mode") as cursor:
        assert (await cursor.fetchone()) == ("wal",)
    other = sqlite3.connect(tmp_path / "usage.db")
    try:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        other.close()


def test_migrations_run_once_and_rerunning_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    prepare(path)
    first = _schema(path)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        assert connection.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        connection.execute("INSERT INTO meta (key, value) VALUES ('probe', 'kept')")
    finally:
        connection.close()
    prepare(path)
    prepare(path)
    assert _schema(path) == first
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert connection.execute("SELECT value FROM meta WHERE key='probe'").fetchone() == ("kept",)
    finally:
        connection.close()


def test_migrate_continues_from_the_recorded_version(tmp_path: Path) -> None:
    connection = sqlite3.connect(tmp_path / "u.db", isolation_level=None)
    try:
        with connection:
            MIGRATIONS[0](connection)
            connection.execute("PRAGMA user_version = 1")
        connection.execute("INSERT INTO requests (id, started_at, finished_at, method, endpoint, streamed, status, "
                           "outcome, cost_source, is_free, duration_ms) VALUES ('old', 'a', 'b', 'POST', 'e', 0, 200, "
                           "'ok', 'none', 0, 1)")
        migrate(connection)
        assert connection.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert connection.execute("SELECT id FROM requests").fetchall() == [("old",)]
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"requests", "model_prices", "alerts", "meta"} <= tables
    finally:
        connection.close()


def test_requests_table_has_every_record_field(tmp_path: Path) -> None:
    prepare(tmp_path / "u.db")
    connection = sqlite3.connect(tmp_path / "u.db")
    try:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(requests)")]
    finally:
        connection.close()
    assert set(REQUEST_COLUMNS) <= set(columns)


_ROUND_TRIP = (
    "SELECT cost_usd, cost_reported_usd, input_tokens, is_byok, streamed, is_free, started_at, output_tokens, ttfb_ms "
    "FROM requests"
)


async def test_row_round_trip_is_exact(store: Store) -> None:
    rec = make_record(
        1,
        cost_usd=Decimal("0.000000123456789"),
        cost_reported_usd=None,
        input_tokens=None,
        is_byok=True,
        streamed=False,
        started_at=datetime(2026, 11, 20, 13, 0, tzinfo=UTC) + timedelta(microseconds=7),
    )
    await store.insert_requests([rec])
    (row,) = await store.fetch(_ROUND_TRIP)
    cost_usd, cost_reported_usd, input_tokens, is_byok, streamed, is_free, started_at, output_tokens, ttfb_ms = row
    assert cost_usd == "0.000000123456789"
    assert Decimal(cost_usd) == rec.cost_usd
    assert cost_reported_usd is None and input_tokens is None
    assert is_byok == 1 and streamed == 0 and is_free == 0
    assert started_at == "2026-11-20T13:00:00.000007Z"
    assert datetime.fromisoformat(started_at) == rec.started_at
    assert output_tokens == 300 and ttfb_ms == 12.5


async def test_times_are_stored_in_utc(store: Store) -> None:
    from zoneinfo import ZoneInfo

    local = datetime(2026, 11, 20, 14, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    await store.insert_requests([make_record(started_at=local)])
    assert await store.fetch("SELECT started_at FROM requests") == [("2026-11-20T13:00:00.000000Z",)]


def test_every_stored_time_has_one_width_whatever_its_zone() -> None:
    """Stored times sort as text only if all have the same width: whole seconds keep their six
    zeros, and a UTC time (the proxy's own) reads the same as that moment in any other zone."""
    from zoneinfo import ZoneInfo

    whole = datetime(2026, 11, 20, 13, 0, tzinfo=UTC)
    assert encode_time(whole) == "2026-11-20T13:00:00.000000Z"
    assert encode_time(whole.replace(microsecond=7)) == "2026-11-20T13:00:00.000007Z"
    for other in (timezone(timedelta(0)), timezone(timedelta(hours=-5)), ZoneInfo("Asia/Kolkata")):
        assert encode_time(whole.astimezone(other)) == "2026-11-20T13:00:00.000000Z"


async def test_insert_is_one_transaction_and_idempotent(store: Store) -> None:
    batch = [make_record(n) for n in range(300)]
    await store.insert_requests(batch)
    await store.insert_requests(batch[:10])  # a retried batch does not duplicate rows
    with pytest.raises(store.write_errors):
        await store.insert_requests([make_record(1000), make_record(1001, outcome=None)])
    ids = [r[0] for r in await store.fetch("SELECT id FROM requests ORDER BY id")]
    assert len(ids) == 300 and "req-001000" not in ids  # the failed batch left nothing behind
    await store.insert_requests([make_record(1000)])  # and the connection is usable again
    assert await store.fetch("SELECT count(*) FROM requests") == [(301,)]


async def test_a_retried_row_keeps_what_was_written_first(store: Store) -> None:
    # Idempotent on the request id: a batch retried after its commit reached the database must
    # not overwrite a cost that a back-fill statement has set since.
    await store.insert_requests([make_record(1, cost_usd=None)])
    await store.run_statements([("UPDATE requests SET cost_usd = ?, cost_source = ? WHERE id = ?", ("0.25", "generation", "req-000001"))])
    await store.insert_requests([make_record(1, cost_usd=None)])
    assert await store.fetch("SELECT cost_usd, cost_source FROM requests") == [("0.25", "generation")]


async def test_read_requests_since_and_until(db: aiosqlite.Connection, tmp_path: Path) -> None:
    await insert_requests(db, [make_record(n) for n in range(10)])
    reader = connect_readonly(tmp_path / "usage.db")
    try:
        since = [r["id"] for r in read_requests(reader, since=T0 + timedelta(seconds=7))]
        until = [r["id"] for r in read_requests(reader, until=T0 + timedelta(seconds=2))]
        both = [r["id"] for r in read_requests(reader, T0 + timedelta(seconds=3), T0 + timedelta(seconds=5))]
    finally:
        reader.close()
    assert since == ["req-000007", "req-000008", "req-000009"]
    assert until == ["req-000000", "req-000001"]
    assert both == ["req-000003", "req-000004"]


async def test_reader_reads_while_a_write_transaction_is_open(db: aiosqlite.Connection, tmp_path: Path) -> None:
    await insert_requests(db, [make_record(0)])
    await db.execute("BEGIN IMMEDIATE")
    await db.execute("DELETE FROM requests")
    try:
        reader = connect_readonly(tmp_path / "usage.db")
        try:
            assert [r["id"] for r in read_requests(reader)] == ["req-000000"]
        finally:
            reader.close()
    finally:
        await db.execute("ROLLBACK")


def test_readonly_connection_cannot_write(tmp_path: Path) -> None:
    prepare(tmp_path / "u.db")
    reader = connect_readonly(tmp_path / "u.db")
    try:
        with pytest.raises(sqlite3.OperationalError):
            reader.execute("DELETE FROM requests")
    finally:
        reader.close()


def test_readonly_of_a_missing_file_does_not_create_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        connect_readonly(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


async def test_salt_is_made_once_and_kept(new_db_target: Callable[[], str | Path]) -> None:
    target = new_db_target()
    first = await open_store(target)
    try:
        one = await first.salt()
        assert len(one) == 16 and one == await first.salt()
    finally:
        await first.close()
    second = await open_store(target)
    try:
        assert await second.salt() == one
    finally:
        await second.close()
    other = await open_store(new_db_target())
    try:
        assert await other.salt() != one
    finally:
        await other.close()


async def _schema_version(store: Store) -> int:
    if store.engine == "sqlite":
        return int((await store.fetch("PRAGMA user_version"))[0][0])
    return int((await store.fetch("SELECT max(version) FROM schema_migrations"))[0][0])


async def test_reopening_migrates_nothing_again_and_keeps_rows(db_target: str | Path) -> None:
    for _ in range(3):
        store = await open_store(db_target)
        try:
            assert await _schema_version(store) == len(MIGRATIONS)
            await store.run_statements([("INSERT OR IGNORE INTO meta (key, value) VALUES ('probe', 'kept')", ())])
            await store.insert_requests([make_record(1)])
            assert await store.fetch("SELECT value FROM meta WHERE key = 'probe'") == [("kept",)]
            assert await store.fetch("SELECT count(*) FROM requests") == [(1,)]
        finally:
            await store.close()


async def test_both_engines_have_the_same_tables_and_columns(db_target: str | Path) -> None:
    store = await open_store(db_target)
    try:
        if store.engine == "sqlite":
            tables = {r[0] for r in await store.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = {r[0] for r in await store.fetch("SELECT name FROM pragma_table_info('requests')")}
        else:
            tables = {r[0] for r in await store.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
            columns = {r[0] for r in await store.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'requests'")}
    finally:
        await store.close()
    assert {"requests", "model_prices", "alerts", "meta", "imported_activity"} <= tables
    # SQLite's recorder also writes the money parts its rollup trigger reads (migration 11).
    hints = set(rollups.HINT_COLUMNS) if store.engine == "sqlite" else set()
    assert columns == set(REQUEST_COLUMNS) | hints
