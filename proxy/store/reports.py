"""Report queries: spend grouped by time or attribution over any range, exact, in well under a second.

`report()` is the one query the CLI (`openrouter-spend report`) and the web page's `/-/report` call;
it returns plain data and `as_document()` its JSON form, so both print the same keys and totals.
`parse_range()` reads `since`/`until` (7d, 1mo, today, last-month, dates) for both as well.
Whole UTC days are read from the daily rollup, whole hours from the hourly one, sessions from the
per-session one (see proxy/store/rollups.py); only the partial hours at the edges of a range read
raw rows. All are summed in SQL over integer pico/yocto-dollars, so totals are exact Decimals and
memory stays flat however many rows there are. On PostgreSQL (no rollups there) every piece is
raw rows, cut into the same integer parts from `numeric` (proxy/store/dialect.py), so both engines
return the same document for the same rows.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Context, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from proxy.errors import CliError
from proxy.store import rollups
from proxy.store.dialect import Dialect, dialect_of
from proxy.store.reader import Reader

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
    clients: tuple[str, ...] = ()


# The summed columns, in the order every query returns them (after the group keys).
SUMMED = tuple(rollups.counters("r"))
_AT = {name: index for index, name in enumerate(SUMMED)}
_PICO, _YOCTO = _AT["cost_usd_pico"], _AT["cost_usd_yocto"]
# The counts and tokens lead SUMMED, in this order: a line's are then one slice.
_COUNTED = (*COUNTS, *TOKEN_FIELDS)
assert SUMMED[: len(_COUNTED)] == _COUNTED
_MONEY_AT = tuple((name, _AT[f"{name}_pico"], _AT[f"{name}_yocto"]) for name in rollups.MONEY)
_UNKNOWN = _AT["cost_unknown"]


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
    # OpenRouter's own figures for a UTC day the log has no rows of (`import-activity`), not ours.
    imported: bool = False

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

    def cost_key(self) -> int:
        """The cost in yocto-dollars, to sort by without building Decimals."""
        return self.sums[_PICO] * rollups.PICO + self.sums[_YOCTO]

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

    def has_money(self, name: str) -> bool:
        return bool(self.value(f"{name}_pico") or self.value(f"{name}_yocto"))

    def as_dict(self, session: bool = False) -> dict[str, Any]:
        document = self.scalars(session)
        if session:
            document.update(self.lists())
        return document

    def scalars(self, session: bool = False) -> dict[str, Any]:
        """as_dict() without the lists (a session's models, projects, clients), in the same order."""
        sums = self.sums
        document: dict[str, Any] = {"group": self.group}
        if self.breakdown is not None:
            document["breakdown"] = self.breakdown
        if self.imported:
            document["imported"] = True
        document.update(zip(_COUNTED, sums))
        for name, pico, yocto in _MONEY_AT:
            document[name] = rollups.money_text(sums[pico], sums[yocto])
        document["cost_unknown_requests"] = sums[_UNKNOWN]
        if session:
            document["first_seen"] = self.first_at
            document["last_seen"] = self.last_at
            document["duration_s"] = duration_s(self.first_at, self.last_at)
        return document

    def lists(self) -> tuple[tuple[str, list[str]], ...]:
        """A session's models, projects and clients, sorted: the last items of its as_dict()."""
        return (("models", sorted(self.models)), ("projects", sorted(self.projects)), ("clients", sorted(self.clients)))


@dataclass(frozen=True, slots=True)
class Report:
    by: str
    breakdown: str | None
    since: datetime | None
    until: datetime | None
    lines: list[Line]
    total: Line
    notes: tuple[str, ...] = ()


def duration_s(first: str | None, last: str | None) -> float | None:
    if first is None or last is None:
        return None
    try:
        # Both as stored ('...T13:04:05.000000Z'): aware UTC times, the same difference, faster.
        return (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    except TypeError:  # one without its Z
        return (_parse_time(last) - _parse_time(first)).total_seconds()


_SPANS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
CALENDAR_WORDS = ("today", "yesterday", "this-week", "last-week", "this-month", "last-month")
WHEN_FORMS = "30m, 12h, 7d, 2w, 1mo, today, yesterday, this-week, last-week, this-month, last-month or a date like 2026-11-01"


def _month_start(day: date, months_back: int = 0) -> date:
    index = day.year * 12 + day.month - 1 - months_back
    return date(index // 12, index % 12 + 1, 1)


def calendar_period(word: str, now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The [start, end) of a calendar word, in `tz`'s days, weeks (from Monday) and months."""
    today = now.astimezone(tz).date()
    monday = today - timedelta(days=today.weekday())
    first, last = {
        "today": (today, today + timedelta(days=1)),
        "yesterday": (today - timedelta(days=1), today),
        "this-week": (monday, monday + timedelta(days=7)),
        "last-week": (monday - timedelta(days=7), monday),
        "this-month": (_month_start(today), _month_start(today, -1)),
        "last-month": (_month_start(today, 1), _month_start(today)),
    }[word]
    return datetime.combine(first, time(), tz), datetime.combine(last, time(), tz)


def parse_when(text: str, now: datetime, flag: str, tz: ZoneInfo = ZoneInfo("UTC")) -> datetime:
    """`30m`, `12h`, `7d`, `2w`, `1mo` back from `now`, a calendar word's start, or an ISO date/time (in `tz` unless it says)."""
    given, text = text, text.strip()
    if text in CALENDAR_WORDS:
        return calendar_period(text, now, tz)[0]
    match = re.fullmatch(r"(\d+)(mo|[mhdw])", text)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        if unit == "mo":
            local = now.astimezone(tz)
            start = _month_start(local.date(), amount)
            day = min(local.day, (_month_start(start, -1) - timedelta(days=1)).day)
            return local.replace(year=start.year, month=start.month, day=day)
        return now - timedelta(**{_SPANS[unit]: amount})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"{flag}: expected {WHEN_FORMS}, got {given!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """The one `--since` for every command (`report`, `whatif`); no text means no lower bound."""
    if not text:
        return None
    return parse_when(text, now, "--since")


def parse_range(
    since: str | None, until: str | None, now: datetime, tz: ZoneInfo
) -> tuple[datetime | None, datetime | None]:
    """`--since WORD` alone covers that calendar period (`--since yesterday` is yesterday only)."""
    start = parse_when(since, now, "--since", tz) if since else None
    end = parse_when(until, now, "--until", tz) if until else None
    if since and not until and since.strip() in CALENDAR_WORDS:
        end = calendar_period(since.strip(), now, tz)[1]
    if start is not None and end is not None and end < start:
        raise CliError(f"--until: {until!r} is before --since {since!r}")
    return start, end


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


def _offsets(tz: ZoneInfo, since: datetime | None, until: datetime | None) -> set[float]:
    """The UTC offsets (seconds) `tz` has over the range, probed monthly."""
    start = since or datetime(2000, 1, 1, tzinfo=UTC)
    end = until or datetime.now(UTC)
    if end - start > timedelta(days=800):
        start = end - timedelta(days=800)  # DST rules repeat; two years of probes see them all
    probes, moment = [], start
    while moment <= end:
        probes.append(moment)
        moment += timedelta(days=15)
    probes.append(end)
    return {(p.astimezone(tz).utcoffset() or timedelta()).total_seconds() for p in probes}


def _raw_table(db: Reader) -> str:
    """`requests`, or for a database an earlier version wrote and `serve` has not migrated yet, the
    same rows with the money columns it lacks as NULL: reports read it exactly all the same."""
    if not dialect_of(db).rollups:
        return "requests"  # PostgreSQL's migrations add every column; no file of an older version is read
    have = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
    missing = [name for name in rollups.MONEY if name not in have]
    if not missing:
        return "requests"
    return "(SELECT *, " + ", ".join(f"NULL AS {name}" for name in missing) + " FROM requests)"


class _Source:
    """How one grouping, filter or sum is spelt over a rollup ('h') or over raw rows ('r')."""

    def __init__(self, rollup: rollups.Rollup | None, dialect: Dialect, minute: bool = False, raw: str = "requests") -> None:
        self.rollup = rollup
        self.dialect = dialect
        self.minute = minute
        self.raw = raw

    def dim(self, name: str) -> str:
        return rollups.dimension("r", name) if self.rollup is None else f"h.{name}"

    def level(self, by: str) -> str:
        if by in TIME_GROUPINGS:
            if self.rollup is not None:
                return "h.period"
            return self.dialect.time_text("r.started_at", 16 if self.minute else 13)
        if by == "key":
            return f"(CASE WHEN {self.dim('key_alias')} != '' THEN {self.dim('key_alias')} ELSE {self.dim('key_fingerprint')} END)"
        return self.dim(by)

    def group(self, by: str) -> tuple[str, str]:
        """What `_query` groups by for a level, and the template spelling a group (see Dialect.time_group)."""
        if by in TIME_GROUPINGS and self.rollup is None:
            return self.dialect.time_group("r.started_at", 16 if self.minute else 13)
        return self.level(by), "{}"

    def sums(self, seen: bool) -> list[str]:
        if self.rollup is None:
            aggregated: dict[str, str] = {}
            for money in rollups.MONEY:
                parts = self.dialect.money_sums(f"r.{money}")
                if parts is not None:
                    aggregated.update(zip((f"{money}_pico", f"{money}_yocto", f"{money}_inexact"), parts))
            sums = [
                aggregated.get(name) or self.dialect.int_sum(expr)
                for name, expr in rollups.counters("r", dialect=self.dialect).items()
            ]
            first_last = ["min(r.started_at)", "max(r.started_at)"]
        else:
            sums = [f"SUM(h.{name})" for name in SUMMED]
            first_last = ["min(h.first_at)", "max(h.last_at)"]
        # First and last seen cost string comparisons on every row: only sessions show them.
        return sums + (first_last if seen else ["NULL", "NULL"])

    def table(self) -> str:
        return f"{self.raw} AS r" if self.rollup is None else f"{self.rollup.table} AS h"

    def time_range(self, start: datetime | None, end: datetime | None) -> tuple[list[str], list[str]]:
        if self.rollup is rollups.SESSIONS:
            # Only (session, attribution) groups wholly inside the range; see _session_pieces.
            clauses, params = [], []
            if start is not None:
                clauses.append("h.first_at >= ?")
                params.append(_time_text(start))
            if end is not None:
                clauses.append("h.last_at < ?")
                params.append(_time_text(end))
            return clauses, params
        if self.rollup is None:
            column, encode = "r.started_at", _time_text
        else:
            width = self.rollup.width
            column, encode = "h.period", lambda moment: _hour_text(moment)[:width]
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
        for name, globs in (
            ("project", filters.projects), ("model", filters.models), ("session", filters.sessions), ("client", filters.clients)
        ):
            if globs:
                clauses.append("(" + " OR ".join(self.dialect.glob(self.dim(name)) for _ in globs) + ")")
                params += [self.dialect.glob_param(glob) for glob in globs]
        if filters.keys:
            match = f"({self.dialect.glob(self.dim('key_alias'))} OR {self.dialect.glob(self.dim('key_fingerprint'))})"
            clauses.append("(" + " OR ".join(match for _ in filters.keys) + ")")
            params += [self.dialect.glob_param(glob) for glob in filters.keys for _ in (0, 1)]
        return clauses, params

    def where(
        self, start: datetime | None, end: datetime | None, filters: Filters, *membership: tuple[str, str, str] | None
    ) -> tuple[str, list[str]]:
        """Each `membership` is (column, 'IN' or 'NOT IN', a JSON array of values): of a session or a period."""
        range_clauses, range_params = self.time_range(start, end)
        filter_clauses, filter_params = self.filters(filters)
        clauses = range_clauses + filter_clauses
        params = [*range_params, *filter_params]
        for column, op, values in filter(None, membership):
            clauses.append(self.dialect.member("h.period" if column == "period" else self.dim(column), op))
            params.append(values)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _query(
    db: Reader,
    source: _Source,
    levels: list[str],
    seen: bool,
    where: tuple[str, list[str]],
    extras: tuple[str, ...] = (),
) -> Iterable[tuple[Any, ...]]:
    """Per group: its keys, the SUMMED sums, first and last seen, then per `extras` dimension its
    values joined by commas (one per row read, so a value holding a comma shows as more values than
    the count of rows read, which comes last). No DISTINCT: it cost SQLite more than Python's set()."""
    groups = [source.group(level) for level in levels]
    sums = source.sums(seen)
    if extras:
        sums = [*sums, *(source.dialect.joined_list(source.dim(extra)) for extra in extras), "count(*)"]
    select = [f"{key} AS k{i}" for i, (key, _) in enumerate(groups)] + [f"{s} AS s{j}" for j, s in enumerate(sums)]
    sql = f"SELECT {', '.join(select)} FROM {source.table()}{where[0]}"
    if groups:
        sql += " GROUP BY " + ", ".join(f"k{i}" for i in range(len(groups)))
    if any(spell != "{}" for _, spell in groups):
        # Spell each group once, after grouping, not once per row.
        outer = [spell.format(f"g.k{i}") for i, (_, spell) in enumerate(groups)] + [f"g.s{j}" for j in range(len(sums))]
        sql = f"SELECT {', '.join(outer)} FROM ({sql}) AS g"
    cursor = db.execute(sql, where[1])
    cursor.row_factory = None
    return cursor


def _distinct(
    db: Reader, source: _Source, levels: list[str], extras: Iterable[str], where: tuple[str, list[str]]
) -> Iterable[tuple[Any, ...]]:
    keys = [source.level(level) for level in levels] + [source.dim(extra) for extra in extras]
    cursor = db.execute(f"SELECT DISTINCT {', '.join(keys)} FROM {source.table()}{where[0]}", where[1])
    cursor.row_factory = None
    return cursor


def _time_label(by: str, tz: ZoneInfo) -> Any:
    cache: dict[str, str] = {}

    def label(utc_text: str) -> str:
        found = cache.get(utc_text)
        if found is None:
            # An hour ('2026-11-20T13'), a minute ('...T13:04') or a UTC day ('2026-11-20').
            text = utc_text + ":00" if len(utc_text) == 13 else utc_text
            local = datetime.fromisoformat(text).replace(tzinfo=UTC).astimezone(tz)
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


Piece = tuple[rollups.Rollup | None, datetime | None, datetime | None, tuple[str, str, str] | None]


def _floor_day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _ceil_day(moment: datetime) -> datetime:
    floor = _floor_day(moment)
    return floor if floor == moment else floor + timedelta(days=1)


def _windows(
    db: Reader, since: datetime | None, until: datetime | None, rollup: rollups.Rollup | None
) -> tuple[list[Piece], list[str]]:
    """The (source, start, end) pieces a range is read from: whole UTC days from the daily rollup
    (when allowed), whole hours from the hourly one, the partial hours at the edges from raw rows."""
    pieces, notes = _time_windows(db, since, until, rollup)
    return [(source, start, end, None) for source, start, end in pieces], notes


def _session_pieces(
    db: Reader, since: datetime | None, until: datetime | None
) -> tuple[list[Piece], list[str]]:
    """A report by session: groups wholly inside the range from the per-session rollup; the
    sessions that straddle an end of the range (few: those active at that moment) from the hourly
    rollup and raw rows, within the range."""
    if since is None and until is None:
        return [(rollups.SESSIONS, None, None, None)], []
    found: set[str] = set()
    # Where the straddling sessions' rows in range can be: from `since` to the last of those
    # active at `since`, and from the first of those active at `until` to `until`. Sessions are
    # short, so that is a few hours, not the whole range of the hourly rollup.
    spans: list[tuple[datetime | None, datetime | None]] = []
    for edge, moment in (("since", since), ("until", until)):
        if moment is None:
            continue
        at = _time_text(moment)
        # Over all of each such session's rows (a session has one per model, project, ...), not
        # only those active at the moment.
        table = rollups.SESSIONS.table
        rows = db.execute(
            f"SELECT session, min(first_at), max(last_at) FROM {table} WHERE session IN"
            f" (SELECT session FROM {table} WHERE first_at < ? AND last_at >= ?) GROUP BY 1",
            [at, at],
        ).fetchall()
        if not rows:
            continue
        found.update(row[0] for row in rows)
        if edge == "since":
            last = _parse_time(max(row[2] for row in rows)) + timedelta(microseconds=1)
            spans.append((since, until if until is not None and last >= until else _ceil_hour(last)))
        else:
            first = _floor_hour(_parse_time(min(row[1] for row in rows)))
            spans.append((since if since is not None and first <= since else first, until))
    if not found:
        # No session straddles an end (nothing active then): the pieces for them would read nothing.
        return [(rollups.SESSIONS, since, until, None)], _time_windows(db, since, until, rollups.HOURLY)[1]
    if len(spans) == 2 and spans[0][1] is not None and spans[1][0] is not None and spans[0][1] >= spans[1][0]:
        spans = [(since, until)]  # the two overlap: one span, so no row is read twice
    pieces, notes = [], []
    for start, end in spans:
        windows, said = _time_windows(db, start, end, rollups.HOURLY)
        pieces += windows
        notes += [note for note in said if note not in notes]
    straddling = json.dumps(sorted(found))
    inside: Piece = (rollups.SESSIONS, since, until, ("session", "NOT IN", straddling))
    return [inside, *((source, start, end, ("session", "IN", straddling)) for source, start, end in pieces)], notes


def _half_hour_pieces(
    db: Reader, since: datetime | None, until: datetime | None, tz: ZoneInfo
) -> tuple[list[Piece], list[str]]:
    """Days, weeks and months in a zone whose midnight falls mid-UTC-hour (Asia/Kolkata): the hourly
    rollup for every hour but the one holding each local midnight, and raw rows, by the minute, for those."""
    pieces, notes = _time_windows(db, since, until, rollups.HOURLY)
    bounds = db.execute(f"SELECT min(period), max(period) FROM {rollups.HOURLY.table}").fetchone()
    if bounds[0] is None:
        return [(source, start, end, None) for source, start, end in pieces], notes
    low = max(since, _parse_hour(bounds[0])) if since is not None else _parse_hour(bounds[0])
    high = min(until, _parse_hour(bounds[1]) + timedelta(hours=1)) if until is not None else _parse_hour(bounds[1]) + timedelta(hours=1)
    split: list[datetime] = []
    day = low.astimezone(tz).date()
    while True:
        midnight = datetime.combine(day, time(), tz).astimezone(UTC)
        if midnight >= high:
            break
        if midnight > low and midnight.minute:
            split.append(_floor_hour(midnight))
        day += timedelta(days=1)
    hours = json.dumps([_hour_text(hour) for hour in split])
    out: list[Piece] = [
        (source, start, end, ("period", "NOT IN", hours) if source is not None else None) for source, start, end in pieces
    ]
    for hour in split:
        start = hour if since is None else max(hour, since)
        end = hour + timedelta(hours=1) if until is None else min(hour + timedelta(hours=1), until)
        # Raw rows inside the range's own raw edges are already read by those pieces.
        for source, edge_start, edge_end in pieces:
            if source is None and edge_start is not None and edge_end is not None:
                if edge_start < end and start < edge_end:
                    start, end = (edge_end, end) if edge_start <= start else (start, edge_start)
        if start < end:
            out.append((None, start, end, None))
    return out, notes


def _parse_hour(text: str) -> datetime:
    return datetime.fromisoformat(text + ":00").replace(tzinfo=UTC)


def _time_windows(
    db: Reader, since: datetime | None, until: datetime | None, rollup: rollups.Rollup | None
) -> tuple[list[tuple[rollups.Rollup | None, datetime | None, datetime | None]], list[str]]:
    if rollup is None:
        return [(None, since, until)], []
    since = None if since is None else since.astimezone(UTC)
    until = None if until is None else until.astimezone(UTC)
    notes = []
    first = None if since is None else _ceil_hour(since)
    last = None if until is None else _floor_hour(until)
    if first is not None and last is not None and first >= last:
        return [(None, since, until)], []
    pieces: list[tuple[rollups.Rollup | None, datetime | None, datetime | None]] = []
    kept = _raw_kept_from(db)
    if since is not None and first is not None and first != since:
        if kept is not None and since < kept:
            # Retention dropped those raw rows: the whole hour it began in is what remains.
            first = _floor_hour(since)
            notes.append(f"since rounded to {_hour_text(first)}:00 UTC: raw rows before {_hour_text(kept)}:00 were pruned")
        else:
            pieces.append((None, since, first))
    if until is not None and last is not None and last != until:
        if kept is not None and last < kept:
            last = _ceil_hour(until)
            notes.append(f"until rounded to {_hour_text(last)}:00 UTC: raw rows before {_hour_text(kept)}:00 were pruned")
        else:
            pieces.append((None, last, until))
    if rollup is rollups.HOURLY:
        return [*pieces, (rollups.HOURLY, first, last)], notes
    day_first = None if first is None else _ceil_day(first)
    day_last = None if last is None else _floor_day(last)
    if day_first is not None and day_last is not None and day_first >= day_last:
        return [*pieces, (rollups.HOURLY, first, last)], notes
    if first is not None and day_first != first:
        pieces.append((rollups.HOURLY, first, day_first))
    if last is not None and day_last != last:
        pieces.append((rollups.HOURLY, day_last, last))
    return [*pieces, (rollups.DAILY, day_first, day_last)], notes


def _has_rollup(db: Reader) -> bool:
    if not dialect_of(db).rollups:
        return False
    # The rollups reports read (a database migrated before the what-if rollup still has them all).
    names = [rollup.table for rollup in rollups.FIRST_ROLLUPS]
    found = db.execute(f"SELECT count(*) FROM sqlite_master WHERE name IN ({', '.join('?' for _ in names)})", names)
    return bool(found.fetchone()[0] == len(names))


def _raw_kept_from(db: Reader) -> datetime | None:
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'raw_kept_from'").fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else _parse_time(row[0])


def _best_rollup(db: Reader, levels: list[str], filters: Filters, offsets: set[float]) -> rollups.Rollup | None:
    """The coarsest rollup that can answer exactly, or None to read raw rows."""
    if not _has_rollup(db):
        # A database not yet migrated by `serve` (opened read-only here): raw rows, slower, as exact.
        return None
    timed = [level for level in levels if level in TIME_GROUPINGS]
    if timed and any(offset % 3600 for offset in offsets):
        # Local hours start mid-UTC-hour (Asia/Kolkata): local days from hours plus raw minutes
        # (see _half_hour_pieces), local hours from raw rows by the minute.
        return None if "hour" in levels else rollups.HOURLY
    daily_ok = (
        "session" not in levels
        and not filters.sessions
        and "hour" not in levels
        and (not timed or offsets == {0.0})
    )
    return rollups.DAILY if daily_ok else rollups.HOURLY


def report(
    db: Reader,
    by: str,
    *,
    breakdown: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    filters: Filters = Filters(),
    tz: ZoneInfo = ZoneInfo("UTC"),
    limit: int | None = None,
) -> Report:
    """Totals per `by` group (and per `breakdown` group within it) of the requests started in [since, until).

    `limit` keeps the costliest `limit` groups (for time groupings the latest); the total still covers all.
    """
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}")
    if breakdown is not None and (breakdown not in GROUPINGS or breakdown == by):
        raise ValueError(f"unknown breakdown {breakdown!r}")
    levels = [by] + ([breakdown] if breakdown else [])
    session = by == "session"
    timed = [level for level in levels if level in TIME_GROUPINGS]
    offsets = _offsets(tz, since, until) if timed else {0.0}
    dialect = dialect_of(db)
    rollup = _best_rollup(db, levels, filters, offsets)
    minute = bool(timed) and any(offset % 3600 for offset in offsets)
    if session and not timed and rollup is not None:
        pieces, notes = _session_pieces(db, since, until)
    elif minute and rollup is not None:
        pieces, notes = _half_hour_pieces(db, since, until, tz)
    else:
        pieces, notes = _windows(db, since, until, rollup)
    labels = {level: _time_label(level, tz) for level in timed}
    raw = _raw_table(db)

    def names(keys: tuple[Any, ...]) -> tuple[str, str | None]:
        if not labels:
            return keys[0] or NONE, ((keys[1] or NONE) if breakdown else None)
        named = [labels[level](key) if level in labels else (key or NONE) for level, key in zip(levels, keys)]
        return named[0], (named[1] if breakdown else None)

    lines: dict[tuple[str, str | None], Line] = {}
    width = len(levels)
    summed = slice(width, width + len(SUMMED))
    seen_at, extra_at = summed.stop, summed.stop + 2
    # The costliest sessions first, from their costs alone; then everything else only for them.
    top = None
    if session and limit is not None:
        # The total of every session is the total of the range: summed from the coarsest rollup
        # that can (whole days from the daily one), not again from the per-session pieces.
        totalled = pieces if rollup is None else _windows(db, since, until, _best_rollup(db, [], filters, {0.0}))[0]
        top = _costliest_sessions(db, pieces, totalled, dialect, minute, raw, filters, limit)
    shown_only = None if top is None else ("session", "IN", json.dumps(top[0]))
    # Every session shown gets its models, projects and clients: read them in the same pass as
    # the sums (one scan of the per-session rollup instead of two).
    together = _SESSION_EXTRAS if session else ()
    joined: list[tuple[Line, tuple[str, str, str], int]] = []
    plain = not labels  # group keys as they come, no time labels: the common case, inlined
    for source_rollup, start, end, sessions in pieces:
        source = _Source(source_rollup, dialect, minute, raw)
        for row in _query(db, source, levels, session, source.where(start, end, filters, sessions, shown_only), together):
            key = (row[0] or NONE, (row[1] or NONE) if breakdown else None) if plain else names(row)
            line = lines.get(key)
            if line is None:
                sums = list(row[summed])
                if None in sums:
                    sums = [value or 0 for value in sums]
                line = lines[key] = Line(key[0], key[1], sums, row[seen_at], row[seen_at + 1])
            else:
                line.add(row[summed], row[seen_at], row[seen_at + 1])
            if together:
                joined.append((line, row[extra_at : extra_at + 3], row[extra_at + 3]))
    imported, imported_notes = _imported_lines(db, levels, since, until, filters, tz, labels)
    notes += imported_notes
    every = [*lines.values(), *imported]
    if top is not None:
        total = top[2]
        for line in imported:
            total.merge(line)
    else:
        total = Line("total")
        if every:
            total.sums = [sum(column) for column in zip(*(line.sums for line in every))]
            seen = [line for line in lines.values() if line.first_at is not None]
            total.first_at = min((line.first_at for line in seen if line.first_at), default=None)
            total.last_at = max((line.last_at for line in seen if line.last_at), default=None)
    if total.inexact:
        notes.append(f"{total.inexact} amounts are not fixed-point decimals of at most 24 places and are not in the totals")
    ordered = _ordered(every, by, breakdown, unique=not imported)
    if top is not None:
        if limit is not None and top[1] > limit:
            notes.append(f"{limit} of {top[1]} {by} groups shown; the total covers all")
    elif limit is not None:
        groups = list(dict.fromkeys(line.group for line in ordered))
        if len(groups) > limit:
            kept = set(groups[-limit:] if by in TIME_GROUPINGS else groups[:limit]) if limit else set()
            ordered = [line for line in ordered if line.group in kept]
            notes.append(f"{limit} of {len(groups)} {by} groups shown; the total covers all")
    commas = False
    for line, (models, projects, clients), count in joined:
        split = models.split(","), projects.split(","), clients.split(",")
        if len(split[0]) != count or len(split[1]) != count or len(split[2]) != count:
            commas = True
            break
        line.models.update(split[0])
        line.projects.update(split[1])
        line.clients.update(split[2])
    if together and not commas:
        for line in lines.values():
            # '' is how the rollups store "none".
            line.models.discard("")
            line.projects.discard("")
            line.clients.discard("")
    elif session:
        # A value holds a comma, which the joined lists cannot tell from two values: read them apart.
        for line in lines.values():
            line.models.clear()
            line.projects.clear()
            line.clients.clear()
        groups_shown = {line.group for line in ordered} | ({""} if any(line.group == NONE for line in ordered) else set())
        shown = None if limit is None else ("session", "IN", json.dumps(sorted(groups_shown)))
        for source_rollup, start, end, sessions in pieces:
            source = _Source(source_rollup, dialect, minute, raw)
            for row in _distinct(db, source, levels, _SESSION_EXTRAS, source.where(start, end, filters, sessions, shown)):
                found = lines.get(names(row))
                if found is None:
                    continue
                model, project, client = row[width:]
                if model:
                    found.models.add(model)
                if project:
                    found.projects.add(project)
                if client:
                    found.clients.add(client)
    return Report(by, breakdown, since, until, ordered, total, tuple(notes))


def _costliest_sessions(
    db: Reader, pieces: list[Piece], totalled: list[Piece], dialect: Dialect, minute: bool, raw: str, filters: Filters, limit: int
) -> tuple[list[str], int, Line]:
    """The `limit` costliest sessions of the pieces (as stored: '' is the shown "(none)"), how many
    sessions there are, and the total of every row: the ranking in SQL over a narrow GROUP BY (a
    session's cost only) and the total from an ungrouped sum of the `totalled` pieces, so a table of the top 50 of 30,000
    sessions builds 50 lines, not 30,000. Ordered as `_ordered` orders lines, by exact integer
    cost, then shown name in code-point order, so ties keep the sessions a full report shows first."""
    parts, params = [], []
    total = Line("total")
    for source_rollup, start, end, sessions in pieces:
        source = _Source(source_rollup, dialect, minute, raw)
        where = source.where(start, end, filters, sessions)
        sums = source.sums(True)
        parts.append(f"SELECT {source.dim('session')} AS k, {sums[_PICO]} AS p, {sums[_YOCTO]} AS y FROM {source.table()}{where[0]} GROUP BY 1")
        params += where[1]
    for source_rollup, start, end, sessions in totalled:
        source = _Source(source_rollup, dialect, minute, raw)
        for row in _query(db, source, [], True, source.where(start, end, filters, sessions)):
            total.add([int(value or 0) for value in row[: len(SUMMED)]], row[len(SUMMED)], row[len(SUMMED) + 1])
    if dialect.name == "sqlite":
        # Parts are never negative in SQLite (a negative amount is counted inexact, not summed):
        # carrying whole pico-dollars out of the yocto sum orders exactly without 10^24.
        order = f"p + y / {rollups.PICO} DESC, y % {rollups.PICO} DESC, g"
    else:
        order = f'p::numeric * {rollups.PICO} + y DESC, g COLLATE "C"'
    # Sessions stored as '' and as "(none)" are one shown group, as in report()'s lines.
    shown = f"CASE WHEN u.k = '' THEN '{NONE}' ELSE u.k END"
    sql = (
        f"SELECT g, count(*) OVER () FROM (SELECT {shown} AS g, SUM(u.p) AS p, SUM(u.y) AS y"
        f" FROM ({' UNION ALL '.join(parts)}) AS u GROUP BY 1) AS t ORDER BY {order} LIMIT {int(limit)}"
    )
    kept = [(name, count) for name, count in db.execute(sql, params)] if limit else []
    if not limit:
        count = db.execute(f"SELECT count(DISTINCT {shown}) FROM ({' UNION ALL '.join(parts)}) AS u", params).fetchone()[0]
    else:
        count = kept[0][1] if kept else 0
    stored = [name for name, _ in kept] + ([""] if any(name == NONE for name, _ in kept) else [])
    return stored, int(count), total


# The groupings OpenRouter's /activity figures (UTC day x model x provider) can answer.
_IMPORTABLE = ("day", "week", "month", "model", "provider")
_IMPORTED_COLUMNS = ("date", "model", "provider", "usage_usd", "byok_usage_usd", "requests",
                     "prompt_tokens", "completion_tokens", "reasoning_tokens")


def _money_sums(amount: Decimal) -> tuple[int, int, int]:
    """(pico, yocto, inexact) of an amount, as the rollups sum it."""
    scaled = amount.scaleb(24, _EXACT)
    if not scaled.is_finite() or scaled != scaled.to_integral_value():
        return 0, 0, 1
    pico, yocto = divmod(int(scaled), rollups.PICO)
    return pico, yocto, 0


_EXACT = Context(prec=80)


def _logged_days(db: Reader, days: list[str]) -> set[str]:
    """Which of these UTC days have any row in the log (the daily rollup keeps them after retention)."""
    wanted = json.dumps(days)
    dialect = dialect_of(db)
    if _has_rollup(db):
        sql = f"SELECT DISTINCT period FROM {rollups.DAILY.table} WHERE {dialect.member('period', 'IN')}"
        return {row[0] for row in db.execute(sql, (wanted,))}
    day = dialect.time_text("started_at", 10)
    sql = f"SELECT DISTINCT {day} FROM requests WHERE started_at >= ? AND started_at < ? AND {dialect.member(day, 'IN')}"
    after = (date.fromisoformat(days[-1]) + timedelta(days=1)).isoformat()
    return {row[0] for row in db.execute(sql, (days[0], after, wanted))}


def _imported_lines(
    db: Reader,
    levels: list[str],
    since: datetime | None,
    until: datetime | None,
    filters: Filters,
    tz: ZoneInfo,
    labels: dict[str, Any],
) -> tuple[list[Line], list[str]]:
    """Lines of OpenRouter's imported /activity figures for the whole UTC days in the range that the log
    has no rows of at all: a day the proxy saw is never added again, even in part (no double counting).
    At most 30 days x models x providers: read directly, not through the rollups."""
    dialect = dialect_of(db)
    if dialect.rollups and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'imported_activity'").fetchone() is None:
        return [], []
    clauses, params = [], []
    if since is not None:
        clauses.append("date >= ?")
        params.append(_ceil_day(since.astimezone(UTC)).date().isoformat())
    if until is not None:
        clauses.append("date < ?")
        params.append(_floor_day(until.astimezone(UTC)).date().isoformat())
    if filters.models:
        clauses.append("(" + " OR ".join(dialect.glob("model") for _ in filters.models) + ")")
        params += [dialect.glob_param(glob) for glob in filters.models]
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    found = db.execute(f"SELECT {', '.join(_IMPORTED_COLUMNS)} FROM imported_activity{where}", params).fetchall()
    if not found:
        return [], []
    logged = _logged_days(db, sorted({row[0] for row in found}))
    rows = [tuple(row) for row in found if row[0] not in logged]
    if not rows:
        return [], []
    other = [level for level in levels if level not in _IMPORTABLE]
    if other:
        return [], [f"imported days (OpenRouter's /activity) have no {other[0]}: not included"]
    unfiltered = [name for name, globs in (("project", filters.projects), ("session", filters.sessions),
                                            ("key", filters.keys), ("client", filters.clients)) if globs]
    if unfiltered:
        return [], [f"imported days (OpenRouter's /activity) have no {unfiltered[0]} to filter on: not included"]
    if any(level in TIME_GROUPINGS for level in levels) and _offsets(tz, since, until) != {0.0}:
        return [], [f"imported days (OpenRouter's /activity) are UTC days: not included with time zone {tz.key}"]
    at = {name: SUMMED.index(name) for name in ("requests", "input_tokens", "output_tokens", "reasoning_tokens")}
    out: dict[tuple[str, str | None], Line] = {}
    for day, model, provider, usage, byok, requests, prompt, completion, reasoning in rows:
        values = {"day": day, "model": model, "provider": provider}
        keys = [labels[level](day) if level in labels else (values[level] or NONE) for level in levels]
        key = (keys[0], keys[1] if len(keys) > 1 else None)
        line = out.get(key)
        if line is None:
            line = out[key] = Line(*key, imported=True)
        sums = [0] * len(SUMMED)
        sums[at["requests"]] = requests or 0
        sums[at["input_tokens"]] = prompt or 0
        sums[at["output_tokens"]] = completion or 0
        sums[at["reasoning_tokens"]] = reasoning or 0
        # cost_usd is the whole spend (credits plus what BYOK providers charged), as for proxied rows.
        provider_part = Decimal(byok or 0)
        amounts = {"cost_usd": Decimal(usage or 0) + provider_part, "upstream_cost_usd": provider_part}
        for name in rollups.MONEY:
            for part, value in zip(("pico", "yocto", "inexact"), _money_sums(amounts.get(name, Decimal(0)))):
                sums[SUMMED.index(f"{name}_{part}")] = value
        line.add(sums, None, None)
    notes = ["imported days (OpenRouter's /activity) are added only for UTC days with no proxied rows; days the log covers never add them"]
    return list(out.values()), notes


def _ordered(lines: list[Line], by: str, breakdown: str | None, unique: bool = False) -> list[Line]:
    if unique and breakdown is None:
        # One line per group (no breakdown, no imported lines): the same order, keyed directly.
        if by in TIME_GROUPINGS:
            return sorted(lines, key=lambda line: line.group or "")
        return sorted(lines, key=lambda line: (-(line.sums[_PICO] * rollups.PICO + line.sums[_YOCTO]), line.group or ""))
    def order(level: str | None, key: str | None, cost: int) -> tuple[Any, ...]:
        return (key or "",) if level in TIME_GROUPINGS else (-cost, key or "")

    group_cost: dict[str, int] = {}
    for line in lines:
        group_cost[line.group] = group_cost.get(line.group, 0) + line.cost_key()
    return sorted(
        lines,
        key=lambda line: (
            order(by, line.group, group_cost[line.group]),
            order(breakdown, line.breakdown, line.cost_key()) if breakdown else (),
        ),
    )


def as_document(result: Report, free: FreeUsage | None = None) -> dict[str, Any]:
    """The JSON form `report --format json` prints and `/-/report` returns."""
    session = result.by == "session"
    document = {
        "by": result.by,
        "breakdown": result.breakdown,
        "since": None if result.since is None else result.since.isoformat(),
        "until": None if result.until is None else result.until.isoformat(),
        "rows": [line.as_dict(session) for line in result.lines],
        "total": result.total.as_dict(),
        "notes": list(result.notes),
    }
    if free is not None:
        document["free"] = free.as_dict()
    return document


_STRING = json.encoder.encode_basestring_ascii  # what json.dumps writes for a str (ensure_ascii)
_FLOAT = float.__repr__  # and for a float
_ROWS_PLACEHOLDER = '"rows": []'


class _Layout:
    """How json.dumps lays out a row of the document's "rows": indent=2 or its default (compact) form.
    The row's numbers and money are one %-template filled in a single C call per row."""

    def __init__(self, indent: bool) -> None:
        self.indent = indent
        self.open, self.close = ("    {\n      ", "\n    }") if indent else ("{", "}")
        self.item = ",\n      " if indent else ", "
        self.between_rows = ",\n" if indent else ", "
        self.list_item = ",\n        " if indent else ", "
        self.list_open, self.list_close = ("[\n        ", "\n      ]") if indent else ("[", "]")
        # requests ... reasoning_tokens, each money, cost_unknown_requests (see Line.scalars).
        names = [*(f'"{name}": %d' for name in _COUNTED), *(f'"{name}": "%s"' for name, _, _ in _MONEY_AT)]
        self.sums = self.item + self.item.join([*names, '"cost_unknown_requests": %d'])

    def listed(self, values: set[str]) -> str:
        if len(values) == 1:  # most sessions: one project, one client
            for value in values:
                return self.list_open + _STRING(value) + self.list_close
        if not values:
            return "[]"
        return self.list_open + self.list_item.join(map(_STRING, sorted(values))) + self.list_close


_LAYOUTS = {True: _Layout(True), False: _Layout(False)}
_NUMBERS = len(_COUNTED)


def document_text(result: Report, free: FreeUsage | None = None, indent: bool = True) -> str:
    """`json.dumps(as_document(result, free), indent=2)` (or without `indent`, `json.dumps(...)`),
    the same text, several times faster: json's indenting encoder is pure Python, and a dict per
    row costs more than the row itself. Rows are written here from each line's sums, in one
    %-template call each; the rest of the document is json.dumps'."""
    return "".join(document_chunks(result, free, indent))


# Rows per chunk: a few hundred KB, so a writer holds one chunk of a 23 MB document, not all of it.
_CHUNK_ROWS = 500


def document_chunks(result: Report, free: FreeUsage | None = None, indent: bool = True) -> Iterator[str]:
    """document_text() in pieces, in order, for a writer that need not hold the whole text."""
    session = result.by == "session"
    document = as_document(Report(result.by, result.breakdown, result.since, result.until, [], result.total, result.notes), free)
    text = json.dumps(document, indent=2 if indent else None)
    if not result.lines:
        yield text
        return
    layout = _LAYOUTS[indent]
    item, listed, opened, closed = layout.item, layout.listed, layout.open, layout.close
    # The money's (pico, yocto) places in the sums, then cost_unknown: the template's last values.
    (pico_1, yocto_1), (pico_2, yocto_2) = ((pico, yocto) for _, pico, yocto in _MONEY_AT)
    template, text_of, numbers, unknown = layout.sums, rollups.money_text, _NUMBERS, _UNKNOWN
    at = text.index(_ROWS_PLACEHOLDER)  # the first: keys before it (by, since...) hold no such text
    start, end = ('"rows": [\n', "\n  ]") if indent else ('"rows": [', "]")
    yield text[:at] + start
    between = layout.between_rows
    rows: list[str] = []
    for line in result.lines:
        if len(rows) == _CHUNK_ROWS:
            yield between.join(rows) + between
            rows = []
        sums = line.sums
        head = _STRING(line.group)
        if line.breakdown is not None:
            head += item + '"breakdown": ' + _STRING(line.breakdown)
        if line.imported:
            head += item + '"imported": true'
        numbered = template % (
            *sums[:numbers], text_of(sums[pico_1], sums[yocto_1]), text_of(sums[pico_2], sums[yocto_2]), sums[unknown]
        )
        if session:
            first, last = line.first_at, line.last_at
            duration = duration_s(first, last)
            rows.append(
                f'{opened}"group": {head}{numbered}'
                f'{item}"first_seen": {"null" if first is None else _STRING(first)}'
                f'{item}"last_seen": {"null" if last is None else _STRING(last)}'
                f'{item}"duration_s": {"null" if duration is None else _FLOAT(duration)}'
                f'{item}"models": {listed(line.models)}{item}"projects": {listed(line.projects)}{item}"clients": {listed(line.clients)}{closed}'
            )
        else:
            rows.append(f'{opened}"group": {head}{numbered}{closed}')
    yield between.join(rows) + end + text[at + len(_ROWS_PLACEHOLDER) :]


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


def free_usage(db: Reader, now: datetime, daily_limit: int) -> FreeUsage:
    """Today's (UTC) :free requests; blocked ones never reached OpenRouter and do not count."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = db.execute(
        f"SELECT {dialect_of(db).time_text('started_at', 16)}, count(*) FROM requests "
        "WHERE started_at >= ? AND is_free AND outcome != 'blocked' GROUP BY 1",
        (_time_text(midnight),),
    ).fetchall()
    return FreeUsage(sum(n for _, n in rows), daily_limit, max((n for _, n in rows), default=0))
