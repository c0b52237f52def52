"""The shared budget ledger: spend per budget window and the holds of requests in flight, in the
database every replica (or worker) writes to, so N proxies enforce one budget.

Admission is one transaction: lock the request's budget windows (an advisory lock per budget and
scope value on PostgreSQL, in a fixed order so two requests never deadlock), read their spend and
the live holds of every replica, let the caller decide (the pure ledger, no await), and insert this
request's holds. Settling is one transaction too: take the same locks, delete the holds, add the
real cost to the windows' spend. So the numbers each admission sees are those one process would
have: the overshoot bound is the single-process one.

A replica's holds live as long as its lease: it stamps `budget_replicas.seen_at` every few seconds,
and holds of a replica not seen for `LEASE_S` (crashed, killed, cut off) stop counting and are
deleted. That is the one way this ledger is looser than one process: a replica that stalls past
its lease while requests are in flight lets others admit against its reservations.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol

import asyncpg

from proxy.budgets.ledger import WindowRef, WindowState

LEASE_S = 30.0
HEARTBEAT_S = 5.0
# Calendar windows are at most a month; older spend rows are no longer read.
KEEP = timedelta(days=40)

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class HoldRow:
    reservation: int
    ref: WindowRef
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Spend:
    ref: WindowRef
    at: datetime
    cost: Decimal


Decide = Callable[[dict[WindowRef, WindowState]], Sequence[HoldRow]]


class HoldStore(Protocol):
    replica: str
    lease_s: float

    async def join(self) -> None: ...

    async def heartbeat(self, keep_rolling: timedelta) -> int: ...

    async def leave(self) -> None: ...

    async def admit(self, refs: Sequence[WindowRef], now: datetime, decide: Decide) -> Sequence[HoldRow]: ...

    async def settle(
        self, reservations: Sequence[int], spends: Sequence[Spend], read: Sequence[WindowRef], now: datetime
    ) -> dict[WindowRef, WindowState]: ...

    async def read(self, refs: Sequence[WindowRef], now: datetime) -> dict[WindowRef, WindowState]: ...

    async def seed(self, windows: Sequence[tuple[WindowRef, WindowState]], slice_at: Callable[[WindowRef, datetime], datetime]) -> None: ...

    async def claim_alert(self, budget: str, scope: str, window_start: datetime, kind: str, sent_at: datetime, message: str) -> bool: ...


def lock_order(refs: Sequence[WindowRef]) -> list[str]:
    return sorted({ref.lock_key for ref in refs})


def _since(ref: WindowRef, now: datetime) -> datetime:
    assert ref.rolling_seconds is not None
    return now - timedelta(seconds=ref.rolling_seconds)


def _at(ref: WindowRef) -> datetime:
    # Holds on a rolling window are kept under the epoch: the window has no start of its own.
    return ref.start if ref.start is not None else datetime.fromtimestamp(0, UTC)


_PG_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))"
_PG_SPENT = "SELECT spent FROM budget_spend WHERE budget = $1 AND scope = $2 AND at = $3"
_PG_SLICES = "SELECT at, spent FROM budget_spend WHERE budget = $1 AND scope = $2 AND at > $3 ORDER BY at"
_PG_HOLDS = (
    "SELECT coalesce(sum(h.amount), 0), count(*) FROM budget_holds h JOIN budget_replicas r ON r.replica = h.replica "
    "WHERE h.budget = $1 AND h.scope = $2 AND h.at = $3 AND r.seen_at > now() - make_interval(secs => $4)"
)
_PG_ADD = (
    "INSERT INTO budget_spend (budget, scope, at, spent) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (budget, scope, at) DO UPDATE SET spent = budget_spend.spent + EXCLUDED.spent"
)
_PG_SEED = "INSERT INTO budget_spend (budget, scope, at, spent) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
_PG_HOLD = "INSERT INTO budget_holds (replica, reservation, budget, scope, at, amount) VALUES ($1, $2, $3, $4, $5, $6)"


class PostgresHolds:
    """The shared ledger on PostgreSQL, over the store's pool."""

    def __init__(self, pool: asyncpg.Pool, replica: str, lease_s: float = LEASE_S) -> None:
        self.pool = pool
        self.replica = replica
        self.lease_s = lease_s

    @contextlib.asynccontextmanager
    async def _locked(self, refs: Sequence[WindowRef]) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as connection:
            try:
                async with connection.transaction():
                    for key in lock_order(refs):
                        await connection.execute(_PG_LOCK, key)
                    yield connection
            except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError, TimeoutError):
                connection.terminate()
                raise

    async def join(self) -> None:
        async with self.pool.acquire() as connection:
            await connection.execute(
                "INSERT INTO budget_replicas (replica, seen_at) VALUES ($1, now()) "
                "ON CONFLICT (replica) DO UPDATE SET seen_at = now()",
                self.replica,
            )

    async def heartbeat(self, keep_rolling: timedelta) -> int:
        """Renew this replica's lease; drop the holds of replicas whose lease ran out. Returns how many."""
        async with self.pool.acquire() as connection:
            async with connection.transaction():
                await connection.execute(
                    "INSERT INTO budget_replicas (replica, seen_at) VALUES ($1, now()) "
                    "ON CONFLICT (replica) DO UPDATE SET seen_at = now()",
                    self.replica,
                )
                gone = await connection.fetch(
                    "DELETE FROM budget_replicas WHERE seen_at <= now() - make_interval(secs => $1) RETURNING replica",
                    self.lease_s,
                )
                dropped = 0
                if gone:
                    status = await connection.execute(
                        "DELETE FROM budget_holds WHERE replica = ANY($1::text[])", [r[0] for r in gone]
                    )
                    dropped = int(status.split()[-1])
                await connection.execute(
                    "DELETE FROM budget_spend WHERE at < now() - $1::interval", max(KEEP, keep_rolling)
                )
        return dropped

    async def leave(self) -> None:
        async with self.pool.acquire() as connection:
            async with connection.transaction():
                await connection.execute("DELETE FROM budget_holds WHERE replica = $1", self.replica)
                await connection.execute("DELETE FROM budget_replicas WHERE replica = $1", self.replica)

    async def _read(self, connection: asyncpg.Connection, refs: Sequence[WindowRef], now: datetime) -> dict[WindowRef, WindowState]:
        states = {}
        for ref in refs:
            held = await connection.fetchrow(_PG_HOLDS, ref.budget, ref.scope_value, _at(ref), self.lease_s)
            assert held is not None
            if ref.rolling_seconds is None:
                spent = await connection.fetchval(_PG_SPENT, ref.budget, ref.scope_value, ref.start)
                states[ref] = WindowState(spent or _ZERO, held[0], held[1])
            else:
                rows = await connection.fetch(_PG_SLICES, ref.budget, ref.scope_value, _since(ref, now))
                entries = tuple((r[0].astimezone(UTC), r[1]) for r in rows)
                states[ref] = WindowState(sum((c for _, c in entries), _ZERO), held[0], held[1], entries)
        return states

    async def admit(self, refs: Sequence[WindowRef], now: datetime, decide: Decide) -> Sequence[HoldRow]:
        async with self._locked(refs) as connection:
            holds = decide(await self._read(connection, refs, now))
            if holds:
                await connection.executemany(
                    _PG_HOLD,
                    [(self.replica, h.reservation, h.ref.budget, h.ref.scope_value, _at(h.ref), h.amount) for h in holds],
                )
            return holds

    async def settle(
        self, reservations: Sequence[int], spends: Sequence[Spend], read: Sequence[WindowRef], now: datetime
    ) -> dict[WindowRef, WindowState]:
        """For a batch of ended requests: their holds go, their costs are added, in one transaction."""
        async with self._locked([*read, *(s.ref for s in spends)]) as connection:
            if reservations:
                await connection.execute(
                    "DELETE FROM budget_holds WHERE replica = $1 AND reservation = ANY($2::bigint[])", self.replica, list(reservations)
                )
            if spends:
                await connection.executemany(_PG_ADD, [(s.ref.budget, s.ref.scope_value, s.at, s.cost) for s in spends])
            return await self._read(connection, read, now)

    async def read(self, refs: Sequence[WindowRef], now: datetime) -> dict[WindowRef, WindowState]:
        async with self.pool.acquire() as connection:
            # One snapshot for all the reads: a settle between two of them would count a cost twice or not at all.
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                return await self._read(connection, refs, now)

    async def seed(self, windows: Sequence[tuple[WindowRef, WindowState]], slice_at: Callable[[WindowRef, datetime], datetime]) -> None:
        """Spend the log shows for windows the shared ledger has no row for (its first start, a new budget)."""
        rows = []
        for ref, state in windows:
            if ref.rolling_seconds is None:
                rows.append((ref.budget, ref.scope_value, ref.start, state.spent))
            else:
                rows += [(ref.budget, ref.scope_value, at, cost) for at, cost in state.entries]
        if not rows:
            return
        async with self._locked([ref for ref, _ in windows]) as connection:
            for budget, scope in {(r[0], r[1]) for r in rows}:
                if await connection.fetchval(
                    "SELECT 1 FROM budget_spend WHERE budget = $1 AND scope = $2 LIMIT 1", budget, scope
                ):
                    rows = [r for r in rows if (r[0], r[1]) != (budget, scope)]
            if rows:
                await connection.executemany(_PG_SEED, rows)

    async def claim_alert(self, budget: str, scope: str, window_start: datetime, kind: str, sent_at: datetime, message: str) -> bool:
        async with self.pool.acquire() as connection:
            claimed = await connection.fetchval(
                "INSERT INTO alerts (budget, scope, window_start, kind, sent_at, message) VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT DO NOTHING RETURNING true",
                budget, scope, window_start, kind, sent_at, message,
            )
        return bool(claimed)
