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
import hashlib
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


_PG_READ = (
    "SELECT r.i, h.total, h.n, sp.ats, sp.amounts "
    "FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) WITH ORDINALITY AS r(b, s, a, since, i) "
    "CROSS JOIN LATERAL (SELECT coalesce(sum(h.amount), 0) AS total, count(*) AS n FROM budget_holds h "
    "  JOIN budget_replicas p ON p.replica = h.replica "
    "  WHERE h.budget = r.b AND h.scope = r.s AND h.at = r.a AND p.seen_at > now() - make_interval(secs => $5)) h "
    "CROSS JOIN LATERAL (SELECT array_agg(x.at ORDER BY x.at) AS ats, array_agg(x.spent ORDER BY x.at) AS amounts "
    "  FROM budget_spend x WHERE x.budget = r.b AND x.scope = r.s AND (x.at = r.a OR x.at > r.since)) sp "
    "ORDER BY r.i"
)
_PG_ADD = (
    "INSERT INTO budget_spend (budget, scope, at, spent) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (budget, scope, at) DO UPDATE SET spent = budget_spend.spent + EXCLUDED.spent"
)
_PG_SEED = "INSERT INTO budget_spend (budget, scope, at, spent) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
_PG_HOLDS = (
    "INSERT INTO budget_holds (replica, reservation, budget, scope, at, amount) "
    "SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::timestamptz[], $6::numeric[])"
)
_NEVER = datetime.max.replace(tzinfo=UTC)
# After these a connection is not trusted again: closed, and the pool opens a new one.
_BROKEN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError,
)


def lock_ids(refs: Sequence[WindowRef]) -> list[int]:
    """A 64-bit advisory lock id per window's budget and scope, in a fixed order (no deadlock)."""
    return sorted(
        {int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True) for key in lock_order(refs)}
    )


class PostgresHolds:
    """The shared ledger on PostgreSQL, over the store's pool."""

    def __init__(self, pool: asyncpg.Pool, replica: str, lease_s: float = LEASE_S) -> None:
        self.pool = pool
        self.replica = replica
        self.lease_s = lease_s

    @contextlib.asynccontextmanager
    async def _locked(self, refs: Sequence[WindowRef]) -> AsyncIterator[asyncpg.Connection]:
        """A transaction holding the windows' locks. BEGIN and the locks go in one round trip (the
        ids are integers made here, so the script carries no outside text)."""
        async with self.pool.acquire() as connection:
            try:
                locks = "".join(f"SELECT pg_advisory_xact_lock({i});" for i in lock_ids(refs))
                await connection.execute("BEGIN;" + locks)
                try:
                    yield connection
                except BaseException:
                    # A connection left mid-statement (cancelled) cannot roll back: drop it instead.
                    try:
                        await connection.execute("ROLLBACK")
                    except (asyncpg.PostgresError, *_BROKEN):
                        connection.terminate()
                    raise
                await connection.execute("COMMIT")
            except _BROKEN:
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
        async with self.pool.acquire() as connection, connection.transaction():
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
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute("DELETE FROM budget_holds WHERE replica = $1", self.replica)
            await connection.execute("DELETE FROM budget_replicas WHERE replica = $1", self.replica)

    async def _read(self, connection: asyncpg.Connection, refs: Sequence[WindowRef], now: datetime) -> dict[WindowRef, WindowState]:
        """Every window's spend and live holds in one statement (one snapshot)."""
        if not refs:
            return {}
        since = [_since(ref, now) if ref.rolling_seconds is not None else _NEVER for ref in refs]
        rows = await connection.fetch(
            _PG_READ, [r.budget for r in refs], [r.scope_value for r in refs], [_at(r) for r in refs], since, self.lease_s
        )
        states = {}
        for row in rows:
            ref = refs[row[0] - 1]
            entries = tuple(zip((at.astimezone(UTC) for at in row[3] or ()), row[4] or ()))
            spent = sum((c for _, c in entries), _ZERO)
            states[ref] = WindowState(spent, row[1], row[2], entries if ref.rolling_seconds is not None else ())
        return states

    async def admit(self, refs: Sequence[WindowRef], now: datetime, decide: Decide) -> Sequence[HoldRow]:
        async with self._locked(refs) as connection:
            holds = decide(await self._read(connection, refs, now))
            if holds:
                await connection.execute(
                    _PG_HOLDS,
                    self.replica,
                    [h.reservation for h in holds],
                    [h.ref.budget for h in holds],
                    [h.ref.scope_value for h in holds],
                    [_at(h.ref) for h in holds],
                    [h.amount for h in holds],
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
