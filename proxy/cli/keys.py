"""`openrouter-spend keys create|list|revoke`, and `budgets set|delete`: keys and budgets stored in the
database, which a running proxy picks up within a few seconds.

The key is printed once by `keys create` and never again: only its salted hash is stored.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from proxy.cli.locate import db_arg
from proxy.config import Config, load_config
from proxy.errors import CliError, ConfigError
from proxy.store import keys as store
from proxy.store.reader import Reader, errors
from proxy.tables import format_table, money


def add_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="proxy keys made at runtime (managed-key mode)")
    actions = keys.add_subparsers(dest="action", required=True, parser_class=type(keys))
    create = actions.add_parser("create", help="make a proxy key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--project", help="the project its spend counts for (beats the client's header)")
    create.add_argument("--budget", help="a budget for this key alone: <usd>/<day|week|month|rolling:5h>, e.g. 20/month")
    create.add_argument("--expires", help="stops working after this long: 30d, 12h, 45m, 90s")
    create.set_defaults(func=_create)
    listing = actions.add_parser("list", help="every key: name, project, budget, spend, last used, expiry (never the key)")
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.set_defaults(func=_list)
    revoke = actions.add_parser("revoke", help="stop a key (the running proxy answers 401 within seconds)")
    revoke.add_argument("name")
    revoke.set_defaults(func=_revoke)
    for sub in (create, listing, revoke):
        _db_options(sub)


def add_budget_commands(budgets: argparse.ArgumentParser) -> None:
    """`budgets set NAME ...` and `budgets delete NAME` under the existing `budgets` report."""
    actions = budgets.add_subparsers(dest="action", required=False, parser_class=type(budgets))
    put = actions.add_parser("set", help="create or change a budget stored in the database")
    put.add_argument("name")
    put.add_argument("--limit", required=True, help="USD per window")
    put.add_argument("--period", default="day", help="day, week, month or rolling:<n><s|m|h|d> (default day)")
    put.add_argument("--scope", default="total", help="total, key, project, session or model (default total)")
    put.add_argument("--match", action="append", default=[], metavar="FIELD=GLOB", help="e.g. model=anthropic/* (repeatable)")
    put.add_argument("--action", dest="budget_action", default="block", help="block or warn (default block)")
    put.add_argument("--warn-at", help="alert thresholds as fractions, e.g. 0.5,0.8")
    put.set_defaults(func=_set_budget)
    delete = actions.add_parser("delete", help="delete a budget stored in the database")
    delete.add_argument("name")
    delete.set_defaults(func=_delete_budget)
    for sub in (put, delete):
        _db_options(sub)


def _db_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: under `budgets`, the parent's own --config/--db must not be reset by the sub-command.
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="YAML config: its db, aliases and budget names (default: found as `serve` finds it)")
    parser.add_argument("--db", type=db_arg, default=argparse.SUPPRESS,
                        help="SQLite file or postgresql:// URL (default: $OPENROUTER_SPEND_DB, the config's db, else the per-user data dir)")


def _open(args: argparse.Namespace) -> tuple[Config, Reader]:
    from proxy.cli.locate import resolve_config, resolve_db

    # The database `serve` writes: a key made here must be the one the running proxy reads.
    config_path = resolve_config(getattr(args, "config", None))
    config = load_config(config_path)
    path = resolve_db(getattr(args, "db", None), config if config_path is not None else None)
    try:
        return config, store.connect(path, config.db_password_env)
    except errors() as exc:
        raise CliError(f"--db: cannot open {path}: {exc}") from None


def _create(args: argparse.Namespace) -> int:
    config, db = _open(args)
    now = datetime.now(UTC)
    expires_at = now + store.parse_duration(args.expires) if args.expires else None
    try:
        key = store.create_key(
            db, args.name, now, project=args.project, budget=args.budget, expires_at=expires_at,
            reserved_names=frozenset(k.alias for k in config.keys),
        )
    finally:
        db.close()
    print(key)
    print(f"key {args.name!r} made; it is shown only now. Clients send it as their API key.", file=sys.stderr)
    from proxy.cli.locate import resolve_config

    if resolve_config(getattr(args, "config", None)) is not None and not config.managed_key_env:
        print("note: proxy keys authenticate clients only in managed-key mode (managed_key_env in the config)", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    config, db = _open(args)
    try:
        entries = store.describe_keys(db, config.tz, datetime.now(UTC))
    finally:
        db.close()
    if args.format == "json":
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("no keys (make one with `openrouter-spend keys create --name NAME`)")
        return 0
    rows = [
        (
            e["name"], e["project"] or "-", e["budget"] or "-", money(Decimal(e["spent_usd"])),
            _short(e["last_used"]), _short(e["expires_at"]), e["status"],
        )
        for e in entries
    ]
    # Spent: in the budget's current window for a key with a budget, else since the key was made.
    print(format_table(("name", "project", "budget", "spent", "last used (UTC)", "expires (UTC)", "status"), rows))
    return 0


def _short(moment: str | None) -> str:
    return datetime.fromisoformat(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M") if moment else "-"


def _revoke(args: argparse.Namespace) -> int:
    _, db = _open(args)
    try:
        done = store.revoke_key(db, args.name, datetime.now(UTC))
    finally:
        db.close()
    if not done:
        raise CliError(f"name: no live key named {args.name!r}")
    print(f"key {args.name!r} revoked")
    return 0


def _set_budget(args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {"limit_usd": args.limit, "period": args.period, "scope": args.scope, "action": args.budget_action}
    if args.match:
        pairs = [m.partition("=") for m in args.match]
        if any(not sep or not value for _, sep, value in pairs):
            raise CliError("--match: expected FIELD=GLOB, e.g. model=anthropic/*")
        fields["match"] = {name: value for name, _, value in pairs}
    if args.warn_at is not None:
        fields["warn_at"] = [w for w in args.warn_at.split(",") if w.strip()]
    try:
        spec = store.budget_from_fields(args.name, fields)
    except ConfigError as exc:
        # Name the flag, not the config path the shared parser speaks of.
        message = str(exc)
        for field, flag in _FLAGS.items():
            message = message.replace(f"budgets.{args.name}[0].{field}", flag)
        raise ConfigError(message) from None
    config, db = _open(args)
    try:
        store.set_budget(db, spec, datetime.now(UTC), reserved_names=frozenset(b.name for b in config.budgets))
    finally:
        db.close()
    print(f"budget {spec.name!r} set: {money(spec.limit_usd)} per {spec.period_label}, scope {spec.scope}, {spec.action}")
    return 0


_FLAGS = {"limit_usd": "--limit", "period": "--period", "scope": "--scope", "match": "--match", "action": "--action", "warn_at": "--warn-at"}


def _delete_budget(args: argparse.Namespace) -> int:
    config, db = _open(args)
    if any(b.name == args.name for b in config.budgets):
        db.close()
        raise CliError(f"name: {args.name!r} is a budget in the config; edit the config instead")
    try:
        done = store.delete_budget(db, args.name)
    finally:
        db.close()
    if not done:
        raise CliError(f"name: no runtime budget named {args.name!r}")
    print(f"budget {args.name!r} deleted")
    return 0
