"""The CLI as a real subprocess: one stderr line and exit 2 on bad input; report totals equal the rows."""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from proxy.store.recorder import Recorder
from proxy.store.sqlite import open_db, prepare, prune_raw
from tests.test_storage import make_record

ROOT = Path(__file__).parent.parent


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=60, cwd=cwd or ROOT, env=env
    )


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("port: eighty\n", ("port: expected a whole number", "'eighty'")),
        ("budgets:\n  - name: day\n    limit_usd: ten\n", ("budgets[0].limit_usd",)),
        ("hots: 1\n", ("hots: unknown key",)),
        ("port: [1\n", ("line",)),
    ],
)
def test_check_config_bad_file(tmp_path: Path, text: str, needles: tuple[str, ...]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    one_line_error(cli("check-config", str(path)), *needles)


def test_check_config_missing_file(tmp_path: Path) -> None:
    one_line_error(cli("check-config", str(tmp_path / "nope.yaml")), "nope.yaml", "cannot read")


def test_check_config_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text("port: 9000\n")
    result = cli("check-config", str(path))
    assert result.returncode == 0 and "ok" in result.stdout and result.stderr == ""


def test_check_config_example() -> None:
    result = cli("check-config", "config/proxy.example.yaml")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("serve", "--port", "x"), ("--port", "'x'")),
        (("serve", "--upstream", "ftp://x"), ("upstream:",)),
        (("serve", "--bogus"), ("--bogus",)),
        (("report", "--since", "someday"), ("--since", "'someday'")),
        (("report", "--since", "7 d"), ("--since", "'7 d'")),
        (("whatif", "--model", "openai/gpt-4o", "--since", "someday"), ("--since", "'someday'")),
        (("report", "--by", "colour"), ("--by", "colour")),
        (("report", "--format", "xml"), ("--format", "xml")),
        (("report", "--tz", "Mars/Base"), ("--tz",)),
        (("nonsense",), ("nonsense",)),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    one_line_error(cli(*args, cwd=tmp_path), *needles)


def test_bare_command_prints_help_and_exits_0(tmp_path: Path) -> None:
    result = cli(cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: openrouter-spend") and "statusline" in result.stdout and "setup" in result.stdout


def test_version() -> None:
    from proxy import __version__

    result = cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"openrouter-spend {__version__}")


