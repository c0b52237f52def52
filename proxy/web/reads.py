"""What each `/-/` endpoint reads from the log: plain functions over a read-only connection (a
sqlite3 one, or proxy/store/pg_reader.py's; the dialect spells what differs).

They run in the web reader's thread pool, never on the event loop. `report()` is the seam to the
CLI: it calls the very functions `openrouter-spend report --format json` uses, so the page and the
CLI cannot disagree; when the reports move to SQL, re-point that one function.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from proxy.store import reports
from proxy.store.dialect import dialect_of
from proxy.store.reader import Reader
from proxy.pricing.calculator import PriceHistory, logged_request, price_changes, whatif_rows
from proxy.pricing.catalog import Catalog
from proxy.store.sqlite import encode_time, read_requests
from proxy.tables import render as render_rows
from proxy.web.query import BadQuery, Query

# How a report group is spelled in SQL; the same values `report.group_of` gives ("(none)" for empty).
GROUP_SQL = {
    "model": "COALESCE(NULLIF(model, ''), '(none)')",
    "provider": "COALESCE(NULLIF(provider, ''), '(none)')",
    "project": "COALESCE(NULLIF(project, ''), '(none)')",
    "session": "COALESCE(NULLIF(session, ''), '(none)')",
    "client": "COALESCE(NULLIF(client, ''), '(none)')",
    "endpoint": "COALESCE(NULLIF(endpoint, ''), '(none)')",
    "key": "COALESCE(NULLIF(key_alias, ''), NULLIF(key_fingerprint, ''), '(none)')",
}
MAX_BUCKETS = 2_400
SERIES = 8


class _DecimalSum:
    """SQLite aggregate: the exact Decimal sum of money stored as decimal TEXT (SUM would use floats)."""

    def __init__(self) -> None:
        self.total = Decimal(0)
        self.seen = False

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total += Decimal(value)
            self.seen = True

    def finalize(self) -> str | None:
        return format(self.total, "f") if self.seen else None  # never 5E-18: money is fixed-point


def prepare_connection(db: Reader) -> None:
    # SQLite's SUM of decimal text is a float: the exact fallback below needs this aggregate.
    # PostgreSQL sums numeric exactly and has no user aggregates to register from here.
    create = getattr(db, "create_aggregate", None)
    if create is not None:
        create("decsum", 1, _DecimalSum)


# Exact sums without a Python call per row: money is fixed-point text, so a value with at most 12
# decimals times 10^12 is an integer; below $1,000 a double's parse and multiply errors stay under
# 0.13 of a unit, so ROUND recovers it exactly. SQLite sums the integers; the places column says when a value
# had more decimals (or was too big), and the caller then sums with decsum instead.
_PLACES = 12


def _exact_sum(column: str) -> str:
    # SQLite's form; money_sum() below picks the engine's.
    return (
        f"SUM(CAST(ROUND({column} * 1e{_PLACES}) AS INTEGER)),"
        f" MAX(CASE WHEN ABS({column}) >= 1000 THEN 99"
        f" WHEN instr({column}, '.') > 0 THEN length({column}) - instr({column}, '.') ELSE 0 END)"
    )


def _money_sum(db: Reader) -> Callable[[str], str]:
    """The (sum, places) pair of SELECT columns for a money column: a native exact sum where the
    engine has one (places NULL), else SQLite's integer sum of pico-dollars."""
    exact = dialect_of(db).exact_sum
    if exact("x") is not None:
        return lambda column: f"{exact(column)}, NULL"
    return _exact_sum


class _Inexact(Exception):
    pass


def _decimal(units: int | None, places: int | None) -> str | None:
    """The exact sum as `report` would print it (Decimal addition keeps the most decimals seen)."""
    if units is None:
        return None
    if places is None or places > _PLACES:
        raise _Inexact
    return str(Decimal(units).scaleb(-_PLACES).quantize(Decimal(1).scaleb(-places)))


