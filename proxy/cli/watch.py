"""`openrouter-spend watch`: a live view of the request log in the terminal.

Spend today and the last hour's burn rate, each budget's window, the sessions active in the last
minutes, and the last requests as they finish; redrawn every second or two from a read-only
connection (the proxy keeps writing). Plain ANSI (alternate screen, cursor home, erase to end of
line) so it works over SSH and in tmux. `q` or Ctrl-C quits and the terminal is restored.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from proxy.cli.locate import db_arg
from proxy.config import Config, load_config
from proxy.errors import CliError
from proxy.store import live
from proxy.store.reader import errors
from proxy.tables import money

_ENTER = "\x1b[?1049h\x1b[?25l"  # alternate screen, cursor hidden
_LEAVE = "\x1b[?25h\x1b[?1049l"
_HOME, _EOL, _EOS = "\x1b[H", "\x1b[K", "\x1b[J"
_BOLD, _DIM, _RED, _YELLOW, _RESET = "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[33m", "\x1b[0m"


def add_commands(commands: Any) -> None:
    watch = commands.add_parser("watch", help="live view: spend, budgets, active sessions, last requests")
    watch.add_argument("--db", type=db_arg, help="SQLite file or postgresql:// URL (default: $OPENROUTER_SPEND_DB, the config's db, then the per-user data dir)")
    watch.add_argument("--config", type=Path, help="YAML config (budgets, time zone, db)")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between redraws (default 1)")
    watch.add_argument("--minutes", type=int, default=15, help="sessions active in the last N minutes (default 15)")
    watch.add_argument("--once", action="store_true", help="print one frame and exit (for scripts)")
    watch.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from proxy.cli.locate import missing_db, resolve_config, resolve_db

    if not 0.2 <= args.interval <= 60:
        raise CliError("--interval: expected seconds between 0.2 and 60")
    if args.minutes < 1:
        raise CliError("--minutes: expected a whole number >= 1")
    config_path = resolve_config(args.config)
    config = load_config(config_path) if config_path else Config()
    path = resolve_db(args.db, config if config_path else None)
    if args.once:
        db = live.connect(path, config.db_password_env)
        if db is None:
            raise CliError(missing_db(path, args.db, config if config_path else None))
        try:
            width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 1000
            print(frame(db, path, config, datetime.now(UTC), args.minutes, width=width, color=False))
        finally:
            db.close()
        return 0
    out = sys.stdout
    with _terminal(out):
        while True:
            db = live.connect(path, config.db_password_env)
            width, height = shutil.get_terminal_size()
            if db is None:
                text = f"openrouter-spend watch: waiting for {path} (start `openrouter-spend serve`)   q quits"
            else:
                try:
                    text = frame(db, path, config, datetime.now(UTC), args.minutes, width=width, color=True)
                except errors(db) as exc:
                    text = f"openrouter-spend watch: {path}: {exc}   q quits"
                finally:
                    db.close()
            lines = text.splitlines()[: max(1, height - 1)]
            out.write(_HOME + "".join(line + _EOL + "\r\n" for line in lines) + _EOS)
            out.flush()
            if _wait_for_quit(args.interval):
                break
    return 0


class _Quit(Exception):
    pass


@contextmanager
def _terminal(out: TextIO) -> Iterator[None]:
    """Alternate screen and single-key input; whatever happens, the terminal comes back as it was."""
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = None
    if fd is not None:
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)

    def on_term(signum: int, frame_: FrameType | None) -> None:
        raise _Quit

    previous = signal.signal(signal.SIGTERM, on_term)
    out.write(_ENTER)
    out.flush()
    try:
        yield
    except (KeyboardInterrupt, _Quit):
        pass
    finally:
        out.write(_LEAVE)
        out.flush()
        signal.signal(signal.SIGTERM, previous)
        if fd is not None and saved is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(timeout: float) -> bool:
    if not sys.stdin.isatty():
        select.select([], [], [], timeout)  # no keyboard: just wait (Ctrl-C still works)
        return False
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        return False
    key = os.read(sys.stdin.fileno(), 32)
    return key[:1] in (b"q", b"Q") or not key


def frame(db: sqlite3.Connection, path: Path | str, config: Config, now: datetime, minutes: int, *, width: int = 100, color: bool = False) -> str:
    tz = ZoneInfo(config.timezone)
    local = now.astimezone(tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    bold, dim, reset = (_BOLD, _DIM, _RESET) if color else ("", "", "")
    today = live.spend_since(db, midnight)
    burn = live.spend_since(db, now - timedelta(hours=1))
    lines = [
        f"{bold}openrouter-spend watch{reset}  {local:%Y-%m-%d %H:%M:%S} {config.timezone}  {dim}{path}   q quits{reset}",
        "",
        f"{bold}today{reset} {money(today)}   {bold}last hour{reset} {money(burn)}/h",
    ]
    lines += _budget_lines(db, config, now, color)
    sessions = live.active_sessions(db, now - timedelta(minutes=minutes))
    lines += ["", f"{bold}sessions active in the last {minutes} min{reset}"]
    if sessions:
        lines.append(f"{dim}{'session':<36} {'client':<12} {'project':<12} {'reqs':>5} {'cost':>10}  last{reset}")
        for s in sessions:
            lines.append(
                f"{_cut(s.session, 36):<36} {_cut(s.client or '-', 12):<12} {_cut(s.project or '-', 12):<12} "
                f"{s.requests:>5} {money(s.cost_usd):>10}  {s.last_at.astimezone(tz):%H:%M:%S}"
            )
    else:
        lines.append(f"{dim}none{reset}")
    lines += ["", f"{bold}last requests{reset}"]
    recent = live.recent_requests(db, 10)
    if recent:
        lines.append(f"{dim}{'finished':<8} {'endpoint':<16} {'model':<28} {'status':>6} {'tokens':>13} {'cost':>10} {'ms':>6}{reset}")
        for r in recent:
            tokens = "-" if r.input_tokens is None and r.output_tokens is None else f"{r.input_tokens or 0}+{r.output_tokens or 0}"
            status = str(r.status) if r.outcome == "ok" else f"{r.status} {r.outcome}"
            lines.append(
                f"{r.finished_at.astimezone(tz):%H:%M:%S} {_cut(r.endpoint, 16):<16} {_cut(r.model or '-', 28):<28} {status:>6} "
                f"{tokens:>13} {money(r.cost_usd) if r.cost_usd is not None else '-':>10} {r.duration_ms:>6.0f}"
            )
    else:
        lines.append(f"{dim}none yet{reset}")
    return "\n".join(_fit(line, width) for line in lines)


def _budget_lines(db: sqlite3.Connection, config: Config, now: datetime, color: bool) -> list[str]:
    if not config.budgets:
        return []
    from proxy.budgets.ledger import Budgets
    from proxy.server.guard import load_spend_sync

    budgets = Budgets(config.budgets, config.tz)
    load_spend_sync(db, budgets, now)
    lines = ["", f"{_BOLD if color else ''}budgets{_RESET if color else ''}"]
    for s in budgets.snapshot(now):
        share = s.share * 100
        colour = ""
        if color:
            colour = _RED if s.share >= 1 else _YELLOW if s.share >= Decimal("0.8") else ""
        resets = f"resets {s.resets_at.astimezone(config.tz):%m-%d %H:%M}" if s.resets_at else ""
        scope = s.scope_value or "total"
        lines.append(
            f"  {colour}{_cut(s.name, 20):<20} {_cut(scope, 16):<16} {money(s.spent_usd):>10} / {money(s.limit_usd):<10} {share:5.1f}%"
            f"{_RESET if colour else ''}  {s.action:<5} {resets}"
        )
    if len(lines) == 2:
        lines.append("  no spend in any budget window yet")
    return lines


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _fit(line: str, width: int) -> str:
    # Only lines without escapes are cut (counting escape bytes would cut too early); a terminal
    # clips the others itself.
    return line if "\x1b" in line or len(line) <= width else line[: max(1, width - 1)]
