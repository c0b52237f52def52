"""PostgreSQL through asyncpg: schema, numbered migrations, batched idempotent writes, statements, reads.

The same tables and meaning as the SQLite file (proxy/store/sqlite.py), with native types: money
is `numeric` (exact), times `timestamptz`, flags `boolean`. Callers speak one dialect, SQLite's
(`?` placeholders, `INSERT OR IGNORE`, times as ISO-8601 text, money as decimal text): this module
translates each statement once, converts parameters to the types PostgreSQL infers for them, and
returns rows as SQLite would, so the recorder, the guard and the readers never ask which engine
they talk to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import operator
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from proxy.store.dialect import POSTGRES
from proxy.store.records import UsageRecord
from proxy.store.sqlite import encode_time

ENGINE = "postgresql"

# A restart or an unreachable server surfaces as any of these; the recorder keeps its batch and retries.
WRITE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # asyncpg's protocol can be left mid-operation when the server goes away under it.
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
# After these the connection is not trusted again: it is closed, and the pool opens a new one.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

REQUEST_COLUMNS = tuple(f.name for f in dataclasses.fields(UsageRecord))

# Column types of `requests`, in record order, for its migrations and the staging table batches are COPYed to.
_REQUEST_TYPES: dict[str, str] = {
    "id": "text",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    "method": "text",
    "endpoint": "text",
    "model_requested": "text",
    "model": "text",
    "provider": "text",
    "generation_id": "text",
    "key_fingerprint": "text",
    "key_alias": "text",
    "project": "text",
    "session": "text",
    "client": "text",
    "streamed": "boolean",
    "status": "integer",
    "outcome": "text",
    "error": "text",
    "input_tokens": "bigint",
    "output_tokens": "bigint",
    "cached_tokens": "bigint",
    "cache_write_tokens": "bigint",
    "reasoning_tokens": "bigint",
    "web_search_requests": "bigint",
    "cost_usd": "numeric",
    "cost_reported_usd": "numeric",
    "cost_catalog_usd": "numeric",
    "cost_source": "text",
    "is_free": "boolean",
    "is_byok": "boolean",
    "ttfb_ms": "double precision",
    "duration_ms": "double precision",
    "cache_write_1h_tokens": "bigint",
    "upstream_cost_usd": "numeric",
}

# A batch is COPYed (binary) into a per-connection temporary table, then moved with one INSERT
# that skips ids already there: a retried batch (its commit reached the server but the answer did
# not reach us) inserts nothing twice. Measured back to back on a busy 2-core machine: 23,000 rows/s
# this way, about a quarter of that with one INSERT ... SELECT FROM unnest(one array per column).
_INCOMING = "incoming_requests"
_CREATE_INCOMING = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_INCOMING} ("
    + ", ".join(f"{name} {_REQUEST_TYPES[name]}" for name in REQUEST_COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)
_MOVE_INCOMING = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) SELECT {', '.join(REQUEST_COLUMNS)} FROM {_INCOMING} "
    "ON CONFLICT (id) DO NOTHING"
)
_COLUMN_VALUES = operator.attrgetter(*REQUEST_COLUMNS)


def _m001_requests() -> list[str]:
    required = {"started_at", "finished_at", "method", "endpoint", "streamed", "status", "outcome", "cost_source",
                "is_free", "duration_ms"}
    # Spelled out, not taken from UsageRecord: a later field gets its own migration.
    names = (
        "id started_at finished_at method endpoint model_requested model provider generation_id key_fingerprint "
        "key_alias project session client streamed status outcome error input_tokens output_tokens cached_tokens "
        "cache_write_tokens reasoning_tokens web_search_requests cost_usd cost_reported_usd cost_catalog_usd "
        "cost_source is_free is_byok ttfb_ms duration_ms"
    ).split()
    columns = [
        f"{name} {_REQUEST_TYPES[name]}" + (" PRIMARY KEY" if name == "id" else " NOT NULL" if name in required else "")
        for name in names
    ]
    return [
        f"CREATE TABLE requests ({', '.join(columns)})",
        "CREATE INDEX requests_started_at ON requests (started_at)",
        "CREATE INDEX requests_session ON requests (session, started_at)",
        "CREATE INDEX requests_project ON requests (project, started_at)",
    ]


def _m002_model_prices() -> list[str]:
    return [
        "CREATE TABLE model_prices (model_id text NOT NULL, pricing text NOT NULL, "
        "first_seen_at timestamptz NOT NULL, PRIMARY KEY (model_id, pricing))"
    ]


def _m003_alerts() -> list[str]:
    # The primary key makes an alert once per budget, scope, window and threshold, whichever
    # replica crosses it first.
    return [
        "CREATE TABLE alerts (budget text NOT NULL, scope text NOT NULL, window_start timestamptz NOT NULL, "
        "kind text NOT NULL, sent_at timestamptz NOT NULL, message text, PRIMARY KEY (budget, scope, window_start, kind))"
    ]


def _m004_meta() -> list[str]:
    return ["CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)"]


def _m005_cache_write_1h() -> list[str]:
    return ["ALTER TABLE requests ADD COLUMN cache_write_1h_tokens bigint"]


def _m006_upstream_cost() -> list[str]:
    return ["ALTER TABLE requests ADD COLUMN upstream_cost_usd numeric"]


def _m007_price_history() -> list[str]:
    # As SQLite's migration 7: one row per price change, keyed by time (A -> B -> A is three rows).
    return [
        "ALTER TABLE model_prices DROP CONSTRAINT model_prices_pkey",
        "ALTER TABLE model_prices ADD PRIMARY KEY (model_id, first_seen_at)",
    ]


def _m008_imported_activity() -> list[str]:
    return [
        "CREATE TABLE imported_activity (date date NOT NULL, model text NOT NULL, endpoint_id text NOT NULL, "
        "model_permaslug text, provider text, usage_usd numeric NOT NULL, byok_usage_usd numeric NOT NULL, "
        "requests bigint NOT NULL, prompt_tokens bigint NOT NULL, completion_tokens bigint NOT NULL, "
        "reasoning_tokens bigint NOT NULL, imported_at timestamptz NOT NULL, PRIMARY KEY (date, model, endpoint_id))"
    ]


# Numbered as SQLite's are, one for one, so version N means the same schema on both engines.
# Append only: a migration that has run on someone's database is never edited.
def _m009_hourly_rollup() -> list[str]:
    # SQLite's migration 9 adds the hourly rollups its readers use; the PostgreSQL readers are not
    # built yet, so here it only keeps the numbers in step (one migration number, one meaning).
    return []


def _m010_runtime_keys() -> list[str]:
    # SQLite's migration 10 adds proxy_keys and runtime_budgets (`keys create`, `budgets set`, /-/admin/);
    # runtime keys are SQLite-only for now (the admin API refuses a PostgreSQL db), so numbers only.
    return []


def _m011_runtime_keys_on_postgres() -> list[str]:
    # Migration 10's tables, here at last (10 ran as an empty step on existing databases and is
    # never edited): `keys create`, `budgets set` and /-/admin/ on PostgreSQL.
    return [
        "CREATE TABLE proxy_keys (name text PRIMARY KEY, key_hash text NOT NULL UNIQUE, project text, budget text, "
        "created_at timestamptz NOT NULL, expires_at timestamptz, revoked_at timestamptz)",
        "CREATE TABLE runtime_budgets (name text PRIMARY KEY, spec text NOT NULL, updated_at timestamptz NOT NULL)",
        "CREATE INDEX requests_key_alias ON requests (key_alias, started_at)",
    ]


def _m012_hour_statistics() -> list[str]:
    # Reports group raw rows by the UTC hour (dialect.time_group). Without statistics on that
    # expression the planner guesses one group per row and sorts 200k rows on disk; with them it
    # hashes ~2k groups (0.8 -> 0.4 s by the hour over 200k rows). Expression statistics need
    # PostgreSQL 14; older servers just keep the slower plan.
    return [
        "DO $$ BEGIN IF current_setting('server_version_num')::int >= 140000 THEN "
        "EXECUTE 'CREATE STATISTICS requests_utc_hour ON (date_trunc(''hour'', started_at AT TIME ZONE ''UTC'')) FROM requests'; "
        "END IF; END $$"
    ]


def _m013_shared_budgets() -> list[str]:
    # The shared budget ledger (proxy/store/holds.py): replicas on one database enforce one budget.
    return [
        "CREATE TABLE budget_spend (budget text NOT NULL, scope text NOT NULL, at timestamptz NOT NULL, "
        "spent numeric NOT NULL, PRIMARY KEY (budget, scope, at))",
        "CREATE TABLE budget_holds (replica text NOT NULL, reservation bigint NOT NULL, budget text NOT NULL, "
        "scope text NOT NULL, at timestamptz NOT NULL, amount numeric NOT NULL, PRIMARY KEY (replica, reservation, budget, scope))",
        "CREATE INDEX budget_holds_window ON budget_holds (budget, scope, at)",
        "CREATE TABLE budget_replicas (replica text PRIMARY KEY, seen_at timestamptz NOT NULL)",
    ]


def _m014_money_parts() -> list[str]:
    # SQLite's migration 14 lets its rollup trigger read the recorder's money parts; PostgreSQL has
    # no rollups yet, so numbers only.
    return []


def _m015_whatif_rollup() -> list[str]:
    # SQLite's migration 15 adds the what-if rollup; PostgreSQL re-prices raw rows (raw_reads.whatif).
    return []


def _m016_batched_rollups() -> list[str]:
    # SQLite's migration 16 lets its recorder add a batch to the rollups per batch; numbers only.
    return []


MIGRATIONS: tuple[Callable[[], list[str]], ...] = (
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

# Any fixed number: replicas starting together take turns migrating.
_MIGRATION_LOCK = 0x6F72_7370_6E64


async def migrate(connection: asyncpg.Connection) -> int:
    """Bring the schema up to date in one transaction; returns the version reached."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        version = int(await connection.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            for sql in migration():
                await connection.execute(sql)
            await connection.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)
    return len(MIGRATIONS)


