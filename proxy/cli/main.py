"""openrouter-spend serve | check-config | report | statusline | setup | watch | models | estimate | whatif | budgets.

The only module that configures logging or exits: a ConfigError or CliError becomes one line
on stderr and exit status 2, with no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from proxy import __version__
from proxy.cli.locate import CONFIG_ENV, default_config, resolve_config, resolve_db
from proxy.config import Config
from proxy.errors import CliError, ConfigError

log = logging.getLogger("proxy")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints usage plus the error; one line naming the flag is what we promise.
        raise CliError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="openrouter-spend", description="See and cap what your AI agents spend on OpenRouter.")
    parser.add_argument("--version", action="version", version=f"openrouter-spend {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", type=Path, help="YAML config file (default: $OPENROUTER_SPEND_CONFIG, else ~/.config/openrouter-spend/config.yaml if present)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8787)")
    serve.add_argument("--upstream", help="OpenRouter API base (default https://openrouter.ai/api/v1)")
    serve.add_argument("--quiet", action="store_true", help="no start-up banner and no line per request")
    serve.add_argument("--workers", type=int, default=1, help="processes serving the port (SO_REUSEPORT), sharing the database and its budgets (default 1)")
    serve.add_argument("--db", help="SQLite file or postgresql://user@host:port/dbname (default: $OPENROUTER_SPEND_DB, the config's db, else ~/.local/share/openrouter-spend/spend.db)")
    serve.set_defaults(func=_serve)

    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("file", type=Path, nargs="?", help="default: $OPENROUTER_SPEND_CONFIG, else ~/.config/openrouter-spend/config.yaml")
    check.set_defaults(func=_check_config)

    from proxy.cli import budgets as budgets_cli

    from proxy.cli import calculator as calculator_cli
    from proxy.cli import report as report_cli
    from proxy.cli import vacuum as vacuum_cli

    # Dispatched in main() before this parser is built; listed here for --help.
    commands.add_parser("statusline", help="one line for Claude Code's statusLine (reads its JSON on stdin)")

    from proxy.cli import setup as setup_cli
    from proxy.cli import watch as watch_cli

    setup_cli.add_commands(commands)
    watch_cli.add_commands(commands)
    calculator_cli.add_commands(commands)  # type: ignore[arg-type]
    budgets_cli.add_commands(commands)
    from proxy.cli import reconcile as reconcile_cli
    reconcile_cli.add_commands(commands)
    report_cli.add_commands(commands)
    vacuum_cli.add_commands(commands)
    from proxy.cli import keys as keys_cli

    keys_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        # Bare `openrouter-spend`: the help, on stdout, exit 0 (asking what it does is no error).
        build_parser().print_help()
        return 0
    if argv[:1] == ["statusline"]:
        # proxy.cli.entry sends it on before importing this module; this is for callers of main().
        from proxy.cli import statusline

        return statusline.main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except (ConfigError, CliError) as exc:
        print(f"openrouter-spend: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from proxy.cli.logline import setup_logging
    from proxy.server.app import create_app, upstream_ssl_context
    from proxy.server.workers import WorkerSlot
    from proxy.config import load_config

    overrides = {"host": args.host, "port": args.port, "upstream": args.upstream, "db": args.db}
    config_path = resolve_config(args.config)
    config = load_config(config_path, overrides)
    db = resolve_db(args.db, config)
    if isinstance(db, Path):  # a postgresql:// --db is already the config's db_url
        config = dataclasses.replace(config, db=db)
    if args.workers < 1:
        raise CliError(f"--workers: expected 1 or more processes, got {args.workers}")
    config = dataclasses.replace(config, workers=args.workers)
    # Other libraries stay at INFO: aiosqlite at DEBUG logs every row it writes.
    setup_logging()
    logging.getLogger("proxy").setLevel(config.log_level.upper())
    logging.getLogger("aiohttp.access").setLevel(config.log_level.upper())
    if args.quiet or not config.access_log:
        logging.getLogger("proxy.access").setLevel(logging.WARNING)
    _check_catalog_file(config)
    upstream_ssl_context(config)
    _prepare_db(config)  # migrations run here, once, before any worker starts
    # No I/O: a bad setting is one line here, before any worker starts (each builds its own app).
    single = create_app(config)
    _warn_if_exposed(config)
    base = f"http://{config.host}:{config.port}"

    def listening(_: str) -> None:  # run_app calls this once the port is bound
        log.info(
            "event=listening url=%s upstream=%s db=%s openai_base=%s/api/v1 anthropic_base=%s/api",
            base, config.upstream, config.db_url or config.db, base, base,
        )
        if not args.quiet:
            print(banner(config, config_path), file=sys.stderr, flush=True)

    def run(worker: WorkerSlot | None) -> int:
        app = single if worker is None else create_app(config, worker=worker)
        app.on_startup.append(_settle_heap)
        # One banner: the first worker's first start says it.
        first = worker is None or (worker.index == 0 and worker.seed_window_spend)
        try:
            web.run_app(
                app,
                host=config.host,
                port=config.port,
                shutdown_timeout=config.shutdown_grace_s,
                access_log=logging.getLogger("aiohttp.access") if config.log_level == "debug" else None,
                print=listening if first else None,
                handle_signals=True,
                reuse_port=True if worker is not None else None,
            )
        except OSError as exc:
            # Binding is the OSError a start can meet here (the database was opened above).
            raise CliError(f"port: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
        return 0

    if config.workers == 1:
        return run(None)
    from proxy.cli.workers import supervise

    def run_worker(worker: WorkerSlot) -> int:
        try:
            return run(worker)
        except CliError as exc:
            print(f"openrouter-spend: {exc}", file=sys.stderr)
            return 2

    on_death = None
    if not config.db_url:
        from proxy.server.shared import replica_prefix
        from proxy.store.sqlite_holds import release

        def on_death(pid: int) -> None:
            try:
                dropped = release(config.db, replica_prefix(pid))
            except (sqlite3.Error, OSError) as exc:  # its lease still ends them
                log.warning("event=dead_worker_holds_release_failed pid=%d error=%r", pid, exc)
                return
            log.warning("event=dead_worker_holds_released pid=%d holds=%d", pid, dropped)

    return supervise(config.workers, config.host, config.port, config.shutdown_grace_s, run_worker, on_death)


def banner(config: Config, config_path: Path | None) -> str:
    """What a person needs after `serve`: the URLs to paste and where things are."""
    host = config.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{config.port}"
    metrics = config.metrics
    if not metrics.enabled:
        metrics_url = "off"
    elif metrics.port is None:
        metrics_url = f"{base}/metrics"
    else:
        metrics_url = f"http://{metrics.host or shown}:{metrics.port}/metrics"
    rows = [
        ("OpenAI-style clients", f"{base}/api/v1   (OPENAI_BASE_URL, OPENROUTER_API_BASE)"),
        ("Anthropic-style clients", f"{base}/api      (ANTHROPIC_BASE_URL, e.g. Claude Code)"),
        ("per project", f"{base}/p/<project>/api/v1"),
        ("database", str(config.db)),
        ("config", str(config_path) if config_path else "none (defaults)"),
        ("metrics", metrics_url),
        ("upstream", config.upstream),
    ]
    if config.workers > 1:
        rows.append(("workers", f"{config.workers} processes on one port, budgets shared through the database"))
    lines = [f"openrouter-spend {__version__} listening on http://{host}:{config.port}"]
    lines += [f"  {name + ':':<25}{value}" for name, value in rows]
    lines.append("  set up an agent:         openrouter-spend setup claude-code|codex|opencode|aider|goose|cline")
    lines.append("  watch it live:           openrouter-spend watch   (--quiet: no banner, no line per request)")
    return "\n".join(lines)


def _check_catalog_file(config: Config) -> None:
    """A saved listing named in the config must load, or `serve` would die at start-up."""
    if config.catalog_file is None:
        return
    from proxy.pricing.refresh import initial_catalog

    try:
        initial_catalog(config.catalog_file)
    except OSError as exc:
        raise ConfigError(f"catalog.file: cannot read {config.catalog_file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"catalog.file: {config.catalog_file} is not a /models listing ({exc})") from None


def _prepare_db(config: Config) -> None:
    if config.db_url:
        _check_postgres(config.db_url, config.db_password_env)
        return
    from proxy.store.sqlite import prepare

    try:
        prepare(config.db)
    except (OSError, sqlite3.Error) as exc:
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"db: cannot open {config.db}: {message}") from None


def _check_postgres(url: str, password_env: str | None) -> None:
    """Connect and migrate before the port opens, so a wrong URL is one line, not a traceback."""
    import asyncio

    from proxy.store.engine import open_store
    from proxy.store.postgres import WRITE_ERRORS

    async def check() -> None:
        store = await open_store(url, password_env)
        await store.close()

    try:
        asyncio.run(check())
    except WRITE_ERRORS as exc:
        raise ConfigError(f"db: cannot open {url}: {exc}") from None


async def _settle_heap(app: object) -> None:
    """After start-up (catalog and config loaded), move what lives for the whole run out of the
    garbage collector's way, and collect young objects less often: each request allocates a few
    hundred short-lived objects, and the default threshold of 700 ran a collection every few
    requests. 10,000 keeps most of the gain (a few % CPU) for about 3 MB more peak memory
    (50,000 cost 7 MB)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 100)


def _warn_if_exposed(config: Config) -> None:
    from proxy.server.app import _is_loopback

    host = config.host
    # Only managed-key mode checks who is calling; key aliases are names, not protection.
    if not _is_loopback(host) and not config.managed_key_env:
        log.warning(
            "event=exposed host=%s message=anyone who can reach this address can spend through the proxy "
            "with their own key and read /healthz; bind 127.0.0.1 unless that is what you want",
            host,
        )


def _check_config(args: argparse.Namespace) -> int:
    from proxy.config import load_config
    from proxy.server.app import check_environment, upstream_ssl_context

    path = resolve_config(args.file)
    if path is None:
        raise CliError(f"no config file: looked at ${CONFIG_ENV} and {default_config()} (pass a file to check)")
    config = load_config(path)
    check_environment(config)
    _check_catalog_file(config)
    upstream_ssl_context(config)
    print(f"{path}: ok ({len(config.budgets)} budgets, {len(config.alerts)} alert channels)")
    return 0
