"""Reports at size: build a 1,000,000-row, 90-day request log, then time every grouping over several ranges.

    python -m bench.report_bench                       # builds /tmp/report-bench.db once (a few minutes), then times
    python -m bench.report_bench --rows 100000 --db /tmp/small.db
    python -m bench.report_bench --rows 200000 --db /tmp/r200k.db --postgres postgresql://postgres@127.0.0.1:5432/bench

The log is written through the real schema, migrations and rollup triggers (the rows go in with the
writer's upsert, as the recorder does), with a realistic mix: weighted models and providers, a few
projects, keys and clients, sessions of 5-1,000 requests over minutes to hours, 3% blocked, 5% errors,
a few % cost unknown. Timings are the median of 3 runs of `proxy.store.reports.report()` on a
read-only connection, plus `openrouter-spend report` as a subprocess (start-up included) and its peak RSS.
With --postgres URL the same rows are copied into that (empty) PostgreSQL database and timed there
too: PostgreSQL has no rollups, so every report reads the raw rows of its range.
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
from zoneinfo import ZoneInfo

from proxy.cli.report import render
from proxy.store.reports import GROUPINGS, Filters, report
from proxy.store.sqlite import REQUEST_COLUMNS, _insert_rows, connect_readonly, encode_time, prepare

# (model, provider, input $/Mtok, output $/Mtok, weight)
MODELS = [
    ("anthropic/claude-sonnet-4.5", "Anthropic", 3, 15, 30),
    ("anthropic/claude-opus-4.1", "Anthropic", 15, 75, 4),
    ("anthropic/claude-haiku-4.5", "Anthropic", 1, 5, 10),
    ("openai/gpt-5", "OpenAI", 1.25, 10, 12),
    ("openai/gpt-5-mini", "OpenAI", 0.25, 2, 8),
    ("openai/gpt-4o", "OpenAI", 2.5, 10, 5),
    ("google/gemini-2.5-pro", "Google", 1.25, 10, 8),
    ("google/gemini-2.5-flash", "Google", 0.3, 2.5, 10),
    ("x-ai/grok-code-fast-1", "xAI", 0.2, 1.5, 6),
    ("qwen/qwen3-coder", "Alibaba", 0.22, 0.95, 4),
    ("deepseek/deepseek-chat-v3.1", "DeepSeek", 0.27, 1.1, 2),
    ("meta-llama/llama-3.3-70b-instruct:free", "Meta", 0, 0, 1),
]
PROJECTS = ["web", "api", "infra", "mobile", "data", "docs", None]
CLIENTS = [("claude-code", "messages"), ("codex", "responses"), ("aider", "chat/completions"), ("opencode", "chat/completions"), ("cline", "chat/completions")]
KEYS = [("0123456789abcdef", "alice"), ("1123456789abcdef", "bob"), ("2123456789abcdef", "ci"), ("3123456789abcdef", None)]
PICO = 10**12


def _money(pico: int) -> str:
    whole, frac = divmod(pico, PICO)
    return f"{whole}.{frac:012d}".rstrip("0").rstrip(".") if frac else str(whole)


def build(path: Path, rows: int, days: int, now: datetime, seed: int = 1) -> None:
    prepare(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    rng = random.Random(seed)
    weights = [m[4] for m in MODELS]
    start = now - timedelta(days=days)
    span = days * 86400
    insert = _insert_rows(1)
    column = {name: i for i, name in enumerate(REQUEST_COLUMNS)}
    template: list[object] = [None] * len(REQUEST_COLUMNS)
    written = 0
    session_no = 0
    db.execute("BEGIN")
    while written < rows:
        session_no += 1
        # Most sessions are short, a few run to hundreds of requests (a heavy tail, capped at 1,000).
        size = min(rows - written, 1_000, int(rng.paretovariate(1.2) * 5) if rng.random() < 0.95 else rng.randrange(100, 400))
        # Sessions start evenly over the span; a session lasts up to a few hours.
        at = start + timedelta(seconds=rng.random() * span)
        project = rng.choice(PROJECTS)
        client, endpoint = rng.choice(CLIENTS)
        fingerprint, alias = rng.choice(KEYS)
        main = rng.choices(MODELS, weights)[0]
        batch = []
        for _ in range(size):
            at += timedelta(seconds=rng.expovariate(1 / 40))
            if at >= now:
                at = now - timedelta(seconds=rng.random() * 3600)
            model, provider, price_in, price_out, _w = main if rng.random() < 0.8 else rng.choices(MODELS, weights)[0]
            row = list(template)
            kind = rng.random()
            blocked, failed = kind < 0.03, 0.03 <= kind < 0.08
            input_tokens = rng.randrange(2_000, 120_000)
            output_tokens = rng.randrange(20, 4_000)
            cached = rng.randrange(0, input_tokens)
            pico = int(input_tokens * price_in * 1_000_000) + int(output_tokens * price_out * 1_000_000)
            cost = None if blocked or rng.random() < 0.02 else _money(pico)
            values = {
                "id": f"b{written:08d}",
                "started_at": encode_time(at),
                "finished_at": encode_time(at + timedelta(seconds=3)),
                "method": "POST",
                "endpoint": endpoint,
                "model_requested": model,
                "model": model,
                "provider": provider,
                "generation_id": f"gen-{written}",
                "key_fingerprint": fingerprint,
                "key_alias": alias,
                "project": project,
                "session": f"sess-{session_no:07d}",
                "client": client,
                "streamed": 1,
                "status": 402 if blocked else (502 if failed else 200),
                "outcome": "blocked" if blocked else ("upstream_error" if failed else "ok"),
                "input_tokens": None if blocked else input_tokens,
                "output_tokens": None if blocked else output_tokens,
                "cached_tokens": None if blocked else cached,
                "reasoning_tokens": None if blocked else rng.randrange(0, 500),
                "cost_usd": cost,
                "cost_reported_usd": cost,
                "cost_catalog_usd": cost,
                "cost_source": "none" if cost is None else "reported",
                "is_free": int(price_in == 0),
                "ttfb_ms": 300.0,
                "duration_ms": 3000.0,
            }
            for name, value in values.items():
                row[column[name]] = value
            batch.append(row)
            written += 1
        db.executemany(insert, batch)
        if session_no % 2000 == 0:
            db.execute("COMMIT")
            db.execute("BEGIN")
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()


def _time(fn: object, runs: int = 3) -> dict[str, float]:
    """Median wall and CPU seconds. On a shared machine the CPU time is what an idle one's wall time would be."""
    wall, cpu = [], []
    for _ in range(runs):
        began, began_cpu = time.perf_counter(), time.process_time()
        fn()  # type: ignore[operator]
        wall.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
    return {"wall": round(statistics.median(wall), 3), "cpu": round(statistics.median(cpu), 3)}


