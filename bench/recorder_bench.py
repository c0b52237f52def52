"""The recorder's sustained rows/s: proxy.store.recorder.Recorder writing proxy.store.sqlite.open_db on a temp file, no HTTP.

Prints one JSON line. Also times storage.encode_record per row, the part of a write that runs in Python.

    python -m bench.recorder_bench --rows 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from proxy.store import records
from proxy.store.recorder import Recorder
from proxy.store.records import UsageRecord
from proxy.store.sqlite import encode_record, open_db


def sample_records(n: int) -> list[UsageRecord]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        UsageRecord(
            id=f"bench{i:012d}",
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


async def measure(rows: int, path: Path, time_cap_s: float = 120.0) -> dict[str, Any]:
    recs = sample_records(rows)
    sample = recs[: min(rows, 20_000)]
    t0 = time.perf_counter()
    for rec in sample:
        encode_record(rec)
    encode_us = (time.perf_counter() - t0) / len(sample) * 1e6

    db = await open_db(path)
    recorder = Recorder(db)
    writer = asyncio.create_task(recorder.run(), name="bench-recorder")
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
    finally:
        writer.cancel()
        try:
            await writer
        except asyncio.CancelledError:
            pass
        await recorder.drain()
        await db.close()
    check = sqlite3.connect(path)
    try:
        stored = check.execute("SELECT count(*) FROM requests").fetchone()[0]
    finally:
        check.close()
    return {
        "rows": rows,
        "written": recorder.written,
        "stored": stored,
        "dropped": recorder.dropped,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(recorder.written / elapsed) if elapsed > 0 else None,
        "encode_us_per_row": round(encode_us, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="recorder sustained rows/s")
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-recorder-") as tmp:
        result = asyncio.run(measure(args.rows, Path(tmp) / "rec.db"))
    print("RECJSON " + json.dumps(result), flush=True)
    return 0 if result["stored"] == args.rows else 1


if __name__ == "__main__":
    sys.exit(main())
