"""Process faults: SIGTERM with streams in flight, SIGKILL, a locked database, a failing catalog refresh."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import time
from typing import Any

import aiohttp
import pytest

from tests.faults.conftest import CHAT, KEY, metric_value, read_rows, wait_for
from tests.fake_openrouter import FAULTS

AUTH = {"Authorization": f"Bearer {KEY}"}


async def test_sigterm_with_200_streams_in_flight(spawn_proxy: Any, fake_process: Any) -> None:
    grace = 2.0
    proxy = await spawn_proxy(fake_process.url("/api/v1"), shutdown_grace_s=grace)
    n = 200
    answered: dict[str, str] = {}  # session -> "complete" | "broken"
    headers_seen = 0

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal headers_seen
        # Half finish well inside the grace period (0.6 s), half would need ten seconds.
        chunks = "2" if i % 2 else "100"
        headers = {**AUTH, "X-Spend-Session": f"t{i}", "X-Fake-Chunks": chunks, "X-Fake-Delay-Ms": "100"}
        async with session.post(f"{proxy.base}/chat/completions", json={**CHAT, "stream": True}, headers=headers) as response:
            assert response.status == 200
            headers_seen += 1
            try:
                text = await response.text()
            except aiohttp.ClientError:
                answered[f"t{i}"] = "broken"
                return
        answered[f"t{i}"] = "complete" if text.rstrip().endswith("data: [DONE]") else "broken"

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.create_task(one(session, i)) for i in range(n)]
        await wait_for(lambda: headers_seen == n, timeout=15, what="every stream answered")
        signalled = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*tasks)
        code = await proxy.wait_exit(timeout=10)
    # aiohttp waits the grace twice (for handlers, then for their cancellation) before cleanup.
    took = time.monotonic() - signalled
    assert took < 2 * grace + 3, f"shutdown took {took:.1f} s:\n{proxy.log_text()[-3000:]}"
    assert code == 0, proxy.log_text()[-2000:]
    assert len(answered) == n
    short = {f"t{i}" for i in range(n) if i % 2}
    # On a loaded machine a short stream may still be cut; most must finish.
    assert sum(answered[s] == "complete" for s in short) >= 0.9 * len(short), answered
    assert all(answered[s] == "broken" for s in answered.keys() - short), answered
    rows = {r["session"]: r for r in read_rows(proxy.db)}
    assert len(rows) == n
    for session_name, seen in answered.items():
        row = rows[session_name]
        if seen == "complete":
            assert (row["outcome"], row["cost_source"]) == ("ok", "reported")
        else:
            assert (row["outcome"], row["error"]) == ("aborted", "cancelled")
    assert "records_lost" not in proxy.log_text()


async def test_sigkill_leaves_an_intact_database_and_a_clean_restart(spawn_proxy: Any, fake_process: Any) -> None:
    proxy = await spawn_proxy(fake_process.url("/api/v1"))
    finished: list[tuple[str, float]] = []
    stop = asyncio.Event()

    async def worker(session: aiohttp.ClientSession, w: int) -> None:
        i = 0
        while not stop.is_set():
            name = f"k{w}-{i}"
            i += 1
            stream = i % 2 == 0
            try:
                async with session.post(
                    f"{proxy.base}/chat/completions", json={**CHAT, "stream": stream},
                    headers={**AUTH, "X-Spend-Session": name},
                ) as response:
                    await response.read()
                    if response.status == 200:
                        finished.append((name, time.monotonic()))
            except aiohttp.ClientError:
                return

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        workers = [asyncio.create_task(worker(session, w)) for w in range(16)]
        await asyncio.sleep(2.0)
        killed_at = time.monotonic()
        proxy.proc.send_signal(signal.SIGKILL)
        await proxy.wait_exit(timeout=5)
        stop.set()
        await asyncio.gather(*workers)

    assert len(finished) > 100
    db = sqlite3.connect(proxy.db)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        present = {row[0] for row in db.execute("SELECT session FROM requests")}
    finally:
        db.close()
    # The writer commits a batch every 50 ms (Recorder.batch_wait_s) plus the write itself: only
    # the last moments can be missing, and what is missing is exactly those moments.
    window_s = 0.5
    settled = {name for name, at in finished if at < killed_at - window_s}
    assert settled <= present, f"{len(settled - present)} rows lost older than {window_s} s"
    lost = {name for name, _ in finished} - present
    rate = len(finished) / 2.0
    assert len(lost) <= rate * window_s, f"{len(lost)} lost at {rate:.0f} req/s"

    again = await spawn_proxy(fake_process.url("/api/v1"), db=proxy.db)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{again.base}/chat/completions", json=CHAT, headers={**AUTH, "X-Spend-Session": "after"}) as response:
            assert response.status == 200
    await wait_for(lambda: any(r["session"] == "after" for r in read_rows(again.db)), what="row after restart")
    assert present <= {r["session"] for r in read_rows(again.db)}
    log = again.log_text()
    assert "ERROR" not in log and "Traceback" not in log, log


async def _lock(path: Any) -> sqlite3.Connection:
    """BEGIN EXCLUSIVE without a busy wait: a blocking wait here would stall the proxy's own loop."""
    locker = sqlite3.connect(path, isolation_level=None, timeout=0)
    for _ in range(200):
        try:
            locker.execute("BEGIN EXCLUSIVE")
            return locker
        except sqlite3.OperationalError:
            await asyncio.sleep(0.02)
    raise AssertionError("could not lock the database")


