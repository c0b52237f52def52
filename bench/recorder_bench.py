"""The recorder's sustained rows/s: proxy.store.recorder.Recorder writing a store, no HTTP.

SQLite on a temp file by default; `--postgres` starts a throwaway local PostgreSQL cluster
(Debian's binaries, as the tests do) and `--db postgresql://...` uses an existing database.
Prints one JSON line. Also times storage.encode_record per row, the part of a SQLite write that runs in Python.

    python -m bench.recorder_bench --rows 200000
    python -m bench.recorder_bench --rows 200000 --postgres
    python -m bench.recorder_bench --rows 20000 --max-batch 50   # transactions of a busy proxy's size
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from proxy.server.forward import _request_id
from proxy.store import records
from proxy.store.engine import open_store
from proxy.store.recorder import Recorder
from proxy.store.records import UsageRecord
from proxy.store.sqlite import encode_record


def sample_records(n: int, uuid4_ids: bool = False) -> list[UsageRecord]:
    """Ids as the proxy makes them (time-ordered UUIDv7), or random UUID4s as it did before."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        UsageRecord(
            id=uuid.uuid4().hex if uuid4_ids else _request_id(),
            started_at=start + timedelta(milliseconds=i),
            finished_at=start + timedelta(milliseconds=i + 900),
            method="POST",
            endpoint="chat/completions",
            model_requested="openai/gpt-4o",
            model="openai/gpt-4o",
            provider="OpenAI",
            generation_id=f"gen-{i}",
            key_fingerprint="3f9a0c1d2e4b5a6c",
            key_alias=None,
            project="bench",
            session=f"s{i % 50}",
            client="bench",
            streamed=bool(i % 2),
            status=200,
            outcome=records.OK,
            error=None,
            input_tokens=1200,
            output_tokens=300,
            cached_tokens=200,
            cache_write_tokens=0,
            reasoning_tokens=0,
            web_search_requests=None,
            cost_usd=Decimal("0.00575"),
            cost_reported_usd=Decimal("0.00575"),
            cost_catalog_usd=Decimal("0.00575"),
            cost_source=records.COST_REPORTED,
            is_free=False,
            is_byok=False,
            ttfb_ms=12.5,
            duration_ms=900.0,
        )
        for i in range(n)
    ]


async def measure(
    rows: int, path: Path | str, time_cap_s: float = 120.0, max_batch: int = 2_000, uuid4_ids: bool = False
) -> dict[str, Any]:
    recs = sample_records(rows, uuid4_ids)
    sample = recs[: min(rows, 20_000)]
    t0 = time.perf_counter()
    for rec in sample:
        encode_record(rec)
    encode_us = (time.perf_counter() - t0) / len(sample) * 1e6

    db = await open_store(path)
    recorder = Recorder(db, max_batch=max_batch)
    writer = asyncio.create_task(recorder.run(), name="bench-recorder")
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + time_cap_s
    queued = 0
    try:
        # Keep the queue well below its bound so nothing is dropped: we measure the writer, not the cap.
        while queued < rows and time.perf_counter() < deadline:
            room = 50_000 - recorder.depth()
            for rec in recs[queued : queued + max(0, min(room, 5_000))]:
                recorder.record(rec)
                queued += 1
            await asyncio.sleep(0)
        while recorder.written < queued and time.perf_counter() < deadline:
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - start
        client_cpu = time.process_time() - cpu_start
        server_cpu = await _server_cpu_s(db)
    finally:
        writer.cancel()
        try:
            await writer
        except asyncio.CancelledError:
            pass
        await recorder.drain()
    try:
        stored = (await db.fetch("SELECT count(*) FROM requests"))[0][0]
    finally:
        await db.close()
    return {
        "engine": db.engine,
        "rows": rows,
        "max_batch": max_batch,
        "written": recorder.written,
        "stored": stored,
        "dropped": recorder.dropped,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(recorder.written / elapsed) if elapsed > 0 else None,
        "encode_us_per_row": round(encode_us, 2),
        # CPU seconds, so a run on a shared machine can be read: rows/s if the writer had a core
        # of its own and the server another.
        "client_cpu_s": round(client_cpu, 2),
        "server_cpu_s": None if server_cpu is None else round(server_cpu, 2),
        "rows_per_cpu_s": round(recorder.written / (client_cpu + (server_cpu or 0))) if client_cpu else None,
    }


async def _server_cpu_s(db: Any) -> float | None:
    """CPU time of this database's server processes (a local PostgreSQL only), from /proc."""
    if db.engine != "postgresql":
        return None
    total = 0.0
    for (pid,) in await db.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="recorder sustained rows/s")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--uuid4-ids", action="store_true", help="random ids, as the proxy made them before issue 15's round three")
    parser.add_argument("--db", help="an existing postgresql:// database (its requests table should be empty)")
    parser.add_argument("--postgres", action="store_true", help="write to a throwaway local PostgreSQL cluster")
    parser.add_argument(
        "--max-batch", type=int, default=2_000, help="rows per transaction at most (the recorder's default 2,000; a busy proxy's are ~50-200)"
    )
    args = parser.parse_args(argv)
    if args.db:
        result = asyncio.run(measure(args.rows, args.db, max_batch=args.max_batch, uuid4_ids=args.uuid4_ids))
    elif args.postgres:
        from tests.pg_cluster import Cluster, find_bin

        bindir = find_bin()
        if bindir is None:
            print("bench: PostgreSQL's initdb not found (Debian package postgresql)", file=sys.stderr)
            return 2
        cluster = Cluster(bindir)
        try:
            cluster.start()
            result = asyncio.run(measure(args.rows, cluster.create_database(), max_batch=args.max_batch, uuid4_ids=args.uuid4_ids))
        finally:
            cluster.remove()
    else:
        with tempfile.TemporaryDirectory(prefix="bench-recorder-") as tmp:
            result = asyncio.run(measure(args.rows, Path(tmp) / "rec.db", max_batch=args.max_batch, uuid4_ids=args.uuid4_ids))
    print("RECJSON " + json.dumps(result), flush=True)
    return 0 if result["stored"] == args.rows else 1


if __name__ == "__main__":
    sys.exit(main())
