"""The aiohttp load generator for what wrk cannot measure: streams (time to first token, total time), slow streams, big bodies.

Every call is bounded: a fixed number of requests, each with a total timeout.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.upstream import stream_length

AUTH = {"Authorization": "Bearer sk-or-v1-bench0000000000000000", "Content-Type": "application/json"}
STREAM_BODY = b'{"model":"openai/gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}'


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class StreamStats:
    ttft_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    peak_open: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "completed": self.completed,
            "failed": self.failed,
            "errors": self.errors,
            "peak_open": self.peak_open,
            "ttft_p50_ms": pct(self.ttft_ms, 50),
            "ttft_p99_ms": pct(self.ttft_ms, 99),
            "total_p50_ms": pct(self.total_ms, 50),
            "total_p99_ms": pct(self.total_ms, 99),
        }


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=False),
        timeout=aiohttp.ClientTimeout(total=120),
        auto_decompress=False,
    )


async def streams(
    url: str,
    *,
    count: int,
    concurrency: int,
    chunks: int,
    delay_ms: float,
    session_tag: str,
    ramp_per_s: float | None = None,
    on_tick: Callable[[], None] | None = None,
) -> StreamStats:
    """`count` streams, at most `concurrency` open at once; each must deliver every byte."""
    expect = stream_length(chunks)
    headers = {**AUTH, "X-Bench-Chunks": str(chunks), "X-Bench-Delay-Ms": str(delay_ms), "X-Spend-Session": session_tag}
    stats = StreamStats()
    gate = asyncio.Semaphore(concurrency)
    open_now = 0

    async def one(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal open_now
        if ramp_per_s:
            await asyncio.sleep(index / ramp_per_s)
        async with gate:
            open_now += 1
            stats.peak_open = max(stats.peak_open, open_now)
            start = time.perf_counter()
            first = None
            got = 0
            try:
                async with session.post(url, data=STREAM_BODY, headers=headers) as resp:
                    async for chunk in resp.content.iter_any():
                        if first is None and chunk:
                            first = time.perf_counter()
                        got += len(chunk)
                    end = time.perf_counter()
                if resp.status != 200 or got != expect:
                    raise ValueError(f"status {resp.status}, {got} of {expect} bytes")
                stats.completed += 1
                stats.ttft_ms.append(((first or end) - start) * 1000)
                stats.total_ms.append((end - start) * 1000)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                stats.failed += 1
                key = type(exc).__name__
                stats.errors[key] = stats.errors.get(key, 0) + 1
            finally:
                open_now -= 1

    async def ticker() -> None:
        while on_tick is not None:
            on_tick()
            await asyncio.sleep(0.2)

    async with _session(limit=0) as session:
        tick = asyncio.create_task(ticker(), name="bench-ticker")
        try:
            await asyncio.gather(*(one(session, i) for i in range(count)))
        finally:
            tick.cancel()
    return stats


def big_body(size: int) -> bytes:
    head = b'{"model":"openai/gpt-4o","messages":[{"role":"user","content":"'
    tail = b'"}]}'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


async def posts(url: str, body: bytes, count: int) -> dict[str, Any]:
    """`count` sequential non-streamed POSTs of `body` on one kept-alive connection (after one warm-up)."""
    times: list[float] = []
    failed = 0
    async with _session(limit=1) as session:
        for index in range(count + 1):
            start = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=AUTH) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if not ok:
                failed += 1
            elif index > 0:
                times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": statistics.median(times) if times else None, "failed": failed, "n": len(times)}
