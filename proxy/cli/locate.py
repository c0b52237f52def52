"""Where the database and the config live when no flag says: one order for every command.

db: `--db` > $OPENROUTER_SPEND_DB > the config's `db` > the per-user data directory
($XDG_DATA_HOME or ~/.local/share)/openrouter-spend/spend.db. config: `--config` >
$OPENROUTER_SPEND_CONFIG > ($XDG_CONFIG_HOME or ~/.config)/openrouter-spend/config.yaml if it exists.
Standard library only: `statusline` imports this on its fast path.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol


class HasDb(Protocol):
    """What discovery needs of a config (a Config, or statusline's cached settings)."""

    @property
    def db(self) -> Path: ...

    @property
    def db_given(self) -> bool: ...

DB_ENV = "OPENROUTER_SPEND_DB"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def db_arg(text: str) -> Path | str:
    """`--db`: a SQLite path, or a postgresql:// URL kept as text (a Path would fold its `//`).
    A password in the URL is refused: it would show in `ps` and the shell's history."""
    if not text.startswith(POSTGRES_SCHEMES):
        return Path(text)
    from urllib.parse import urlsplit

    try:
        password = urlsplit(text).password
    except ValueError:
        password = None
    if password is not None:
        import argparse  # here: `statusline` imports this module and argparse costs it start-up

        raise argparse.ArgumentTypeError("no password in the URL; set PGPASSWORD, use ~/.pgpass, or name a variable in db_password_env")
    return text


def _db_value(value: Path | str) -> Path | str:
    return value if isinstance(value, Path) else text_db(value)


def text_db(text: str) -> Path | str:
    """A db from the environment or a caller: a URL stays text (its password, if any, is the
    driver's business there; the command line refuses one)."""
    return text if text.startswith(POSTGRES_SCHEMES) else Path(text)

CONFIG_ENV = "OPENROUTER_SPEND_CONFIG"
# Where `serve` put the database before it had a per-user default.
LEGACY_DB = Path("openrouter-spend.db")


def _home_dir(env: Mapping[str, str], xdg: str, fallback: str) -> Path:
    base = env.get(xdg)
    # The XDG spec: a relative value is invalid and is ignored.
    if base and os.path.isabs(base):
        return Path(base)
    return Path(env.get("HOME") or Path.home()) / fallback


def default_db(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return _home_dir(env, "XDG_DATA_HOME", ".local/share") / "openrouter-spend" / "spend.db"


def default_config(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return _home_dir(env, "XDG_CONFIG_HOME", ".config") / "openrouter-spend" / "config.yaml"


def resolve_config(args_config: Path | str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The config file to load, or None to run on defaults (the per-user file is optional)."""
    env = os.environ if env is None else env
    if args_config:
        return Path(args_config)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    path = default_config(env)
    return path if path.is_file() else None


def resolve_db(
    args_db: Path | str | None,
    config: HasDb | None,
    env: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
    notice: bool = True,
) -> Path | str:
    """The database a command should use: a SQLite path, or a postgresql:// URL (str). An existing
    ./openrouter-spend.db (the old default) is kept in use, with a notice on stderr saying how to
    move it, so upgrading loses no history."""
    env = os.environ if env is None else env
    if args_db:
        return _db_value(args_db)
    if env.get(DB_ENV):
        return text_db(env[DB_ENV])
    if config is not None and config.db_given:
        url = getattr(config, "db_url", None)
        return url if isinstance(url, str) else config.db
    default = default_db(env)
    legacy = (cwd or Path.cwd()) / LEGACY_DB
    if not default.exists() and legacy.is_file():
        if notice:
            print(
                f"openrouter-spend: using {legacy} (the old default location); to use it from any directory: "
                f"mkdir -p {default.parent} && mv {legacy} {default}",
                file=sys.stderr,
            )
        return legacy
    return default


def looked_for_db(args_db: Path | str | None, config: HasDb | None, env: Mapping[str, str] | None = None) -> str:
    """Where resolve_db looked, for the message a command prints when there is no database."""
    env = os.environ if env is None else env
    given = "--db" if args_db else f"${DB_ENV}" if env.get(DB_ENV) else "the config's db" if config is not None and config.db_given else None
    if given:
        return f"from {given}"
    return f"looked at --db, ${DB_ENV}, the config's db, ./{LEGACY_DB} and {default_db(env)}"


def password_env(config: object | None) -> str | None:
    """The variable the config names for a PostgreSQL password (never the password itself)."""
    name = getattr(config, "db_password_env", None)
    return name if isinstance(name, str) else None


def missing_db(path: Path | str, args_db: Path | str | None, config: HasDb | None) -> str:
    return f"no database at {path} ({looked_for_db(args_db, config)}); start `openrouter-spend serve` first, or pass --db"


def find_db(args_db: Path | str | None, args_config: Path | str | None = None) -> tuple[Path | str, object | None]:
    """The database for a reader command, and the config it came from (if one was found): the same
    order `serve` writes by, so `report`, `vacuum` and `reconcile` read where the proxy wrote."""
    from proxy.config import load_config

    config_path = resolve_config(args_config)
    config = load_config(config_path) if config_path is not None else None
    return resolve_db(args_db, config), config
