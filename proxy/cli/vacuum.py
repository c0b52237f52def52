"""`openrouter-spend vacuum`: give the space of deleted rows back to the disk, or write a compact copy.

Retention deletes old raw rows, but SQLite keeps the freed pages for reuse; VACUUM shrinks the file.
`--into FILE` writes a compact, consistent copy instead (an online backup: the proxy may keep running).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
from pathlib import Path
from typing import Any

from proxy.cli.locate import db_arg
from proxy.errors import CliError


def add_commands(commands: Any) -> None:
    vacuum = commands.add_parser("vacuum", help="shrink the database file, or write a compact backup with --into")
    vacuum.add_argument("--db", type=db_arg, help="the database (default: $OPENROUTER_SPEND_DB, the config's db, or the per-user one)")
    vacuum.add_argument("--config", type=Path, help="YAML config, for its db")
    vacuum.add_argument("--into", type=Path, help="write a compact copy here instead (must not exist)")
    vacuum.set_defaults(func=run)


def _size(path: Path) -> int:
    return sum(os.path.getsize(f"{path}{suffix}") for suffix in ("", "-wal") if os.path.exists(f"{path}{suffix}"))


def run(args: argparse.Namespace) -> int:
    from proxy.cli.locate import find_db, missing_db

    args.db, config = find_db(args.db, args.config)
    if isinstance(args.db, str):
        raise CliError("--db: vacuum shrinks a SQLite file; PostgreSQL reclaims space itself (autovacuum, or its own VACUUM)")
    if not args.db.exists():
        raise CliError(f"--db: {missing_db(args.db, args.db, config)}")  # type: ignore[arg-type]
    if args.into is not None and args.into.exists():
        raise CliError(f"--into: {args.into} already exists")
    before = _size(args.db)
    db = sqlite3.connect(args.db, isolation_level=None)
    try:
        # Wait for the proxy's writer between its batches rather than failing at once.
        db.execute("PRAGMA busy_timeout=30000")
        if args.into is not None:
            db.execute("VACUUM INTO ?", (str(args.into),))
            os.chmod(args.into, 0o600)
        else:
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise CliError(f"--db: {args.db}: {exc}") from None
    finally:
        db.close()
    if args.into is not None:
        print(f"{args.into}: {_size(args.into) / 1e6:.1f} MB (from {args.db}, {before / 1e6:.1f} MB)")
    else:
        print(f"{args.db}: {before / 1e6:.1f} MB -> {_size(args.db) / 1e6:.1f} MB")
    return 0
