"""OpenRouter's own books in the store: imported `/activity` days, and the sums `reconcile` compares.

Synchronous like the other readers (a connection from proxy/store/reader.py, either engine):
`reconcile` and `import-activity` are commands, and `serve`'s periodic check runs these in a
thread on its own read-only connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from proxy.store.dialect import dialect_of
from proxy.store.reader import Reader, transaction
from proxy.store.sqlite import encode_time

# A BYOK request's cost_usd includes what the provider charged the user's own key, recorded apart
# in this column, so OpenRouter's credits are cost_usd minus it. A database an earlier version wrote
# lacks the column until `serve` migrates it; the read-only readers must still work on it.
UPSTREAM_COLUMN = "upstream_cost_usd"
_PRICED_BY_US = ("catalog", "estimated")
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class ActivityRow:
    """One `GET /activity` item: a completed UTC day x model x provider endpoint."""

    date: str
    model: str
    model_permaslug: str | None
    endpoint_id: str
    provider: str | None
    usage_usd: Decimal  # OpenRouter credits spent
    byok_usage_usd: Decimal  # what BYOK providers charged the user's own keys
    requests: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the proxy's rows add up to in one window, or one day x model."""

    credits: Decimal  # paid to OpenRouter: cost_usd minus the BYOK provider part
    byok: Decimal | None  # what BYOK providers charged; None when the database does not record it
    requests: int
    priced_by_us: int  # rows whose cost is our catalog price or estimate, not OpenRouter's figure


def stored_salt(db: Reader) -> bytes | None:
    """The fingerprint salt `serve` made, or None if it never ran on this database."""
    row = db.execute("SELECT value FROM meta WHERE key = 'fingerprint_salt'").fetchone()
    return None if row is None else bytes.fromhex(row[0])


def records_byok(db: Reader) -> bool:
    """Whether the requests table records the BYOK provider charge apart (its own column)."""
    return any(row[1] == UPSTREAM_COLUMN for row in db.execute(dialect_of(db).table_columns("requests")))


class _Sum:
    __slots__ = ("credits", "byok", "requests", "priced_by_us")

    def __init__(self) -> None:
        self.credits = _ZERO
        self.byok = _ZERO
        self.requests = 0
        self.priced_by_us = 0

    def add(self, cost: str | None, upstream: str | None, source: str, outcome: str) -> None:
        spent = Decimal(cost) if cost is not None else _ZERO
        provider_part = Decimal(upstream) if upstream is not None else _ZERO
        self.credits += spent - provider_part
        self.byok += provider_part
        # OpenRouter counts the requests it generated for; blocked and unreachable ones never got there.
        if outcome == "ok" or spent > 0:
            self.requests += 1
        if source in _PRICED_BY_US:
            self.priced_by_us += 1

    def done(self, byok_known: bool) -> Recorded:
        return Recorded(self.credits, self.byok if byok_known else None, self.requests, self.priced_by_us)


def _rows(db: Reader, since: datetime, until: datetime | None, fingerprint: str | None) -> tuple[bool, Iterable[Any]]:
    byok_known = records_byok(db)
    upstream = UPSTREAM_COLUMN if byok_known else "NULL"
    query = f"SELECT started_at, cost_usd, {upstream}, cost_source, outcome, model FROM requests WHERE started_at >= ?"
    params: list[str] = [encode_time(since)]
    if until is not None:
        query += " AND started_at < ?"
        params.append(encode_time(until))
    if fingerprint is not None:
        query += " AND key_fingerprint = ?"
        params.append(fingerprint)
    return byok_known, db.execute(query, params)


def recorded_by_day(db: Reader, since: datetime, fingerprint: str | None) -> tuple[dict[str, Recorded], bool]:
    """Sums per UTC day from `since` on, and whether the database records BYOK provider charges;
    `fingerprint` None takes every row (managed-key mode, where every request went out on one key)."""
    sums: dict[str, _Sum] = {}
    byok_known, rows = _rows(db, since, None, fingerprint)
    for started_at, cost, upstream, source, outcome, _ in rows:
        day = started_at[:10]
        total = sums.get(day)
        if total is None:
            total = sums[day] = _Sum()
        total.add(cost, upstream, source, outcome)
    return {day: total.done(byok_known) for day, total in sums.items()}, byok_known


