"""What the request log says: spend and tokens grouped by day, model, provider, project, session or key.

Pure over rows (`summarise`), plus the formatting the CLI prints. Sums are exact Decimals.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from proxy.errors import CliError
from proxy.tables import format_table, money

GROUPS = ("day", "model", "provider", "project", "session", "key", "client", "endpoint")
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")


@dataclass(slots=True)
class Line:
    group: str
    requests: int = 0
    errors: int = 0
    free_requests: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_FIELDS, 0))
    cost_usd: Decimal = Decimal(0)
    cost_unknown: int = 0

    def add(self, row: Mapping[str, Any]) -> None:
        self.requests += 1
        if row["outcome"] != "ok":
            self.errors += 1
        if row["is_free"]:
            self.free_requests += 1
        for name in TOKEN_FIELDS:
            value = row[name]
            if value is not None:
                self.tokens[name] += value
        if row["cost_usd"] is None:
            self.cost_unknown += 1
        else:
            self.cost_usd += Decimal(row["cost_usd"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "requests": self.requests,
            "errors": self.errors,
            "free_requests": self.free_requests,
            **self.tokens,
            "cost_usd": str(self.cost_usd),
            "cost_unknown_requests": self.cost_unknown,
        }


_SPANS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """`30m`, `12h`, `7d`, `2w` back from `now`, or an ISO date / time (UTC unless it says otherwise).

    The one `--since` for every command (`report`, `whatif`); no text means no lower bound.
    """
    if not text:
        return None
    match = re.fullmatch(r"(\d+)([mhdw])", text.strip())
    if match:
        return now - timedelta(**{_SPANS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(f"--since: expected 30m, 12h, 7d, 2w or a date like 2026-11-01, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def group_of(row: Mapping[str, Any], by: str, tz: ZoneInfo) -> str:
    if by == "day":
        return datetime.fromisoformat(row["started_at"]).astimezone(tz).date().isoformat()
    if by == "key":
        return row["key_alias"] or row["key_fingerprint"] or "(none)"
    column = {"model": "model", "provider": "provider", "project": "project", "session": "session",
              "client": "client", "endpoint": "endpoint"}[by]
    return row[column] or "(none)"


def summarise(rows: Iterable[Any], by: str, tz: ZoneInfo = ZoneInfo("UTC")) -> tuple[list[Line], Line]:
    lines: dict[str, Line] = {}
    total = Line("total")
    for row in rows:
        key = group_of(row, by, tz)
        line = lines.get(key)
        if line is None:
            line = lines[key] = Line(key)
        line.add(row)
        total.add(row)
    ordered = sorted(lines.values(), key=lambda line: line.group if by == "day" else (-line.cost_usd, line.group))
    return ordered, total


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


def free_usage(rows: Iterable[Any], daily_limit: int) -> FreeUsage:
    """`rows` are today's (UTC) requests; blocked ones never reached OpenRouter and do not count."""
    per_minute: dict[str, int] = {}
    today = 0
    for row in rows:
        if row["is_free"] and row["outcome"] != "blocked":
            today += 1
            minute = row["started_at"][:16]
            per_minute[minute] = per_minute.get(minute, 0) + 1
    return FreeUsage(today, daily_limit, max(per_minute.values(), default=0))


def render(lines: list[Line], total: Line, by: str, fmt: str, free: FreeUsage | None = None) -> str:
    if fmt == "json":
        document: dict[str, Any] = {"by": by, "rows": [line.as_dict() for line in lines], "total": total.as_dict()}
        if free is not None:
            document["free"] = free.as_dict()
        return json.dumps(document, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        dicts = [line.as_dict() for line in lines]
        writer = csv.DictWriter(buffer, fieldnames=list(Line("x").as_dict()))
        writer.writeheader()
        writer.writerows(dicts)
        return buffer.getvalue().rstrip("\n")
    headers = (by, "requests", "errors", "input", "output", "cached", "reasoning", "cost_usd")
    table = [
        (
            line.group,
            f"{line.requests:,}",
            f"{line.errors:,}",
            f"{line.tokens['input_tokens']:,}",
            f"{line.tokens['output_tokens']:,}",
            f"{line.tokens['cached_tokens']:,}",
            f"{line.tokens['reasoning_tokens']:,}",
            money(line.cost_usd) + ("*" if line.cost_unknown else ""),
        )
        for line in [*lines, total]
    ]
    notes = []
    if total.cost_unknown:
        notes.append("* some requests in this group have no known cost")
    if free is not None and (free.today or total.free_requests):
        notes.append(free.line())
    return "\n".join([format_table(headers, table, total=True), *notes])

def add_commands(commands: Any) -> None:
    report = commands.add_parser("report", help="spend and tokens from the request log")
    report.add_argument("--db", type=Path, default=Path("openrouter-spend.db"))
    report.add_argument("--by", choices=("day", "model", "provider", "project", "session", "key", "client", "endpoint"), default="model")
    report.add_argument("--since", help="30m, 12h, 7d, 2w, or a date such as 2026-11-01")
    report.add_argument("--tz", default="UTC", help="time zone for --by day (default UTC)")
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")
    report.add_argument("--free-daily-limit", type=int, default=50, help="OpenRouter's :free limit per day (1000 once you bought credits)")
    report.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from proxy.store.sqlite import connect_readonly, read_requests

    try:
        tz = ZoneInfo(args.tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise CliError(f"--tz: unknown time zone {args.tz!r}") from None
    since = parse_since(args.since, datetime.now(UTC))
    if args.free_daily_limit < 0:
        raise CliError("--free-daily-limit: expected a whole number >= 0")
    try:
        db = connect_readonly(args.db)
    except FileNotFoundError:
        raise CliError(f"--db: {args.db} does not exist (start the proxy first, or pass --db)") from None
    now = datetime.now(UTC)
    try:
        lines, total = summarise(read_requests(db, since), args.by, tz)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        free = free_usage(read_requests(db, midnight), args.free_daily_limit)
    except sqlite3.Error as exc:
        raise CliError(f"--db: {args.db}: {exc}") from None
    finally:
        db.close()
    print(render(lines, total, args.by, args.format, free))
    return 0