def _where(query: Query, *, since: datetime | None = None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    lower = since if since is not None else query.since
    if lower is not None:
        clauses.append("started_at >= ?")
        params.append(encode_time(lower))
    if query.until is not None:
        clauses.append("started_at < ?")
        params.append(encode_time(query.until))
    for name, value in query.filters:
        if name == "key":
            clauses.append("(key_alias = ? OR key_fingerprint = ?)")
            params.extend([value, value])
        else:
            clauses.append(f"{name} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _rows(db: Reader, query: Query) -> Iterator[Any]:
    if not query.filters and query.until is None:
        # The CLI's own reader, so an unfiltered report is the CLI's report.
        yield from read_requests(db, query.since)
        return
    where, params = _where(query)
    yield from db.execute(f"SELECT * FROM requests{where} ORDER BY started_at", params)


def _exactly(value: str) -> str:
    # The page's filters are exact values; the report's are globs.
    return "".join(f"[{c}]" if c in "*?[" else c for c in value)


def report(db: Reader, query: Query, free_daily_limit: int, now: datetime) -> dict[str, Any]:
    """The document `report --by {by} --since {since} --format json` prints, filters applied: the
    same query and the same document (proxy/store/reports.py) as the CLI."""
    wanted: dict[str, list[str]] = {"project": [], "model": [], "session": [], "key": [], "client": []}
    for column, value in query.filters:
        wanted[column].append(_exactly(value))
    filters = reports.Filters(*(tuple(wanted[name]) for name in ("project", "model", "session", "key", "client")))
    result = reports.report(db, query.by, since=query.since, until=query.until, filters=filters, tz=query.tz)
    return reports.as_document(result, reports.free_usage(db, now, free_daily_limit))


def free(db: Reader, free_daily_limit: int, now: datetime) -> dict[str, int]:
    return reports.free_usage(db, now, free_daily_limit).as_dict()


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


def _bucket(moment: datetime, query: Query) -> str:
    local = moment.astimezone(query.tz)
    return local.strftime("%Y-%m-%d %H:00") if query.step == "hour" else local.date().isoformat()


def _labels(start: datetime, end: datetime, query: Query) -> Iterator[str]:
    step = timedelta(hours=1) if query.step == "hour" else timedelta(days=1)
    if (end - start) / step > MAX_BUCKETS:
        raise BadQuery(f"step: {query.step} steps over this range make more than {MAX_BUCKETS} points; use step=day or a shorter since")
    moment = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    last = None
    while moment <= end:
        label = _bucket(moment, query)
        if label != last:
            yield label
            last = label
        moment += timedelta(hours=1)


RECENT_COLUMNS = (
    "id", "started_at", "model", "provider", "project", "session", "client", "key_alias", "key_fingerprint",
    "endpoint", "streamed", "status", "outcome", "input_tokens", "output_tokens", "cached_tokens",
    "cache_write_tokens", "reasoning_tokens", "cost_usd", "cost_reported_usd", "cost_catalog_usd",
    "cost_source", "is_free", "ttfb_ms", "duration_ms",
)


def recent(db: Reader, query: Query) -> list[dict[str, Any]]:
    where, params = _where(query)
    cursor = db.execute(
        f"SELECT {', '.join(RECENT_COLUMNS)} FROM requests{where} ORDER BY started_at DESC LIMIT ?",
        [*params, query.limit],
    )
    return [dict(zip(RECENT_COLUMNS, row)) for row in cursor]


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
                "cost_usd": exact if exact is not None else "0",
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
        billed_d = Decimal(billed) if billed is not None else None
        listed_d = Decimal(listed) if listed is not None else None
        if billed_d is not None and listed_d is not None:
            billed_total += billed_d
            catalog_total += listed_d
        models.append(
            {
                "model": model,
                "requests": count,
                "input_tokens": int(input_tokens),
                "cached_tokens": int(cached),
                "cache_write_tokens": int(written),
                "cache_share": round(cached / input_tokens, 4) if input_tokens else None,
                "saved_usd": None if saved is None else str(saved),
                "compared_requests": compared or 0,
                "billed_usd": None if billed_d is None else str(billed_d),
                "catalog_usd": None if listed_d is None else str(listed_d),
                "drift_usd": None if billed_d is None or listed_d is None else str(billed_d - listed_d),
            }
        )
    models.sort(key=lambda m: (-m["cached_tokens"], m["model"]))
    return {
        "models": models,
        "saved_usd": str(saved_total),
        "billed_usd": str(billed_total),
        "catalog_usd": str(catalog_total),
        "drift_usd": str(billed_total - catalog_total),
    }


def _sum_text(value: Any, places: int | None) -> str | None:
    """A money sum from either path: decsum's text, or the exact integer sum and its places."""
    if value is None or isinstance(value, str):
        return value
    return _decimal(value, places)


def _history(db: Reader) -> list[tuple[str, str, str]]:
    return [(r[0], r[1], r[2]) for r in db.execute("SELECT model_id, pricing, first_seen_at FROM model_prices")]


def changes(db: Reader, search: str | None) -> list[Any]:
    return _json_rows(price_changes(_history(db), search))


def whatif(db: Reader, query: Query, catalog: Catalog, targets: Iterable[str]) -> list[Any]:
    where, params = _where(query)
    rows = db.execute(f"SELECT * FROM requests{where} ORDER BY started_at", params)
    requests = [logged_request(dict(r)) for r in rows]
    return _json_rows(whatif_rows(requests, catalog, tuple(targets), None, PriceHistory(_history(db))))


def _json_rows(rows: Any) -> list[Any]:
    result: list[Any] = json.loads(render_rows(rows, "json"))
    return result