async def test_locked_database_holds_records_and_writes_them_after(
    proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    locker = await _lock(proxy.db_path)
    try:
        for i in range(20):
            response = await proxy.client.post(
                "/api/v1/chat/completions", json={**CHAT, "stream": i % 2 == 0}, headers={**AUTH, "X-Spend-Session": f"l{i}"}
            )
            assert response.status == 200
            await response.read()

        async def errors() -> float:
            return metric_value(await proxy.metrics_text(), "openrouter_proxy_recorder_write_errors_total")

        for _ in range(200):
            if await errors() > 0:
                break
            await asyncio.sleep(0.05)
        assert await errors() > 0
        # Requests keep flowing while the writer waits.
        response = await proxy.client.post("/api/v1/chat/completions", json=CHAT, headers={**AUTH, "X-Spend-Session": "l20"})
        assert response.status == 200
        health = await (await proxy.client.get("/healthz")).json()
        assert health["queue_depth"] >= 1
        # (Not read from the file: a new reader may itself meet the lock.)
        assert metric_value(await proxy.metrics_text(), "openrouter_proxy_recorder_rows_total") == 0
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    for _ in range(300):
        if len(proxy.rows()) == 21:
            break
        await asyncio.sleep(0.05)
    assert {r["session"] for r in proxy.rows()} == {f"l{i}" for i in range(21)}
    assert any("event=record_write_failed" in r.getMessage() for r in caplog.records)
    text = await proxy.metrics_text()
    assert metric_value(text, "openrouter_proxy_recorder_dropped_total") == 0


async def test_failed_catalog_refresh_keeps_the_last_good_catalog(start_proxy: Any, make_config: Any, upstream: Any) -> None:
    proxy = await start_proxy(make_config(catalog_refresh_s=0.2))

    async def health() -> dict[str, Any]:
        return dict(await (await proxy.client.get("/healthz")).json())

    for _ in range(100):
        if (await health())["catalog_source"] == str(upstream.make_url("/api/v1")):
            break
        await asyncio.sleep(0.05)
    good = await health()
    assert good["catalog_source"] == str(upstream.make_url("/api/v1")) and good["catalog_models"] > 0
    upstream.app[FAULTS].add("garbage")

    async def failures() -> float:
        return metric_value(await proxy.metrics_text(), "openrouter_proxy_catalog_refresh_failures_total")

    for _ in range(100):
        if await failures() >= 2:
            break
        await asyncio.sleep(0.05)
    upstream.app[FAULTS].discard("garbage")
    upstream.app[FAULTS].add("error500")
    before = await failures()
    for _ in range(100):
        if await failures() >= before + 2:
            break
        await asyncio.sleep(0.05)
    assert await failures() >= before + 2 >= 4
    after = await health()
    assert (after["catalog_models"], after["catalog_source"]) == (good["catalog_models"], good["catalog_source"])
    assert metric_value(await proxy.metrics_text(), "openrouter_proxy_catalog_models") == good["catalog_models"]
    # Pricing still works from the kept catalog.
    upstream.app[FAULTS].clear()
    response = await proxy.client.post("/api/v1/chat/completions", json=CHAT, headers={**AUTH, "X-Fake": "no-cost"})
    assert response.status == 200
    await proxy.settle()
    [row] = proxy.rows()
    assert row["cost_source"] == "catalog" and row["cost_usd"] is not None
