"""`serve --workers 2` against `--workers 1`: req/s at c=64 (wrk), rows recorded, and with a block budget.

    python -m bench.workers_bench                 # 3 rounds, no budget and with a budget, about 2 minutes
    python -m bench.workers_bench --rounds 1 --duration 3

Nothing is pinned: two workers need both cores, and the zero-latency upstream (bench/upstream.py)
and wrk share them, as they would on a real 2-core box. Each round starts every proxy afresh on a
new SQLite file and runs 1 and 2 workers back to back, so a busy machine loads both alike; rows are
counted after the proxy stopped: at least what wrk got answered (a request wrk cut off at its end
is recorded too).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.procs import Procs, cpu_seconds, free_port, wait_ready
from bench.run import BUDGET, LUA

ROOT = Path(__file__).resolve().parents[1]


def _wrk(procs: Procs, url: str, conns: int, duration: int) -> dict[str, Any]:
    name = f"wrk-{conns}"
    proc = procs.start(name, ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "10s", "-s", str(LUA), url], None)
    try:
        proc.wait(duration + 30)
    finally:
        procs.stop(name)
    for line in procs.log_tail(name, 50).splitlines():
        if line.startswith("WRKJSON "):
            data: dict[str, Any] = json.loads(line[8:])
            return data
    raise RuntimeError(f"wrk printed no result:\n{procs.log_tail(name)}")


def _tree_cpu(pid: int) -> float:
    """CPU seconds of the proxy and its workers (their own, not of children already gone)."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        children = []
    return sum(cpu_seconds(p) for p in (pid, *children))


def one(procs: Procs, tmp: Path, upstream_port: int, workers: int, budget: bool, duration: int) -> dict[str, Any]:
    port = free_port()
    db = tmp / f"w{workers}-{budget}-{port}.db"
    config = tmp / f"w{workers}.yaml"
    config.write_text(
        f"host: 127.0.0.1\nport: {port}\nupstream: http://127.0.0.1:{upstream_port}/api/v1\ndb: {db}\n"
        "shutdown_grace_s: 5\ncatalog: {refresh_hours: 0}\nmetrics: {enabled: true}\n" + (BUDGET if budget else "")
    )
    name = f"proxy-{workers}"
    procs.start(name, [sys.executable, "-m", "proxy", "serve", "--quiet", "--config", str(config), "--workers", str(workers)], None, cwd=ROOT)
    wait_ready(port, "/healthz")
    url = f"http://127.0.0.1:{port}/api/v1/chat/completions"
    warm = _wrk(procs, url, 64, 1)  # warm-up (every worker's first requests)
    before = _tree_cpu(procs.pid(name))
    result = _wrk(procs, url, 64, duration)
    cpu = _tree_cpu(procs.pid(name)) - before
    code = procs.stop(name)
    connection = sqlite3.connect(db)
    try:
        rows = connection.execute("SELECT count(*) FROM requests").fetchone()[0]
    finally:
        connection.close()
    errors = sum(result[k] for k in result if k.startswith("errors_"))
    return {
        "workers": workers, "budget": budget, "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1000, "p99_ms": result["p99_us"] / 1000, "errors": errors,
        "cpu_us_per_request": cpu / result["requests"] * 1e6, "rows": rows, "answered": warm["requests"] + result["requests"], "exit": code,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as name:
        tmp = Path(name)
        procs = Procs(tmp)
        try:
            upstream_port = free_port()
            procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(upstream_port)], None, cwd=ROOT)
            wait_ready(upstream_port)
            results = []
            for index in range(args.rounds):
                for budget in (False, True):
                    for workers in (1, 2):
                        r = one(procs, tmp, upstream_port, workers, budget, args.duration)
                        r["round"] = index
                        results.append(r)
                        print(json.dumps(r), flush=True)
        finally:
            procs.stop_all()
    print(f"\n{'workers':>7} {'budget':>6} {'req/s c=64 median (min-max)':>30} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} {'errors':>6}")
    for budget in (False, True):
        for workers in (1, 2):
            rs = [r for r in results if r["workers"] == workers and r["budget"] == budget]
            rps = [r["rps"] for r in rs]
            print(
                f"{workers:>7} {'yes' if budget else 'no':>6} {statistics.median(rps):>12.0f} ({min(rps):.0f}-{max(rps):.0f})"
                f"{'':>8} {statistics.median(r['p50_ms'] for r in rs):>7.1f} {statistics.median(r['p99_ms'] for r in rs):>7.1f}"
                f" {statistics.median(r['cpu_us_per_request'] for r in rs):>10.0f} {sum(r['errors'] for r in rs):>6}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
