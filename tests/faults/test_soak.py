"""A bounded soak: 3,000 mixed requests with injected faults through a subprocess proxy; no lost rows, no fd or RSS growth.

The long form (50,000 requests) is bench/soak.py; this one is sized for CI on two cores.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp

from tests.faults.conftest import CHAT, KEY, read_rows, wait_for

TOTAL = 3000
WARM_UP = 600
CONCURRENCY = 32
FD_BOUND = 16
RSS_BOUND_MIB = 24

# (weight, X-Fake flags, stream, client leaves early)
MIX = [
    (40, "", True, False),
    (20, "", False, False),
    (6, "error500", False, False),
    (6, "error429", True, False),
    (5, "error503", False, False),
    (5, "drop", True, False),
    (5, "midstream-error", True, False),
    (4, "no-usage", True, False),
    (4, "garbage", True, False),
    (5, "", True, True),
]


KINDS: dict[str, str] = {}  # session -> the fault it was sent with ("leave" for a client that left)


async def _one(session: aiohttp.ClientSession, base: str, i: int, rng: random.Random) -> None:
    _, flags, stream, leave = rng.choices(MIX, weights=[m[0] for m in MIX])[0]
    KINDS[f"q{i}"] = "leave" if leave else flags or ("stream" if stream else "json")
    headers = {"Authorization": f"Bearer {KEY}", "X-Spend-Session": f"q{i}", "X-Fake": flags}
    if leave:
        headers.update({"X-Fake-Chunks": "30", "X-Fake-Delay-Ms": "10"})
    try:
        async with session.post(f"{base}/chat/completions", json={**CHAT, "stream": stream}, headers=headers) as response:
            if leave:
                await response.content.readany()
                response.close()
                return
            await response.read()
    except aiohttp.ClientPayloadError:
        assert "drop" in flags


async def test_soak_mixed_faults_lose_no_rows_and_leak_nothing(spawn_proxy: Any, fake_process: Any) -> None:
    proxy = await spawn_proxy(fake_process.url("/api/v1"), log_level="warning")
    rng = random.Random(7)
    KINDS.clear()
    samples: list[tuple[int, int, int]] = []  # (requests done, rss KiB, fds) while running
    done = 0

    async def phase(first: int, last: int) -> tuple[int, int]:
        """Run requests first..last-1, then let back-fills and closes settle: (idle RSS KiB, idle fds)."""
        nonlocal done
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(first, last):
            queue.put_nowait(i)

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal done
            while not queue.empty():
                await _one(session, proxy.base, queue.get_nowait(), rng)
                done += 1
                if done % 200 == 0:
                    samples.append((done, proxy.rss_kib(), proxy.fds()))

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
            await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
        # Cut streams are back-filled 1 s later; the pool keeps some idle upstream connections.
        await asyncio.sleep(1.5)
        return proxy.rss_kib(), proxy.fds()

    warm_rss, warm_fds = await phase(0, WARM_UP)
    end_rss, end_fds = await phase(WARM_UP, TOTAL)
    assert done == TOTAL
    print(f"warm: rss={warm_rss} KiB fds={warm_fds}; end: rss={end_rss} KiB fds={end_fds}; samples={samples}")

    await wait_for(lambda: len(read_rows(proxy.db)) == TOTAL, timeout=15, what="every row written")
    rows = read_rows(proxy.db)
    assert {r["session"] for r in rows} == {f"q{i}" for i in range(TOTAL)}
    expected = {
        "stream": ("ok", None), "json": ("ok", None), "error500": ("upstream_error", "http_500"),
        "error429": ("upstream_error", "http_429"), "error503": ("upstream_error", "http_503"),
        "drop": ("aborted", "upstream_reset"), "leave": ("aborted", "client_disconnected"),
        "midstream-error": ("upstream_error", "502"), "no-usage": ("ok", None), "garbage": ("ok", None),
    }
    wrong = [(KINDS[r["session"]], r["outcome"], r["error"]) for r in rows if expected[KINDS[r["session"]]] != (r["outcome"], r["error"])]
    assert wrong == [], wrong[:20]
    # Every stream cut before its usage got its billed cost from /generation.
    cut = [r for r in rows if KINDS[r["session"]] in ("drop", "leave", "no-usage")]
    assert cut and all(r["cost_source"] == "generation" for r in cut), [r["cost_source"] for r in cut]
    assert end_fds - warm_fds <= FD_BOUND
    # While running: open sockets follow the concurrency, not the number of requests served.
    assert max(s[2] for s in samples) <= warm_fds + 3 * CONCURRENCY, samples
    assert (end_rss - warm_rss) / 1024 <= RSS_BOUND_MIB
    assert max(s[1] for s in samples if s[0] > WARM_UP) - warm_rss <= RSS_BOUND_MIB * 1024, samples
    log = proxy.log_text()
    assert "Traceback" not in log and "records_lost" not in log and "record_dropped" not in log, log[-3000:]
