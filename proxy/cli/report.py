"""`openrouter-spend report`: spend and tokens sliced by time or attribution, as a table, JSON or CSV.

The query lives in proxy/store/reports.py (shared with the web page); this module parses the
flags (`--since/--until` with durations, dates and calendar words) and formats the result.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import io
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from proxy.cli.locate import db_arg
from proxy.errors import CliError
from proxy.store.reports import (
    GROUPINGS,
    TIME_GROUPINGS,
    WHEN_FORMS,
    FreeUsage,
    Line,
    Report,
    calendar_period,
    document_chunks,
    document_text,
    duration_s,
    parse_range,
    parse_since,
    parse_when,
)
from proxy.tables import format_table, money

__all__ = ["FreeUsage", "add_commands", "calendar_period", "parse_range", "parse_since", "parse_when", "render", "run"]

# How many sessions a `--by session` table lists unless --limit says otherwise.
SESSION_TABLE_LIMIT = 50


def add_commands(commands: Any) -> None:
    report = commands.add_parser("report", help="spend and tokens from the request log")
    report.add_argument("--db", type=db_arg, help="the database (default: $OPENROUTER_SPEND_DB, the config's db, or the per-user one)")
    report.add_argument("--config", type=Path, help="YAML config, for its db (default: $OPENROUTER_SPEND_CONFIG or the per-user one)")
    report.add_argument("--by", choices=GROUPINGS, default="model")
    report.add_argument("--breakdown", choices=GROUPINGS, help="a second level within each group, e.g. --by day --breakdown model")
    report.add_argument("--since", help=f"{WHEN_FORMS}; a calendar word alone means just that period")
    report.add_argument("--until", help="the same forms as --since; the range ends before it")
    for flag, what in (("project", "project"), ("model", "model"), ("session", "session"), ("key", "key alias or fingerprint")):
        report.add_argument(f"--{flag}", action="append", default=[], metavar="GLOB", help=f"only this {what} (a glob; repeatable)")
    report.add_argument(
        "--limit", type=int, metavar="N",
        help=f"only the N costliest groups (time groupings: the latest N); the total covers all; 0 lists all "
             f"(default: all, but {SESSION_TABLE_LIMIT} sessions in a --by session table)",
    )
    report.add_argument("--tz", default="UTC", help="time zone for hours, days, weeks, months and dates (default UTC)")
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")
    report.add_argument("--free-daily-limit", type=int, default=50, help="OpenRouter's :free limit per day (1000 once you bought credits)")
    report.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from proxy.store.reader import errors, open_reader
    from proxy.store.reports import Filters, free_usage, report

    # A one-shot command that builds tens of thousands of small objects (a line per session) and
    # makes no cycles: the cyclic collector's full passes over them were a third of its CPU time.
    gc.disable()

    try:
        tz = ZoneInfo(args.tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise CliError(f"--tz: unknown time zone {args.tz!r}") from None
    now = datetime.now(UTC)
    since, until = parse_range(args.since, args.until, now, tz)
    if args.breakdown == args.by:
        raise CliError(f"--breakdown: {args.breakdown} is already --by")
    if args.free_daily_limit < 0:
        raise CliError("--free-daily-limit: expected a whole number >= 0")
    if args.limit is not None and args.limit < 0:
        raise CliError("--limit: expected a whole number >= 0 (0 lists all)")
    limit = args.limit or None
    # Over months a log holds tens of thousands of sessions: a terminal table shows the costliest
    # few (the total still covers all); JSON and CSV, read by programs, list every one.
    default_limit = args.by == "session" and args.format == "table" and args.limit is None
    if default_limit:
        limit = SESSION_TABLE_LIMIT
    filters = Filters(tuple(args.project), tuple(args.model), tuple(args.session), tuple(args.key))
    from proxy.cli.locate import find_db, missing_db, password_env

    db_path, config = find_db(args.db, args.config)
    try:
        db = open_reader(db_path, password_env(config))
    except FileNotFoundError:
        raise CliError(f"--db: {missing_db(db_path, args.db, config)}") from None  # type: ignore[arg-type]
    except errors() as exc:
        raise CliError(f"--db: cannot open {db_path}: {exc}") from None
    try:
        result = report(db, args.by, breakdown=args.breakdown, since=since, until=until, filters=filters, tz=tz, limit=limit)
        free = free_usage(db, now, args.free_daily_limit)
    except errors(db) as exc:
        raise CliError(f"--db: {db_path}: {exc}") from None
    finally:
        db.close()
    if default_limit:
        shown = f"{limit} of "
        result = dataclasses.replace(
            result, notes=tuple(f"{note} (--limit 0 lists them all)" if note.startswith(shown) else note for note in result.notes)
        )
    if args.format == "json":
        # Row by row: a report of every session is tens of MB of text, never held whole.
        out = sys.stdout
        for chunk in document_chunks(result, free):
            out.write(chunk)
        out.write("\n")
        return 0
    print(render(result, args.format, free))
    return 0



IMPORTED_MARK = "†"
_BLOCKS = " ▏▎▍▌▋▊▉█"


def bar(value: float, widest: float, width: int = 16) -> str:
    """A horizontal bar in eighths of a character, `width` characters for the widest value."""
    if widest <= 0 or value <= 0:
        return ""
    eighths = max(1, round(value / widest * width * 8))
    return "█" * (eighths // 8) + (_BLOCKS[eighths % 8] if eighths % 8 else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


def _some(values: set[str], shown: int = 2) -> str:
    """A few values for a table cell; the JSON and CSV forms list them all."""
    names = sorted(values)
    if not names:
        return "-"
    more = f" +{len(names) - shown}" if len(names) > shown else ""
    return " ".join(names[:shown]) + more


def _seen(text: str | None) -> str:
    return "-" if text is None else text[:16].replace("T", " ")


def render(result: Report, fmt: str, free: FreeUsage | None = None) -> str:
    if fmt == "json":
        return document_text(result, free)
    session = result.by == "session"
    if fmt == "csv":
        buffer = io.StringIO()
        rows = [line.as_dict(session) for line in result.lines]
        fields = list(Line("x", "" if result.breakdown else None).as_dict(session))
        if any(line.imported for line in result.lines):
            fields.insert(fields.index("requests"), "imported")
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: " ".join(v) if isinstance(v, list) else "true" if v is True else v for k, v in row.items()})
        return buffer.getvalue().rstrip("\n")
    return _table(result, free)


def _table(result: Report, free: FreeUsage | None) -> str:
    session = result.by == "session"
    headers = [result.by] + ([result.breakdown] if result.breakdown else [])
    if session:
        headers += ["first seen", "last seen", "duration", "requests", "blocked", "models", "project", "client", "cost_usd"]
    else:
        headers += ["requests", "errors", "blocked", "input", "output", "cached", "reasoning", "cost_usd"]
    # BYOK: cost_usd is the whole spend; the provider's part (charged to the user's own key) beside it.
    byok = any(line.has_money("upstream_cost_usd") for line in [*result.lines, result.total])
    if byok:
        headers.append("byok_usd")
    timed = result.by in TIME_GROUPINGS
    if timed:
        headers.append("")
    widest = float(max((line.cost_usd for line in result.lines), default=0)) if timed else 0.0
    table = []
    previous = None
    for line in [*result.lines, result.total]:
        cost = money(line.cost_usd) + ("*" if line.cost_unknown else "")
        # With a breakdown, a group's name is shown on its first line only.
        cells = [line.group if line.group != previous or line is result.total else ""]
        previous = line.group
        if result.breakdown:
            cells.append(line.breakdown or "")
        if line.imported:
            cells[-1] += " " + IMPORTED_MARK
        if session:
            if line is result.total:
                cells += ["", "", "", f"{line.requests:,}", f"{line.counts['blocked']:,}", "", "", "", cost]
            else:
                cells += [
                    _seen(line.first_at),
                    _seen(line.last_at),
                    _duration(duration_s(line.first_at, line.last_at)),
                    f"{line.requests:,}",
                    f"{line.value('blocked'):,}",
                    _some(line.models),
                    _some(line.projects),
                    _some(line.clients),
                    cost,
                ]
        else:
            cells += [
                f"{line.requests:,}",
                f"{line.value('errors'):,}",
                f"{line.value('blocked'):,}",
                f"{line.value('input_tokens'):,}",
                f"{line.value('output_tokens'):,}",
                f"{line.value('cached_tokens'):,}",
                f"{line.value('reasoning_tokens'):,}",
                cost,
            ]
        if byok:
            cells.append(money(line.money("upstream_cost_usd")))
        if timed:
            cells.append("" if line is result.total else bar(float(line.cost_usd), widest))
        table.append(cells)
    numeric = ("requests", "errors", "blocked", "input", "output", "cached", "reasoning", "cost_usd", "byok_usd", "duration")
    right = [name in numeric for name in headers]
    notes = list(result.notes)
    if result.total.cost_unknown:
        notes.append("* some requests in this group have no known cost")
    if any(line.imported for line in result.lines):
        notes.append(f"{IMPORTED_MARK} imported from OpenRouter's /activity: it has no errors, blocked or cached counts")
    if free is not None and (free.today or result.total.counts["free_requests"]):
        notes.append(free.line())
    return "\n".join([format_table(headers, table, right=right, total=True), *notes])
