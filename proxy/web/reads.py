"""What each `/-/` endpoint reads from the log: plain functions over a read-only connection (a
sqlite3 one, or proxy/store/pg_reader.py's; the dialect spells what differs).

They run in the web reader's thread pool, never on the event loop. `report()` is the seam to the
CLI: it calls the very functions `openrouter-spend report --format json` uses, so the page and the
CLI cannot disagree; when the reports move to SQL, re-point that one function.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from proxy.pricing.calculator import price_changes
from proxy.pricing.catalog import Catalog
from proxy.store import reports, rollups
from proxy.store.dialect import dialect_of
from proxy.store.reader import Reader
from proxy.store.sqlite import encode_time
from proxy.tables import render as render_rows
from proxy.web import summed
from proxy.web.query import BadQuery, Query

# What the chart and the top lists group by (`by=`); "(none)" names a missing value.
GROUPS = ("model", "provider", "project", "session", "client", "endpoint", "key")
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


def _exactly(value: str) -> str:
    # The page's filters are exact values; the report's are globs.
    return "".join(f"[{c}]" if c in "*?[" else c for c in value)


class JsonText(str):
    """A read's answer already written as JSON: the endpoint sends it as it is."""

    __slots__ = ()


def report(db: Reader, query: Query, free_daily_limit: int, now: datetime) -> JsonText:
    """The document `report --by {by} --since {since} [--limit N] --format json` prints, filters applied: the
    same query and the same document (proxy/store/reports.py) as the CLI. Written as JSON text
    here, in the reader's worker: a report by session is a row per session (31,049 rows are
    17 MB), and as a dict its trip back and its encoding would take the event loop 0.4 s."""
    # `limit` as `report --limit N`: only the costliest N groups (the total still covers all).
    limit = query.limit if query.first("limit") is not None else None
    result = reports.report(db, query.by, since=query.since, until=query.until, filters=_filters(query), tz=query.tz, limit=limit)
    return JsonText(reports.document_text(result, reports.free_usage(db, now, free_daily_limit), indent=False))


def free(db: Reader, free_daily_limit: int, now: datetime) -> dict[str, int]:
    return reports.free_usage(db, now, free_daily_limit).as_dict()


def _filters(query: Query) -> reports.Filters:
    wanted: dict[str, list[str]] = {"project": [], "model": [], "session": [], "key": [], "client": []}
    for column, value in query.filters:
        wanted[column].append(_exactly(value))
    return reports.Filters(*(tuple(wanted[name]) for name in ("project", "model", "session", "key", "client")))


def _name(group: str) -> str:
    return group or reports.NONE


def timeseries(db: Reader, query: Query, now: datetime) -> dict[str, Any]:
    """Spend per hour or day (in `tz`), one series per group: the biggest few, the rest as "other".

    Read from the rollups per UTC hour (per UTC day where that is a local day); Python folds the
    hours into local buckets, which SQL cannot do across DST changes. Sums are exact integers until
    the chart's floats. By session only the top few sessions are read per period: "other" is each
    bucket's total less theirs.
    """
    if not dialect_of(db).rollups:
        from proxy.web import raw_reads

        return raw_reads.timeseries(db, query, now)
    filters = _filters(query)
    hourly = query.step == "hour"
    labels_of: dict[str, str] = {}
    first: list[str] = []

    def fold(rows: Iterable[tuple[str, str, int]], cells: dict[tuple[str, str], int], totals: dict[str, int]) -> None:
        for period, group, cost in rows:
            label = labels_of.get(period)
            if label is None:
                label = labels_of[period] = _bucket(_period_start(period), query)
                if not first or period < first[0]:
                    first[:] = [period]
            key = (label, group)
            cells[key] = cells.get(key, 0) + cost
            totals[group] = totals.get(group, 0) + cost

    cells: dict[tuple[str, str], int] = {}
    totals: dict[str, int] = {}
    rest: set[str] = set()
    if query.by == "session":
        found_in = summed.group_pieces(db, "session", query.since, query.until, filters)
        top, more = summed.top_groups(db, "session", found_in, filters, SERIES)
        names = [_name(g.name) for g in top]
        # One scan: the top sessions per period, every other session as "other".
        fold(summed.series(db, "session", query.since, query.until, filters, query.tz, hourly, [g.name for g in top]), cells, totals)
        shown = [g.name for g in top]
        totals.update((g.name, g.cost) for g in top)
        rest = {summed.OTHER} if more else set()
    else:
        fold(summed.series(db, query.by, query.since, query.until, filters, query.tz, hourly), cells, totals)
        ranked = sorted(totals, key=lambda g: (-totals[g], _name(g) if query.by != "day" else "total"))
        shown, rest = ranked[:SERIES], set(ranked[SERIES:])
        names = [_name(g) if query.by != "day" else "total" for g in shown]
    start = query.since or (_period_start(first[0]) if first else now)
    labels = list(_labels(start, query.until or now, query))
    out = [
        {"name": name, "total": summed.usd(totals[g]), "values": [summed.usd(cells.get((b, g), 0)) for b in labels]}
        for name, g in zip(names, shown)
    ]
    if rest:
        # One pass over the cells: buckets times groups would be millions of look-ups.
        other: dict[str, int] = {}
        for (bucket, group), cost in cells.items():
            if group in rest:
                other[bucket] = other.get(bucket, 0) + cost
        out.append({"name": "other", "total": summed.usd(sum(totals[g] for g in rest)), "values": [summed.usd(other.get(b, 0)) for b in labels]})
    return {"by": query.by, "step": query.step, "tz": str(query.tz), "buckets": labels, "series": out}


