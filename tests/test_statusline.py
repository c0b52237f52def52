"""`openrouter-spend statusline` as Claude Code runs it: a real subprocess fed Claude Code's JSON.

It must print one line and exit 0 whatever happens (a non-zero exit blanks Claude Code's line), and
show what the proxy recorded as billed for the session, not Claude Code's own estimate.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic

from proxy.cli.statusline import Tightest, render
from proxy.store.recorder import Recorder
from proxy.store.engine import open_store
from tests.fake_openrouter import fake_cost
from tests.test_storage import make_record

ROOT = Path(__file__).parent.parent
SESSION = "5b7c9a2e-1f0d-4c55-9a1e-1234567890ab"
KEY = "sk-or-v1-test-" + "cd" * 20


def claude_code_input(session: str = SESSION, estimate: float = 9.99) -> str:
    """The shape Claude Code sends on stdin (fields we don't read included, as it sends them)."""
    return json.dumps(
        {
            "hook_event_name": "Status",
            "session_id": session,
            "transcript_path": f"/home/u/.claude/projects/app/{session}.jsonl",
            "cwd": "/home/u/app",
            "model": {"id": "claude-sonnet-4-5", "display_name": "Sonnet 4.5"},
            "workspace": {"current_dir": "/home/u/app", "project_dir": "/home/u/app"},
            "version": "2.1.332",
            "output_style": {"name": "default"},
            "cost": {"total_cost_usd": estimate, "total_duration_ms": 60000, "total_api_duration_ms": 20000,
                     "total_lines_added": 10, "total_lines_removed": 2},
            "exceeds_200k_tokens": False,
        }
    )


def statusline(*args: str, stdin: str = "", home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # HOME and XDG dirs point into the test's directory, so discovery never finds the real user's files.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_SPEND_", "XDG_"))}
    full = {**base, "PYTHONPATH": str(ROOT), "HOME": str(home), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "proxy", "statusline", *args], input=stdin, capture_output=True, text=True, timeout=60,
        cwd=home, env=full,
    )


async def write_rows(target: Path | str, records: list[Any]) -> None:
    db = await open_store(target)
    try:
        recorder = Recorder(db)
        for rec in records:
            recorder.record(rec)
        await recorder.drain()
    finally:
        await db.close()


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return lines[0]


async def test_prints_the_billed_session_total_not_claude_codes_estimate(tmp_path: Path, db_target: Path | str) -> None:
    now = datetime.now(UTC)
    db = db_target
    costs = ["0.125", "0.0375", "0.5"]
    records = [
        make_record(n, started_at=now - timedelta(minutes=10 - n), finished_at=now - timedelta(minutes=10 - n),
                    session=SESSION, cost_usd=Decimal(c))
        for n, c in enumerate(costs)
    ]
    # Another session today counts for today, not for this session.
    records.append(make_record(9, started_at=now - timedelta(minutes=1), finished_at=now, session="other", cost_usd=Decimal("2")))
    await write_rows(db, records)

    line = one_line(statusline("--db", str(db), stdin=claude_code_input(), home=tmp_path))

    assert line.startswith("$0.6625 session"), line
    assert "9.99" not in line
    # Today: every row, unless the test runs across midnight UTC (then only part of them).
    if (now - timedelta(minutes=10)).date() == now.date():
        assert "$2.66 today" in line, line
    assert "/h" in line


async def test_session_recorded_through_the_proxy_from_claude_codes_header(proxy: Any, tmp_path: Path) -> None:
    """The id Claude Code puts on its requests is the one it passes the status line."""
    async with anthropic.AsyncAnthropic(base_url=str(proxy.server.make_url("/api")), auth_token=KEY, max_retries=0) as client:
        for _ in range(2):
            await client.messages.create(
                model="anthropic/claude-sonnet-4.5", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                extra_headers={"X-Claude-Code-Session-Id": SESSION},
            )
    await proxy.settle()
    expected = 2 * Decimal(str(float(fake_cost("anthropic/claude-sonnet-4.5"))))

    line = one_line(statusline("--db", str(proxy.db_path), "--format", "{session_cost}|{session_requests}",
                               stdin=claude_code_input(), home=tmp_path))

    amount = Decimal(line.split("|")[0].removeprefix("$"))
    assert abs(amount - expected) < Decimal("0.00005"), (line, expected)
    assert line.endswith("|2")


async def test_tightest_budget_share_left(tmp_path: Path, db_target: Path | str) -> None:
    # On PostgreSQL too: the config's `db: postgresql://...` is cached with the settings.
    now = datetime.now(UTC)
    db = db_target
    await write_rows(db, [make_record(1, started_at=now - timedelta(seconds=30), finished_at=now, session=SESSION,
                                      project="app", cost_usd=Decimal("3"))])
    config = tmp_path / "config.yaml"
    config.write_text(
        f"db: {db}\n"
        "budgets:\n"
        "  - {name: monthly, limit_usd: 100, period: month}\n"
        "  - {name: per-session, limit_usd: 4, period: rolling:1h, scope: session}\n"
        "  - {name: app, limit_usd: 10, period: rolling:1h, scope: project}\n"
    )

    line = one_line(statusline("--config", str(config), "--format", "{budget}", stdin=claude_code_input(), home=tmp_path))
    assert line == "per-session 25% left"

    # The config found through the environment, and colour on request.
    coloured = one_line(statusline("--color", "--format", "{budget}", stdin=claude_code_input(), home=tmp_path,
                                   env={"OPENROUTER_SPEND_CONFIG": str(config)}))
    assert coloured == "\x1b[33mper-session 25% left\x1b[0m"

    # The settings are cached between runs; an edited config is read again.
    assert (tmp_path / ".cache/openrouter-spend/statusline-config.json").is_file()
    config.write_text(config.read_text().replace("limit_usd: 4,", "limit_usd: 30,"))
    line = one_line(statusline("--config", str(config), "--format", "{budget}", stdin=claude_code_input(), home=tmp_path))
    assert line == "app 70% left"


def test_no_database_yet_is_a_neutral_line(tmp_path: Path) -> None:
    line = one_line(statusline(stdin=claude_code_input(), home=tmp_path))
    assert "no spend recorded yet" in line
    assert not (tmp_path / ".local").exists(), "a reader must not create the database"


async def test_unknown_session_and_bad_input_still_print_a_line(tmp_path: Path) -> None:
    db = tmp_path / "spend.db"
    now = datetime.now(UTC)
    await write_rows(db, [make_record(1, started_at=now, finished_at=now, cost_usd=Decimal("1"))])
    for stdin in (claude_code_input("never-seen"), "", "not json {", "[1, 2]", '{"session_id": 5}', "\xff" * 3):
        line = one_line(statusline("--db", str(db), stdin=stdin, home=tmp_path))
        assert line.startswith("- session"), (stdin, line)


def test_bad_flags_and_bad_files_print_a_line_and_exit_0(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("budgets: [1\n")
    for args in (("--bogus",), ("--db", str(junk)), ("--config", str(bad_config)), ("--format", "{nope}")):
        line = one_line(statusline(*args, stdin=claude_code_input(), home=tmp_path))
        assert line.startswith("openrouter-spend:"), (args, line)


def test_an_unreachable_postgresql_is_a_short_line_soon(tmp_path: Path) -> None:
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    line = one_line(statusline("--db", f"postgresql://nobody@127.0.0.1:{port}/spend", stdin=claude_code_input(), home=tmp_path))
    assert line.startswith("openrouter-spend:") and len(line) <= 120, line
    assert time.monotonic() - started < 20
    # A password on the command line is refused before anything connects.
    line = one_line(statusline("--db", f"postgresql://u:hunter2@127.0.0.1:{port}/spend", stdin="", home=tmp_path))
    assert "no password in the URL" in line and "hunter2" not in line


def test_render_template_fields() -> None:
    values = {"session_cost": "$1.00", "session_requests": 3, "today": "$2.00", "burn": "$0.50", "model": "Opus",
              "tightest": Tightest("daily", Decimal("-0.2"))}
    assert render(values, "{model} {session_cost} {budget_left}") == "Opus $1.00 0%"
    assert render(values, "{today}\nsecond line") == "$2.00"
    assert render({**values, "tightest": None}, "{session_cost}{budget_part}") == "$1.00"


def test_cached_calendar_windows_roll_over(tmp_path: Path, monkeypatch: Any) -> None:
    from proxy.cli.statusline import settings_of

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = tmp_path / "c.yaml"
    config.write_text("timezone: Europe/Berlin\nbudgets:\n  - {name: d, limit_usd: 5, period: day}\n"
                      "  - {name: r, limit_usd: 5, period: rolling:5h}\n")
    noon = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    first = settings_of(config, noon)
    assert first.budgets[0].start == datetime(2026, 3, 27, 23, 0, tzinfo=UTC)  # Berlin midnight, UTC+1
    assert first.budgets[1].start is None and first.budgets[1].rolling_seconds == 5 * 3600
    assert settings_of(config, noon + timedelta(hours=5)) == first  # from the cache, same window
    # Past the window's end (and across the DST change) the window is computed again.
    nextday = settings_of(config, datetime(2026, 3, 29, 1, 0, tzinfo=UTC))
    assert nextday.budgets[0].start == datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    assert nextday.budgets[0].end == datetime(2026, 3, 29, 22, 0, tzinfo=UTC)  # a 23-hour day


async def test_as_claude_code_runs_it_no_argparse_nor_zoneinfo_is_imported(tmp_path: Path) -> None:
    # Claude Code passes no flags; a UTC config (the default) needs no time zone database.
    now = datetime.now(UTC)
    db = tmp_path / "spend.db"
    await write_rows(db, [make_record(0, started_at=now - timedelta(minutes=1), finished_at=now, session=SESSION,
                                      cost_usd=Decimal("0.5"))])
    config = tmp_path / "c.yaml"
    config.write_text(f"db: {db}\nbudgets:\n  - {{name: d, limit_usd: 5, period: day}}\n")
    code = (
        "import sys\nfrom proxy.cli.entry import main\nmain(['statusline'])\n"
        "print(sorted(m for m in ('argparse', 'zoneinfo', 'locale', 'gettext', 'aiohttp', 'yaml') if m in sys.modules))\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_SPEND_", "XDG_"))}
    env = {**base, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "OPENROUTER_SPEND_CONFIG": str(config)}
    for _ in range(2):  # the first run reads the YAML and caches what it needs; the second is the usual one
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], input=claude_code_input(),
                                       capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env, check=False)
        assert done.returncode == 0, done.stderr
    line, imported = done.stdout.splitlines()
    assert line.startswith("$0.5000 session") and "90% left" in line, line
    assert imported == "[]", imported
