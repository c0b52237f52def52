"""Page views at size: time each `/-/` read function (proxy/web/reads.py) on the report bench's log.

    python -m bench.report_bench          # once: builds /tmp/report-bench.db (1,000,000 rows, 90 days)
    python -m bench.page_views [--db /tmp/report-bench.db]

Each line is the median of 3 calls over the last 30 days and over all time, on a read-only
connection as the web reader uses (no cache: the reader's short cache would hide the cost).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxy.pricing.catalog import Catalog
from proxy.web import reads
from proxy.web.query import Query


def _median(call: Callable[[], Any], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", type=Path, default=Path("/tmp/report-bench.db"))
    args = parser.parse_args()
    db = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True, check_same_thread=False)
    db.row_factory = sqlite3.Row
    reads.prepare_connection(db)
    now = datetime.now(UTC)
    catalog = Catalog([])
    print(f"{'view':44} {'30 days':>8} {'all time':>9}")
    views: list[tuple[str, Callable[[Query], Any]]] = [
        ("report by=model", lambda q: reads.report(db, q, 50, now)),
        ("report by=session", lambda q: reads.report(db, Query(q.since, by="session"), 50, now)),
        ("free-usage", lambda q: reads.free(db, 50, now)),
        ("recent limit=50", lambda q: reads.recent(db, Query(q.since, limit=50))),
        ("cache", lambda q: reads.cache_and_drift(db, q, catalog)),
    ]
    for by in ("model", "project", "session", "key", "client"):
        views.append((f"sessions by={by} limit=50", lambda q, by=by: reads.groups(db, Query(q.since, by=by, limit=50))))
    for by in ("model", "project", "session"):
        views.append((f"timeseries by={by} step=day", lambda q, by=by: reads.timeseries(db, Query(q.since, by=by, step="day"), now)))
        views.append((f"timeseries by={by} step=hour (30d)", lambda q, by=by: reads.timeseries(db, Query(q.since, by=by, step="hour"), now)))
    for name, view in views:
        month = _median(lambda: view(Query(since=now - timedelta(days=30))))
        # Hourly steps over all time are refused (more than 2,400 points), as the endpoint does.
        whole = None if "step=hour" in name else _median(lambda: view(Query()))
        print(f"{name:44} {month:7.3f}s {'' if whole is None else f'{whole:8.3f}s'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
