"""A synchronous PostgreSQL reader: one asyncpg connection driven on a private event loop.

The loop runs in a thread of its own, so a call works from any thread, one with a running loop
included (it blocks that thread as a sqlite3 call would).

It answers like a sqlite3 connection, so the SQLite readers (`report`, `budgets`, the web page's
reader processes, `keys`) run on it unchanged: statements in the SQLite dialect (translated by
proxy/store/postgres.py), rows back as SQLite would give them (times and money as text, flags as
0/1) with index and name access. asyncpg is already the proxy's PostgreSQL driver; a second,
synchronous driver would be one more dependency for the same few statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, Self, TypeVar

import asyncpg

from proxy.store import postgres
from proxy.store.dialect import POSTGRES, Dialect

READ_ERRORS: tuple[type[BaseException], ...] = postgres.WRITE_ERRORS
T = TypeVar("T")


def _loop_thread() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="pg-reader", daemon=True)
    thread.start()
    return loop, thread


def _run(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


class Row(tuple[Any, ...]):
    """A tuple that also answers by column name, as sqlite3.Row does (and so `dict(row)` works)."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> Self:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


class Cursor:
    """The rows of one statement, read whole (readers aggregate in SQL; their results are small)."""

    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount
        self.row_factory: Any = None  # sqlite3's cursors have it; rows here always answer both ways

    def fetchone(self) -> Any:  # as sqlite3's: a Row, or None
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Row]:
        rest = self._rows[self._next :]
        self._next = len(self._rows)
        return rest

    def __iter__(self) -> Iterator[Row]:
        while (row := self.fetchone()) is not None:
            yield row


def _count(status: str) -> int:
    # "UPDATE 3", "INSERT 0 1", "DELETE 0", "SELECT 2"
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


class PostgresReader:
    dialect: Dialect = POSTGRES

    def __init__(self, loop: tuple[asyncio.AbstractEventLoop, threading.Thread], connection: asyncpg.Connection) -> None:
        self._loop, self._thread = loop
        self._connection = connection
        self._prepared: dict[str, postgres.Prepared] = {}
        self.row_factory: Any = None

    @classmethod
    def open(cls, url: str, password: str | None = None, *, migrate: bool = False, timeout_s: float = 10.0) -> PostgresReader:
        loop, thread = _loop_thread()
        try:
            connection = _run(loop, asyncpg.connect(url, password=password, timeout=timeout_s, command_timeout=60))
            try:
                if migrate:
                    _run(loop, postgres.migrate(connection))
                # Times come back converted to UTC text anyway; this keeps to_char() in UTC too.
                _run(loop, connection.execute("SET TIME ZONE 'UTC'"))
            except BaseException:
                _run(loop, connection.close())
                raise
        except BaseException:
            _stop(loop, thread)
            raise
        return cls((loop, thread), connection)

    async def _execute(self, sql: str, params: Sequence[Any]) -> Cursor:
        prepared = self._prepared.get(sql)
        if prepared is None:
            prepared = self._prepared[sql] = await postgres.prepare(self._connection, sql)
        statement = await self._connection.prepare(prepared.sql)
        records = await statement.fetch(*prepared.args(params))
        names: dict[str, int] = {}
        for index, attribute in enumerate(statement.get_attributes()):
            names.setdefault(attribute.name, index)
        return Cursor([Row(prepared.row(r), names) for r in records], _count(statement.get_statusmsg() or ""))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return _run(self._loop, self._execute(sql, tuple(params)))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        transaction = self._connection.transaction()
        _run(self._loop, transaction.start())
        try:
            yield
        except BaseException:
            _run(self._loop, transaction.rollback())
            raise
        _run(self._loop, transaction.commit())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            _run(self._loop, self._connection.close(timeout=5))
        except READ_ERRORS:
            self._connection.terminate()
        finally:
            _stop(self._loop, self._thread)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
