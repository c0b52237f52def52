"""Client faults: a client that leaves mid-stream, one that reads slowly, and a thousand at once."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from typing import Any

import aiohttp

from tests.faults.conftest import CHAT, KEY, metric_value, read_rows, wait_for
from tests.fake_openrouter import DISCONNECTS, GENERATIONS

AUTH = {"Authorization": f"Bearer {KEY}"}


async def test_client_leaving_mid_stream_closes_upstream_and_still_bills(start_proxy: Any, make_config: Any, upstream: Any) -> None:
    proxy = await start_proxy(make_config(backfill_delays_s=(0.1, 0.2, 0.5)))
    warm = await proxy.client.post("/api/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
    await warm.read()
    await proxy.settle()
    await asyncio.sleep(0.1)
    baseline = len(asyncio.all_tasks())

    # 50 chunks 200 ms apart: ten seconds of stream, of which the client reads the start.
    headers = {**AUTH, "X-Fake-Chunks": "50", "X-Fake-Delay-Ms": "200", "X-Spend-Session": "leaver"}
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{proxy.base}/chat/completions", json={**CHAT, "stream": True}, headers=headers)
        assert response.status == 200
        first = await response.content.readuntil(b"word0")
        assert b"word0" in first
        left_at = time.monotonic()
        response.close()
    await wait_for(lambda: len(upstream.app[DISCONNECTS]) == 1, timeout=3, what="upstream saw the disconnect")
    assert time.monotonic() - left_at < 1.5

    def leaver() -> dict[str, Any] | None:
        rows = [r for r in proxy.rows() if r["session"] == "leaver"]
        return rows[0] if rows and rows[0]["cost_source"] == "generation" else None

    await wait_for(leaver, timeout=5, what="row back-filled")
    row = leaver()
    assert row is not None
    assert (row["outcome"], row["error"], row["status"]) == ("aborted", "client_disconnected", 200)
    assert row["generation_id"] == upstream.app[DISCONNECTS][0]
    billed = upstream.app[GENERATIONS][row["generation_id"]]["total_cost"]
    assert Decimal(row["cost_usd"]) == Decimal(str(billed))
    # No handler, upstream reader or back-fill task is left behind.
    await wait_for(lambda: len(asyncio.all_tasks()) <= baseline, timeout=3, what="tasks back to baseline")
    text = await proxy.metrics_text()
    assert metric_value(text, "openrouter_proxy_in_flight_requests") == 0


async def test_slow_reader_gets_backpressure_not_a_buffer(spawn_proxy: Any, upstream: Any) -> None:
    proxy = await spawn_proxy(str(upstream.make_url("/api/v1")))
    chunks, pad = 1500, 32 * 1024  # about 48 MiB of stream
    body = json.dumps({**CHAT, "stream": True}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=16 * 1024)
    writer.write(
        b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nX-Fake-Chunks: {chunks}\r\nX-Fake-Pad: {pad}\r\n".encode()
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    before = proxy.rss_kib()
    # Read nothing for a while: the upstream is willing to send everything at once.
    await asyncio.sleep(2.0)
    during = proxy.rss_kib()
    # A proxy that buffered the stream would have finished with the upstream and written its row.
    assert read_rows(proxy.db) == []
    data = bytearray(head)
    start = time.monotonic()
    while chunk := await reader.read(256 * 1024):
        data += chunk
    writer.close()
    assert time.monotonic() - start < 30
    assert len(data) > chunks * pad
    assert data.endswith(b"0\r\n\r\n") and b"data: [DONE]" in data[-64:]
    growth_mib = (during - before) / 1024
    print(f"rss before={before} KiB during={during} KiB")
    assert growth_mib < 16, f"proxy RSS grew {growth_mib:.1f} MiB while the client read nothing"
    await wait_for(lambda: len(read_rows(proxy.db)) == 1, what="row written")
    [row] = read_rows(proxy.db)
    assert row["outcome"] == "ok" and row["cost_source"] == "reported"


async def test_a_thousand_concurrent_streams_all_recorded(spawn_proxy: Any, fake_process: Any) -> None:
    proxy = await spawn_proxy(fake_process.url("/api/v1"))
    n = 1000
    peak = 0.0
    done = asyncio.Event()

    async def watch(session: aiohttp.ClientSession) -> None:
        nonlocal peak
        while not done.is_set():
            async with session.get(proxy.url("/metrics")) as response:
                peak = max(peak, metric_value(await response.text(), "openrouter_proxy_in_flight_requests"))
            await asyncio.sleep(0.1)

    async def one(session: aiohttp.ClientSession, i: int) -> bool:
        headers = {**AUTH, "X-Spend-Session": f"s{i}", "X-Fake-Chunks": "6", "X-Fake-Delay-Ms": "500"}
        async with session.post(f"{proxy.base}/chat/completions", json={**CHAT, "stream": True}, headers=headers) as response:
            text = await response.text()
        return response.status == 200 and text.rstrip().endswith("data: [DONE]")

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session, \
            aiohttp.ClientSession() as watcher_session:
        watcher = asyncio.create_task(watch(watcher_session))
        results = await asyncio.gather(*(one(session, i) for i in range(n)))
        done.set()
        await watcher
    assert all(results), results.count(False)
    assert peak >= n * 0.8, f"only {peak} streams were in flight at once"

    def complete() -> bool:
        return len(read_rows(proxy.db)) == n

    await wait_for(complete, timeout=10, what="every row written")
    rows = read_rows(proxy.db)
    assert {r["session"] for r in rows} == {f"s{i}" for i in range(n)}
    assert {r["outcome"] for r in rows} == {"ok"}
    assert all(r["cost_source"] == "reported" for r in rows)
