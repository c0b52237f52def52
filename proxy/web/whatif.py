"""`/-/whatif` on SQLite: the logged traffic re-priced on target models, exactly, from token sums.

Every request of a group must price alike on every target: same price-history version, same
long-context tier, same time-of-day (and weekday) rule. Whole UTC hours come from the what-if
rollups (proxy/store/rollups.py WHATIF, WHATIF_TOTAL: clamped token sums per hour and tier band);
raw rows only for what an hour cannot answer: the partial hours at the ends of the range and the
hours in which a target's price changed, and each day's hours in which a time-of-day price
changes mid-hour. Where the rollups cannot be exact (a tier threshold that is not one of
rollups.TIERS, a session filter, more than 24 decimals of logged money) the raw rows of the whole
range are grouped instead: exact, slower.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from proxy.pricing.calculator import PriceHistory, TokenSums, resolve, whatif_sum_rows
from proxy.pricing.catalog import Catalog, PriceOverride
from proxy.store import reports, rollups
from proxy.store.dialect import dialect_of
from proxy.store.reader import Reader
from proxy.store.sqlite import encode_time
from proxy.tables import Row
from proxy.web.query import Query
from proxy.web.reads import (
    _decimal,
    _exact_sum,
    _history,
    _Inexact,
    _json_rows,
    _sum_text,
    _where,
)

# (requests, unpriced, exact sum) as logged and at catalog prices: what whatif_sum_rows takes.
Logged = list[tuple[int, int, Decimal]]


def whatif(db: Reader, query: Query, catalog: Catalog, targets: Iterable[str]) -> list[Any]:
    """/-/whatif's JSON rows."""
    return _json_rows(repriced(db, query, catalog, targets))


def has_rollups(db: Reader) -> bool:
    """A SQLite log migrated to the what-if rollups (a read-only one may not be yet)."""
    if not dialect_of(db).rollups:
        return False
    names = (rollups.WHATIF.table, rollups.WHATIF_TOTAL.table)
    present = db.execute(f"SELECT count(*) FROM sqlite_master WHERE name IN ({', '.join('?' for _ in names)})", names)
    return bool(present.fetchone()[0] == len(names))


def repriced(db: Reader, query: Query, catalog: Catalog, targets: Iterable[str]) -> list[Row]:
    """`whatif`'s rows for the range and filters of `query`, each target priced as it was when
    each request ran (calculator.whatif_rows' rows, without a Python step per request). SQLite only."""
    targets = tuple(targets)
    history = PriceHistory(_history(db))
    entries = [resolve(catalog, target) for target in targets]
    pricings = [e.pricing for e in entries] + [p for e in entries for _, p in history.pricings(e.id)]
    overrides = [o for p in pricings for o in p.overrides]
    changes = sorted({seen.astimezone(UTC) for e in entries for seen, _ in history.pricings(e.id)})
    found = None
    if _rollups_answer(db, query, overrides):
        found = _from_rollups(db, query, overrides, changes)
    if found is None:
        found = _raw_groups(db, *_where(query), overrides, changes)
    groups, logged = found
    return whatif_sum_rows(logged, groups, catalog, targets, history)


def _tiers(overrides: list[PriceOverride]) -> list[int]:
    return sorted({o.min_prompt_tokens for o in overrides if o.min_prompt_tokens is not None})


def _rollups_answer(db: Reader, query: Query, overrides: list[PriceOverride]) -> bool:
    if not set(_tiers(overrides)) <= set(rollups.TIERS):
        return False  # a tier the rollups' bands do not split at
    if any(name == "session" or not value for name, value in query.filters):
        return False  # a session's rows are few and indexed; '' would match NULL in a rollup
    return has_rollups(db)


def _from_rollups(
    db: Reader, query: Query, overrides: list[PriceOverride], changes: list[datetime]
) -> tuple[list[TokenSums], Logged] | None:
    """Whole hours from a rollup, the rest from raw rows; None when the logged money is inexact.

    Hours retention pruned have no raw rows left to split: an hour in which a target's price
    changed, or a time-of-day price changes mid-hour, then prices whole at its first request's
    price (the best left)."""
    pieces, _ = reports._time_windows(db, query.since, query.until, rollups.HOURLY)
    raw = [(start, end) for source, start, end in pieces if source is None]
    hours = [(start, end) for source, start, end in pieces if source is not None]
    kept = reports._raw_kept_from(db)
    # The hours in which a target's price changed: split at that instant, from their raw rows.
    split = sorted({c.replace(minute=0, second=0, microsecond=0) for c in changes if c.minute or c.second or c.microsecond})
    split = [h for h in split if (kept is None or h >= kept) and any(_inside(h, start, end) for start, end in hours)]
    raw += [(h, h + timedelta(hours=1)) for h in split]
    # The hours of the day in which a time-of-day price starts or ends mid-hour (none in the
    # catalog so far): every day's, by the minute, from raw rows.
    cut = sorted({f"{t // 100:02d}" for o in overrides for t in (o.utc_start, o.utc_end) if t is not None and t % 100})
    windows = [_window(start, end) for start, end in raw]
    if cut:
        for start, end in hours:
            low = start if kept is None or (start is not None and start >= kept) else kept
            if low is None or end is None or low < end:
                sql, params = _window(low, end)
                windows.append((f"({sql} AND substr(started_at, 12, 2) IN ({', '.join('?' for _ in cut)}))", [*params, *cut]))
    groups: list[TokenSums] = []
    logged: Logged = [(0, 0, Decimal(0)), (0, 0, Decimal(0))]
    for start, end in hours:
        found = _rollup_groups(db, query, overrides, changes, start, end, split, cut, kept)
        if found is None:
            return None
        groups += found[0]
        logged = _add(logged, found[1])
    if windows:
        where, params = _where(Query(filters=query.filters))
        either = " OR ".join(sql for sql, _ in windows)
        params += [p for _, window_params in windows for p in window_params]
        found_raw = _raw_groups(db, f"{where} AND ({either})" if where else f" WHERE {either}", params, overrides, changes)
        groups += found_raw[0]
        logged = _add(logged, found_raw[1])
    return groups, logged


