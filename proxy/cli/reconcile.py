"""`openrouter-spend reconcile` and `import-activity`: OpenRouter's own books against the request log.

reconcile exits 0 when every figure is within the tolerance, 1 when one is not, and 2 when it could
not compare (a key OpenRouter refuses, OpenRouter unreachable, no database): fit for cron.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from proxy.cli.locate import db_arg, missing_db
from proxy.config import DEFAULT_UPSTREAM, Config, load_config
from proxy.errors import CliError

T = TypeVar("T")
DEFAULT_KEY_ENV = "OPENROUTER_API_KEY"


def add_commands(commands: Any) -> None:
    rec = commands.add_parser("reconcile", help="compare the log with what OpenRouter says was spent")
    _common(rec)
    rec.add_argument("--since", default="7d", help="first day of the /activity comparison (default 7d)")
    rec.add_argument("--format", choices=("table", "json"), default="table")
    rec.add_argument("--key-env", help=f"variable holding the key to check with GET /key (default {DEFAULT_KEY_ENV}, "
                     "or the config's managed key)")
    rec.add_argument("--tolerance", default="1%", help="largest gap that still counts as a match (default 1%%)")
    rec.set_defaults(func=run_reconcile)

    imp = commands.add_parser("import-activity", help="store OpenRouter's last 30 days per day and model (management key)")
    _common(imp)
    imp.set_defaults(func=run_import)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--management-key-env", help="variable holding a management key, for GET /activity")
    parser.add_argument("--config", type=Path, help="YAML config (for db, upstream and the managed key)")
    parser.add_argument("--db", type=db_arg, help="the database (default: $OPENROUTER_SPEND_DB, the config's db, or the per-user one)")
    parser.add_argument("--upstream", help=f"OpenRouter API base (default: the config's, else {DEFAULT_UPSTREAM})")


def _env_key(name: str, flag: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise CliError(f"{flag}: environment variable {name} is not set")
    return value


def _fetching(upstream: str, work: Callable[[Any], Awaitable[T]]) -> T:
    import aiohttp

    async def go() -> T:
        timeout = aiohttp.ClientTimeout(total=60, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            return await work(session)

    from proxy.pricing.books import BooksError

    try:
        return asyncio.run(go())
    except BooksError as exc:
        raise CliError(str(exc)) from None


def run_reconcile(args: argparse.Namespace) -> int:
    from proxy.cli.report import parse_since
    from proxy.pricing import books
    from proxy.pricing.reconcile import activity_days, compare_activity, parse_tolerance
    from proxy.server.attribution import fingerprint
    from proxy.store.activity import recorded_by_day_model
    from proxy.store.reader import errors, open_reader

    config, db_path = _config_and_db(args)
    upstream = args.upstream or config.upstream
    try:
        tolerance = parse_tolerance(args.tolerance)
    except ValueError as exc:
        raise CliError(f"--tolerance: {exc}") from None
    now = datetime.now(UTC)
    since = parse_since(args.since, now) or now - timedelta(days=7)
    key, key_env, every_row = _key_to_check(args, config)
    management = _env_key(args.management_key_env, "--management-key-env") if args.management_key_env else None
    if isinstance(db_path, Path) and not db_path.exists():
        raise CliError(f"--db: {missing_db(db_path, args.db, config)}")

    async def fetch(session: Any) -> tuple[Any, Any]:
        key_usage = await books.fetch_key(session, upstream, key, key_env) if key else None
        activity = await books.fetch_activity(session, upstream, management, args.management_key_env) if management else None
        return key_usage, activity

    key_usage, activity = _fetching(upstream, fetch)
    lines = []
    try:
        if key_usage is not None:
            assert key is not None
            by_key = None if every_row else (lambda salt: fingerprint(key, salt))
            lines += books.key_lines(db_path, key_usage, by_key, now, tolerance, password_env=config.db_password_env)
        if activity is not None:
            yesterday = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
            first, last = activity_days(activity, since, yesterday)
            db = open_reader(db_path, config.db_password_env)
            try:
                ours = recorded_by_day_model(db, first, last)
            finally:
                db.close()
            lines += compare_activity(activity, ours, first, tolerance)
    except errors() as exc:
        raise CliError(f"--db: {db_path}: {exc}") from None
    print(_render(lines, args.format, tolerance))
    return 0 if all(line.within for line in lines) else 1


def _config_and_db(args: argparse.Namespace) -> tuple[Config, Path | str]:
    from proxy.cli.locate import resolve_config, resolve_db

    config_path = resolve_config(args.config)
    config = load_config(config_path) if config_path is not None else Config()
    return config, resolve_db(args.db, config if config_path is not None else None)


def _key_to_check(args: argparse.Namespace, config: Config) -> tuple[str | None, str, bool]:
    """The key for GET /key, its variable, and whether every row was spent on it (managed mode)."""
    managed = os.environ.get(config.managed_key_env, "").strip() if config.managed_key_env else ""
    if args.key_env:
        key = _env_key(args.key_env, "--key-env")
        return key, args.key_env, bool(managed) and key == managed
    if managed and config.managed_key_env:
        return managed, config.managed_key_env, True
    if args.management_key_env and not os.environ.get(DEFAULT_KEY_ENV, "").strip():
        return None, DEFAULT_KEY_ENV, False  # only the /activity comparison was asked for
    return _env_key(DEFAULT_KEY_ENV, "--key-env"), DEFAULT_KEY_ENV, False


def _render(lines: list[Any], fmt: str, tolerance: Any) -> str:
    from proxy.tables import format_table, money

    if fmt == "json":
        return json.dumps({"tolerance_percent": str(tolerance * 100), "within_tolerance": all(x.within for x in lines),
                           "lines": [x.as_dict() for x in lines]}, indent=2)
    if not lines:
        return "nothing to compare"
    rows = [
        (
            x.scope,
            x.what,
            money(x.openrouter),
            "-" if x.ours is None else money(x.ours),
            "-" if x.gap is None else money(x.gap),
            "-" if x.gap_ratio is None else f"{x.gap_ratio * 100:.1f}%",
            "ok" if x.within else "GAP",
            x.meaning,
        )
        for x in lines
    ]
    return format_table(("source", "what", "openrouter", "ours", "gap", "gap %", "", "what it means"), rows)


def run_import(args: argparse.Namespace) -> int:
    from proxy.pricing import books
    from proxy.store.activity import store_activity
    from proxy.store.reader import errors, open_writer

    config, db_path = _config_and_db(args)
    upstream = args.upstream or config.upstream
    if not args.management_key_env:
        raise CliError("--management-key-env: import-activity needs a management key (GET /activity)")
    management = _env_key(args.management_key_env, "--management-key-env")
    # Fetch everything before touching the database: a failure writes nothing.
    rows = _fetching(upstream, lambda session: books.fetch_activity(session, upstream, management, args.management_key_env))
    try:
        db = open_writer(db_path, config.db_password_env)
        try:
            stored = store_activity(db, rows, datetime.now(UTC))
        finally:
            db.close()
    except errors() as exc:
        raise CliError(f"--db: {db_path}: {exc}") from None
    days = sorted({r.date for r in rows})
    span = f" from {days[0]} to {days[-1]}" if days else ""
    print(f"imported {stored} day x model x provider rows{span} into {db_path}")
    return 0
