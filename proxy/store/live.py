"""Small indexed reads for the live views (`statusline`, `watch`): spend of a session or a time
range, active sessions, the last requests. Standard library only, so `statusline` starts fast.

Each query walks an index (requests_session or requests_started_at) and reads only the rows in
range. Sums over a time range are done by SQLite in integer pico-dollars (each stored decimal
rounded to 1e-12, which no price reaches below), so they are exact without a Python loop per row.
The connection is read-only: it never blocks the proxy's writer (WAL) and never creates a file.
On PostgreSQL (a postgresql:// db) the same reads go through proxy/store/pg_reader.py, which
imports asyncpg only then; sums there are exact numeric sums.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from proxy.store.dialect import POSTGRES_SCHEMES, dialect_of

_ZERO = Decimal(0)


def encode_time(moment: datetime) -> str:
    # The same text as proxy.store.sqlite.encode_time (which imports aiosqlite).
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def decode_time(text: str) -> datetime:
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)


def connect(path: Path | str, password_env: str | None = None) -> Any:
    """A read-only connection, or None when there is no database (yet) at `path`."""
    if isinstance(path, str) and path.startswith(POSTGRES_SCHEMES):
        from proxy.store.reader import open_reader

        # As the SQLite connection's 2 s busy timeout: a status line that waits is a blank one.
        return open_reader(path, password_env, timeout_s=2.0)
    path = Path(path)
    if not path.is_file():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    db.execute("PRAGMA query_only=1")
    return db


def _total(values: Iterable[tuple[str | None]]) -> Decimal:
    total = _ZERO
    for (value,) in values:
        if value is not None:
            total += Decimal(value)
    return total


class SessionSpend(NamedTuple):
    cost_usd: Decimal
    requests: int
    first_at: datetime | None
    last_at: datetime | None
    project: str | None


def session_spend(db: sqlite3.Connection, session: str, since: datetime | None = None) -> SessionSpend:
    query = f"SELECT cost_usd, started_at, project FROM requests{dialect_of(db).indexed_by('requests_session')} WHERE session = ?"
    params: list[str] = [session]
    if since is not None:
        query += " AND started_at >= ?"
        params.append(encode_time(since))
    total, count, first, last, project = _ZERO, 0, None, None, None
    for cost, started, proj in db.execute(query + " ORDER BY started_at", params):
        count += 1
        if cost is not None:
            total += Decimal(cost)
        first = first or started
        last = started
        project = proj or project
    return SessionSpend(
        total, count, decode_time(first) if first else None, decode_time(last) if last else None, project
    )


# A REAL holds a cost below $4,500 times 1e12 exactly as an integer, so ROUND recovers the stored
# decimal's pico-dollars; SUM over INTEGERs is exact (it raises on overflow, past $9 million).
_SUM_PICO = "SUM(CAST(ROUND(CAST(cost_usd AS REAL) * 1e12) AS INTEGER))"


def spend_since(db: sqlite3.Connection, since: datetime, until: datetime | None = None, *, project: str | None = None) -> Decimal:
    dialect = dialect_of(db)
    if project is not None:
        where = f"FROM requests{dialect.indexed_by('requests_project')} WHERE project = ? AND started_at >= ?"
        params: list[str] = [project, encode_time(since)]
    else:
        where = f"FROM requests{dialect.indexed_by('requests_started_at')} WHERE started_at >= ?"
        params = [encode_time(since)]
    if until is not None:
        where += " AND started_at < ?"
        params.append(encode_time(until))
    exact = dialect.exact_sum("cost_usd")
    if exact is not None:
        (total,) = db.execute(f"SELECT {exact} {where}", params).fetchone()
        return _ZERO if total is None else Decimal(total)
    try:
        (pico,) = db.execute(f"SELECT {_SUM_PICO} {where}", params).fetchone()
    except sqlite3.OperationalError:  # integer overflow: add up in Python instead
        return _total(db.execute(f"SELECT cost_usd {where}", params))
    return _ZERO if pico is None else Decimal(pico).scaleb(-12)


class ActiveSession(NamedTuple):
    session: str
    client: str | None
    project: str | None
    requests: int
    cost_usd: Decimal
    last_at: datetime


def active_sessions(db: sqlite3.Connection, since: datetime, limit: int = 10) -> list[ActiveSession]:
    """Sessions with a request since `since`, most recent first, with their cost in that span."""
    rows = db.execute(
        f"SELECT session, client, project, cost_usd, started_at FROM requests{dialect_of(db).indexed_by('requests_started_at')} "
        "WHERE started_at >= ? AND session IS NOT NULL ORDER BY started_at",
        (encode_time(since),),
    )
    seen: dict[str, ActiveSession] = {}
    for session, client, project, cost, started in rows:
        old = seen.get(session)
        seen[session] = ActiveSession(
            session,
            client or (old.client if old else None),
            project or (old.project if old else None),
            (old.requests if old else 0) + 1,
            (old.cost_usd if old else _ZERO) + (_ZERO if cost is None else Decimal(cost)),
            decode_time(started),
        )
    return sorted(seen.values(), key=lambda a: a.last_at, reverse=True)[:limit]


class RecentRequest(NamedTuple):
    finished_at: datetime
    endpoint: str
    model: str | None
    status: int
    outcome: str
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: Decimal | None
    duration_ms: float
    session: str | None


def recent_requests(db: sqlite3.Connection, limit: int = 10) -> list[RecentRequest]:
    rows = db.execute(
        "SELECT finished_at, endpoint, model, status, outcome, input_tokens, output_tokens, cost_usd, duration_ms, session "
        f"FROM requests{dialect_of(db).indexed_by('requests_started_at')} ORDER BY started_at DESC LIMIT ?",
        (limit,),
    )
    return [
        RecentRequest(
            decode_time(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], None if r[7] is None else Decimal(r[7]), r[8], r[9]
        )
        for r in rows
    ]
