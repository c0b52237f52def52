"""The shared budget ledger on SQLite, for `serve --workers N`: the same HoldStore as PostgresHolds
(proxy/store/holds.py), over the same tables (migration 13), for processes on one machine.

SQLite has no row or advisory locks: admission takes the database's write lock (BEGIN IMMEDIATE)
instead, so admissions of every worker run one at a time, each a few statements long. It uses a
connection of its own (never the recorder's: two transactions cannot share one connection), with
a busy timeout, so a worker waits its turn instead of failing. Money is stored as text and added
up as Decimal here (SQLite's arithmetic would be a float).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import aiosqlite

from proxy.budgets.ledger import WindowRef, WindowState
from proxy.budgets.messages import alert_key
from proxy.store.holds import KEEP, LEASE_S, Decide, HoldRow, Spend
from proxy.store.sqlite import encode_time, rollback

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
    """The shared ledger on one SQLite file (WAL), over a connection of its own."""

    def __init__(self, db: aiosqlite.Connection, replica: str, lease_s: float = LEASE_S) -> None:
        self.db = db
        self.replica = replica
        self.lease_s = lease_s
        # One connection: admissions, the settle writer and the heartbeat take turns on it.
        self._turn = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, replica: str, lease_s: float = LEASE_S) -> SqliteHolds:
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA synchronous=NORMAL")
        # Admissions queue on the write lock; the recorders of other workers hold it for a batch.
        await db.execute("PRAGMA busy_timeout=10000")
        return cls(db, replica, lease_s)

    async def close(self) -> None:
        await self.db.close()

    @contextlib.asynccontextmanager
    async def _locked(self, begin: str = "BEGIN IMMEDIATE") -> AsyncIterator[aiosqlite.Connection]:
        async with self._turn:
            await self.db.execute(begin)
            try:
                yield self.db
            except BaseException:
                await rollback(self.db)
                raise
            try:
                await self.db.execute("COMMIT")
            except BaseException:
                await rollback(self.db)
                raise

    async def _stamp(self, db: aiosqlite.Connection, now: datetime) -> None:
        await db.execute(
            "INSERT INTO budget_replicas (replica, seen_at) VALUES (?, ?) "
            "ON CONFLICT (replica) DO UPDATE SET seen_at = excluded.seen_at",
            (self.replica, encode_time(now)),
        )

    async def join(self) -> None:
        async with self._locked() as db:
            await self._stamp(db, datetime.now(UTC))

    async def heartbeat(self, keep_rolling: timedelta) -> int:
        now = datetime.now(UTC)
        async with self._locked() as db:
            await self._stamp(db, now)
            cutoff = encode_time(now - timedelta(seconds=self.lease_s))
            async with db.execute("SELECT replica FROM budget_replicas WHERE seen_at <= ?", (cutoff,)) as cursor:
                gone = [r[0] for r in await cursor.fetchall()]
            dropped = 0
            for replica in gone:
                cursor = await db.execute("DELETE FROM budget_holds WHERE replica = ?", (replica,))
                dropped += cursor.rowcount
                await db.execute("DELETE FROM budget_replicas WHERE replica = ?", (replica,))
            await db.execute("DELETE FROM budget_spend WHERE at < ?", (encode_time(now - max(KEEP, keep_rolling)),))
        return dropped

    async def leave(self) -> None:
        async with self._locked() as db:
            await db.execute("DELETE FROM budget_holds WHERE replica = ?", (self.replica,))
            await db.execute("DELETE FROM budget_replicas WHERE replica = ?", (self.replica,))

    async def _read(self, db: aiosqlite.Connection, refs: Sequence[WindowRef], now: datetime) -> dict[WindowRef, WindowState]:
        live = encode_time(datetime.now(UTC) - timedelta(seconds=self.lease_s))
        states = {}
        for ref in refs:
            at = _at(ref)
            async with db.execute(
                "SELECT h.amount FROM budget_holds h JOIN budget_replicas p ON p.replica = h.replica "
                "WHERE h.budget = ? AND h.scope = ? AND h.at = ? AND p.seen_at > ?",
                (ref.budget, ref.scope_value, at, live),
            ) as cursor:
                held = [Decimal(r[0]) for r in await cursor.fetchall()]
            since = encode_time(now - timedelta(seconds=ref.rolling_seconds)) if ref.rolling_seconds is not None else _NEVER
            async with db.execute(
                "SELECT at, spent FROM budget_spend WHERE budget = ? AND scope = ? AND (at = ? OR at > ?) ORDER BY at",
                (ref.budget, ref.scope_value, at, since),
            ) as cursor:
                entries = tuple((_decode(r[0]), Decimal(r[1])) for r in await cursor.fetchall())
            spent = sum((c for _, c in entries), _ZERO)
            states[ref] = WindowState(spent, sum(held, _ZERO), len(held), entries if ref.rolling_seconds is not None else ())
        return states

    async def admit(self, refs: Sequence[WindowRef], now: datetime, decide: Decide) -> Sequence[HoldRow]:
        async with self._locked() as db:
            holds = decide(await self._read(db, refs, now))
            if holds:
                await db.executemany(
                    "INSERT INTO budget_holds (replica, reservation, budget, scope, at, amount) VALUES (?, ?, ?, ?, ?, ?)",
                    [(self.replica, h.reservation, h.ref.budget, h.ref.scope_value, _at(h.ref), str(h.amount)) for h in holds],
                )
            return holds

    async def _add(self, db: aiosqlite.Connection, rows: Sequence[tuple[str, str, str, Decimal]], only_new: bool) -> None:
        for budget, scope, at, amount in rows:
            async with db.execute(
                "SELECT spent FROM budget_spend WHERE budget = ? AND scope = ? AND at = ?", (budget, scope, at)
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                await db.execute("INSERT INTO budget_spend (budget, scope, at, spent) VALUES (?, ?, ?, ?)", (budget, scope, at, str(amount)))
            elif not only_new:
                await db.execute(
                    "UPDATE budget_spend SET spent = ? WHERE budget = ? AND scope = ? AND at = ?",
                    (str(Decimal(row[0]) + amount), budget, scope, at),
                )

    async def settle(
        self, reservations: Sequence[int], spends: Sequence[Spend], read: Sequence[WindowRef], now: datetime
    ) -> dict[WindowRef, WindowState]:
        async with self._locked() as db:
            if reservations:
                await db.executemany(
                    "DELETE FROM budget_holds WHERE replica = ? AND reservation = ?", [(self.replica, r) for r in reservations]
                )
            await self._add(db, [(s.ref.budget, s.ref.scope_value, encode_time(s.at), s.cost) for s in spends], only_new=False)
            return await self._read(db, read, now)

    async def read(self, refs: Sequence[WindowRef], now: datetime) -> dict[WindowRef, WindowState]:
        # One read transaction (deferred: no write lock): every window from the same snapshot.
        async with self._locked("BEGIN") as db:
            return await self._read(db, refs, now)

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
        async with self._locked() as db:
            for budget, scope in {(r[0], r[1]) for r in rows}:
                async with db.execute("SELECT 1 FROM budget_spend WHERE budget = ? AND scope = ? LIMIT 1", (budget, scope)) as cursor:
                    if await cursor.fetchone() is not None:
                        rows = [r for r in rows if (r[0], r[1]) != (budget, scope)]
            await self._add(db, rows, only_new=True)

    async def claim_alert(self, budget: str, scope: str, window_start: datetime, kind: str, sent_at: datetime, message: str) -> bool:
        # The same window_start text as the single-process guard writes (alert_key).
        start = alert_key(budget, scope, window_start, "", Decimal(0))[2]
        async with self._locked() as db:
            cursor = await db.execute(
                "INSERT OR IGNORE INTO alerts (budget, scope, window_start, kind, sent_at, message) VALUES (?, ?, ?, ?, ?, ?)",
                (budget, scope, start, kind, encode_time(sent_at), message),
            )
            return cursor.rowcount == 1


WRITE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