def _window(start: datetime | None, end: datetime | None) -> tuple[str, list[Any]]:
    clauses = [*(["started_at >= ?"] if start else []), *(["started_at < ?"] if end else [])] or ["1"]
    return "(" + " AND ".join(clauses) + ")", [encode_time(t) for t in (start, end) if t is not None]


def _inside(hour: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or hour >= start) and (end is None or hour < end)


def _add(a: Logged, b: Logged) -> Logged:
    return [(x[0] + y[0], x[1] + y[1], x[2] + y[2]) for x, y in zip(a, b)]


_SUMMED = ("uncached", "cached", "written", "written_1h", "output", "reasoning", "web_search")
_MONEY = tuple(f"{m}_{part}" for m in rollups.WHATIF_MONEY for part in ("pico", "yocto", "inexact"))


def _rollup_groups(
    db: Reader,
    query: Query,
    overrides: list[PriceOverride],
    changes: list[datetime],
    start: datetime | None,
    end: datetime | None,
    split: list[datetime],
    cut: list[str],
    kept: datetime | None,
) -> tuple[list[TokenSums], Logged] | None:
    """The whole hours in [start, end) but `split` and the `cut` hours of the day (those retention
    left), summed per price version, band, priced flag and (with a weekday or time-of-day price)
    day or hour of day."""
    rollup = rollups.WHATIF if query.filters else rollups.WHATIF_TOTAL
    where, params = _where(Query(filters=query.filters))
    clauses = [where[len(" WHERE "):]] if where else []
    for op, moment in ((">=", start), ("<", end)):
        if moment is not None:
            clauses.append(f"period {op} ?")
            params.append(reports._hour_text(moment))
    if split:
        clauses.append(f"period NOT IN ({', '.join('?' for _ in split)})")
        params += [reports._hour_text(h) for h in split]
    if cut:
        marks = ", ".join("?" for _ in cut)
        if kept is None:
            clauses.append(f"substr(period, 12, 2) NOT IN ({marks})")
        else:
            clauses.append(f"NOT (substr(period, 12, 2) IN ({marks}) AND period >= ?)")
        params += [*cut, *([] if kept is None else [reports._hour_text(kept)])]
    # What else a price depends on: the UTC day (a weekday price), the hour of day (a time-of-day
    # price; the hours it changes in mid-hour are read from raw rows), both, or neither.
    when = _when(overrides, day="substr(period, 1, 10)", daytime="substr(period, 12, 2)", both="period")
    # Hours wholly after a change (a split hour is read from raw rows, so none straddles one).
    version = " + ".join("(period >= ?)" for _ in changes) or "0"
    version_params = [reports._hour_text(reports._ceil_hour(c)) for c in changes]
    sql = (
        f"SELECT {when}, {version}, band, priced, SUM(requests), MIN(first_at), SUM(cost_unknown), SUM(catalog_unknown), "
        + ", ".join(f"SUM({c})" for c in (*_SUMMED, *_MONEY))
        + f" FROM {rollup.table}{' WHERE ' + ' AND '.join(clauses) if clauses else ''} GROUP BY 1, 2, 3, 4"
    )
    rows = db.execute(sql, [*version_params, *params]).fetchall()
    groups = []
    count = unpriced = unlisted = 0
    money = [0] * len(_MONEY)
    for _, _, band, priced, requests, first, no_cost, no_catalog, *sums in rows:
        groups.append(TokenSums(_instant(first), rollups.band_prompt(band), requests, bool(priced), *sums[: len(_SUMMED)]))
        count += requests
        unpriced += no_cost
        unlisted += no_catalog
        money = [a + b for a, b in zip(money, sums[len(_SUMMED):])]
    spent_pico, spent_yocto, spent_inexact, listed_pico, listed_yocto, listed_inexact = money
    if spent_inexact or listed_inexact:
        return None
    spent, listed = rollups.money_value(spent_pico, spent_yocto), rollups.money_value(listed_pico, listed_yocto)
    return groups, [(count, unpriced, spent), (count, unlisted, listed)]


