"""The `/-/` reads that sum raw rows, for an engine without SQLite's rollups (PostgreSQL, whose
`numeric` sums are exact). proxy/web/reads.py reads the rollups on SQLite and sends these views
here when the connection's dialect has none; the answers are the same documents.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from decimal import Context, Decimal
from typing import Any

from proxy.pricing.calculator import PriceHistory, logged_request, whatif_rows
from proxy.pricing.catalog import Catalog
from proxy.store.dialect import dialect_of
from proxy.store.reader import Reader
from proxy.store.sqlite import read_requests
from proxy.tables import plain
from proxy.web.query import Query
from proxy.web.reads import (
    SERIES,
    _bucket,
    _history,
    _Inexact,
    _json_rows,
    _labels,
    _money_sum,
    _sum_text,
    _where,
    cache_document,
    cache_row,
)

# Sums as the rollups give them (rollups.money_value): exact, without trailing zeros.
_WIDE = Context(prec=80)

# How a group is spelled in SQL; the same values `report.group_of` gives ("(none)" for empty).
GROUP_SQL = {
    "model": "COALESCE(NULLIF(model, ''), '(none)')",
    "provider": "COALESCE(NULLIF(provider, ''), '(none)')",
    "project": "COALESCE(NULLIF(project, ''), '(none)')",
    "session": "COALESCE(NULLIF(session, ''), '(none)')",
    "client": "COALESCE(NULLIF(client, ''), '(none)')",
    "endpoint": "COALESCE(NULLIF(endpoint, ''), '(none)')",
    "key": "COALESCE(NULLIF(key_alias, ''), NULLIF(key_fingerprint, ''), '(none)')",
}


def _rows(db: Reader, query: Query) -> Iterator[Any]:
    if not query.filters and query.until is None:
        # The CLI's own reader, so an unfiltered report is the CLI's report.
        yield from read_requests(db, query.since)
        return
    where, params = _where(query)
    yield from db.execute(f"SELECT * FROM requests{where} ORDER BY started_at", params)


def timeseries(db: Reader, query: Query, now: datetime) -> dict[str, Any]:
    """Spend per hour or day (in `tz`), one series per group: the biggest few, the rest as "other".

    SQLite sums per UTC hour (the started_at index keeps it a range scan); Python folds the hours
    into local buckets, which SQL cannot do across DST changes. Chart values are floats.
    """
    group = GROUP_SQL[query.by] if query.by != "day" else "'total'"
    where, params = _where(query)
    dialect = dialect_of(db)
    cursor = db.execute(
        f"SELECT {dialect.time_text('started_at', 13)} AS hour, {group} AS grp, {dialect.float_sum('cost_usd')}, COUNT(*)"
        f" FROM requests{where} GROUP BY hour, grp",
        params,
    )
    cells: dict[tuple[str, str], float] = {}
    totals: dict[str, float] = {}
    first: datetime | None = None
    for hour, grp, cost, _count in cursor:
        moment = datetime.fromisoformat(hour + ":00:00+00:00")
        first = moment if first is None or moment < first else first
        label = _bucket(moment, query)
        cells[(label, grp)] = cells.get((label, grp), 0.0) + cost
        totals[grp] = totals.get(grp, 0.0) + cost
    start = query.since or first or now
    labels = list(_labels(start, query.until or now, query))
    ranked = sorted(totals, key=lambda g: (-totals[g], g))
    shown, rest = ranked[:SERIES], set(ranked[SERIES:])
    series = [{"name": g, "total": totals[g], "values": [cells.get((b, g), 0.0) for b in labels]} for g in shown]
    if rest:
        values = [sum(cells.get((b, g), 0.0) for g in rest) for b in labels]
        series.append({"name": "other", "total": sum(totals[g] for g in rest), "values": values})
    return {"by": query.by, "step": query.step, "tz": str(query.tz), "buckets": labels, "series": series}


def groups(db: Reader, query: Query) -> list[dict[str, Any]]:
    """Top groups (sessions by default) with first and last seen, requests, models and exact cost."""
    try:
        return _groups(db, query, _money_sum(db)("cost_usd"))
    except (_Inexact, sqlite3.OperationalError):  # more than 12 decimals, or past SQLite's integers
        return _groups(db, query, "decsum(cost_usd), NULL")


def _groups(db: Reader, query: Query, cost_sql: str) -> list[dict[str, Any]]:
    group = GROUP_SQL[query.by]
    where, params = _where(query)
    dialect = dialect_of(db)
    errors = dialect.int_sum(dialect.flag("outcome != 'ok'"))
    cursor = db.execute(
        f"SELECT {group} AS grp, MIN(started_at), MAX(started_at), COUNT(*),"
        f" {errors}, {dialect.distinct_list('model')}, {cost_sql}"
        f" FROM requests{where} GROUP BY grp ORDER BY {dialect.float_sum('cost_usd')} DESC, grp LIMIT ?",
        [*params, query.limit],
    )
    rows = []
    for grp, first, last, count, errors, models, cost, places in cursor:
        exact = _sum_text(cost, places)
        rows.append(
            {
                "group": grp,
                "first_seen": first,
                "last_seen": last,
                "requests": count,
                "errors": errors,
                "models": sorted(set(models.split(","))) if models else [],
                "cost_usd": plain(Decimal(exact)) if exact is not None else "0",
            }
        )
    return rows


def cache_and_drift(db: Reader, query: Query, catalog: Catalog) -> dict[str, Any]:
    """Per model: cache reads and what they saved at today's catalog prices; billed vs catalog cost."""
    try:
        return _cache_and_drift(db, query, catalog, _money_sum(db))
    except (_Inexact, sqlite3.OperationalError):
        return _cache_and_drift(db, query, catalog, lambda column: f"decsum({column}), NULL")


