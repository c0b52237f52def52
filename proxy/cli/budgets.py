"""`openrouter-spend budgets`: each budget's spend, limit, share, reset time and projection, from the log."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.budgets.ledger import Budgets
from proxy.config import load_config
from proxy.errors import CliError
from proxy.store.keys import read_state
from proxy.cli.locate import db_arg
from proxy.store.reader import errors, open_reader
from proxy.tables import format_table, money


def add_commands(commands: Any) -> None:
    budgets = commands.add_parser("budgets", help="spend against each configured budget")
    budgets.add_argument("--config", type=Path, help="YAML config with `budgets:` (default: found as `serve` finds it)")
    budgets.add_argument("--db", type=db_arg, help="SQLite file or postgresql:// URL (default: $OPENROUTER_SPEND_DB, the config's db, else the per-user data dir)")
    budgets.add_argument("--format", choices=("table", "json"), default="table")
    budgets.set_defaults(func=run)
    from proxy.cli.keys import add_budget_commands

    add_budget_commands(budgets)


def run(args: argparse.Namespace) -> int:
    # Here, not at the top: they bring in aiohttp, which every other command (report, ...) would
    # then import at start-up only to build the parser.
    from proxy.server.guard import load_spend_sync
    from proxy.server.runtime import runtime_specs
    from proxy.cli.locate import CONFIG_ENV, default_config, missing_db, password_env, resolve_config, resolve_db

    # No config file is fine when the budgets were made at runtime (`budgets set`): they live in the db.
    config_path = resolve_config(args.config)
    config = load_config(config_path)
    db_path = resolve_db(args.db, config if config_path is not None else None)
    try:
        db = open_reader(db_path, password_env(config))
    except FileNotFoundError:
        if config_path is not None and not config.budgets:
            raise CliError(f"--config: no budgets configured in {config_path} (see config/proxy.example.yaml)") from None
        raise CliError(f"--db: {missing_db(db_path, args.db, config if config_path is not None else None)}") from None
    except errors() as exc:
        raise CliError(f"--db: cannot open {db_path}: {exc}") from None
    now = datetime.now(UTC)
    specs = config.budgets
    try:
        # Budgets made at runtime (budgets set, keys create --budget) count as the proxy counts them.
        specs = runtime_specs(config.budgets, read_state(db), now)
    except errors(db):
        pass  # a database from before runtime budgets existed
    if not specs:
        db.close()
        where = config_path or f"no config file (looked at ${CONFIG_ENV} and {default_config()})"
        raise CliError(f"--config: no budgets configured in {where} nor in {db_path} (see config/proxy.example.yaml, or `budgets set`)")
    budgets = Budgets(specs, config.tz)
    try:
        load_spend_sync(db, budgets, now)
    except errors(db) as exc:
        raise CliError(f"--db: {db_path}: {exc}") from None
    finally:
        db.close()
    statuses = budgets.snapshot(now)
    if args.format == "json":
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
        return 0
    rows = [
        (
            s.name,
            s.scope_value or "total",
            s.action,
            money(s.spent_usd),
            money(s.limit_usd),
            f"{s.share * 100:.1f}%",
            s.resets_at.astimezone(config.tz).strftime("%Y-%m-%d %H:%M") if s.resets_at else "-",
            money(s.projected_usd) if s.projected_usd is not None else "-",
        )
        for s in statuses
    ]
    headers = ("budget", "scope", "action", "spent", "limit", "share", f"resets ({config.timezone})", "projected")
    print(format_table(headers, rows) if rows else "no budget has spend yet")
    return 0
