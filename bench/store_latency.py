"""Added latency of a proxied request with PostgreSQL vs SQLite storage.

Starts the zero-latency upstream (bench/upstream.py), a throwaway local PostgreSQL cluster (as the
tests do), and two proxies on it: one writing SQLite, one writing PostgreSQL. Then sends the same
small chat completion, one at a time and round-robin over direct / sqlite / postgresql, and prints
one JSON line with the p50/p99 of each and what each proxy adds over direct. Rows are checked
afterwards (each proxy recorded every request). `--budgets` adds a proxy on each engine with a
block budget every request matches: on PostgreSQL its admission is a transaction on the shared
budget ledger (replicas share budgets), on SQLite the in-memory ledger. Both proxies share the server core, so run it on
an otherwise idle machine for figures to compare with bench.run's.

    python -m bench.store_latency --requests 3000
    python -m bench.store_latency --requests 2000 --budgets
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.procs import Procs, cores, free_port, wait_ready

CHAT = "/api/v1/chat/completions"
BODY = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


BUDGET = "budgets: [{name: bench, limit_usd: 1000000, period: day, action: block}]\n"


def _config(tmp: Path, name: str, port: int, upstream_port: int, db: str, budget: bool = False) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"host: 127.0.0.1\nport: {port}\nupstream: http://127.0.0.1:{upstream_port}/api/v1\ndb: {db}\n"
        "shutdown_grace_s: 5\ncatalog: {refresh_hours: 0}\nmetrics: {enabled: true}\n" + (BUDGET if budget else "")
    )
    return path


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


async def _measure(urls: dict[str, str], requests: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in urls}
    headers = {"Authorization": "Bearer sk-or-v1-bench-" + "0" * 40}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(50):  # warm-up: connections, pools, first-call imports
            for url in urls.values():
                async with session.post(url, json=BODY, headers=headers) as response:
                    await response.read()
        for _ in range(requests):
            for name, url in urls.items():
                start = time.perf_counter()
                async with session.post(url, json=BODY, headers=headers) as response:
                    await response.read()
                    assert response.status == 200, response.status
                times[name].append((time.perf_counter() - start) * 1000)
    return times


async def _pg_rows(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM requests"))
    finally:
        await connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="added latency, PostgreSQL vs SQLite storage")
    parser.add_argument("--requests", type=int, default=3000, help="requests per target (default 3000)")
    parser.add_argument("--budgets", action="store_true", help="also a proxy per engine with a matching block budget")
    args = parser.parse_args(argv)
    from tests.pg_cluster import Cluster, find_bin

    bindir = find_bin()
    if bindir is None:
        print("bench: PostgreSQL's initdb not found (Debian package postgresql)", file=sys.stderr)
        return 2
    server_core, load_core = cores()
    py = sys.executable
    cluster = Cluster(bindir)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Procs(tmp)
        try:
            cluster.start()
            pg_url = cluster.create_database()
            dbs = {"sqlite": str(tmp / "proxy.db"), "postgresql": pg_url}
            if args.budgets:
                budget_pg = cluster.create_database()
                dbs |= {"sqlite_budget": str(tmp / "budget.db"), "postgresql_budget": budget_pg}
            ports = {"direct": free_port(), **{name: free_port() for name in dbs}}
            procs.start("upstream", [py, "-m", "bench.upstream", "--port", str(ports["direct"])], load_core)
            wait_ready(ports["direct"])
            for name, db in dbs.items():
                config = _config(tmp, name, ports[name], ports["direct"], db, budget=name.endswith("_budget"))
                procs.start(name, [py, "-m", "proxy", "serve", "--config", str(config)], server_core)
            for name in dbs:
                wait_ready(ports[name], "/healthz")
            urls = {name: f"http://127.0.0.1:{port}{CHAT}" for name, port in ports.items()}
            times = asyncio.run(_measure(urls, args.requests))
            time.sleep(1.0)  # the writers' last batches
            for name in dbs:
                procs.stop(name)
            expected = 50 + args.requests
            check = sqlite3.connect(tmp / "proxy.db")
            try:
                sqlite_rows = check.execute("SELECT count(*) FROM requests").fetchone()[0]
            finally:
                check.close()
            pg_rows = asyncio.run(_pg_rows(pg_url))
        finally:
            procs.stop_all()
            cluster.remove()
    result: dict[str, Any] = {"requests": args.requests, "rows": {"sqlite": sqlite_rows, "postgresql": pg_rows}}
    p50 = {name: statistics.median(values) for name, values in times.items()}
    p99 = {name: _quantile(values, 0.99) for name, values in times.items()}
    for name in times:
        result[name] = {"p50_ms": round(p50[name], 3), "p99_ms": round(p99[name], 3)}
        if name != "direct":
            result[name]["added_p50_ms"] = round(p50[name] - p50["direct"], 3)
            result[name]["added_p99_ms"] = round(p99[name] - p99["direct"], 3)
    print("STOREJSON " + json.dumps(result), flush=True)
    return 0 if sqlite_rows == pg_rows == expected else 1


if __name__ == "__main__":
    sys.exit(main())