def windows_of(days: Mapping[str, Recorded], starts: Mapping[str, datetime], byok_known: bool) -> dict[str, Recorded]:
    """Each window's sum over the days from its start (windows start at UTC midnight)."""
    result = {}
    for name, start in starts.items():
        first = start.date().isoformat()
        picked = [rec for day, rec in days.items() if day >= first]
        result[name] = Recorded(
            sum((r.credits for r in picked), _ZERO),
            sum((r.byok or _ZERO for r in picked), _ZERO) if byok_known else None,
            sum(r.requests for r in picked),
            sum(r.priced_by_us for r in picked),
        )
    return result


def recorded_by_window(db: Reader, starts: Mapping[str, datetime], fingerprint: str | None) -> dict[str, Recorded]:
    days, byok_known = recorded_by_day(db, min(starts.values()), fingerprint)
    return windows_of(days, starts, byok_known)


def recorded_by_day_model(db: Reader, first_day: str, last_day: str) -> dict[tuple[str, str], Recorded]:
    """Every key's rows, per UTC day and model, from `first_day` through `last_day` (YYYY-MM-DD)."""
    since = datetime.fromisoformat(first_day + "T00:00:00+00:00")
    until = datetime.fromisoformat(last_day + "T00:00:00+00:00") + timedelta(days=1)
    sums: dict[tuple[str, str], _Sum] = {}
    byok_known, rows = _rows(db, since, until, None)
    for started_at, cost, upstream, source, outcome, model in rows:
        if cost is None and outcome != "ok":
            continue  # never reached a model: not a line of its own
        cell = sums.setdefault((started_at[:10], model or "(unknown)"), _Sum())
        cell.add(cost, upstream, source, outcome)
    return {cell: total.done(byok_known) for cell, total in sums.items()}


_COLUMNS = ("date", "model", "endpoint_id", "model_permaslug", "provider", "usage_usd", "byok_usage_usd", "requests",
            "prompt_tokens", "completion_tokens", "reasoning_tokens", "imported_at")
# An upsert both engines speak (a listing that names one endpoint twice keeps the last, as INSERT OR REPLACE did).
_INSERT = (
    f"INSERT INTO imported_activity ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    "ON CONFLICT (date, model, endpoint_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[3:])
)


def store_activity(db: Reader, rows: list[ActivityRow], now: datetime) -> int:
    """Replace the imported days with these rows, in one transaction: importing twice leaves the same
    rows, and an endpoint OpenRouter no longer lists for a day does not linger."""
    when = encode_time(now)
    with transaction(db):
        for day in sorted({r.date for r in rows}):
            db.execute("DELETE FROM imported_activity WHERE date = ?", (day,))
        for r in rows:
            db.execute(_INSERT, (
                r.date, r.model, r.endpoint_id, r.model_permaslug, r.provider, format(r.usage_usd, "f"),
                format(r.byok_usage_usd, "f"), r.requests, r.prompt_tokens, r.completion_tokens, r.reasoning_tokens, when,
            ))
    return len(rows)


def imported_activity(db: Reader, since: date | datetime | None = None, until: date | datetime | None = None) -> list[ActivityRow]:
    """Imported day x model x provider figures with `since <= date < until` (UTC days), by date and model.

    For `report`: these are OpenRouter's totals for days, models and providers only; they carry no
    project, session, key or client.
    """
    query = "SELECT * FROM imported_activity"
    clauses, params = [], []
    if since is not None:
        clauses.append("date >= ?")
        params.append(_day(since))
    if until is not None:
        clauses.append("date < ?")
        params.append(_day(until))
    if clauses:
        query += " WHERE " + " AND ".join(clauses)
    result = []
    for row in db.execute(query + " ORDER BY date, model, provider, endpoint_id", params):
        date_, model, endpoint_id, permaslug, provider, usage, byok, requests, prompt, completion, reasoning = tuple(row)[:11]
        result.append(ActivityRow(date_, model, permaslug, endpoint_id, provider, Decimal(usage), Decimal(byok),
                                  requests, prompt, completion, reasoning))
    return result


def _day(moment: date | datetime) -> str:
    if isinstance(moment, datetime):
        # A naive time is UTC, as everywhere in the store.
        return (moment.astimezone(UTC) if moment.tzinfo else moment).date().isoformat()
    return moment.isoformat()
