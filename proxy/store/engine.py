"""The storage seam: the Store protocol the recorder and the budget guard call, and open_store().

Two engines implement it: SqliteStore (one aiosqlite connection, the default) and PostgresStore
(proxy/store/postgres.py, chosen by a `postgresql://` db). Callers write SQL in SQLite's dialect
and get rows back as SQLite gives them; nothing above this module asks which engine it is.
"""

from __future__ import annotations

import itertools
import operator
import os
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from proxy.store import sqlite
from proxy.store.dialect import SQLITE, Dialect
from proxy.store.records import UsageRecord

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(db: str | Path | None) -> bool:
    return isinstance(db, str) and db.startswith(POSTGRES_SCHEMES)


class Store(Protocol):
    engine: str
    # The few SQL spellings a reader must pick per engine (proxy/store/dialect.py).
    dialect: Dialect
    # What a write may raise while the database is locked, full, restarting or unreachable: the
    # recorder keeps its batch and retries on these.
    write_errors: tuple[type[BaseException], ...]

    async def insert_requests(self, records: Sequence[UsageRecord]) -> None: ...

    async def run_statements(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None: ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    async def salt(self) -> bytes: ...

    async def close(self) -> None: ...


class SqliteStore:
    engine = "sqlite"
    dialect = SQLITE
    write_errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def insert_requests(self, records: Sequence[UsageRecord]) -> None:
        await sqlite.insert_requests(self.db, list(records))

    async def run_statements(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        try:
            await self.db.execute("BEGIN")
            # One thread hop per run of the same statement, not per statement: the 421 price rows a
            # start writes would otherwise hold the writer (and the request rows queued behind it)
            # for seconds on a busy loop.
            for sql, runs in itertools.groupby(statements, key=operator.itemgetter(0)):
                await self.db.executemany(sql, [params for _, params in runs])
            await self.db.execute("COMMIT")
        except BaseException:
            await sqlite.rollback(self.db)
            raise

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self.db.execute(sql, params) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    async def salt(self) -> bytes:
        return await sqlite.salt(self.db)

    async def close(self) -> None:
        await self.db.close()


def as_store(db: Store | aiosqlite.Connection) -> Store:
    """A bare aiosqlite connection (as tests and the bench pass) is the SQLite engine."""
    return SqliteStore(db) if isinstance(db, aiosqlite.Connection) else db


async def open_store(db: Path | str, password_env: str | None = None) -> Store:
    """SQLite for a path, PostgreSQL for a postgresql:// URL (password from `password_env`, else
    PGPASSWORD or ~/.pgpass; never from the URL)."""
    if is_postgres(db):
        from proxy.store.postgres import PostgresStore

        password = os.environ.get(password_env) if password_env else None
        return await PostgresStore.open(str(db), password)
    return SqliteStore(await sqlite.open_db(Path(db)))


WindowSpendRow = tuple[str | None, str | None, str | None, str | None, tuple[bool, ...], Decimal]


async def spend_by_window(
    db: Store | aiosqlite.Connection, starts: Sequence[datetime], until: datetime
) -> list[WindowSpendRow]:
    """(model, key, project, session, (started since starts[0], ...), cost) summed per label set and
    per set of windows a request falls in, for requests started before `until`, labelled as the metrics
    label them: the model served, else asked for; the key's alias, else its fingerprint. PostgreSQL
    sums numeric exactly; SQLite returns the costs as text, summed here as Decimal (its SUM would
    be a float)."""
    store = as_store(db)
    since = [sqlite.encode_time(s) for s in starts]
    flags = ", ".join("started_at >= ?" for _ in starts)
    groups = ", ".join(str(i) for i in range(1, 5 + len(starts)))
    exact = store.dialect.exact_sum("cost_usd")
    money = exact or "group_concat(cost_usd, ' ')"
    rows = await store.fetch(
        "SELECT COALESCE(model, model_requested), COALESCE(key_alias, key_fingerprint), project, session, "
        f"{flags}, {money} FROM requests "
        f"WHERE started_at >= ? AND started_at < ? AND cost_usd IS NOT NULL GROUP BY {groups}",
        (*since, min(since), sqlite.encode_time(until)),
    )
    out: list[WindowSpendRow] = []
    for row in rows:
        amount = Decimal(row[-1]) if exact else sum((Decimal(c) for c in row[-1].split()), Decimal(0))
        if amount:
            out.append((row[0], row[1], row[2], row[3], tuple(bool(f) for f in row[4:-1]), amount))
    return out