def _cache_and_drift(
    db: Reader, query: Query, catalog: Catalog, money_sum: Callable[[str], str]
) -> dict[str, Any]:
    where, params = _where(query)
    dialect = dialect_of(db)
    cursor = db.execute(
        f"SELECT COALESCE(model, '(none)'), COUNT(*), {dialect.float_sum('input_tokens')}, {dialect.float_sum('cached_tokens')},"
        f" {dialect.float_sum('cache_write_tokens')},"
        f" {money_sum('CASE WHEN cost_catalog_usd IS NOT NULL THEN cost_reported_usd END')},"
        f" {money_sum('CASE WHEN cost_reported_usd IS NOT NULL THEN cost_catalog_usd END')},"
        f" {dialect.int_sum(dialect.flag('cost_reported_usd IS NOT NULL AND cost_catalog_usd IS NOT NULL'))}"
        f" FROM requests{where} GROUP BY 1",
        params,
    )
    models = []
    saved_total = Decimal(0)
    billed_total = Decimal(0)
    catalog_total = Decimal(0)
    for model, count, input_tokens, cached, written, billed_sum, billed_places, listed_sum, listed_places, compared in cursor:
        billed = _sum_text(billed_sum, billed_places)
        listed = _sum_text(listed_sum, listed_places)
        entry = catalog.get(model) if model != "(none)" else None
        saved: Decimal | None = None
        if entry is not None and cached:
            read_price = entry.pricing.input_cache_read
            if read_price is not None:
                saved = (entry.pricing.prompt - read_price) * int(cached)
                saved_total += saved
        billed_d = Decimal(billed).normalize(_WIDE) if billed is not None else None
        listed_d = Decimal(listed).normalize(_WIDE) if listed is not None else None
        if billed_d is not None and listed_d is not None:
            billed_total += billed_d
            catalog_total += listed_d
        models.append(
            cache_row(model, count, int(input_tokens), int(cached), int(written), saved, compared or 0, billed_d, listed_d)
        )
    return cache_document(models, saved_total, billed_total, catalog_total)


def whatif(db: Reader, query: Query, catalog: Catalog, targets: Iterable[str]) -> list[Any]:
    where, params = _where(query)
    rows = db.execute(f"SELECT * FROM requests{where} ORDER BY started_at", params)
    requests = [logged_request(dict(r)) for r in rows]
    return _json_rows(whatif_rows(requests, catalog, tuple(targets), None, PriceHistory(_history(db))))
