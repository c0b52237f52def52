"""The SQLite file: schema, numbered migrations, open_db(), row encoding and the read queries.

Only the recorder's writer task writes through `open_db()`'s connection; readers (`report`,
`budgets`, `whatif`) open their own read-only connection, which WAL mode lets run alongside.
Money is stored as decimal TEXT so sums stay exact; times as ISO-8601 UTC text, which sorts.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
import secrets
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aiosqlite

from proxy.store import rollups
from proxy.store.records import UsageRecord

if TYPE_CHECKING:
    from proxy.store.reader import Reader

REQUEST_COLUMNS = tuple(f.name for f in dataclasses.fields(UsageRecord))
# Rows per multi-row INSERT, a power of two: 30 columns x 128 rows stays far under SQLite's
# variable limit, and a batch is cut into powers of two (128, ..., 2, 1) so only 8 distinct
# statements are ever compiled. (One per batch size would keep up to 128 prepared statements in
# sqlite3's cache: 76 MB for sizes 1 to 250, measured.)
_ROWS_PER_INSERT = 128
_ROW_PLACEHOLDERS = "(" + ", ".join("?" for _ in REQUEST_COLUMNS) + ")"


def _chunk_sizes(count: int) -> Iterator[int]:
    while count:
        size = min(_ROWS_PER_INSERT, 1 << (count.bit_length() - 1))
        yield size
        count -= size


@functools.lru_cache(maxsize=16)
def _insert_rows(count: int) -> str:
    return (
        f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES "
        + ", ".join([_ROW_PLACEHOLDERS] * count)
        # A row already there is kept, never replaced: a retried batch must not undo a back-fill,
        # and PostgreSQL's writer means the same. (OR IGNORE would also skip NOT NULL violations.)
        + " ON CONFLICT (id) DO NOTHING"
    )


# What the recorder writes: every record field, then the rollup trigger's money parts (migration 14).
_WRITTEN_COLUMNS = (*REQUEST_COLUMNS, *rollups.HINT_COLUMNS)
_WRITTEN_PLACEHOLDERS = "(" + ", ".join("?" for _ in _WRITTEN_COLUMNS) + ")"


@functools.lru_cache(maxsize=16)
def _insert_written(count: int) -> str:
    return (
        f"INSERT INTO requests ({', '.join(_WRITTEN_COLUMNS)}) VALUES "
        + ", ".join([_WRITTEN_PLACEHOLDERS] * count)
        + " ON CONFLICT (id) DO NOTHING"
    )


def _m001_requests(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE requests (
            id TEXT PRIMARY KEY,
            started_at TEXT NOT NULL,
            finished_at TEXT NOT NULL,
            method TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            model_requested TEXT,
            model TEXT,
            provider TEXT,
            generation_id TEXT,
            key_fingerprint TEXT,
            key_alias TEXT,
            project TEXT,
            session TEXT,
            client TEXT,
            streamed INTEGER NOT NULL,
            status INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            error TEXT,
            input_tokens INTEGER,
            output_tokens INTEGER,
            cached_tokens INTEGER,
            cache_write_tokens INTEGER,
            reasoning_tokens INTEGER,
            web_search_requests INTEGER,
            cost_usd TEXT,
            cost_reported_usd TEXT,
            cost_catalog_usd TEXT,
            cost_source TEXT NOT NULL,
            is_free INTEGER NOT NULL,
            is_byok INTEGER,
            ttfb_ms REAL,
            duration_ms REAL NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX requests_started_at ON requests (started_at)")
    db.execute("CREATE INDEX requests_session ON requests (session, started_at)")
    db.execute("CREATE INDEX requests_project ON requests (project, started_at)")


def _m002_model_prices(db: sqlite3.Connection) -> None:
    # Every distinct price a model had, with when we first saw it: a request is priced with
    # the prices in force when it ran, and `models --changes` shows what moved.
    db.execute(
        """
        CREATE TABLE model_prices (
            model_id TEXT NOT NULL,
            pricing TEXT NOT NULL,
            first_seen_at TEXT NOT NULL,
            PRIMARY KEY (model_id, pricing)
        )
        """
    )


def _m003_alerts(db: sqlite3.Connection) -> None:
    # Budget alerts already sent, so a restart does not send them again in the same window.
    db.execute(
        """
        CREATE TABLE alerts (
            budget TEXT NOT NULL,
            scope TEXT NOT NULL,
            window_start TEXT NOT NULL,
            kind TEXT NOT NULL,
            sent_at TEXT NOT NULL,
            message TEXT,
            PRIMARY KEY (budget, scope, window_start, kind)
        )
        """
    )


def _m004_meta(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def _m005_cache_write_1h(db: sqlite3.Connection) -> None:
    # One-hour cache writes are priced apart from five-minute ones; whatif needs the split.
    db.execute("ALTER TABLE requests ADD COLUMN cache_write_1h_tokens INTEGER")


def _m006_upstream_cost(db: sqlite3.Connection) -> None:
    # BYOK: the provider's charge to the user's own key, apart from OpenRouter's fee (both in cost_usd).
    db.execute("ALTER TABLE requests ADD COLUMN upstream_cost_usd TEXT")


def _m007_price_history(db: sqlite3.Connection) -> None:
    # One row per price change, keyed by time: a price that returns to an earlier value (A -> B -> A)
    # must be a new row, which the (model_id, pricing) key of migration 2 refused.
    db.execute(
        """
        CREATE TABLE model_prices_new (
            model_id TEXT NOT NULL,
            pricing TEXT NOT NULL,
            first_seen_at TEXT NOT NULL,
            PRIMARY KEY (model_id, first_seen_at)
        )
        """
    )
    db.execute("INSERT OR IGNORE INTO model_prices_new SELECT model_id, pricing, first_seen_at FROM model_prices")
    db.execute("DROP TABLE model_prices")
    db.execute("ALTER TABLE model_prices_new RENAME TO model_prices")
def _m008_imported_activity(db: sqlite3.Connection) -> None:
    # OpenRouter's own per-day figures (`import-activity`), so a new install shows the last 30 days.
    # One row per UTC day x model x provider endpoint, as /activity lists them; money as decimal text.
    db.execute(
        """
        CREATE TABLE imported_activity (
            date TEXT NOT NULL,
            model TEXT NOT NULL,
            endpoint_id TEXT NOT NULL,
            model_permaslug TEXT,
            provider TEXT,
            usage_usd TEXT NOT NULL,
            byok_usage_usd TEXT NOT NULL,
            requests INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            reasoning_tokens INTEGER NOT NULL,
            imported_at TEXT NOT NULL,
            PRIMARY KEY (date, model, endpoint_id)
        )
        """
    )


def _m009_hourly_rollup(db: sqlite3.Connection) -> None:
    # Reports read per-hour totals kept by triggers instead of every row (20 s -> well under a
    # second on a million rows). Money the old back-fill wrote as '1E-7' is rewritten fixed-point
    # first, so the rollup's exact integer sums can read it.
    for money in ("cost_usd", "upstream_cost_usd"):
        odd = db.execute(f"SELECT id, {money} FROM requests WHERE {money} GLOB '*[eE]*'").fetchall()
        for row_id, value in odd:
            db.execute(f"UPDATE requests SET {money} = ? WHERE id = ?", (_money(Decimal(value)), row_id))
    rollups.create(db, ("cost_usd", "upstream_cost_usd"), rollups.FIRST_ROLLUPS)


def _m010_runtime_keys(db: sqlite3.Connection) -> None:
    # Proxy keys and budgets made at runtime (`keys create`, `budgets set`, /-/admin/). A key is
    # stored only as SHA-256 of the database's salt and the key; `meta.runtime_version` counts
    # changes so a running proxy notices them with one small read.
    db.execute(
        """
        CREATE TABLE proxy_keys (
            name TEXT PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            project TEXT,
            budget TEXT,
            created_at TEXT NOT NULL,
            expires_at TEXT,
            revoked_at TEXT
        )
        """
    )
    db.execute("CREATE TABLE runtime_budgets (name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated_at TEXT NOT NULL)")
    db.execute("CREATE INDEX requests_key_alias ON requests (key_alias, started_at)")


def _m011_runtime_keys_on_postgres(db: sqlite3.Connection) -> None:
    # PostgreSQL's migration 11 creates the runtime-key tables this file has had since 10; nothing
    # to do here, but the step keeps one number meaning one schema on both engines.
    return None


def _m012_hour_statistics(db: sqlite3.Connection) -> None:
    # PostgreSQL's migration 12 adds planner statistics its raw-row reports need; SQLite reads rollups.
    return None


def _m013_shared_budgets(db: sqlite3.Connection) -> None:
    # The shared budget ledger (proxy/store/holds.py): spend per budget window (a calendar window's
    # start, or a rolling window's time slice), holds of requests in flight, and each process's
    # lease. Used when several processes serve from one database (serve --workers N).
    db.execute(
        "CREATE TABLE budget_spend (budget TEXT NOT NULL, scope TEXT NOT NULL, at TEXT NOT NULL, "
        "spent TEXT NOT NULL, PRIMARY KEY (budget, scope, at))"
    )
    db.execute(
        "CREATE TABLE budget_holds (replica TEXT NOT NULL, reservation INTEGER NOT NULL, budget TEXT NOT NULL, "
        "scope TEXT NOT NULL, at TEXT NOT NULL, amount TEXT NOT NULL, PRIMARY KEY (replica, reservation, budget, scope))"
    )
    db.execute("CREATE INDEX budget_holds_window ON budget_holds (budget, scope, at)")
    db.execute("CREATE TABLE budget_replicas (replica TEXT PRIMARY KEY, seen_at TEXT NOT NULL)")


def _m014_money_parts(db: sqlite3.Connection) -> None:
    # The recorder writes each amount's integer parts beside its text, so the rollup trigger reads
    # two integers instead of cutting the text in SQL for three rollups. Rows written before, or by
    # others, leave them NULL and are cut as before. What that saves pays for the hourly rollup's
    # billed and catalog cost over rows that have both (the page's price drift, 1-4 s over raw rows).
    for money in ("cost_reported_usd", "cost_catalog_usd"):
        odd = db.execute(f"SELECT id, {money} FROM requests WHERE {money} GLOB '*[eE]*'").fetchall()
        for row_id, value in odd:
            db.execute(f"UPDATE requests SET {money} = ? WHERE id = ?", (_money(Decimal(value)), row_id))
    for column in ("cost_usd_pico", "cost_usd_yocto", "cost_reported_usd_pico", "cost_reported_usd_yocto",
                   "cost_catalog_usd_pico", "cost_catalog_usd_yocto"):
        db.execute(f"ALTER TABLE requests ADD COLUMN {column} INTEGER")
    rollups.create(db, ("cost_usd", "upstream_cost_usd", "billed_compared_usd", "catalog_compared_usd"), rollups.FIRST_ROLLUPS)


def _m015_whatif_rollup(db: sqlite3.Connection) -> None:
    # /-/whatif re-prices per hour, tier band and attribution from a rollup of clamped token sums
    # (rollups.WHATIF, and WHATIF_TOTAL without attribution) instead of every raw row in range
    # (1.7 s over 30 days of a million rows).
    # Hours retention pruned before this have no raw rows to sum: they are not in it.
    rollups.add(db, (rollups.WHATIF, rollups.WHATIF_TOTAL), ("cost_usd", "upstream_cost_usd", "billed_compared_usd", "catalog_compared_usd"))


def _m016_batched_rollups(db: sqlite3.Connection) -> None:
    # The recorder adds each batch to the rollups with one upsert per rollup table (its rows' sums
    # per key) instead of the insert trigger's three upserts per row: the trigger now stands aside
    # while the recorder's own transaction holds the `rollups_batched` row of `meta`.
    rollups.create_insert_trigger(
        db, ("cost_usd", "upstream_cost_usd", "billed_compared_usd", "catalog_compared_usd"),
        (rollups.HOURLY, rollups.DAILY, rollups.SESSIONS, rollups.WHATIF, rollups.WHATIF_TOTAL),
    )


# Append only: a migration that has run on someone's database is never edited.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _m001_requests,
    _m002_model_prices,
    _m003_alerts,
    _m004_meta,
    _m005_cache_write_1h,
    _m006_upstream_cost,
    _m007_price_history,
    _m008_imported_activity,
    _m009_hourly_rollup,
    _m010_runtime_keys,
    _m011_runtime_keys_on_postgres,
    _m012_hour_statistics,
    _m013_shared_budgets,
    _m014_money_parts,
    _m015_whatif_rollup,
    _m016_batched_rollups,
)


def migrate(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
        with db:
            migration(db)
            db.execute(f"PRAGMA user_version = {number}")
        # Into the file before the next one, so the WAL holds one migration at a time, not all
        # (0.83 MB on a new database, which filled a 1 MiB disk before the first row). PASSIVE
        # never waits for a reader; in rollback-journal mode it does nothing.
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _create_private(path: Path) -> None:
    """The database holds who spent what: create it readable by its owner only."""
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


def prepare(path: Path) -> None:
    """Create (mode 0600) and migrate the database synchronously; run before serving."""
    _create_private(path)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=5000")
        migrate(db)
    finally:
        db.close()


async def open_db(path: Path) -> aiosqlite.Connection:
    prepare(path)
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a process crash (SIGKILL); only power loss can drop the tail.
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("PRAGMA busy_timeout=5000")
    # The recorder sums each batch into TEMP tables (a few hundred rows at most): in memory, not in
    # a temp file, that is ~12% less CPU per row written.
    await db.execute("PRAGMA temp_store=MEMORY")
    return db


async def salt(db: aiosqlite.Connection) -> bytes:
    """The per-database salt for key fingerprints, made once."""
    async with db.execute("SELECT value FROM meta WHERE key = 'fingerprint_salt'") as cursor:
        row = await cursor.fetchone()
    if row is not None:
        return bytes.fromhex(row[0])
    value = secrets.token_bytes(16)
    await db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('fingerprint_salt', ?)", (value.hex(),))
    async with db.execute("SELECT value FROM meta WHERE key = 'fingerprint_salt'") as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return bytes.fromhex(row[0])


def encode_time(moment: datetime) -> str:
    # isoformat is twice as fast as strftime; timespec keeps every value the same width so
    # the text sorts as time does.
    if moment.tzinfo is UTC:
        # Every time the proxy makes is in UTC already: its text then ends in "+00:00" for "Z",
        # a quarter of this function's cost (two rows' times, for every row written).
        return moment.isoformat(timespec="microseconds")[:-6] + "Z"
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _money(value: Decimal | None) -> str | None:
    # Fixed point: str() would store a tenth of a micro-dollar as '1E-7', which sorts and
    # reads badly in the sqlite3 shell and in SQL sums done by users.
    return None if value is None else format(value, "f")


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


# Per column, how its value is stored; columns not named here are stored as they are. Built once:
# encoding runs for every row, so no per-value type tests.
_ENCODERS: dict[str, Callable[[Any], Any]] = {
    "started_at": encode_time,
    "finished_at": encode_time,
    "cost_usd": _money,
    "cost_reported_usd": _money,
    "cost_catalog_usd": _money,
    "upstream_cost_usd": _money,
    "streamed": _flag,
    "is_free": _flag,
    "is_byok": _flag,
}
_COLUMN_VALUES = operator.attrgetter(*REQUEST_COLUMNS)
_ENCODED_AT = tuple((index, _ENCODERS[name]) for index, name in enumerate(REQUEST_COLUMNS) if name in _ENCODERS)


def encode_record(rec: UsageRecord) -> tuple[Any, ...]:
    values = list(_COLUMN_VALUES(rec))
    for index, encode in _ENCODED_AT:
        values[index] = encode(values[index])
    return tuple(values)


_HINTED_AT = tuple(REQUEST_COLUMNS.index(name) for name in rollups.HINTED)


def encode_written(rec: UsageRecord) -> list[Any]:
    """The row as the recorder writes it: `encode_record`, then each hinted amount's (pico, yocto)."""
    values = list(_COLUMN_VALUES(rec))
    for index, encode in _ENCODED_AT:
        values[index] = encode(values[index])
    parts = rollups.parts
    for index in _HINTED_AT:
        values.extend(parts(values[index]))
    return values


