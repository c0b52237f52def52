"""Small things a person meets on the command line: token counts written 1k/1M, `--vs` showing the
reference model's own row, and `models`/`estimate` saying how old their prices are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
F2025 = ROOT / "tests" / "fixtures" / "models-2025.json"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


@pytest.mark.parametrize(("text", "tokens"), [("1k", 1000), ("1.5k", 1500), ("2M", 2_000_000), ("0.25m", 250_000), ("1,000", 1000)])
def test_estimate_accepts_k_and_m(text: str, tokens: int) -> None:
    short = cli("estimate", "--catalog", str(F2025), "--input", text, "--output", "0", "--model", "openai/gpt-4o", "--format", "json")
    long = cli("estimate", "--catalog", str(F2025), "--input", str(tokens), "--output", "0", "--model", "openai/gpt-4o", "--format", "json")
    assert short.returncode == 0, short.stderr
    assert json.loads(short.stdout) == json.loads(long.stdout)


def test_estimate_rejects_nonsense_counts() -> None:
    result = cli("estimate", "--input", "1q", "--output", "1")
    assert result.returncode == 2 and "--input" in result.stderr and "Traceback" not in result.stderr


def test_vs_shows_the_reference_models_own_row() -> None:
    result = cli("estimate", "--catalog", str(F2025), "--input", "1k", "--output", "500", "--cheapest", "3",
                 "--vs", "openai/gpt-4o", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows].count("openai/gpt-4o") == 1
    own = next(r for r in rows if r["model"] == "openai/gpt-4o")
    assert own["per_call"] == "0.0075" and own["vs openai/gpt-4o"] == "same"


@pytest.mark.parametrize("command", [["models", "--search", "gpt-4o"], ["estimate", "--input", "1k", "--output", "1k", "--model", "openai/gpt-4o"]])
def test_models_and_estimate_say_the_catalogs_date(command: list[str]) -> None:
    result = cli(*command, "--catalog", str(F2025))
    assert result.returncode == 0, result.stderr
    assert "prices as of an unknown date" in result.stdout, result.stdout  # the fixture has no fetchedAt
    builtin = cli(*command)
    assert "prices as of" in builtin.stdout and "built-in snapshot" in builtin.stdout, builtin.stdout
