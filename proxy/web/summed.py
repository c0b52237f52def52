"""The page's views read from the rollups: chart series, top groups, cache reads and price drift.

Each range is cut as `report` cuts it (proxy/store/reports.py): whole UTC days from the daily
rollup, whole hours from the hourly one, sessions wholly inside from the per-session one, and
only the partial hours at the ends from raw rows. Money comes back as summed integer pico/yocto
parts, so every total is exact and survives retention; SQLite ranks and limits where it can, so
Python never walks one line per session.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from proxy.store import reports, rollups
from proxy.store.dialect import SQLITE
from proxy.store.reader import Reader
from proxy.store.reports import Filters
from proxy.store.rollups import PICO

# Each summed column's value for one raw row (alias r), as the triggers add it.
_RAW_COST = rollups.counters("r", (*rollups.MONEY, *rollups.COMPARED))


@dataclass(slots=True)
class Group:
    """One group's sums over a range; cost as exact integer yocto-dollars."""

    name: str
    requests: int = 0
    errors: int = 0
    blocked: int = 0
    cost: int = 0
    first_at: str | None = None
    last_at: str | None = None
    models: set[str] = field(default_factory=set)

    def add(self, requests: int, errors: int, blocked: int, pico: int, yocto: int, first: str | None, last: str | None) -> None:
        self.requests += requests or 0
        self.errors += errors or 0
        self.blocked += blocked or 0
        self.cost += (pico or 0) * PICO + (yocto or 0)
        if first is not None and (self.first_at is None or first < self.first_at):
            self.first_at = first
        if last is not None and (self.last_at is None or last > self.last_at):
            self.last_at = last

    @property
    def cost_usd(self) -> Decimal:
        return rollups.money_value(*divmod(self.cost, PICO))


def usd(yocto: int) -> float:
    """A chart value: the float nearest the exact sum (int / int division rounds correctly)."""
    return yocto / 10**24


class _Source:
    """One piece of a range: a rollup table (alias h) or raw rows (alias r), with reports' WHERE."""

    def __init__(self, db: Reader, rollup: rollups.Rollup | None) -> None:
        self.rollup = rollup
        self.inner = reports._Source(rollup, SQLITE, False, reports._raw_table(db) if rollup is None else "requests")

    def level(self, by: str) -> str:
        # '' for a missing value in both, as the rollups store it, so pieces merge.
        return "''" if by == "day" else self.inner.level(by)

    def period(self) -> str:
        return "h.period" if self.rollup is not None else f"substr(r.started_at, 1, {rollups.HOURLY.width})"

    def total(self, name: str) -> str:
        return f"SUM(h.{name})" if self.rollup is not None else f"SUM({_RAW_COST[name]})"

    def first_last(self) -> list[str]:
        if self.rollup is not None:
            return ["min(h.first_at)", "max(h.last_at)"]
        return ["min(r.started_at)", "max(r.started_at)"]

    def table(self) -> str:
        return self.inner.table()


def _cost_order(source: _Source) -> str:
    # Exact in 64-bit integers: whole pico-dollars with the carried yocto parts, then the rest.
    pico, yocto = source.total("cost_usd_pico"), source.total("cost_usd_yocto")
    return f"{pico} + {yocto} / {PICO} DESC, {yocto} % {PICO} DESC"


# Ties rank by the name shown, as Python's sort does ('(none)' for a missing value).
_SHOWN_NAME = f"(CASE WHEN g = '' THEN '{reports.NONE}' ELSE g END)"

Piece = tuple[rollups.Rollup | None, datetime | None, datetime | None, tuple[str, str, str] | None]


def _pieces(db: Reader, since: datetime | None, until: datetime | None, daily: bool) -> list[Piece]:
    return reports._windows(db, since, until, rollups.DAILY if daily else rollups.HOURLY)[0]


# Up to this long, a range's hourly rows are fewer than the per-session rollup's: read sessions from them.
_SHORT = timedelta(days=14)


def group_pieces(db: Reader, by: str, since: datetime | None, until: datetime | None, filters: Filters) -> list[Piece]:
    """Where each part of [since, until) is read from for totals per `by`: over a long range by
    session, sessions wholly inside from the per-session rollup; the daily rollup where no session
    is involved."""
    if by == "session":
        if since is not None and (until or datetime.now(UTC)) - since <= _SHORT:
            return _pieces(db, since, until, daily=False)
        return reports._session_pieces(db, since, until)[0]
    return _pieces(db, since, until, daily=not filters.sessions)


