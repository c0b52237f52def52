"""The synchronous read seam: `open_reader(db)` for the commands and the page's reader processes.

A SQLite path gives a read-only sqlite3 connection (rows are sqlite3.Row); a postgresql:// URL
gives a PostgresReader (proxy/store/pg_reader.py) with the same calls: `execute(sql, params)` in
the SQLite dialect, rows with index and name access, `close()`. Readers ask `dialect_of(db)`
(proxy/store/dialect.py) for the few fragments that differ, never which engine they have.
`open_writer(db)` is the same for the few commands that write (keys, budgets set): a read-write
connection, migrated first, with `transaction(db)` around its writes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Union

from proxy.store.dialect import POSTGRES_SCHEMES, dialect_of

if TYPE_CHECKING:
    from proxy.store.pg_reader import PostgresReader

Reader = Union[sqlite3.Connection, "PostgresReader"]

__all__ = ["Reader", "dialect_of", "errors", "is_postgres", "open_reader", "open_writer", "transaction"]


def is_postgres(db: str | Path | None) -> bool:
    return isinstance(db, str) and db.startswith(POSTGRES_SCHEMES)


def _password(password_env: str | None) -> str | None:
    # Never from the URL (the config refuses one there): the named variable, else asyncpg's own
    # PGPASSWORD and ~/.pgpass, as libpq does.
    return os.environ.get(password_env) if password_env else None


def open_reader(db: str | Path, password_env: str | None = None, *, timeout_s: float = 10.0) -> Reader:
    """Read-only: FileNotFoundError when a SQLite file does not exist (the commands say so in one line).
    `timeout_s` bounds connecting to PostgreSQL (statusline must answer fast)."""
    if is_postgres(db):
        from proxy.store.pg_reader import PostgresReader

        return PostgresReader.open(str(db), _password(password_env), timeout_s=timeout_s)
    from proxy.store.sqlite import connect_readonly

    return connect_readonly(Path(db))


def open_writer(db: str | Path, password_env: str | None = None) -> Reader:
    """Read-write, created and migrated if needed."""
    if is_postgres(db):
        from proxy.store.pg_reader import PostgresReader

        return PostgresReader.open(str(db), _password(password_env), migrate=True)
    from proxy.store.sqlite import prepare

    path = Path(db)
    prepare(path)
    connection = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    connection.execute("PRAGMA busy_timeout=5000")
    return connection


@contextlib.contextmanager
def transaction(db: Reader) -> Iterator[None]:
    """One write transaction; SQLite takes its write lock at once (BEGIN IMMEDIATE)."""
    if isinstance(db, sqlite3.Connection):
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return
    with db.transaction():
        yield


def errors(db: Reader | None = None) -> tuple[type[BaseException], ...]:
    """What a read may raise for a database that is missing, locked, unreachable or of another
    version: the commands turn these into one line."""
    found: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
    if db is None or not isinstance(db, sqlite3.Connection):
        with contextlib.suppress(ImportError):
            from proxy.store.pg_reader import READ_ERRORS

            found += READ_ERRORS
    return found