def copy_to_postgres(path: Path, url: str) -> int:
    """The SQLite log's requests into PostgreSQL (migrated first), COPYed in chunks; returns rows copied."""
    import asyncio
    from decimal import Decimal

    from proxy.store import postgres

    convert = {
        "timestamptz": datetime.fromisoformat,
        "numeric": Decimal,
        "boolean": bool,
    }
    columns = postgres.REQUEST_COLUMNS
    casts = [convert.get(postgres._REQUEST_TYPES[c]) for c in columns]

    async def run() -> int:
        store = await postgres.PostgresStore.open(url)
        copied = 0
        try:
            async with store.pool.acquire() as connection:
                source = connect_readonly(path)
                cursor = source.execute(f"SELECT {', '.join(columns)} FROM requests")
                while chunk := cursor.fetchmany(50_000):
                    records = [tuple(v if f is None or v is None else f(v) for f, v in zip(casts, row)) for row in chunk]
                    await connection.copy_records_to_table("requests", records=records, columns=columns)
                    copied += len(records)
                source.close()
                await connection.execute("ANALYZE requests")
        finally:
            await store.close()
        return copied

    return asyncio.run(run())


def _time_engine(db: object, now: datetime) -> dict[str, object]:
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    ranges = {"all": None, "30d": now - timedelta(days=30), "today": midnight}
    out: dict[str, object] = {}
    for label, since in ranges.items():
        out[label] = {by: _time(lambda: report(db, by, since=since)) for by in GROUPINGS}  # type: ignore[arg-type]  # noqa: B023
    out["day x model, 30d"] = _time(lambda: report(db, "day", breakdown="model", since=ranges["30d"]))  # type: ignore[arg-type]
    out["model, 30d, --model anthropic/* --project web"] = _time(
        lambda: report(db, "model", since=ranges["30d"], filters=Filters(models=("anthropic/*",), projects=("web",)))  # type: ignore[arg-type]
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", type=Path, default=Path("/tmp/report-bench.db"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--postgres", metavar="URL", help="also copy the rows into this empty PostgreSQL database and time the reports there")
    args = parser.parse_args()
    now = datetime.now(UTC)
    if args.rebuild and args.db.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{args.db}{suffix}").unlink(missing_ok=True)
    if not args.db.exists():
        began = time.perf_counter()
        build(args.db, args.rows, args.days, now)
        print(f"built {args.rows:,} rows over {args.days} days in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    if args.postgres:
        from proxy.store.reader import open_reader

        began = time.perf_counter()
        copied = copy_to_postgres(args.db, args.postgres)
        print(f"copied {copied:,} rows to PostgreSQL in {time.perf_counter() - began:.0f} s", file=sys.stderr)
        sqlite_db = connect_readonly(args.db)
        pg_db = open_reader(args.postgres)
        both = {"sqlite": _time_engine(sqlite_db, now), "postgresql": _time_engine(pg_db, now)}
        sqlite_db.close()
        pg_db.close()
        print(json.dumps({"rows": copied, "report_s": both}, indent=2))
        return 0
    db = connect_readonly(args.db)
    count, first, last = db.execute("SELECT count(*), min(started_at), max(started_at) FROM requests").fetchone()
    rollup_rows = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("spend_hourly", "spend_daily", "spend_sessions")}
    size_mb = sum(os.path.getsize(f"{args.db}{s}") for s in ("", "-wal") if os.path.exists(f"{args.db}{s}")) / 1e6
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    ranges = {"all": None, "30d": now - timedelta(days=30), "today": midnight}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for label, since in ranges.items():
        results[label] = {}
        for by in GROUPINGS:
            results[label][by] = _time(lambda: report(db, by, since=since))
    extra = {
        "day x model, 30d": _time(lambda: report(db, "day", breakdown="model", since=ranges["30d"])),
        "hour x project, all": _time(lambda: report(db, "hour", breakdown="project")),
        "session x model, all": _time(lambda: report(db, "session", breakdown="model")),
        "day, all, tz=America/New_York": _time(lambda: report(db, "day", tz=ZoneInfo("America/New_York"))),
        "model, 30d, --model anthropic/* --project web": _time(
            lambda: report(db, "model", since=ranges["30d"], filters=Filters(models=("anthropic/*",), projects=("web",)))
        ),
        "session, 7d": _time(lambda: report(db, "session", since=now - timedelta(days=7))),
        # What `report --by session` does beyond the query: the table (its default 50 lines, and
        # all) and the JSON document, as text.
        "session, all, --limit 50 + table": _time(lambda: render(report(db, "session", limit=50), "table")),
        "session, all + table of all": _time(lambda: render(report(db, "session"), "table")),
        "session, all + json": _time(lambda: render(report(db, "session"), "json")),
        "day, 30d, tz=Asia/Kolkata (raw rows)": _time(lambda: report(db, "day", since=ranges["30d"], tz=ZoneInfo("Asia/Kolkata")), runs=1),
    }
    db.close()
    cli = {}
    cli_cpu = {}
    for flags in (("--by", "model"), ("--by", "day", "--since", "30d"), ("--by", "session"), ("--by", "session", "--format", "json"),
                  ("--by", "day", "--breakdown", "model"), ("--version",)):
        began = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        command = list(flags) if flags == ("--version",) else ["report", "--db", str(args.db), *flags]
        done = subprocess.run([sys.executable, "-m", "proxy", *command], capture_output=True, text=True, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cli[" ".join(flags)] = round(time.perf_counter() - began, 3)
        cli_cpu[" ".join(flags)] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3)
        assert done.stdout
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "rows": count,
                "first": first,
                "last": last,
                "rollup_rows": rollup_rows,
                "db_mb": round(size_mb),
                "report_s": results,
                "more_s": extra,
                "cli_wall_s": cli,
                "cli_cpu_s": cli_cpu,
                "cli_peak_rss_mb": round(peak_kb / 1024),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
