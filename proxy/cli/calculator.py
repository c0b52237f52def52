"""`openrouter-spend models | estimate | whatif`: flags in, files read, the calculator's rows printed."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from proxy.pricing.calculator import (
    PriceHistory,
    Route,
    estimate_rows,
    estimate_usage,
    logged_request,
    model_rows,
    price_changes,
    summary_line,
    whatif_rows,
)
from proxy.pricing.catalog import Catalog, load_embedded, parse_models
from proxy.errors import CliError
from proxy.cli.locate import db_arg
from proxy.cli.report import parse_since
from proxy.store.reader import Reader, errors, open_reader
from proxy.tables import Row, render

def parse_route(text: str) -> Route:
    parts: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in ("cheap", "flagship", "escalate"):
            raise CliError(f"--route: expected cheap=ID,flagship=ID,escalate=SHARE, got {text!r}")
        parts[key.strip()] = value.strip()
    if set(parts) != {"cheap", "flagship", "escalate"}:
        raise CliError(f"--route: needs cheap=, flagship= and escalate=, got {text!r}")
    try:
        share = Decimal(parts["escalate"])
    except InvalidOperation:
        raise CliError(f"--route: escalate must be a share between 0 and 1, got {parts['escalate']!r}") from None
    if not 0 <= share <= 1:
        raise CliError(f"--route: escalate must be a share between 0 and 1, got {parts['escalate']!r}")
    return Route(parts["cheap"], parts["flagship"], share)


def _catalog(args: argparse.Namespace) -> Catalog:
    path: Path | None = args.catalog
    if path is None:
        stored = _stored_catalog(args)
        return stored if stored is not None else load_embedded()
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return parse_models(payload)
    except (OSError, ValueError) as e:
        raise CliError(f"--catalog {path}: {e}") from None


def _stored_catalog(args: argparse.Namespace) -> Catalog | None:
    """The listing `serve` last fetched, kept in its database; None when there is none (yet)."""
    from proxy.cli.locate import resolve_db

    path = resolve_db(args.db, None, notice=False)
    args.stored_in = None
    if isinstance(path, Path) and not path.is_file():
        return None
    try:
        db = open_reader(path)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'catalog_listing'").fetchone()
        finally:
            db.close()
        if row is None:
            return None
        catalog = parse_models(json.loads(row[0]))
    except errors() + (ValueError,):
        return None  # an older, foreign or unreachable database: the built-in snapshot still answers
    if len(catalog) == 0:
        return None
    args.stored_in = path
    return catalog


def _as_of(args: argparse.Namespace, catalog: Catalog) -> str:
    """Which prices these are: people compare them with the website and need to know their age."""
    when = catalog.fetched_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if catalog.fetched_at else "an unknown date (the listing has no fetchedAt)"
    if args.catalog is not None:
        source = str(args.catalog)
    elif getattr(args, "stored_in", None) is not None:
        source = f"stored by the proxy in {args.stored_in}"
    else:
        source = "built-in snapshot; `serve` refreshes its own copy from OpenRouter"
    return f"prices as of {when} ({source})"


def _connect(path: Path | str) -> Reader:
    try:
        return open_reader(path)
    except FileNotFoundError:
        from proxy.cli.locate import looked_for_db

        raise CliError(f"--db {path}: no such file ({looked_for_db(None, None)}); start the proxy first, or pass --db") from None
    except errors() as e:
        raise CliError(f"--db {path}: {e}") from None


def _read_table(path: Path | str, query: str, params: Sequence[Any] = ()) -> list[Any]:
    db = _connect(path)
    try:
        return list(db.execute(query, params).fetchall())
    except errors(db) as e:
        raise CliError(f"--db {path}: {e}") from None
    finally:
        db.close()


def _emit(rows: Sequence[Row], fmt: str, footer: str | None = None) -> None:
    sys.stdout.write(render(rows, fmt))
    if footer and fmt == "table":
        sys.stdout.write(footer + "\n")


def _db_of(args: argparse.Namespace) -> Path | str:
    from proxy.cli.locate import resolve_db

    return resolve_db(args.db, None)


def _cmd_models(args: argparse.Namespace) -> int:
    if args.changes:
        args.db = _db_of(args)
        history = _read_table(args.db, "SELECT model_id, pricing, first_seen_at FROM model_prices")
        _emit(price_changes([(r[0], r[1], r[2]) for r in history], args.search), args.format)
        return 0
    catalog = _catalog(args)
    rows = model_rows(
        catalog, search=args.search, free=args.free, max_input_price=args.max_input_price, sort=args.sort
    )
    _emit(rows, args.format, f"{len(rows)} models; prices in USD per 1M tokens; {_as_of(args, catalog)}")
    return 0


def _cmd_estimate(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    usage = estimate_usage(args.input, args.output, args.cached_input, args.reasoning)
    rows = estimate_rows(
        catalog,
        usage,
        at=datetime.now(timezone.utc),
        models=args.model or (),
        cheapest=args.cheapest,
        vs=args.vs,
        calls=args.calls,
        per=args.per,
    )
    summary = summary_line(rows)
    _emit(rows, args.format, (summary + "\n" if summary else "") + _as_of(args, catalog))
    return 0


def _cmd_whatif(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    route = parse_route(args.route) if args.route else None
    if not args.model and route is None:
        raise CliError("whatif: give at least one --model ID or a --route")
    since = parse_since(args.since, datetime.now(timezone.utc))
    args.db = _db_of(args)
    if route is None:
        fast = _whatif_from_rollups(args, catalog, since)
        if fast is not None:
            _emit(fast, args.format)
            return 0
    clauses, params = [], []
    for column in ("project", "session"):
        if getattr(args, column) is not None:
            clauses.append(f"{column} = ?")
            params.append(getattr(args, column))
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = _read_table(args.db, f"SELECT * FROM requests{where} ORDER BY started_at", params)
    requests = [logged_request(dict(r)) for r in rows]
    if since is not None:
        requests = [r for r in requests if r.started_at >= since]
    history = None
    try:
        history = PriceHistory((r[0], r[1], r[2]) for r in _read_table(args.db, "SELECT * FROM model_prices"))
    except CliError:
        pass  # an older log without price history: price at the current catalog
    _emit(whatif_rows(requests, catalog, args.model or (), route, history), args.format)
    return 0


def _whatif_from_rollups(args: argparse.Namespace, catalog: Catalog, since: datetime | None) -> list[Row] | None:
    """The page's read (token sums from the what-if rollups) on a SQLite log that has them; None
    elsewhere (PostgreSQL, an older log, a --route: those price every request in Python)."""
    from proxy.web import reads
    from proxy.web import whatif as repricing
    from proxy.web.query import Query

    db = _connect(args.db)
    try:
        if not repricing.has_rollups(db):
            return None
        reads.prepare_connection(db)
        filters = tuple((column, getattr(args, column)) for column in ("project", "session") if getattr(args, column) is not None)
        return repricing.repriced(db, Query(since=since, filters=filters), catalog, args.model)
    except errors(db) as e:
        raise CliError(f"--db {args.db}: {e}") from None
    finally:
        db.close()


def _decimal_arg(text: str) -> Decimal:
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not d.is_finite() or d < 0:
        raise argparse.ArgumentTypeError(f"not a price: {text!r}")
    return d


_SUFFIXES = {"k": 1_000, "m": 1_000_000}


def _count_arg(text: str) -> int:
    """A token or call count: 1000, 1,000, 1k, 1.5k, 2M."""
    plain = text.strip().replace(",", "").replace("_", "")
    scale = _SUFFIXES.get(plain[-1:].lower(), 1)
    try:
        value = Decimal(plain[:-1] if scale != 1 else plain) * scale
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r} (e.g. 1500, 1.5k, 2M)") from None
    if not value.is_finite() or value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r} (e.g. 1500, 1.5k, 2M)")
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"cannot be negative: {text!r}")
    return n


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog", type=Path, metavar="FILE", help="a saved /models listing (default: the built-in snapshot)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `models`, `estimate` and `whatif` on the CLI's subparsers."""
    p = subparsers.add_parser("models", help="list models with prices per 1M tokens")
    _common(p)
    p.add_argument("--search", metavar="TEXT", help="only ids or names containing TEXT")
    p.add_argument("--free", action="store_true", help="only free models")
    p.add_argument("--max-input-price", type=_decimal_arg, metavar="P", help="USD per 1M input tokens, at most")
    p.add_argument("--sort", choices=("input", "output", "blended", "context"), default="input",
                   help="blended = (3 x input + output) / 4")
    p.add_argument("--changes", action="store_true", help="list price changes recorded in --db")
    p.add_argument("--db", type=db_arg, metavar="PATH|URL", help="the proxy's database (default: found as every command finds it)")
    p.set_defaults(func=_cmd_models)

    p = subparsers.add_parser("estimate", help="cost per call and per period on each model")
    _common(p)
    p.add_argument("--input", type=_count_arg, required=True, metavar="N", help="prompt tokens per call")
    p.add_argument("--output", type=_count_arg, required=True, metavar="N", help="visible output tokens per call")
    p.add_argument("--cached-input", type=_count_arg, default=0, metavar="N", help="of --input, read from cache")
    p.add_argument("--reasoning", type=_count_arg, default=0, metavar="N", help="reasoning tokens, on top of --output")
    p.add_argument("--calls", type=_count_arg, metavar="N", help="calls per period")
    p.add_argument("--per", choices=("month", "day"), default="month")
    p.add_argument("--model", action="append", metavar="ID", help="repeatable")
    p.add_argument("--cheapest", type=_count_arg, metavar="N", help="add the N cheapest paid models")
    p.add_argument("--vs", metavar="ID", help="compare every row with this model")
    p.add_argument("--db", type=db_arg, metavar="PATH|URL", help="the proxy's database, for the listing it last fetched")
    p.set_defaults(func=_cmd_estimate)

    p = subparsers.add_parser("whatif", help="re-price logged traffic on other models")
    _common(p)
    p.add_argument("--db", type=db_arg, metavar="PATH|URL", help="the proxy's database (default: found as every command finds it)")
    p.add_argument("--since", metavar="30d|DATE", help="30m, 12h, 7d, 2w, or a date such as 2026-11-01")
    p.add_argument("--project", metavar="P")
    p.add_argument("--session", metavar="S")
    p.add_argument("--model", action="append", metavar="ID", help="repeatable")
    p.add_argument("--route", metavar="cheap=ID,flagship=ID,escalate=0.15")
    p.set_defaults(func=_cmd_whatif)
