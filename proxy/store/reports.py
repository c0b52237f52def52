"""Report queries: spend grouped by time or attribution over any range, exact, in well under a second.

`report()` is the one query the CLI (`openrouter-spend report`) and the web page's `/-/report` call;
it returns plain data and `as_document()` its JSON form, so both print the same keys and totals.
Whole hours are read from the hourly rollup (`rollups.TABLE`); only the partial hours at the edges
of a range read raw rows. Both are summed in SQL over integer pico/yocto-dollars, so totals are
exact Decimals and memory stays flat however many rows there are.
"""

from __future__ import annotations

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


@dataclass(slots=True)
class Line:
    group: str
    breakdown: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_FIELDS, 0))
    cost_unknown: int = 0
    # Exact money as integer pico- and yocto-dollars until read (see rollups).
    pico: dict[str, int] = field(default_factory=lambda: dict.fromkeys(rollups.MONEY, 0))
    yocto: dict[str, int] = field(default_factory=lambda: dict.fromkeys(rollups.MONEY, 0))
    inexact: int = 0
    first_at: str | None = None
    last_at: str | None = None
    models: set[str] = field(default_factory=set)
    projects: set[str] = field(default_factory=set)
    clients: set[str] = field(default_factory=set)

    @property
    def requests(self) -> int:
        return self.counts["requests"]

    def money(self, name: str) -> Decimal:
        return rollups.money_value(self.pico[name], self.yocto[name])

    @property
    def cost_usd(self) -> Decimal:
        return self.money("cost_usd")

    def add(self, row: sqlite3.Row) -> None:
        for name in COUNTS:
            self.counts[name] += row[name]
        for name in TOKEN_FIELDS:
            self.tokens[name] += row[name]
        self.cost_unknown += row["cost_unknown"]
        for name in rollups.MONEY:
            self.pico[name] += row[f"{name}_pico"]
            self.yocto[name] += row[f"{name}_yocto"]
            self.inexact += row[f"{name}_inexact"]
        if row["first_at"] is not None and (self.first_at is None or row["first_at"] < self.first_at):
            self.first_at = row["first_at"]
        if row["last_at"] is not None and (self.last_at is None or row["last_at"] > self.last_at):
            self.last_at = row["last_at"]

    def merge(self, other: Line) -> None:
        for name in COUNTS:
            self.counts[name] += other.counts[name]
        for name in TOKEN_FIELDS:
            self.tokens[name] += other.tokens[name]
        self.cost_unknown += other.cost_unknown
        self.inexact += other.inexact
        for name in rollups.MONEY:
            self.pico[name] += other.pico[name]
            self.yocto[name] += other.yocto[name]
        for moment in (other.first_at, other.last_at):
            if moment is not None:
                self.first_at = moment if self.first_at is None else min(self.first_at, moment)
                self.last_at = moment if self.last_at is None else max(self.last_at, moment)

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

    def sums(self) -> list[str]:
        if self.raw:
            return [f"SUM({expr}) AS {name}" for name, expr in rollups.counters("r").items()] + [
                "min(r.started_at) AS first_at",
                "max(r.started_at) AS last_at",
            ]
        return [f"SUM(h.{name}) AS {name}" for name in rollups.counters("r")] + [
            "min(h.first_at) AS first_at",
            "max(h.last_at) AS last_at",
        ]

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
    start: datetime | None,
    end: datetime | None,
    filters: Filters,
) -> Iterable[sqlite3.Row]:
    keys = [source.level(level) for level in levels]
    range_clauses, range_params = source.time_range(start, end)
    filter_clauses, filter_params = source.filters(filters)
    where = range_clauses + filter_clauses
    select = [f"{key} AS k{i}" for i, key in enumerate(keys)] + source.sums()
    sql = f"SELECT {', '.join(select)} FROM {source.table()}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if keys:
        sql += " GROUP BY " + ", ".join(f"k{i}" for i in range(len(keys)))
    cursor = db.execute(sql, [*range_params, *filter_params])
    cursor.row_factory = sqlite3.Row  # type: ignore[assignment]
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
    if by == "session":
        levels += list(_SESSION_EXTRAS)
    timed = [level for level in levels if level in TIME_GROUPINGS]
    whole_hours = not timed or _whole_hour_offsets(tz, since, until)
    # A database not yet migrated by `serve` (opened read-only here) is summed from raw rows: slower, as exact.
    pieces, notes = _windows(db, since, until, whole_hours and _has_rollup(db))
    labels = {level: _time_label(level, tz) for level in timed}

    lines: dict[tuple[str, str | None], Line] = {}
    total = Line("total")
    for raw, start, end in pieces:
        source = _Source(raw, minute=not whole_hours)
        for row in _query(db, source, levels, start, end, filters):
            keys = [row[f"k{i}"] for i in range(len(levels))]
            names = [labels[level](key) if level in labels else (key or NONE) for level, key in zip(levels, keys)]
            group, sub = names[0], (names[1] if breakdown else None)
            line = lines.get((group, sub))
            if line is None:
                line = lines[(group, sub)] = Line(group, sub)
            line.add(row)
            total.add(row)
            if by == "session":
                model, project, client = keys[-3:]
                for values, value in ((line.models, model), (line.projects, project), (line.clients, client)):
                    if value:
                        values.add(value)
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
