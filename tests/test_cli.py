"""The CLI as a real subprocess: one stderr line and exit 2 on bad input; report totals equal the rows."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from proxy.store.recorder import Recorder
from proxy.store.sqlite import open_db
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
        (("report", "--since", "yesterday"), ("--since", "'yesterday'")),
        (("report", "--since", "7 d"), ("--since", "'7 d'")),
        (("whatif", "--model", "openai/gpt-4o", "--since", "yesterday"), ("--since", "'yesterday'")),
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
    one_line_error(cli("report", "--db", str(tmp_path / "none.db")), "--db", "does not exist")
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
    for by in ("model", "session", "day", "key", "project"):
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