# -- the SQLite dialect, spoken to PostgreSQL

_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)


_PLACEHOLDER = re.compile(r"'[^']*'|\?(\d*)")


def translate(sql: str) -> str:
    """`?` -> `$n` and `?NNN` -> `$NNN` (outside string literals); `INSERT OR IGNORE` -> `ON CONFLICT DO NOTHING`."""
    number = 0

    def placeholder(match: re.Match[str]) -> str:
        nonlocal number
        if match.group(0).startswith("'"):
            return match.group(0)
        if match.group(1):
            return "$" + match.group(1)
        number += 1
        return f"${number}"

    text = _PLACEHOLDER.sub(placeholder, sql)
    if _INSERT_OR_IGNORE.match(text):
        text = _INSERT_OR_IGNORE.sub("INSERT INTO", text, count=1) + " ON CONFLICT DO NOTHING"
    elif re.match(r"^\s*INSERT\s+OR\s+", text, re.IGNORECASE):
        raise ValueError(f"unsupported on PostgreSQL: {sql[:60]!r}")
    return text


def _to_time(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _to_date(value: Any) -> Any:
    return date.fromisoformat(value) if isinstance(value, str) else value


def _to_numeric(value: Any) -> Any:
    return Decimal(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else value


def _to_bool(value: Any) -> Any:
    return bool(value) if isinstance(value, int) else value


# Parameters arrive as SQLite holds them (text times and money, 0/1 flags); convert to what
# PostgreSQL inferred for each placeholder.
_PARAM: dict[str, Callable[[Any], Any]] = {
    "timestamptz": _to_time,
    "timestamp": _to_time,
    "date": _to_date,
    "numeric": _to_numeric,
    "bool": _to_bool,
}


def _time_text(value: Any) -> Any:
    return encode_time(value) if isinstance(value, datetime) else value


# Results go back as SQLite would give them, so a reader's parsing is the same for both engines.
_RESULT: dict[str, Callable[[Any], Any]] = {
    "timestamptz": _time_text,
    "date": lambda v: v.isoformat() if isinstance(v, date) else v,
    "numeric": lambda v: format(v, "f") if isinstance(v, Decimal) else v,
    "bool": lambda v: int(v) if isinstance(v, bool) else v,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Prepared:
    sql: str
    params: tuple[Callable[[Any], Any] | None, ...]
    results: tuple[Callable[[Any], Any] | None, ...]

    def args(self, params: Sequence[Any]) -> list[Any]:
        return [v if convert is None or v is None else convert(v) for convert, v in zip(self.params, params)]

    def row(self, record: Sequence[Any]) -> tuple[Any, ...]:
        if not any(self.results):
            return tuple(record)
        return tuple(v if convert is None or v is None else convert(v) for convert, v in zip(self.results, record))


async def prepare(connection: asyncpg.Connection, sql: str) -> Prepared:
    """A statement in the SQLite dialect, translated, with its parameter and result conversions."""
    translated = translate(sql)
    statement = await connection.prepare(translated)
    return Prepared(
        translated,
        tuple(_PARAM.get(t.name) for t in statement.get_parameters()),
        tuple(_RESULT.get(a.type.name) for a in statement.get_attributes()),
    )


class PostgresStore:
    """The storage engine for PostgreSQL: a small pool; the recorder is its only writer of rows."""

    engine = ENGINE
    dialect = POSTGRES
    write_errors = WRITE_ERRORS

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._prepared: dict[str, Prepared] = {}

    @classmethod
    async def open(cls, url: str, password: str | None = None, *, max_size: int = 4) -> PostgresStore:
        # With no password given asyncpg falls back to PGPASSWORD and ~/.pgpass, as libpq does.
        # min_size=0: a pool that lost its server reconnects on the next use instead of at once.
        pool = await asyncpg.create_pool(
            url, password=password, min_size=0, max_size=max_size, timeout=10, command_timeout=60, init=_init_connection
        )
        assert pool is not None
        try:
            async with pool.acquire() as connection:
                await migrate(connection)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as connection:
            try:
                yield connection
            except _CONNECTION_ERRORS:
                connection.terminate()
                raise

    async def insert_requests(self, records: Sequence[UsageRecord]) -> None:
        """One COPY and one INSERT, in one transaction for the whole batch; rows already there are left alone."""
        if not records:
            return
        async with self._connection() as connection:
            async with connection.transaction():
                await connection.copy_records_to_table(_INCOMING, records=map(_COLUMN_VALUES, records), columns=REQUEST_COLUMNS)
                await connection.execute(_MOVE_INCOMING)

    async def _prepare(self, connection: asyncpg.Connection, sql: str) -> Prepared:
        prepared = self._prepared.get(sql)
        if prepared is None:
            prepared = await prepare(connection, sql)
            self._prepared[sql] = prepared
        return prepared

    async def run_statements(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Statements in the SQLite dialect, in order, in one transaction."""
        async with self._connection() as connection:
            async with connection.transaction():
                # One round trip per run of the same statement (executemany pipelines them).
                for sql, runs in itertools.groupby(statements, key=operator.itemgetter(0)):
                    prepared = await self._prepare(connection, sql)
                    await connection.executemany(prepared.sql, [prepared.args(params) for _, params in runs])

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._connection() as connection:
            prepared = await self._prepare(connection, sql)
            return [prepared.row(r) for r in await connection.fetch(prepared.sql, *prepared.args(params))]

    async def salt(self) -> bytes:
        """The per-database salt for key fingerprints, made once and shared by every replica."""
        async with self._connection() as connection:
            await connection.execute(
                "INSERT INTO meta (key, value) VALUES ('fingerprint_salt', $1) ON CONFLICT DO NOTHING",
                secrets.token_bytes(16).hex(),
            )
            value = await connection.fetchval("SELECT value FROM meta WHERE key = 'fingerprint_salt'")
        return bytes.fromhex(value)


async def _init_connection(connection: asyncpg.Connection) -> None:
    # Each pooled connection keeps its own staging table for the session (the pool's reset on
    # release does not drop temporary tables).
    await connection.execute(_CREATE_INCOMING)


