"""Reports by session at size: what `report --by session` and `/-/report?by=session` cost per range.

    python -m bench.report_bench --db /tmp/report-bench.db     # builds the 1,000,000-row log once
    python -m bench.session_bench --db /tmp/report-bench.db    # then this: CPU s (wall s), median of --runs

Per range (1d, 30d, 90d, all, back from the log's last row): the table `report --by session`
prints (the costliest 50), the same with `--breakdown model`, the JSON of every session
(`--format json`), and /-/report?by=session as the proxy serves it: the read in the reader's
worker (`routes.call`), its trip back (pickle), and what the event loop then does with it.
CPU time, not wall: on a shared machine wall time is mostly waiting for a core.
To time another version, run this file with that checkout first on the path:
`PYTHONPATH=<checkout> python bench/session_bench.py --db DB` (as a file: `python -m` from a
checkout's root would import that checkout's `proxy` before PYTHONPATH's).
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxy.cli.report import render
from proxy.store.reports import report
from proxy.store.sqlite import connect_readonly

TARGET_S = 0.5


def _cpu(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    cpu, wall = [], []
    for _ in range(runs):
        began, began_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
    return statistics.median(cpu), statistics.median(wall)


def _web(db_path: Path, since: str | None, now: datetime) -> Callable[[], dict[str, float]]:
    from proxy.web import reads, routes
    from proxy.web.query import parse_query

    pairs = [("by", "session")] + ([("since", since)] if since else [])
    query = parse_query(pairs, {"by", "since", "tz"}, now)

    def served() -> dict[str, float]:
        began = time.process_time()
        body = routes.call(db_path, reads.report, (query, 50, now))
        blob = pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL)
        worker = time.process_time() - began
        began = time.process_time()
        back = pickle.loads(blob)
        text = back if isinstance(back, str) else json.dumps(back, default=routes._json_default)
        assert text
        return {"worker": worker, "loop": time.process_time() - began}

    return served


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.session_bench")
    parser.add_argument("--db", type=Path, default=Path("/tmp/report-bench.db"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    # As the CLI and the web reader run them (proxy/cli/report.py, routes.call).
    gc.disable()
    db = connect_readonly(args.db)
    last = db.execute("SELECT max(started_at) FROM requests").fetchone()[0]
    now = datetime.fromisoformat(last.rstrip("Z")).replace(tzinfo=UTC) + timedelta(minutes=1)
    ranges: list[tuple[str, str | None]] = [("1d", "1d"), ("30d", "30d"), ("90d", "90d"), ("all", None)]
    print(f"{'CPU s (wall s), median of ' + str(args.runs):62}" + "".join(f"{label:>17}" for label, _ in ranges), flush=True)
    views: list[tuple[str, Callable[[datetime | None], Callable[[], Any]]]] = [
        ("table (top 50)", lambda since: lambda: render(report(db, "session", since=since, limit=50), "table")),
        ("table --breakdown model (top 50)",
         lambda since: lambda: render(report(db, "session", breakdown="model", since=since, limit=50), "table")),
        ("json, every session", lambda since: lambda: render(report(db, "session", since=since), "json")),
    ]
    missed = 0
    for label, make in views:
        cells = []
        for _, text in ranges:
            since = None if text is None else now - timedelta(days=int(text[:-1]))
            cpu, wall = _cpu(make(since), args.runs)
            missed += cpu > TARGET_S
            cells.append(f"{cpu:7.3f}{'✓' if cpu <= TARGET_S else '✗'}({wall:6.3f})")
        print(f"{label:62}" + "".join(f"{cell:>17}" for cell in cells), flush=True)
    db.close()
    for part in ("worker", "loop"):
        cells = []
        for _, text in ranges:
            served = _web(args.db, text, now)
            parts = [served() for _ in range(args.runs)]
            cpu = statistics.median(p[part] for p in parts)
            missed += part == "worker" and cpu > TARGET_S
            cells.append(f"{cpu:7.3f}{'✓' if cpu <= TARGET_S else '✗'}        ")
        what = "read + pickle in the worker" if part == "worker" else "unpickle + encode on the event loop"
        print(f"{'/-/report?by=session: ' + what:62}" + "".join(f"{cell:>17}" for cell in cells), flush=True)
    print(f"{'all within' if not missed else str(missed) + ' over'} {TARGET_S} s CPU")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
