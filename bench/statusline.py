"""How long `openrouter-spend statusline` takes, as Claude Code runs it: a fresh process per call.

    python -m bench.statusline                 # 1,000,000 rows over 90 days, 50 runs
    python -m bench.statusline --rows 100000 --runs 20

Builds (once, cached under /tmp) a request log with the real schema: rows spread over 90 days up to
now, 2,000 sessions, a budget config, then runs the command with Claude Code's JSON on stdin for a
session that has rows, and prints the median and p95 wall time of the whole process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from proxy.store.sqlite import REQUEST_COLUMNS, encode_time, prepare

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("anthropic/claude-sonnet-4.5", "openai/gpt-4o", "google/gemini-2.5-pro", "deepseek/deepseek-chat")


def build(path: Path, rows: int, now: datetime) -> None:
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    prepare(tmp)
    db = sqlite3.connect(tmp, isolation_level=None)
    rng = random.Random(7)
    span = 90 * 86400
    placeholders = ", ".join("?" for _ in REQUEST_COLUMNS)
    insert = f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({placeholders})"
    db.execute("BEGIN")
    batch = []
    for n in range(rows):
        started = now - timedelta(seconds=span * (rows - n) / rows)
        cost = f"{rng.randint(1, 200_000) / 10_000_000:.7f}"
        values = dict.fromkeys(REQUEST_COLUMNS)
        values.update(
            id=f"r{n:08d}", started_at=encode_time(started), finished_at=encode_time(started + timedelta(seconds=2)),
            method="POST", endpoint="messages", model=MODELS[n % 4], model_requested=MODELS[n % 4],
            provider="Anthropic", project=f"p{n % 7}", session=f"sess-{(n // 500) % 2000:04d}", client="claude-code",
            streamed=1, status=200, outcome="ok", input_tokens=20_000, output_tokens=500, cost_usd=cost,
            cost_reported_usd=cost, cost_source="reported", is_free=0, duration_ms=2000.0,
        )
        batch.append(tuple(values[c] for c in REQUEST_COLUMNS))
        if len(batch) == 10_000:
            db.executemany(insert, batch)
            batch.clear()
    db.executemany(insert, batch)
    db.execute("COMMIT")
    db.close()
    tmp.rename(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    db = Path(f"/tmp/ors-statusline-{args.rows}.db")
    t = time.perf_counter()
    build(db, args.rows, now)
    print(f"db {db} ({db.stat().st_size / 1e6:.0f} MB, built/checked in {time.perf_counter() - t:.1f}s)")
    config = db.with_suffix(".yaml")
    config.write_text(
        f"db: {db}\nbudgets:\n  - {{name: daily, limit_usd: 50, period: day}}\n"
        "  - {name: per-session, limit_usd: 5, period: day, scope: session}\n"
        "  - {name: project, limit_usd: 100, period: month, scope: project}\n"
    )
    # The newest session: it has rows today, like the one Claude Code is in.
    session = sqlite3.connect(db).execute("SELECT session FROM requests ORDER BY started_at DESC LIMIT 1").fetchone()[0]
    payload = json.dumps({"session_id": session, "model": {"id": "claude-sonnet-4-5", "display_name": "Sonnet"},
                          "workspace": {"current_dir": "/tmp", "project_dir": "/tmp"}, "cost": {"total_cost_usd": 1.0}})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENROUTER_SPEND_CONFIG": str(config),
           "XDG_CACHE_HOME": str(db.parent / "ors-statusline-cache")}
    argv = [sys.executable, "-m", "proxy", "statusline"]
    times, cpu, line = measure(argv, payload, env, args.runs)
    print(f"line: {line}")
    print(f"statusline over {args.rows:,} rows, {args.runs} runs: wall median {statistics.median(times):.1f} ms, "
          f"p95 {p95(times):.1f} ms; CPU (user+sys) median {statistics.median(cpu):.1f} ms, p95 {p95(cpu):.1f} ms")
    bare, bare_cpu, _ = measure([sys.executable, "-c", "pass"], "", env, min(args.runs, 20))
    print(f"(a bare `python -c pass` here: wall median {statistics.median(bare):.1f} ms, CPU {statistics.median(bare_cpu):.1f} ms;"
          " CPU time is what to compare on a shared machine, wall time waits for other processes)")


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def measure(argv: list[str], payload: str, env: dict[str, str], runs: int) -> tuple[list[float], list[float], str]:
    times, cpu, line = [], [], ""
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        out = subprocess.run(argv, input=payload, capture_output=True, text=True, env=env, timeout=30)
        times.append((time.perf_counter() - t) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
        line = out.stdout.strip()
    return times, cpu, line


if __name__ == "__main__":
    main()