def test_output_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    """`openrouter-spend models | head -1`: the reader goes away; no BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=tmp_path, env=env)
    with proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()  # what `head -1` does after its line
        stderr = proc.stderr.read().decode()
        proc.wait(timeout=60)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert proc.returncode in (0, 141), proc.returncode


def test_report_on_a_missing_db(tmp_path: Path) -> None:
    one_line_error(cli("report", "--db", str(tmp_path / "none.db")), "--db", "no database at")
    assert not (tmp_path / "none.db").exists()


def test_report_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    one_line_error(cli("report", "--db", str(path)), "--db")


async def _write_rows(path: Path) -> None:
    db = await open_db(path)
    try:
        recorder = Recorder(db)
        costs = ["0.1", "0.2", "0.000001", None, "1.5", "0.0000005"]
        models = ["openai/gpt-4o", "anthropic/claude-sonnet-4.5", "openai/gpt-4o", "x/y", "anthropic/claude-sonnet-4.5", None]
        for n in range(30):
            recorder.record(
                make_record(
                    n,
                    model=models[n % len(models)],
                    cost_usd=None if costs[n % len(costs)] is None else Decimal(str(costs[n % len(costs)])),
                    input_tokens=None if n % 7 == 0 else 1000 + n,
                    output_tokens=10 * n,
                    session=f"s{n % 3}",
                    outcome="ok" if n % 5 else "aborted",
                )
            )
        await recorder.drain()
    finally:
        await db.close()


def _sum_rows(path: Path) -> tuple[int, Decimal, int, int]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT cost_usd, input_tokens, output_tokens FROM requests").fetchall()
    finally:
        db.close()
    cost = sum((Decimal(c) for c, _, _ in rows if c is not None), Decimal(0))
    return len(rows), cost, sum(i or 0 for _, i, _ in rows), sum(o or 0 for _, _, o in rows)


async def test_report_json_totals_equal_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    await _write_rows(path)
    count, cost, input_tokens, output_tokens = _sum_rows(path)
    assert count == 30
    for by in ("model", "provider", "session", "day", "key", "project"):
        result = cli("report", "--db", str(path), "--by", by, "--format", "json", "--since", "2026-01-01")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        total = data["total"]
        assert total["requests"] == count == sum(r["requests"] for r in data["rows"])
        assert Decimal(total["cost_usd"]) == cost == sum(Decimal(r["cost_usd"]) for r in data["rows"])
        assert total["input_tokens"] == input_tokens == sum(r["input_tokens"] for r in data["rows"])
        assert total["output_tokens"] == output_tokens
        assert total["errors"] == 6 and total["cost_unknown_requests"] == 5


async def test_report_since_filters(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    await _write_rows(path)
    result = cli("report", "--db", str(path), "--format", "json", "--since", "2027-01-01")
    assert json.loads(result.stdout)["total"]["requests"] == 0


async def test_report_csv_and_table(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    await _write_rows(path)
    result = cli("report", "--db", str(path), "--by", "model", "--format", "csv")
    assert result.returncode == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {r["group"] for r in rows} == {"openai/gpt-4o", "anthropic/claude-sonnet-4.5", "x/y", "(none)"}
    assert sum(int(r["requests"]) for r in rows) == 30
    table = cli("report", "--db", str(path), "--by", "model")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[0] == "model" and any(line.startswith("total") for line in lines)
    assert "no known cost" in table.stdout


async def test_report_reads_while_the_writer_holds_a_transaction(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    await _write_rows(path)
    db = await open_db(path)
    try:
        await db.execute("BEGIN IMMEDIATE")
        await db.execute("DELETE FROM requests")
        result = cli("report", "--db", str(path), "--format", "json")
        await db.execute("ROLLBACK")
    finally:
        await db.close()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"]["requests"] == 30


async def _write_known(path: Path) -> list[Any]:
    from tests.test_report import known_records, write

    recs = known_records()
    await write(path, recs)
    return recs


@pytest.mark.parametrize(
    "flags",
    [
        ("--by", "day", "--breakdown", "model"),
        ("--by", "week", "--tz", "America/New_York"),
        ("--by", "month"),
        ("--by", "hour", "--since", "2026-11-25", "--until", "2026-11-25T06:30"),
        ("--by", "session", "--model", "openai/*", "--model", "google/*"),
        ("--by", "key", "--project", "acme", "--key", "ci"),
        ("--by", "client", "--session", "s1"),
        ("--by", "endpoint", "--since", "this-month"),
    ],
)
async def test_report_flags_give_totals_equal_to_the_rows(tmp_path: Path, flags: tuple[str, ...]) -> None:
    from tests.test_report import expected

    path = tmp_path / "usage.db"
    recs = await _write_known(path)
    result = cli("report", "--db", str(path), "--format", "json", *flags)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    args = dict(zip(flags[::2], flags[1::2]))
    globs = {name: [v for k, v in zip(flags[::2], flags[1::2]) if k == name] for name in ("--model", "--project", "--session", "--key")}
    since = datetime.fromisoformat(args["--since"]).replace(tzinfo=UTC) if args.get("--since", "x")[0].isdigit() else None
    until = datetime.fromisoformat(args["--until"]).replace(tzinfo=UTC) if "--until" in args else None

    def keep(r: Any) -> bool:
        return (
            (since is None or r.started_at >= since)
            and (until is None or r.started_at < until)
            and (not globs["--model"] or any(fnmatch.fnmatchcase(r.model or "", g) for g in globs["--model"]))
            and (not globs["--project"] or r.project in globs["--project"])
            and (not globs["--session"] or r.session in globs["--session"])
            and (not globs["--key"] or r.key_alias in globs["--key"] or r.key_fingerprint in globs["--key"])
        )

    if args.get("--since") == "this-month":
        # The known rows are from November 2026; this month is whenever the test runs.
        now = datetime.now(UTC)
        first = datetime(now.year, now.month, 1, tzinfo=UTC)
        keep_all = keep
        keep = lambda r: keep_all(r) and r.started_at >= first  # noqa: E731
    levels = [args["--by"]] + ([args["--breakdown"]] if "--breakdown" in args else [])
    want = expected(recs, levels, ZoneInfo(args.get("--tz", "UTC")), keep)
    rows = {(r["group"],) + ((r["breakdown"],) if "breakdown" in r else ()): r for r in data["rows"]}
    assert set(rows) == set(want)
    for key, acc in want.items():
        assert rows[key]["requests"] == acc["requests"] and rows[key]["blocked"] == acc["blocked"]
        assert Decimal(rows[key]["cost_usd"]) == acc["cost"]
    assert Decimal(data["total"]["cost_usd"]) == sum((a["cost"] for a in want.values()), Decimal(0))


async def test_report_table_for_sessions_and_time_bars(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    await _write_known(path)
    sessions = cli("report", "--db", str(path), "--by", "session")
    assert sessions.returncode == 0, sessions.stderr
    assert sessions.stdout.splitlines()[0].split()[:3] == ["session", "first", "seen"]
    days = cli("report", "--db", str(path), "--by", "day")
    assert "█" in days.stdout


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--since", "today", "--until", "2020-01-01"), ("--until",)),
        (("--until", "someday"), ("--until", "'someday'")),
        (("--by", "day", "--breakdown", "day"), ("--breakdown",)),
        (("--breakdown", "colour"), ("--breakdown",)),
    ],
)
def test_report_bad_range_and_breakdown(tmp_path: Path, args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    path = tmp_path / "e.db"
    prepare(path)
    one_line_error(cli("report", "--db", str(path), *args), *needles)


async def test_vacuum_shrinks_and_into_writes_a_copy_with_the_same_report(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    await _write_known(path)
    db = await open_db(path)
    try:
        await prune_raw(db, datetime(2027, 1, 1, tzinfo=UTC))
    finally:
        await db.close()
    before = cli("report", "--db", str(path), "--by", "model", "--format", "json")
    copy = tmp_path / "backup.db"
    into = cli("vacuum", "--db", str(path), "--into", str(copy))
    assert into.returncode == 0, into.stderr
    assert cli("report", "--db", str(copy), "--by", "model", "--format", "json").stdout == before.stdout
    assert copy.stat().st_mode & 0o777 == 0o600
    size = path.stat().st_size
    shrunk = cli("vacuum", "--db", str(path))
    assert shrunk.returncode == 0, shrunk.stderr
    assert path.stat().st_size < size
    assert cli("report", "--db", str(path), "--by", "model", "--format", "json").stdout == before.stdout
    one_line_error(cli("vacuum", "--db", str(path), "--into", str(copy)), "--into", "already exists")


@pytest.mark.parametrize("word", ["today", "yesterday", "this-week", "last-week", "this-month", "last-month"])
async def test_report_calendar_words(tmp_path: Path, word: str) -> None:
    from datetime import timedelta

    from proxy.store.reports import calendar_period
    from tests.test_report import write
    from tests.test_storage import make_record

    now = datetime.now(UTC)
    # One row in the middle of each calendar period (up to now), with a cost naming the period.
    words = ["today", "yesterday", "this-week", "last-week", "this-month", "last-month"]
    recs = []
    for n, name in enumerate(words):
        start, end = calendar_period(name, now, ZoneInfo("UTC"))
        recs.append(make_record(n, started_at=start + (min(end, now) - start) / 2, cost_usd=Decimal(10) ** -n))
    await write(tmp_path / "u.db", recs)
    start, end = calendar_period(word, now, ZoneInfo("UTC"))
    if end - timedelta(seconds=5) < now < end:
        pytest.skip("the period ends as the test runs")
    result = cli("report", "--db", str(tmp_path / "u.db"), "--since", word, "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    inside = [r for r in recs if start <= r.started_at < end]
    assert word in [words[int(r.id[-6:])] for r in inside]
    assert data["total"]["requests"] == len(inside)
    assert Decimal(data["total"]["cost_usd"]) == sum((r.cost_usd for r in inside), Decimal(0))
