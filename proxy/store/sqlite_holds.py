"""The shared budget ledger on SQLite, for `serve --workers N`: the same HoldStore as PostgresHolds
(proxy/store/holds.py), over the same tables (migration 13), for processes on one machine.

SQLite has no row or advisory locks: admission takes the database's write lock (BEGIN IMMEDIATE)
instead, so admissions of every worker run one at a time. The lock is held for as short as can
be: the ledger has a connection and a thread of its own (never the recorder's: two transactions
cannot share one connection), and an admission is two trips to that thread, however many windows
it reads (lock and read; insert the holds and commit), with the pure decision between them on the
event loop. Workers of one `serve` also queue on a file lock (flock) before taking the write lock:
SQLite's own wait is a sleep in steps up to 100 ms, which under load let one worker's
admissions starve the other's; a flock waiter wakes as soon as it is released. The busy timeout
still covers the recorders and anything else writing the file. Money is stored as
text and added up as Decimal here (SQLite's arithmetic would be a float).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from proxy.budgets.ledger import WindowRef, WindowState
from proxy.budgets.messages import alert_key
from proxy.store.holds import KEEP, LEASE_S, Decide, HoldRow, Spend
from proxy.store.sqlite import encode_time

T = TypeVar("T")

_ZERO = Decimal(0)
_EPOCH = datetime.fromtimestamp(0, UTC)
# Sorts after every encoded time: a calendar window reads only its own row.
_NEVER = "9999"


def _at(ref: WindowRef) -> str:
    # Holds on a rolling window are kept under the epoch: the window has no start of its own.
    return encode_time(ref.start if ref.start is not None else _EPOCH)


def _decode(text: str) -> datetime:
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)


class SqliteHolds:
    """The shared ledger on one SQLite file (WAL), over a connection and a thread of its own."""

    def __init__(self, path: Path, replica: str, lease_s: float = LEASE_S, queue: Path | None = None) -> None:
        self.path = path
        self._queue_path = queue
        self._queue_fd: int | None = None
        self._queued = False
        self.replica = replica
        self.lease_s = lease_s
        # One thread, so calls run in the order they were made: a rollback queued after a
        # cancelled admission runs before the next one begins.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="budget-ledger")
        self._db: sqlite3.Connection | None = None
        # Admissions, the settle writer and the heartbeat take turns on the one connection.
        self._turn = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, replica: str, lease_s: float = LEASE_S, queue: Path | None = None) -> SqliteHolds:
        """`queue`: a file the workers of one server share, to take turns in order (see the module doc)."""
        holds = cls(path, replica, lease_s, queue)
        await holds._call(holds._connect)
        return holds

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        db.execute("PRAGMA synchronous=NORMAL")
        self._db = db
        if self._queue_path is not None:
            self._queue_fd = os.open(self._queue_path, os.O_CREAT | os.O_RDWR, 0o600)

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
            if self._queue_fd is not None:
                os.close(self._queue_fd)

        try:
            await self._call(close)
        finally:
            self._thread.shutdown(wait=True)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # -- in the ledger's thread

    def _begin(self, begin: str = "BEGIN IMMEDIATE") -> sqlite3.Connection:
        db = self._db
        assert db is not None
        if db.in_transaction:
            self._rollback()  # left by a call cancelled before its rollback was queued
        if self._queue_fd is not None and begin == "BEGIN IMMEDIATE":
            fcntl.flock(self._queue_fd, fcntl.LOCK_EX)
            self._queued = True
        try:
            db.execute(begin)
        except BaseException:
            self._unqueue()
            raise
        return db

    def _unqueue(self) -> None:
        if self._queued and self._queue_fd is not None:
            fcntl.flock(self._queue_fd, fcntl.LOCK_UN)
            self._queued = False

    def _commit(self, db: sqlite3.Connection) -> None:
        db.execute("COMMIT")
        self._unqueue()

    def _rollback(self) -> None:
        if self._db is not None and self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        self._unqueue()

    def _transaction(self, work: Callable[[sqlite3.Connection], T], begin: str = "BEGIN IMMEDIATE") -> T:
        db = self._begin(begin)
        try:
            out = work(db)
            self._commit(db)
        except BaseException:
            self._rollback()
            raise
        return out

    async def _in_transaction(self, work: Callable[[sqlite3.Connection], T], begin: str = "BEGIN IMMEDIATE") -> T:
        async with self._turn:
            try:
                return await self._call(self._transaction, work, begin)
            except BaseException:
                self._thread.submit(self._rollback)  # if cancelled mid-way: after the work, in order
                raise

    def _stamp(self, db: sqlite3.Connection, now: datetime) -> None:
        db.execute(
            "INSERT INTO budget_replicas (replica, seen_at) VALUES (?, ?) "
            "ON CONFLICT (replica) DO UPDATE SET seen_at = excluded.seen_at",
            (self.replica, encode_time(now)),
        )

    def _read(self, db: sqlite3.Connection, refs: Sequence[WindowRef], now: datetime) -> dict[WindowRef, WindowState]:
        live = encode_time(datetime.now(UTC) - timedelta(seconds=self.lease_s))
        states = {}
        for ref in refs:
            at = _at(ref)
            held = [
                Decimal(r[0])
                for r in db.execute(
                    "SELECT h.amount FROM budget_holds h JOIN budget_replicas p ON p.replica = h.replica "
                    "WHERE h.budget = ? AND h.scope = ? AND h.at = ? AND p.seen_at > ?",
                    (ref.budget, ref.scope_value, at, live),
                )
            ]
            since = encode_time(now - timedelta(seconds=ref.rolling_seconds)) if ref.rolling_seconds is not None else _NEVER
            entries = tuple(
                (_decode(r[0]), Decimal(r[1]))
                for r in db.execute(
                    "SELECT at, spent FROM budget_spend WHERE budget = ? AND scope = ? AND (at = ? OR at > ?) ORDER BY at",
                    (ref.budget, ref.scope_value, at, since),
                )
            )
            spent = sum((c for _, c in entries), _ZERO)
            states[ref] = WindowState(spent, sum(held, _ZERO), len(held), entries if ref.rolling_seconds is not None else ())
        return states

    def _add(self, db: sqlite3.Connection, rows: Sequence[tuple[str, str, str, Decimal]], only_new: bool) -> None:
        for budget, scope, at, amount in rows:
            row = db.execute("SELECT spent FROM budget_spend WHERE budget = ? AND scope = ? AND at = ?", (budget, scope, at)).fetchone()
            if row is None:
                db.execute("INSERT INTO budget_spend (budget, scope, at, spent) VALUES (?, ?, ?, ?)", (budget, scope, at, str(amount)))
            elif not only_new:
                db.execute(
                    "UPDATE budget_spend SET spent = ? WHERE budget = ? AND scope = ? AND at = ?",
                    (str(Decimal(row[0]) + amount), budget, scope, at),
                )

    # -- HoldStore

    async def join(self) -> None:
        await self._in_transaction(lambda db: self._stamp(db, datetime.now(UTC)))

    async def heartbeat(self, keep_rolling: timedelta) -> int:
        def beat(db: sqlite3.Connection) -> int:
            now = datetime.now(UTC)
            self._stamp(db, now)
            cutoff = encode_time(now - timedelta(seconds=self.lease_s))
            gone = [r[0] for r in db.execute("SELECT replica FROM budget_replicas WHERE seen_at <= ?", (cutoff,))]
            dropped = 0
            for replica in gone:
                dropped += db.execute("DELETE FROM budget_holds WHERE replica = ?", (replica,)).rowcount
                db.execute("DELETE FROM budget_replicas WHERE replica = ?", (replica,))
            db.execute("DELETE FROM budget_spend WHERE at < ?", (encode_time(now - max(KEEP, keep_rolling)),))
            return dropped

        return await self._in_transaction(beat)

    async def leave(self) -> None:
        def leave(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM budget_holds WHERE replica = ?", (self.replica,))
            db.execute("DELETE FROM budget_replicas WHERE replica = ?", (self.replica,))

        await self._in_transaction(leave)

    async def admit(self, refs: Sequence[WindowRef], now: datetime, decide: Decide) -> Sequence[HoldRow]:
        def lock_and_read() -> dict[WindowRef, WindowState]:
            db = self._begin()
            try:
                return self._read(db, refs, now)
            except BaseException:
                self._rollback()
                raise

        def insert_and_commit(holds: Sequence[HoldRow]) -> None:
            db = self._db
            assert db is not None
            try:
                if holds:
                    db.executemany(
                        "INSERT INTO budget_holds (replica, reservation, budget, scope, at, amount) VALUES (?, ?, ?, ?, ?, ?)",
                        [(self.replica, h.reservation, h.ref.budget, h.ref.scope_value, _at(h.ref), str(h.amount)) for h in holds],
                    )
                self._commit(db)
            except BaseException:
                self._rollback()
                raise

        async with self._turn:
            try:
                # The write lock is held from the first trip to the end of the second; the decision
                # in between is pure (no await).
                holds = decide(await self._call(lock_and_read))
                await self._call(insert_and_commit, holds)
            except BaseException:
                self._thread.submit(self._rollback)
                raise
            return holds

    async def settle(
        self, reservations: Sequence[int], spends: Sequence[Spend], read: Sequence[WindowRef], now: datetime
    ) -> dict[WindowRef, WindowState]:
        def settle(db: sqlite3.Connection) -> dict[WindowRef, WindowState]:
            if reservations:
                db.executemany(
                    "DELETE FROM budget_holds WHERE replica = ? AND reservation = ?", [(self.replica, r) for r in reservations]
                )
            self._add(db, [(s.ref.budget, s.ref.scope_value, encode_time(s.at), s.cost) for s in spends], only_new=False)
            return self._read(db, read, now)

        return await self._in_transaction(settle)

    async def read(self, refs: Sequence[WindowRef], now: datetime) -> dict[WindowRef, WindowState]:
        # One read transaction (deferred: no write lock), so every window comes from one snapshot.
        return await self._in_transaction(lambda db: self._read(db, refs, now), "BEGIN")

    async def seed(self, windows: Sequence[tuple[WindowRef, WindowState]], slice_at: Callable[[WindowRef, datetime], datetime]) -> None:
        rows: list[tuple[str, str, str, Decimal]] = []
        for ref, state in windows:
            if ref.rolling_seconds is None:
                assert ref.start is not None
                rows.append((ref.budget, ref.scope_value, encode_time(ref.start), state.spent))
            else:
                rows += [(ref.budget, ref.scope_value, encode_time(at), cost) for at, cost in state.entries]
        if not rows:
            return

        def seed(db: sqlite3.Connection) -> None:
            # Only budgets and scopes the ledger has never seen: another worker may have seeded them.
            fresh = [
                r for r in rows
                if db.execute("SELECT 1 FROM budget_spend WHERE budget = ? AND scope = ? LIMIT 1", (r[0], r[1])).fetchone() is None
            ]
            self._add(db, fresh, only_new=True)

        await self._in_transaction(seed)

    async def claim_alert(self, budget: str, scope: str, window_start: datetime, kind: str, sent_at: datetime, message: str) -> bool:
        # The same window_start text as the single-process guard writes (alert_key).
        start = alert_key(budget, scope, window_start, "", Decimal(0))[2]
        return await self._in_transaction(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO alerts (budget, scope, window_start, kind, sent_at, message) VALUES (?, ?, ?, ?, ?, ?)",
                (budget, scope, start, kind, encode_time(sent_at), message),
            ).rowcount == 1
        )


def release(path: Path, replica_prefix: str) -> int:
    """Drop the holds and lease of a process known to be dead (a worker its parent saw die), at
    once instead of when its lease runs out. Returns the holds dropped."""
    db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        db.execute("BEGIN IMMEDIATE")
        match = (len(replica_prefix), replica_prefix)
        dropped = db.execute("DELETE FROM budget_holds WHERE substr(replica, 1, ?) = ?", match).rowcount
        db.execute("DELETE FROM budget_replicas WHERE substr(replica, 1, ?) = ?", match)
        db.execute("COMMIT")
        return dropped
    finally:
        db.close()


WRITE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