def top_groups(db: Reader, by: str, found_in: list[Piece], filters: Filters, limit: int) -> tuple[list[Group], bool]:
    """The `limit` costliest groups (ties by name) with their sums, and whether more groups exist."""
    found: dict[str, Group] = {}
    for rollup, start, end, membership in found_in:
        source = _Source(db, rollup)
        shown = None
        if rollup is rollups.SESSIONS:
            # The one big piece: sessions wholly inside the range, disjoint from every other
            # piece's, so its own top `limit` + 1 are all the union's top can take from it. Ranked
            # on the cost alone first (a narrow scan), then summed in full for those few.
            where, params = source.inner.where(start, end, filters, membership)
            cost = f"{source.total('cost_usd_pico')}, {source.total('cost_usd_yocto')}"
            sql = f"SELECT {source.level(by)} AS g, {cost} FROM {source.table()}{where} GROUP BY g ORDER BY {_cost_order(source)}, {_SHOWN_NAME} LIMIT ?"
            best = [row[0] for row in db.execute(sql, [*params, limit + 1])]
            shown = ("session", "IN", json.dumps(best))
        where, params = source.inner.where(start, end, filters, membership, shown)
        sql = (
            f"SELECT {source.level(by)} AS g, {source.total('requests')}, {source.total('errors')}, {source.total('blocked')},"
            f" {source.total('cost_usd_pico')}, {source.total('cost_usd_yocto')}, {', '.join(source.first_last())}"
            f" FROM {source.table()}{where} GROUP BY g"
        )
        for name, *sums in db.execute(sql, params):
            group = found.get(name)
            if group is None:
                group = found[name] = Group(name)
            group.add(*sums)
    ranked = sorted(found.values(), key=lambda g: (-g.cost, g.name or reports.NONE))
    return ranked[:limit], len(ranked) > limit


def add_models(db: Reader, by: str, found_in: list[Piece], filters: Filters, groups: list[Group]) -> None:
    """The models each shown group used (by session the DISTINCT reads the shown sessions only)."""
    wanted = {g.name: g for g in groups}
    shown = ("session", "IN", json.dumps(sorted(wanted))) if by == "session" else None
    for rollup, start, end, membership in found_in:
        source = _Source(db, rollup)
        where, params = source.inner.where(start, end, filters, membership, shown)
        for name, model in db.execute(f"SELECT DISTINCT {source.level(by)}, {source.inner.dim('model')} FROM {source.table()}{where}", params):
            group = wanted.get(name)
            if group is not None and model:
                group.models.add(model)


OTHER = "\0other"


def series(
    db: Reader,
    by: str,
    since: datetime | None,
    until: datetime | None,
    filters: Filters,
    tz: ZoneInfo,
    hourly: bool,
    only: Iterable[str] | None = None,
) -> Iterator[tuple[str, str, int]]:
    """(UTC hour or day text, group, cost in yocto-dollars) per period and group.

    `only` names the groups to keep apart (for sessions: the chart's top few, not 100,000 of
    them); every other group is summed as OTHER in the same scan. Daily periods only where a UTC
    day is a day of `tz` and no session is asked for.
    """
    daily = not hourly and reports._offsets(tz, since, until) == {0.0} and by != "session" and not filters.sessions
    for rollup, start, end, _ in _pieces(db, since, until, daily):
        source = _Source(db, rollup)
        where, text_params = source.inner.where(start, end, filters)
        params: list[Any] = list(text_params)
        group = source.level(by)
        if only is not None:
            group = f"(CASE WHEN {group} IN (SELECT value FROM json_each(?)) THEN {group} ELSE ? END)"
            params = [json.dumps(sorted(only)), OTHER, *params]
        cursor = db.execute(
            f"SELECT {source.period()} AS p, {group} AS g, {source.total('cost_usd_pico')},"
            f" {source.total('cost_usd_yocto')} FROM {source.table()}{where} GROUP BY p, g",
            params,
        )
        for period, name, pico, yocto in cursor:
            yield period, name, (pico or 0) * PICO + (yocto or 0)


CACHE_SUMS = (
    "requests", "input_tokens", "cached_tokens", "cache_write_tokens", "compared_requests",
    "billed_compared_usd_pico", "billed_compared_usd_yocto", "catalog_compared_usd_pico", "catalog_compared_usd_yocto",
)


def per_model(db: Reader, since: datetime | None, until: datetime | None, filters: Filters) -> dict[str, dict[str, int]]:
    """Per model ('' for none): CACHE_SUMS over the range, from the hourly rollup (the one that
    keeps billed and catalog cost over the rows that have both) and raw rows at the edges."""
    found: dict[str, dict[str, int]] = {}
    for rollup, start, end, _ in _pieces(db, since, until, daily=False):
        source = _Source(db, rollup)
        where, params = source.inner.where(start, end, filters)
        sums = ", ".join(source.total(name) for name in CACHE_SUMS)
        for model, *values in db.execute(f"SELECT {source.inner.dim('model')} AS g, {sums} FROM {source.table()}{where} GROUP BY g", params):
            line = found.setdefault(model, dict.fromkeys(CACHE_SUMS, 0))
            for name, value in zip(CACHE_SUMS, values):
                line[name] += value or 0
    return found


def as_group_row(group: Group) -> dict[str, Any]:
    return {
        "group": group.name or reports.NONE,
        "first_seen": group.first_at,
        "last_seen": group.last_at,
        "requests": group.requests,
        # Every request that was not ok: the rollups count refusals apart from errors.
        "errors": group.errors + group.blocked,
        "models": sorted(group.models),
        "cost_usd": format(group.cost_usd, "f"),
    }
