"""Report queries: spend grouped by time or attribution over any range, exact, in well under a second.

`report()` is the one query the CLI (`openrouter-spend report`) and the web page's `/-/report` call;
it returns plain data and `as_document()` its JSON form, so both print the same keys and totals.
Whole hours are read from the hourly rollup (`rollups.TABLE`); only the partial hours at the edges
of a range read raw rows. Both are summed in SQL over integer pico/yocto-dollars, so totals are
exact Decimals and memory stays flat however many rows there are.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from proxy.store import rollups

TIME_GROUPINGS = ("hour", "day", "week", "month")
GROUPINGS = (*TIME_GROUPINGS, "model", "provider", "project", "session", "key", "client", "endpoint")
COUNTS = ("requests", "errors", "blocked", "free_requests")
TOKEN_FIELDS = rollups.TOKENS
NONE = "(none)"
# What `--by session` shows besides the totals: the session's models, project(s) and client(s).
_SESSION_EXTRAS = ("model", "project", "client")


@dataclass(frozen=True, slots=True)
class Filters:
    """Each a tuple of globs (`openai/*`); a row passes when it matches one glob of every non-empty tuple."""

    projects: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    sessions: tuple[str, ...] = ()
    # Matched against a key's alias or its fingerprint.
    keys: tuple[str, ...] = ()


# The summed columns, in the order every query returns them (after the group keys).
SUMMED = tuple(rollups.counters("r"))
_AT = {name: index for index, name in enumerate(SUMMED)}


@dataclass(slots=True)
class Line:
    group: str
    breakdown: str | None = None
    # Positional, in SUMMED order (counts, tokens, cost_unknown, money as pico/yocto parts): adding
    # a query row is then one zip, which matters when a session report merges 100,000 of them.
    sums: list[int] = field(default_factory=lambda: [0] * len(SUMMED))
    first_at: str | None = None
    last_at: str | None = None
    models: set[str] = field(default_factory=set)
    projects: set[str] = field(default_factory=set)
    clients: set[str] = field(default_factory=set)

    def value(self, name: str) -> int:
        return self.sums[_AT[name]]

    @property
    def requests(self) -> int:
        return self.sums[0]

    @property
    def counts(self) -> dict[str, int]:
        return {name: self.value(name) for name in COUNTS}

    @property
    def tokens(self) -> dict[str, int]:
        return {name: self.value(name) for name in TOKEN_FIELDS}

    @property
    def cost_unknown(self) -> int:
        return self.value("cost_unknown")

    @property
    def inexact(self) -> int:
        return sum(self.value(f"{name}_inexact") for name in rollups.MONEY)

    def money(self, name: str) -> Decimal:
        return rollups.money_value(self.value(f"{name}_pico"), self.value(f"{name}_yocto"))

    @property
    def cost_usd(self) -> Decimal:
        return self.money("cost_usd")

    def add(self, sums: Iterable[int], first_at: str | None, last_at: str | None) -> None:
        self.sums = [a + (b or 0) for a, b in zip(self.sums, sums)]
        if first_at is not None and (self.first_at is None or first_at < self.first_at):
            self.first_at = first_at
        if last_at is not None and (self.last_at is None or last_at > self.last_at):
            self.last_at = last_at

    def merge(self, other: Line) -> None:
        self.add(other.sums, other.first_at, other.last_at)

    def as_dict(self, session: bool = False) -> dict[str, Any]:
        document: dict[str, Any] = {"group": self.group}
        if self.breakdown is not None:
            document["breakdown"] = self.breakdown
        document.update(self.counts)
        document.update(self.tokens)
        document.update({name: format(self.money(name), "f") for name in rollups.MONEY})
        document["cost_unknown_requests"] = self.cost_unknown
        if session:
            document.update(
                first_seen=self.first_at,
                last_seen=self.last_at,
                duration_s=_duration_s(self.first_at, self.last_at),
                models=sorted(self.models),
                projects=sorted(self.projects),
                clients=sorted(self.clients),
            )
        return document


@dataclass(frozen=True, slots=True)
class Report:
    by: str
    breakdown: str | None
    since: datetime | None
    until: datetime | None
    lines: list[Line]
    total: Line
    notes: tuple[str, ...] = ()


def _duration_s(first: str | None, last: str | None) -> float | None:
    if first is None or last is None:
        return None
    return (_parse_time(last) - _parse_time(first)).total_seconds()


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.rstrip("Z")).replace(tzinfo=UTC)


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _ceil_hour(moment: datetime) -> datetime:
    floor = _floor_hour(moment)
    return floor if floor == moment else floor + timedelta(hours=1)


def _hour_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H")


def _time_text(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _whole_hour_offsets(tz: ZoneInfo, since: datetime | None, until: datetime | None) -> bool:
    """Local days start on a UTC hour (true for all but a few zones such as Asia/Kolkata)."""
    probes = [since or datetime(2000, 1, 1, tzinfo=UTC), until or datetime.now(UTC)]
    probes += [probes[0] + timedelta(days=182), probes[0] + timedelta(days=91)]
    return all((tz.utcoffset(p.replace(tzinfo=None)) or timedelta()).total_seconds() % 3600 == 0 for p in probes)


class _Source:
    """How one grouping, filter or sum is spelt over the rollup ('h') or over raw rows ('r')."""

    def __init__(self, raw: bool, minute: bool = False) -> None:
        self.raw = raw
        self.minute = minute

    def dim(self, name: str) -> str:
        return rollups.dimension("r", name) if self.raw else f"h.{name}"

    def level(self, by: str) -> str:
        if by in TIME_GROUPINGS:
            if not self.raw:
                return "h.hour"
            return f"substr(r.started_at, 1, {16 if self.minute else 13})"
        if by == "key":
            return f"(CASE WHEN {self.dim('key_alias')} != '' THEN {self.dim('key_alias')} ELSE {self.dim('key_fingerprint')} END)"
        return self.dim(by)

    def sums(self, extras: Iterable[str]) -> list[str]:
        if self.raw:
            sums = [f"SUM({expr})" for expr in rollups.counters("r").values()] + ["min(r.started_at)", "max(r.started_at)"]
        else:
            sums = [f"SUM(h.{name})" for name in SUMMED] + ["min(h.first_at)", "max(h.last_at)"]
        # The distinct values of each extra, as one JSON array per group.
        return sums + [f"json_group_array(DISTINCT {self.dim(name)})" for name in extras]

    def table(self) -> str:
        return "requests AS r" if self.raw else f"{rollups.TABLE} AS h"

    def time_range(self, start: datetime | None, end: datetime | None) -> tuple[list[str], list[str]]:
        column, encode = ("r.started_at", _time_text) if self.raw else ("h.hour", _hour_text)
        clauses, params = [], []
        if start is not None:
            clauses.append(f"{column} >= ?")
            params.append(encode(start))
        if end is not None:
            clauses.append(f"{column} < ?")
            params.append(encode(end))
        return clauses, params

    def filters(self, filters: Filters) -> tuple[list[str], list[str]]:
        clauses: list[str] = []
        params: list[str] = []
        for name, globs in (("project", filters.projects), ("model", filters.models), ("session", filters.sessions)):
            if globs:
                clauses.append("(" + " OR ".join(f"{self.dim(name)} GLOB ?" for _ in globs) + ")")
                params += globs
        if filters.keys:
            match = f"({self.dim('key_alias')} GLOB ? OR {self.dim('key_fingerprint')} GLOB ?)"
            clauses.append("(" + " OR ".join(match for _ in filters.keys) + ")")
            params += [glob for glob in filters.keys for _ in (0, 1)]
        return clauses, params


def _query(
    db: sqlite3.Connection,
    source: _Source,
    levels: list[str],
    extras: tuple[str, ...],
    start: datetime | None,
    end: datetime | None,
    filters: Filters,
) -> Iterable[tuple[Any, ...]]:
    keys = [source.level(level) for level in levels]
    range_clauses, range_params = source.time_range(start, end)
    filter_clauses, filter_params = source.filters(filters)
    where = range_clauses + filter_clauses
    select = [f"{key} AS k{i}" for i, key in enumerate(keys)] + source.sums(extras)
    sql = f"SELECT {', '.join(select)} FROM {source.table()}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if keys:
        sql += " GROUP BY " + ", ".join(f"k{i}" for i in range(len(keys)))
    cursor = db.execute(sql, [*range_params, *filter_params])
    cursor.row_factory = None
    return cursor


def _time_label(by: str, tz: ZoneInfo) -> Any:
    cache: dict[str, str] = {}

    def label(utc_text: str) -> str:
        found = cache.get(utc_text)
        if found is None:
            moment = datetime.fromisoformat(utc_text + (":00" if len(utc_text) == 13 else "")).replace(tzinfo=UTC)
            local = moment.astimezone(tz)
            if by == "hour":
                found = local.strftime("%Y-%m-%d %H:00")
            elif by == "day":
                found = local.date().isoformat()
            elif by == "week":
                found = (local.date() - timedelta(days=local.weekday())).isoformat()
            else:
                found = local.strftime("%Y-%m")
            cache[utc_text] = found
        return found

    return label


def _windows(
    db: sqlite3.Connection, since: datetime | None, until: datetime | None, use_rollup: bool
) -> tuple[list[tuple[bool, datetime | None, datetime | None]], list[str]]:
    """The (raw?, start, end) pieces a range is read from: whole hours from the rollup, edges raw."""
    if not use_rollup:
        return [(True, since, until)], []
    notes = []
    first = None if since is None else _ceil_hour(since)
    last = None if until is None else _floor_hour(until)
    if first is not None and last is not None and first >= last:
        return [(True, since, until)], []
    pieces: list[tuple[bool, datetime | None, datetime | None]] = []
    kept = _raw_kept_from(db)
    if since is not None and first is not None and first != since:
        if kept is not None and since < kept:
            # Retention dropped those raw rows: the whole hour it began in is what remains.
            first = _floor_hour(since)
            notes.append(f"since rounded to {_hour_text(first)}:00 UTC: raw rows before {_hour_text(kept)}:00 were pruned")
        else:
            pieces.append((True, since, first))
    if until is not None and last is not None and last != until:
        if kept is not None and last < kept:
            last = _ceil_hour(until)
            notes.append(f"until rounded to {_hour_text(last)}:00 UTC: raw rows before {_hour_text(kept)}:00 were pruned")
        else:
            pieces.append((True, last, until))
    pieces.append((False, first, last))
    return pieces, notes


def _has_rollup(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (rollups.TABLE,)).fetchone() is not None


def _raw_kept_from(db: sqlite3.Connection) -> datetime | None:
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'raw_kept_from'").fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else _parse_time(row[0])


def report(
    db: sqlite3.Connection,
    by: str,
    *,
    breakdown: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    filters: Filters = Filters(),
    tz: ZoneInfo = ZoneInfo("UTC"),
) -> Report:
    """Totals per `by` group (and per `breakdown` group within it) of the requests started in [since, until)."""
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}")
    if breakdown is not None and (breakdown not in GROUPINGS or breakdown == by):
        raise ValueError(f"unknown breakdown {breakdown!r}")
    levels = [by] + ([breakdown] if breakdown else [])
    extras = _SESSION_EXTRAS if by == "session" else ()
    timed = [level for level in levels if level in TIME_GROUPINGS]
    whole_hours = not timed or _whole_hour_offsets(tz, since, until)
    # A database not yet migrated by `serve` (opened read-only here) is summed from raw rows: slower, as exact.
    pieces, notes = _windows(db, since, until, whole_hours and _has_rollup(db))
    labels = {level: _time_label(level, tz) for level in timed}

    lines: dict[tuple[str, str | None], Line] = {}
    total = Line("total")
    width = len(levels)
    summed = slice(width, width + len(SUMMED))
    for raw, start, end in pieces:
        source = _Source(raw, minute=not whole_hours)
        for row in _query(db, source, levels, extras, start, end, filters):
            names = [labels[level](key) if level in labels else (key or NONE) for level, key in zip(levels, row)]
            group, sub = names[0], (names[1] if breakdown else None)
            line = lines.get((group, sub))
            if line is None:
                line = lines[(group, sub)] = Line(group, sub)
            first_at, last_at = row[summed.stop], row[summed.stop + 1]
            line.add(row[summed], first_at, last_at)
            total.add(row[summed], first_at, last_at)
            if extras:
                models, projects, clients = (json.loads(text) for text in row[summed.stop + 2 :])
                line.models.update(m for m in models if m)
                line.projects.update(p for p in projects if p)
                line.clients.update(c for c in clients if c)
    if total.inexact:
        notes.append(f"{total.inexact} amounts are not fixed-point decimals of at most 24 places and are not in the totals")
    return Report(by, breakdown, since, until, _ordered(list(lines.values()), by, breakdown), total, tuple(notes))


def _ordered(lines: list[Line], by: str, breakdown: str | None) -> list[Line]:
    def order(level: str | None, key: str | None, cost: Decimal) -> tuple[Any, ...]:
        return (key or "",) if level in TIME_GROUPINGS else (-cost, key or "")

    group_cost: dict[str, Decimal] = {}
    for line in lines:
        group_cost[line.group] = group_cost.get(line.group, Decimal(0)) + line.cost_usd
    return sorted(
        lines,
        key=lambda line: (
            order(by, line.group, group_cost[line.group]),
            order(breakdown, line.breakdown, line.cost_usd) if breakdown else (),
        ),
    )


def as_document(result: Report) -> dict[str, Any]:
    """The JSON form `report --format json` prints and `/-/report` returns."""
    session = result.by == "session"
    return {
        "by": result.by,
        "breakdown": result.breakdown,
        "since": None if result.since is None else result.since.isoformat(),
        "until": None if result.until is None else result.until.isoformat(),
        "rows": [line.as_dict(session) for line in result.lines],
        "total": result.total.as_dict(),
        "notes": list(result.notes),
    }


@dataclass(frozen=True, slots=True)
class FreeUsage:
    """Today's calls to :free models against OpenRouter's free limits (per UTC day, per minute)."""

    today: int
    daily_limit: int
    busiest_minute: int
    minute_limit: int = 20

    def as_dict(self) -> dict[str, int]:
        return {
            "requests_today": self.today,
            "daily_limit": self.daily_limit,
            "busiest_minute": self.busiest_minute,
            "per_minute_limit": self.minute_limit,
        }

    def line(self) -> str:
        share = f" ({self.today / self.daily_limit:.0%})" if self.daily_limit else ""
        return (
            f"free models today (UTC): {self.today} of {self.daily_limit} requests/day{share}; "
            f"busiest minute {self.busiest_minute} of {self.minute_limit}/min"
        )


def free_usage(db: sqlite3.Connection, now: datetime, daily_limit: int) -> FreeUsage:
    """Today's (UTC) :free requests; blocked ones never reached OpenRouter and do not count."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = db.execute(
        "SELECT substr(started_at, 1, 16), count(*) FROM requests "
        "WHERE started_at >= ? AND is_free AND outcome != 'blocked' GROUP BY 1",
        (_time_text(midnight),),
    ).fetchall()
    return FreeUsage(sum(n for _, n in rows), daily_limit, max((n for _, n in rows), default=0))
