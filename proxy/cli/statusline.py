"""`openrouter-spend statusline`: one short line for Claude Code's `statusLine` command.

Claude Code runs the command after each message with JSON on stdin (`session_id`, `model`,
`workspace`, `cost`, ...) and shows the first line of stdout; a non-zero exit blanks the line. So
this command always prints one line and exits 0, and imports only the standard library, the
config loader (when there is a config) and proxy.store.live: no aiohttp, no catalog. A
postgresql:// db adds asyncpg (proxy/store/pg_reader.py); SQLite never imports it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import argparse
    import sqlite3
    from datetime import tzinfo
    from zoneinfo import ZoneInfo

DEFAULT_FORMAT = "{session_cost} session · {today} today{budget_part} · {burn}/h"
NEUTRAL = "openrouter-spend: no spend recorded yet"
_GREEN, _YELLOW, _RED, _DIM, _RESET = "\x1b[32m", "\x1b[33m", "\x1b[31m", "\x1b[2m", "\x1b[0m"


def _db_arg(text: str) -> Path | str:
    from proxy.cli.locate import db_arg

    return db_arg(text)


class Args(NamedTuple):
    """The flags; Claude Code passes none, and then argparse (with gettext and locale, a few ms of
    start-up) is not imported at all."""

    db: Path | str | None = None
    config: Path | None = None
    format: str = DEFAULT_FORMAT
    color: bool = False
    session: str | None = None


def _args(argv: list[str]) -> Args:
    if not argv:
        return Args()
    parsed = _parser().parse_args(argv)
    return Args(parsed.db, parsed.config, parsed.format, parsed.color, parsed.session)


def _parser() -> argparse.ArgumentParser:
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:
            raise ValueError(message)

    p = _Parser(prog="openrouter-spend statusline", description="One line for Claude Code's statusLine: this session's billed cost, today, budget left, burn rate.")
    p.add_argument("--db", type=_db_arg, help="SQLite file or postgresql:// URL (default: $OPENROUTER_SPEND_DB, the config's db, then the per-user data dir)")
    p.add_argument("--config", type=Path, help="YAML config (for budgets, time zone and db)")
    p.add_argument("--format", default=DEFAULT_FORMAT, help="template; fields: {session_cost} {session_requests} {today} {burn} {budget} {budget_left} {budget_part} {model}")
    p.add_argument("--color", action=argparse.BooleanOptionalAction, default=False, help="colour the budget share (ANSI)")
    p.add_argument("--session", help="session id (default: session_id from the JSON on stdin)")
    return p


class Budget(NamedTuple):
    """A budget as the status line needs it; `start`/`end` is the calendar window it was last
    computed for (None for rolling windows, which need no calendar)."""

    name: str
    limit_usd: Decimal
    period: str
    rolling_seconds: int | None
    scope: str
    match: tuple[tuple[str, str], ...]
    start: datetime | None = None
    end: datetime | None = None


class Settings(NamedTuple):
    """What the status line needs from the config, cached as JSON keyed by the file's path, size
    and mtime (and our version), so a run skips YAML, the config loader and, until a calendar
    window ends, the budget module: together most of its start-up time."""

    db: Path
    db_given: bool
    timezone: str
    budgets: tuple[Budget, ...]
    # A postgresql:// db (the config's `db`), and the variable naming its password (never the password).
    db_url: str | None = None
    db_password_env: str | None = None

    @property
    def tz(self) -> ZoneInfo:
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone)


def _zone(name: str) -> tzinfo:
    """UTC without importing zoneinfo (its import reads sysconfig: a few ms of every run)."""
    if name == "UTC":
        return UTC
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and os.path.isabs(base) else Path(os.environ.get("HOME") or Path.home()) / ".cache"
    return root / "openrouter-spend" / "statusline-config.json"


def settings_of(config_path: Path, now: datetime) -> Settings:
    try:
        from proxy import __version__

        st = config_path.stat()
        key: list[Any] | None = [__version__, str(config_path.resolve()), st.st_mtime_ns, st.st_size]
    except OSError:
        key = None
    cache = _cache_file()
    settings = None
    if key is not None:
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
            if data["key"] == key:
                settings = _from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if settings is not None and all(b.end is None or now < b.end for b in settings.budgets if b.rolling_seconds is None):
        return settings
    if settings is None:
        from proxy.config import load_config

        config = load_config(config_path)  # raises the one-line ConfigError on a bad file
        budgets = tuple(Budget(b.name, b.limit_usd, b.period, b.rolling_seconds, b.scope, b.match) for b in config.budgets)
        settings = Settings(config.db, config.db_given, config.timezone, budgets, config.db_url, config.db_password_env)
    settings = settings._replace(budgets=_windows(settings, now))
    if key is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": key, **_to_json(settings)}), encoding="utf-8")
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home: just no cache
    return settings


def _windows(settings: Settings, now: datetime) -> tuple[Budget, ...]:
    """Each calendar budget's current window, by the budget module's own rules (time zone, DST)."""
    if all(b.rolling_seconds is not None for b in settings.budgets):
        return settings.budgets
    from proxy.budgets.spec import BudgetSpec, window

    out = []
    for b in settings.budgets:
        if b.rolling_seconds is None:
            spec = BudgetSpec(name=b.name, limit_usd=b.limit_usd, period=b.period, scope=b.scope, match=b.match)
            start, end = window(spec, now, settings.tz)
            b = b._replace(start=start, end=end)
        out.append(b)
    return tuple(out)


def _to_json(s: Settings) -> dict[str, Any]:
    return {
        "db": str(s.db),
        "db_given": s.db_given,
        "db_url": s.db_url,
        "db_password_env": s.db_password_env,
        "timezone": s.timezone,
        "budgets": [
            {"name": b.name, "limit_usd": str(b.limit_usd), "period": b.period, "rolling_seconds": b.rolling_seconds,
             "scope": b.scope, "match": [list(m) for m in b.match],
             "start": b.start.isoformat() if b.start else None, "end": b.end.isoformat() if b.end else None}
            for b in s.budgets
        ],
    }


def _from_json(data: dict[str, Any]) -> Settings:
    budgets = tuple(
        Budget(
            str(b["name"]), Decimal(b["limit_usd"]), str(b["period"]), b["rolling_seconds"], str(b["scope"]),
            tuple((str(k), str(v)) for k, v in b["match"]),
            datetime.fromisoformat(b["start"]) if b["start"] else None,
            datetime.fromisoformat(b["end"]) if b["end"] else None,
        )
        for b in data["budgets"]
    )
    return Settings(
        Path(data["db"]), bool(data["db_given"]), str(data["timezone"]), budgets, data.get("db_url"), data.get("db_password_env")
    )


class Tightest(NamedTuple):
    name: str
    left: Decimal  # share of the limit still left, 0..1 (negative when over)


def main(argv: Sequence[str] | None = None, stdin: Any = None) -> int:
    # Whatever goes wrong, print one line and exit 0: a failing status command blanks the agent's line.
    try:
        line = _line(list(sys.argv[1:] if argv is None else argv), stdin if stdin is not None else sys.stdin)
    except Exception as exc:  # noqa: BLE001 - the promise is a line, never a traceback
        line = f"openrouter-spend: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"[:120]
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        pass
    return 0


def _read_input(stdin: Any) -> dict[str, Any]:
    try:
        if stdin.isatty():
            return {}
        data = json.loads(stdin.read() or "{}")
    except (ValueError, OSError, AttributeError):
        return {}
    return data if isinstance(data, dict) else {}


def _line(argv: list[str], stdin: Any) -> str:
    from proxy.cli.locate import resolve_config, resolve_db

    args = _args(argv)
    data = _read_input(stdin)
    session = args.session or data.get("session_id")
    session = session if isinstance(session, str) and session else None
    config_path = resolve_config(args.config)
    now = datetime.now(UTC)
    config = settings_of(config_path, now) if config_path is not None else None
    path = resolve_db(args.db, config, notice=False)
    from proxy.store import live

    db = live.connect(path, config.db_password_env if config is not None else None)
    if db is None:
        return NEUTRAL
    try:
        values = _values(db, session, config, now, data)
    finally:
        db.close()
    return render(values, args.format, color=args.color)


def _values(db: sqlite3.Connection, session: str | None, config: Settings | None, now: datetime, data: dict[str, Any]) -> dict[str, Any]:
    from proxy.store import live

    tz = _zone(config.timezone) if config is not None else UTC
    midnight = now.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
    memo: dict[tuple[datetime, str | None], Decimal] = {}

    def spend(since: datetime, project: str | None = None) -> Decimal:
        # A day budget's window is today's: one query answers both.
        key = (since, project)
        if key not in memo:
            memo[key] = live.spend_since(db, since, project=project)
        return memo[key]

    spent = live.session_spend(db, session) if session else None
    today = spend(midnight)
    burn = spend(now - timedelta(hours=1))
    tightest = _tightest(db, config, session, spent.project if spent else None, now, spend) if config else None
    model = data.get("model")
    return {
        "session_cost": _money(spent.cost_usd) if spent and spent.requests else "-",
        "session_requests": spent.requests if spent else 0,
        "today": _money(today),
        "burn": _money(burn),
        "tightest": tightest,
        "model": (model.get("display_name") or model.get("id") or "") if isinstance(model, dict) else "",
    }


def _tightest(
    db: sqlite3.Connection,
    config: Settings,
    session: str | None,
    project: str | None,
    now: datetime,
    spend: Callable[[datetime, str | None], Decimal],
) -> Tightest | None:
    """The budget with the smallest share left among those this session counts against: total,
    session and project budgets (key and model budgets need what only the proxy sees)."""
    from proxy.store import live

    best: Tightest | None = None
    for spec in config.budgets:
        if spec.match or spec.limit_usd <= 0:
            continue
        if spec.rolling_seconds is not None:
            start = now - timedelta(seconds=spec.rolling_seconds)
        elif spec.start is not None:
            start = spec.start
        else:
            continue
        if spec.scope == "total":
            spent = spend(start, None)
        elif spec.scope == "session" and session:
            spent = live.session_spend(db, session, since=start).cost_usd
        elif spec.scope == "project" and project:
            spent = spend(start, project)
        else:
            continue
        left = 1 - spent / spec.limit_usd
        if best is None or left < best.left:
            best = Tightest(spec.name, left)
    return best


def _money(amount: Decimal) -> str:
    # Short: cents from $1 up, four places below (a status line has no room for six).
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    return f"${amount:.4f}"


def render(values: dict[str, Any], template: str, *, color: bool = False) -> str:
    tightest: Tightest | None = values["tightest"]
    budget = budget_left = budget_part = ""
    if tightest is not None:
        share = max(tightest.left, Decimal(0)) * 100
        budget_left = f"{share:.0f}%"
        budget = f"{tightest.name} {budget_left} left"
        if color:
            colour = _GREEN if tightest.left > Decimal("0.5") else _YELLOW if tightest.left > Decimal("0.2") else _RED
            budget = f"{colour}{budget}{_RESET}"
        budget_part = f" · {budget}"
    fields = {**values, "budget": budget, "budget_left": budget_left, "budget_part": budget_part}
    try:
        line = template.format_map(fields)
    except (KeyError, IndexError, ValueError) as exc:
        return f"openrouter-spend: --format: unknown field {exc}"
    return line.splitlines()[0] if line else line