def _period_start(period: str) -> datetime:
    # A rollup period: a UTC hour ('2026-11-20T13') or day ('2026-11-20').
    return datetime.fromisoformat(period + (":00" if len(period) == 13 else "T00:00")).replace(tzinfo=UTC)


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
    """Top groups (sessions by default) with first and last seen, requests, models and exact cost,
    ranked and limited in SQL over the rollups."""
    if not dialect_of(db).rollups:
        from proxy.web import raw_reads

        return raw_reads.groups(db, query)
    filters = _filters(query)
    found_in = summed.group_pieces(db, query.by, query.since, query.until, filters)
    top, _ = summed.top_groups(db, query.by, found_in, filters, query.limit)
    summed.add_models(db, query.by, found_in, filters, top)
    return [summed.as_group_row(group) for group in top]


def cache_and_drift(db: Reader, query: Query, catalog: Catalog) -> dict[str, Any]:
    """Per model: cache reads and what they saved at today's catalog prices; billed vs catalog cost
    over the requests that have both. From the hourly rollup: exact, and it survives retention
    (hours pruned before migration 14 have no billed/catalog sums: their requests are not compared)."""
    if not dialect_of(db).rollups:
        from proxy.web import raw_reads

        return raw_reads.cache_and_drift(db, query, catalog)
    models: list[dict[str, Any]] = []
    saved_total = Decimal(0)
    billed_total = Decimal(0)
    catalog_total = Decimal(0)
    for model, sums in summed.per_model(db, query.since, query.until, _filters(query)).items():
        name = _name(model)
        input_tokens, cached, compared = sums["input_tokens"], sums["cached_tokens"], sums["compared_requests"]
        entry = catalog.get(model) if model else None
        saved: Decimal | None = None
        if entry is not None and cached:
            read_price = entry.pricing.input_cache_read
            if read_price is not None:
                saved = (entry.pricing.prompt - read_price) * cached
                saved_total += saved
        billed = listed = None
        if compared:
            billed = rollups.money_value(sums["billed_compared_usd_pico"], sums["billed_compared_usd_yocto"])
            listed = rollups.money_value(sums["catalog_compared_usd_pico"], sums["catalog_compared_usd_yocto"])
            billed_total += billed
            catalog_total += listed
        models.append(
            cache_row(name, sums["requests"], input_tokens, cached, sums["cache_write_tokens"], saved, compared, billed, listed)
        )
    return cache_document(models, saved_total, billed_total, catalog_total)


def cache_row(
    model: str,
    requests: int,
    input_tokens: int,
    cached: int,
    written: int,
    saved: Decimal | None,
    compared: int,
    billed: Decimal | None,
    listed: Decimal | None,
) -> dict[str, Any]:
    """One model's line of `/-/cache`, whichever engine summed it."""
    return {
        "model": model,
        "requests": requests,
        "input_tokens": input_tokens,
        "cached_tokens": cached,
        "cache_write_tokens": written,
        "cache_share": round(cached / input_tokens, 4) if input_tokens else None,
        "saved_usd": None if saved is None else str(saved),
        "compared_requests": compared,
        "billed_usd": None if billed is None else format(billed, "f"),
        "catalog_usd": None if listed is None else format(listed, "f"),
        "drift_usd": None if billed is None or listed is None else format(billed - listed, "f"),
    }


def cache_document(models: list[dict[str, Any]], saved: Decimal, billed: Decimal, listed: Decimal) -> dict[str, Any]:
    models.sort(key=lambda m: (-m["cached_tokens"], m["model"]))
    return {
        "models": models,
        "saved_usd": str(saved),
        "billed_usd": format(billed, "f"),
        "catalog_usd": format(listed, "f"),
        "drift_usd": format(billed - listed, "f"),
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
    """`whatif`'s rows for the range: re-priced from the what-if rollups on SQLite
    (proxy/web/whatif.py), from raw rows where the engine has no rollups."""
    if not dialect_of(db).rollups:
        from proxy.web import raw_reads

        return raw_reads.whatif(db, query, catalog, targets)
    from proxy.web import whatif as repricing

    return repricing.whatif(db, query, catalog, targets)


def _json_rows(rows: Any) -> list[Any]:
    result: list[Any] = json.loads(render_rows(rows, "json"))
    return result