# What adds a batch's rows to the rollups, in order (proxy/store/rollups.py).
_ADD_BATCH = rollups.batch_statements()
# SQLite numbers a new row one past the largest rowid until that reaches 2^63 - 1, then at random:
# a batch is told apart from older rows by its rowids only below that.
_LAST_ROWID = 2**63 - 1
# Smaller batches go through the per-row trigger: for a row or two it costs less than the flag
# and one statement per rollup.
_BATCHED_FROM = 4
# A row's hourly rollup key, near enough to count a batch's groups (NULL and '' apart, as the
# rollup does not keep them: an estimate only picks the cheaper of two exact ways).
_HOUR_AT = REQUEST_COLUMNS.index("started_at")
_DIMENSIONS_AT = operator.itemgetter(*(REQUEST_COLUMNS.index(name) for name in rollups.HOURLY.dims))


def _hour_key(values: list[Any]) -> tuple[Any, ...]:
    return (values[_HOUR_AT][: rollups.HOURLY.width], _DIMENSIONS_AT(values))


async def insert_requests(db: aiosqlite.Connection, records: list[UsageRecord]) -> None:
    """One transaction for the whole batch, which adds itself to the rollups per batch (the per-row
    insert trigger stands aside) instead of three upserts per row.

    The rows are encoded here, on the event loop, and the whole transaction then runs in one call
    on the connection's thread: each `await db.execute` is a hop between threads that costs ~0.14
    ms of CPU on a busy machine, more than the SQL of a small batch (which took BEGIN, COMMIT and
    one per INSERT, and would take eight more for the per-batch sums).
    """
    statements = []
    start = 0
    groups = set()
    # A few multi-row INSERTs, not one statement per row: sqlite3 releases and retakes the GIL
    # around every step, and while the event loop is busy each retake can wait a whole switch
    # interval, which made per-row inserts the recorder's bottleneck under load.
    for size in _chunk_sizes(len(records)):
        chunk = records[start : start + size]
        start += size
        params = []
        for rec in chunk:
            values = encode_written(rec)
            groups.add(_hour_key(values))
            params += values
        statements.append((_insert_written(size), params))
    # Each rollup row costs an upsert either way: per batch pays only where rows share them.
    batched = len(records) if len(records) >= _BATCHED_FROM and len(groups) * 3 <= len(records) * 2 else 0
    # aiosqlite has no public call to run a function on its thread: _execute and _conn are what its
    # own methods use. Whatever happens to the awaiting task, the call ends its transaction itself
    # (COMMIT, or ROLLBACK and raise), so a cancel never leaves one open.
    run = cast(Callable[..., Awaitable[None]], db._execute)
    await run(_write_rows, db._conn, statements, batched)


