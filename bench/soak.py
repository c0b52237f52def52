"""A bounded soak: mixed traffic through the proxy while its RSS and open fds are sampled every second.

    python -m bench.soak                      # 50,000 requests, at most 15 minutes
    python -m bench.soak --requests 5000      # a short one

The mix: plain completions, fast and slow streams, upstream 500s, streams the upstream cuts, and
clients that hang up after the first chunk. It passes when, after warm-up, RSS grows by at most
--rss-growth-mib and open fds by at most --fd-growth, and the proxy's SQLite holds exactly one row
per request it answered (or saw the client leave). It stops by itself at --time-cap-s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from bench.client import AUTH, STREAM_BODY
from bench.procs import Procs, cores, free_port, open_fds, status_kib, wait_ready
from bench.run import _proxy_config, _run_async, budget_accepted

PLAIN_BODY = b'{"model":"openai/gpt-4o","messages":[{"role":"user","content":"hi"}]}'
TAG = "soak"
# What the client must see for each kind; anything else (a 500 from the proxy itself, a cut
# stream that should have completed) fails the soak.
EXPECTED = {
    "plain:http_200", "stream:http_200", "slow_stream:http_200", "error500:http_500", "drop:cut",
    "disconnect:disconnected",
}
# (kind, weight)
MIX = (("plain", 55), ("stream", 20), ("slow_stream", 5), ("error500", 8), ("drop", 6), ("disconnect", 6))


def _headers(kind: str) -> dict[str, str]:
    h = {**AUTH, "X-Spend-Session": TAG}
    if kind in ("stream", "drop"):
        h["X-Bench-Chunks"] = "10"
    if kind == "drop":
        h["X-Bench-Fail"] = "drop"
        h["X-Bench-Delay-Ms"] = "1"
    if kind in ("slow_stream", "disconnect"):
        h["X-Bench-Chunks"] = "20"
        h["X-Bench-Delay-Ms"] = "5"
    if kind == "error500":
        h["X-Bench-Fail"] = "500"
    return h


async def _one(session: aiohttp.ClientSession, url: str, kind: str) -> str:
    body = PLAIN_BODY if kind in ("plain", "error500") else STREAM_BODY
    async with session.post(url, data=body, headers=_headers(kind)) as resp:
        if kind == "disconnect":
            await resp.content.readany()
            resp.close()  # hang up mid-stream: the proxy must still record the row
            return "disconnected"
        try:
            await resp.read()
        except aiohttp.ClientPayloadError:
            return "cut" if kind == "drop" else "unexpected_cut"
        return f"http_{resp.status}"


async def soak(url: str, pid: int, total: int, concurrency: int, time_cap_s: float, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    outcomes: Counter[str] = Counter()
    issued = 0
    done = 0
    samples: list[tuple[float, int, int]] = []
    start = time.monotonic()
    deadline = start + time_cap_s
    stop_sampling = asyncio.Event()

    async def sampler() -> None:
        while not stop_sampling.is_set():
            samples.append((time.monotonic() - start, status_kib(pid, "VmRSS"), open_fds(pid)))
            try:
                await asyncio.wait_for(stop_sampling.wait(), 1.0)
            except TimeoutError:
                pass

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal issued, done
        while issued < total and time.monotonic() < deadline:
            issued += 1
            kind = rng.choices(kinds, weights)[0]
            try:
                outcome = await _one(session, url, kind)
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = f"client_error:{type(exc).__name__}"
            outcomes[f"{kind}:{outcome}"] += 1
            done += 1
            if done % 5000 == 0:
                rss, fds = samples[-1][1:] if samples else (0, 0)
                print(f"  {done} requests, {time.monotonic() - start:.0f} s, RSS {rss / 1024:.1f} MiB, fds {fds}", flush=True)

    sampling = asyncio.create_task(sampler(), name="soak-sampler")
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    await asyncio.sleep(2)  # let the proxy finish what the hung-up clients left
    stop_sampling.set()
    await sampling
    return {"issued": issued, "done": done, "outcomes": dict(outcomes), "samples": samples,
            "seconds": time.monotonic() - start, "capped": issued < total}


def _rows(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM requests WHERE session = ?", (TAG,)).fetchone()[0])
    finally:
        conn.close()


def _growth(samples: list[tuple[float, int, int]], warmup_s: float) -> tuple[float, float, float, float]:
    """(RSS MiB after warm-up, RSS growth MiB, fds after warm-up, fd growth): median of the first and last 5 samples."""
    steady = [s for s in samples if s[0] >= warmup_s] or samples
    head, tail = steady[:5], steady[-5:]
    rss0 = statistics.median(s[1] for s in head) / 1024
    rss1 = statistics.median(s[1] for s in tail) / 1024
    fd0 = statistics.median(s[2] for s in head)
    fd1 = statistics.median(s[2] for s in tail)
    return rss0, rss1 - rss0, fd0, fd1 - fd0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bounded soak of the proxy: RSS, fds, lost rows")
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--time-cap-s", type=float, default=900.0)
    parser.add_argument("--warmup-s", type=float, default=10.0)
    parser.add_argument("--rss-growth-mib", type=float, default=8.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--fd-growth", type=int, default=16, help="allowed open-fd growth after warm-up")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--proxy-src", type=Path, help="directory holding the proxy package to run (default: this checkout)")
    args = parser.parse_args(argv)

    server_core, load_core = cores()
    os.sched_setaffinity(0, {int(load_core)})
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Procs(tmp)
        try:
            with_budget, _ = budget_accepted(tmp, args.proxy_src)
            up, px = free_port(), free_port()
            procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(up)], load_core)
            wait_ready(up)
            config = _proxy_config(tmp, px, up, with_budget)
            procs.start("proxy", [sys.executable, "-m", "proxy", "serve", "--config", str(config)], server_core,
                        cwd=args.proxy_src)
            wait_ready(px, "/healthz")
            pid = procs.pid("proxy")
            print(f"soak: {args.requests} requests, concurrency {args.concurrency}, cap {args.time_cap_s:g} s, "
                  f"budget {'on' if with_budget else 'off'}", flush=True)
            result = _run_async(soak(f"http://127.0.0.1:{px}/api/v1/chat/completions", pid, args.requests,
                                     args.concurrency, args.time_cap_s, args.seed))
            db = tmp / "proxy.db"
            deadline = time.monotonic() + 20
            rows = _rows(db)
            while rows < result["done"] and time.monotonic() < deadline:
                time.sleep(0.2)
                rows = _rows(db)
            hwm = status_kib(pid, "VmHWM") / 1024
            procs.check_alive("proxy")
        except KeyboardInterrupt:
            print("interrupted; stopping everything", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()
    samples = result["samples"]
    assert isinstance(samples, list)
    rss0, rss_growth, fd0, fd_growth = _growth(samples, args.warmup_s)
    done = result["done"]
    print(f"\nsoak summary: {done} requests answered in {result['seconds']:.0f} s"
          f"{' (time cap hit)' if result['capped'] else ''}")
    for key, n in sorted(result["outcomes"].items()):
        print(f"  {key:<40} {n}")
    print(f"  RSS after warm-up {rss0:.1f} MiB, growth {rss_growth:+.1f} MiB (bound {args.rss_growth_mib:g}), peak {hwm:.1f} MiB")
    print(f"  open fds after warm-up {fd0:.0f}, growth {fd_growth:+.0f} (bound {args.fd_growth})")
    print(f"  rows recorded {rows} of {done} requests")
    failures = []
    if rss_growth > args.rss_growth_mib:
        failures.append(f"RSS grew {rss_growth:.1f} MiB after warm-up")
    if fd_growth > args.fd_growth:
        failures.append(f"open fds grew by {fd_growth:.0f}")
    if rows != done:
        failures.append(f"{done - rows} rows lost")
    unexpected = {k: v for k, v in result["outcomes"].items() if k not in EXPECTED}
    if unexpected:
        failures.append(f"unexpected outcomes {unexpected}")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