def _when(overrides: list[PriceOverride], *, day: str, daytime: str, both: str) -> str:
    """The SQL grouping by what a price depends on besides version and tier."""
    weekday = any(o.utc_days is not None for o in overrides)
    timed = any(o.utc_start is not None or o.utc_end is not None for o in overrides)
    return {(True, True): both, (True, False): day, (False, True): daytime}.get((weekday, timed), "''")


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _raw_groups(
    db: Reader, where: str, params: list[Any], overrides: list[PriceOverride], changes: list[datetime]
) -> tuple[list[TokenSums], Logged]:
    """Token sums of the raw rows `where` picks, grouped by price-history version, the targets'
    tier, priced flag and what else a price depends on: the UTC day (a weekday price), the minute
    of the day (a time-of-day price), both (the minute) or neither."""
    tiers = _tiers(overrides)
    when = _when(overrides, day="substr(started_at, 1, 10)", daytime="substr(started_at, 12, 5)", both="substr(started_at, 1, 16)")
    tier = " + ".join("(COALESCE(input_tokens, 0) > ?)" for _ in tiers) or "0"
    version = " + ".join("(started_at >= ?)" for _ in changes) or "0"
    grouped = (
        f"SELECT {when}, {tier}, {version}, (input_tokens IS NOT NULL OR output_tokens IS NOT NULL),"
        " COUNT(*), MIN(started_at), MIN(COALESCE(input_tokens, 0)),"
        " SUM(MAX(0, COALESCE(input_tokens, 0) - COALESCE(cached_tokens, 0) - COALESCE(cache_write_tokens, 0))),"
        " SUM(COALESCE(cached_tokens, 0)), SUM(COALESCE(cache_write_tokens, 0)),"
        " SUM(MIN(COALESCE(cache_write_1h_tokens, 0), COALESCE(cache_write_tokens, 0))), SUM(COALESCE(output_tokens, 0)),"
        " SUM(MIN(COALESCE(reasoning_tokens, 0), COALESCE(output_tokens, 0))), SUM(COALESCE(web_search_requests, 0)){}"
        f" FROM requests{where} GROUP BY 1, 2, 3, 4"
    )
    bound = [*tiers, *(encode_time(c) for c in changes), *params]
    logged: Logged | None = None
    try:
        # The logged sums ride along in the same scan (the second scan was most of the rest).
        rows = db.execute(grouped.format(
            ", SUM(cost_usd IS NULL), SUM(cost_catalog_usd IS NULL), " + _exact_sum("cost_usd") + ", " + _exact_sum("cost_catalog_usd")
        ), bound).fetchall()
        logged = _logged_from_groups([(row[4], *row[14:]) for row in rows])
    except (_Inexact, sqlite3.OperationalError):  # more than 12 decimals, or past SQLite's integers
        rows = db.execute(grouped.format(""), bound).fetchall()
    if logged is None:
        logged = _logged_sums(db, where, params)
    groups = [
        TokenSums(_instant(first), prompt, count, bool(priced), *sums[:7])
        for _, _, _, priced, count, first, prompt, *sums in rows
    ]
    return groups, logged


def _logged_from_groups(sums: list[tuple[Any, ...]]) -> Logged:
    """The logged sums from per-group (requests, unpriced, unlisted, units, places, units, places):
    integer units add up exactly across groups, and the most places seen is the sum's."""
    count = unpriced = unlisted = 0
    money: list[tuple[int | None, int | None]] = [(None, None), (None, None)]
    for group_count, group_unpriced, group_unlisted, *parts in sums:
        count += group_count
        unpriced += group_unpriced
        unlisted += group_unlisted
        for i in (0, 1):
            units, places = parts[2 * i], parts[2 * i + 1]
            if units is not None:
                seen_units, seen_places = money[i]
                money[i] = ((seen_units or 0) + units, max(seen_places or 0, places))
    spent, listed = (Decimal(_decimal(units, places) or 0) for units, places in money)
    return [(count, unpriced, spent), (count, unlisted, listed)]


def _logged_sums(db: Reader, where: str, params: list[Any]) -> Logged:
    """(requests, unpriced, exact sum) of cost_usd and of cost_catalog_usd, summed as Decimals."""
    row = db.execute(
        "SELECT COUNT(*), SUM(cost_usd IS NULL), SUM(cost_catalog_usd IS NULL), decsum(cost_usd), NULL, decsum(cost_catalog_usd), NULL"
        f" FROM requests{where}",
        params,
    ).fetchone()
    count, unpriced, unlisted, spent, spent_places, listed, listed_places = row
    return [
        (count, unpriced or 0, Decimal(_sum_text(spent, spent_places) or 0)),
        (count, unlisted or 0, Decimal(_sum_text(listed, listed_places) or 0)),
    ]