def _write_rows(db: sqlite3.Connection, statements: list[tuple[str, list[Any]]], batched: int) -> None:
    try:
        _transaction(db, statements, batched)
    except sqlite3.OperationalError as exc:
        # SUM() refuses a total past 2^63 (a million dollars in pico-dollars, nine times over, in one
        # group) where the trigger's additions turn to REAL: write such a batch row by row, as before.
        if "integer overflow" not in str(exc):
            raise
        _transaction(db, statements, 0)


def _transaction(db: sqlite3.Connection, statements: list[tuple[str, list[Any]]], batched: int) -> None:
    """`batched`: the rows to add to the rollups per batch, or 0 to leave them to the trigger."""
    try:
        db.execute("BEGIN")
        after = None
        if batched:
            # Set inside this transaction, so no other connection ever sees it: their inserts (and a
            # rollback of ours) keep the per-row trigger.
            row = db.execute(
                "INSERT OR REPLACE INTO meta (key, value) SELECT ?, COALESCE(max(rowid), 0) FROM requests RETURNING value",
                (rollups.BATCHED_KEY,),
            ).fetchone()
            after = int(row[0])
            if after > _LAST_ROWID - batched:
                db.execute("DELETE FROM meta WHERE key = ?", (rollups.BATCHED_KEY,))
                after = None
        for sql, params in statements:
            db.execute(sql, params)
        if after is not None:
            # Rows the batch did not insert (ON CONFLICT DO NOTHING) have older rowids.
            for sql in _ADD_BATCH:
                db.execute(sql, {"after": after})
            db.execute("DELETE FROM meta WHERE key = ?", (rollups.BATCHED_KEY,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


async def rollback(db: aiosqlite.Connection) -> None:
    """Roll back if a transaction is open; never let the rollback hide the original error.

    A cancel that lands while COMMIT runs in aiosqlite's thread leaves nothing to roll back: a
    raised "no transaction is active" would replace the CancelledError and the writer would
    retry instead of stopping.
    """
    try:
        await db.execute("ROLLBACK")
    except sqlite3.Error:
        pass


# Rows deleted per transaction by retention, so the writer never holds the database for long.
_PRUNE_CHUNK = 5_000


async def prune_raw(db: aiosqlite.Connection, before: datetime) -> int:
    """Delete raw rows started before `before` (floored to the hour); their totals stay in the rollup.

    Only the writer calls this. `meta.raw_kept_from` records the bound, so a report whose range
    starts inside a pruned hour knows to read that whole hour from the rollup instead.
    """
    cutoff = encode_time(before.astimezone(UTC).replace(minute=0, second=0, microsecond=0))
    deleted = 0
    while True:
        try:
            await db.execute("BEGIN")
            cursor = await db.execute(
                "DELETE FROM requests WHERE rowid IN (SELECT rowid FROM requests WHERE started_at < ? LIMIT ?)",
                (cutoff, _PRUNE_CHUNK),
            )
            count = cursor.rowcount
            await db.execute(
                "INSERT INTO meta (key, value) VALUES ('raw_kept_from', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                (cutoff,),
            )
            await db.execute("COMMIT")
        except BaseException:
            await rollback(db)
            raise
        deleted += count
        if count < _PRUNE_CHUNK:
            return deleted


def connect_readonly(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise FileNotFoundError(path)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA busy_timeout=5000")
    return db


def read_requests(db: Reader, since: datetime | None = None, until: datetime | None = None) -> Iterator[Any]:
    query = "SELECT * FROM requests"
    clauses, params = [], []
    if since is not None:
        clauses.append("started_at >= ?")
        params.append(encode_time(since))
    if until is not None:
        clauses.append("started_at < ?")
        params.append(encode_time(until))
    if clauses:
        query += " WHERE " + " AND ".join(clauses)
    yield from db.execute(query + " ORDER BY started_at", params)
