"""The benchmark: direct, a bare passthrough and the proxy side by side, against the targets of issues 6 and 15.

    python -m bench.run            # 3 rounds, ~6 minutes
    python -m bench.run --quick    # 1 short round, ~1 minute

The server under test runs on one core and the load generator plus the fake upstream on the
other. Each round starts every process afresh; the table quotes medians over rounds with the
spread (min-max). JSON goes to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import client
from bench.procs import (
    Procs,
    cores,
    cpu_seconds,
    free_port,
    status_kib,
    wait_ready,
    writer_idle,
)

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk_post.lua"
CHAT = "/api/v1/chat/completions"
TARGETS = ("direct", "passthrough", "proxy")
SERVERS = ("passthrough", "proxy")
CONCURRENCY = (1, 16, 64)
BUDGET = "budgets: [{name: bench, limit_usd: 1000000, period: day, scope: total, action: block}]\n"


class Settings:
    def __init__(self, args: argparse.Namespace) -> None:
        quick = args.quick
        self.rounds: int = args.rounds or (1 if quick else 3)
        self.duration: int = args.duration or (2 if quick else 5)
        self.stream_count: int = 80 if quick else 320
        self.stream_chunks: int = 50
        self.stream_delay_ms: float = args.stream_delay_ms
        self.slow_count: int = args.slow_streams
        self.slow_chunks: int = 20 if quick else 50
        self.slow_delay_ms: float = 50 if quick else 100
        self.body_reps: int = 3 if quick else 10
        self.recorder_rows: int = 50_000 if quick else 200_000
        self.uvloop_passthrough: bool = args.uvloop_passthrough
        # `python -m proxy` from this directory: a scratch copy with a change to measure, or a snapshot.
        self.proxy_src: Path | None = args.proxy_src


# --- one round -----------------------------------------------------------------------------


def _wrk(procs: Procs, load_core: str, url: str, conns: int, duration: int, body_bytes: int = 0) -> dict[str, Any]:
    name = f"wrk-{conns}"
    proc = procs.start(
        name,
        ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "10s", "-s", str(LUA), url],
        load_core,
        env={"BENCH_BODY_BYTES": str(body_bytes)},
    )
    try:
        proc.wait(duration + 30)
    finally:
        procs.stop(name)
    for line in procs.log_tail(name, 50).splitlines():
        if line.startswith("WRKJSON "):
            data: dict[str, Any] = json.loads(line[8:])
            return data
    raise RuntimeError(f"wrk printed no result:\n{procs.log_tail(name)}")


def _proxy_config(tmp: Path, port: int, upstream_port: int, with_budget: bool) -> Path:
    text = (
        "host: 127.0.0.1\n"
        f"port: {port}\n"
        f"upstream: http://127.0.0.1:{upstream_port}/api/v1\n"
        f"db: {tmp / 'proxy.db'}\n"
        "shutdown_grace_s: 5\n"
        # The embedded catalog prices every request; no refresh traffic during the run.
        "catalog: {refresh_hours: 0}\n"
        "metrics: {enabled: true}\n"
    )
    if with_budget:
        text += BUDGET
    path = tmp / "proxy.yaml"
    path.write_text(text)
    return path


def budget_accepted(tmp: Path, proxy_src: Path | None = None) -> tuple[bool, str]:
    path = _proxy_config(tmp, 1, 2, with_budget=True)
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(path)], capture_output=True, text=True, timeout=60,
        cwd=proxy_src,
    )
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def _rows(db: Path, session: str | None = None) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        if session is None:
            return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
        return int(conn.execute("SELECT count(*) FROM requests WHERE session = ?", (session,)).fetchone()[0])
    finally:
        conn.close()


def _wait_rows(db: Path, session: str, expect: int, timeout_s: float = 15.0) -> int:
    deadline = time.monotonic() + timeout_s
    n = _rows(db, session)
    while n < expect and time.monotonic() < deadline:
        time.sleep(0.1)
        n = _rows(db, session)
    return n


def _budget_live(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return bool(re.search(r'^openrouter_proxy_budget\w*\{[^}]*budget="bench"', text, re.MULTILINE))


def _run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def one_round(index: int, s: Settings, procs: Procs, tmp: Path, with_budget: bool) -> dict[str, Any]:
    server_core, load_core = cores()
    r: dict[str, Any] = {}
    ports = {"direct": free_port(), "passthrough": free_port(), "proxy": free_port()}
    py = sys.executable
    procs.start("upstream", [py, "-m", "bench.upstream", "--port", str(ports["direct"])], load_core)
    wait_ready(ports["direct"])
    upstream_url = f"http://127.0.0.1:{ports['direct']}"
    pt_argv = [py, "-m", "bench.passthrough", "--port", str(ports["passthrough"]), "--upstream", upstream_url]
    procs.start("passthrough", pt_argv + (["--uvloop"] if s.uvloop_passthrough else []), server_core)
    config = _proxy_config(tmp, ports["proxy"], ports["direct"], with_budget)
    db = tmp / "proxy.db"
    procs.start("proxy", [py, "-m", "proxy", "serve", "--config", str(config)], server_core, cwd=s.proxy_src)
    wait_ready(ports["passthrough"])
    try:
        wait_ready(ports["proxy"], "/healthz")
        writer_idle(ports["proxy"])
    except TimeoutError:
        procs.check_alive("proxy")
        raise
    pids = {name: procs.pid(name) for name in ("upstream", "passthrough", "proxy")}
    pids["direct"] = pids.pop("upstream")
    urls = {t: f"http://127.0.0.1:{ports[t]}{CHAT}" for t in TARGETS}

    for t in TARGETS:  # warm-up: connections, pools, first-call imports
        _wrk(procs, load_core, urls[t], 16, 1)

    for conns in CONCURRENCY:
        for t in TARGETS:
            cpu0 = cpu_seconds(pids[t])
            w = _wrk(procs, load_core, urls[t], conns, s.duration)
            cpu = cpu_seconds(pids[t]) - cpu0
            errors = sum(v for k, v in w.items() if k.startswith("errors_"))
            r[f"c{conns}.{t}.rps"] = w["requests"] / (w["duration_us"] / 1e6)
            r[f"c{conns}.{t}.p50_ms"] = w["p50_us"] / 1000
            r[f"c{conns}.{t}.p99_ms"] = w["p99_us"] / 1000
            r[f"c{conns}.{t}.cpu_us"] = cpu / max(1, w["requests"]) * 1e6
            r[f"c{conns}.{t}.errors"] = errors
            if t != "direct":
                r[f"c{conns}.{t}.added_p50_ms"] = r[f"c{conns}.{t}.p50_ms"] - r[f"c{conns}.direct.p50_ms"]
                r[f"c{conns}.{t}.added_p99_ms"] = r[f"c{conns}.{t}.p99_ms"] - r[f"c{conns}.direct.p99_ms"]
            print(f"  round {index} c={conns:<3} {t:<12} {r[f'c{conns}.{t}.rps']:8.0f} req/s  "
                  f"p50 {r[f'c{conns}.{t}.p50_ms']:.3f} ms  p99 {r[f'c{conns}.{t}.p99_ms']:.3f} ms  "
                  f"cpu {r[f'c{conns}.{t}.cpu_us']:.0f} us/req  errors {errors}", flush=True)
    for t in SERVERS:
        r[f"rss.{t}.c64_mib"] = status_kib(pids[t], "VmHWM") / 1024

    for t in TARGETS:
        cpu0 = cpu_seconds(pids[t])
        st = _run_async(client.streams(
            urls[t], count=s.stream_count, concurrency=16, chunks=s.stream_chunks,
            delay_ms=s.stream_delay_ms, session_tag=f"bench-stream-{index}",
        )).summary()
        r[f"stream.{t}.cpu_us"] = (cpu_seconds(pids[t]) - cpu0) / max(1, st["completed"]) * 1e6
        for k in ("ttft_p50_ms", "ttft_p99_ms", "total_p50_ms", "total_p99_ms", "completed", "failed"):
            r[f"stream.{t}.{k}"] = st[k]
        print(f"  round {index} stream   {t:<12} ttft p50 {st['ttft_p50_ms']:.3f} ms  total p50 "
              f"{st['total_p50_ms']:.3f} ms  completed {st['completed']}/{s.stream_count}", flush=True)
    for t in SERVERS:
        for k in ("ttft_p50", "ttft_p99", "total_p50", "total_p99"):
            r[f"stream.{t}.added_{k}_ms"] = r[f"stream.{t}.{k}_ms"] - r[f"stream.direct.{k}_ms"]
    r["stream.proxy.rows"] = _wait_rows(db, f"bench-stream-{index}", s.stream_count)
    # The same streams with the first 16 started evenly over one stream's length instead of at
    # once. Streams of equal length that all start together also all end together, and each end
    # starts the next: the 16 requests then always arrive in one burst, behind the accounting of
    # the 16 that just ended. Spread, they arrive as agents' requests do, one at a time.
    spread_per_s = 16 / (s.stream_chunks * s.stream_delay_ms / 1000) if s.stream_delay_ms > 0 else None
    for t in TARGETS:
        st = _run_async(client.streams(
            urls[t], count=s.stream_count, concurrency=16, chunks=s.stream_chunks,
            delay_ms=s.stream_delay_ms, session_tag=f"bench-spread-{index}", ramp_per_s=spread_per_s,
        )).summary()
        r[f"spread.{t}.ttft_p50_ms"] = st["ttft_p50_ms"]
        r[f"spread.{t}.failed"] = st["failed"]
        print(f"  round {index} spread   {t:<12} ttft p50 {st['ttft_p50_ms']:.3f} ms  completed "
              f"{st['completed']}/{s.stream_count}", flush=True)
    # The issue-15 targets compare the proxy with the passthrough of the same round: per-round
    # figures, so the table can give their spread too.
    r["ratio.c16_rps"] = r["c16.proxy.rps"] / r["c16.passthrough.rps"]
    r["ratio.c16_cpu"] = r["c16.proxy.cpu_us"] / r["c16.passthrough.cpu_us"]
    r["ratio.stream_cpu"] = r["stream.proxy.cpu_us"] / r["stream.passthrough.cpu_us"]
    r["stream.proxy.ttft_over_passthrough_ms"] = r["stream.proxy.ttft_p50_ms"] - r["stream.passthrough.ttft_p50_ms"]
    r["spread.proxy.ttft_over_passthrough_ms"] = r["spread.proxy.ttft_p50_ms"] - r["spread.passthrough.ttft_p50_ms"]

    for t in SERVERS:
        peak = 0

        def sample(pid: int = pids[t]) -> None:
            nonlocal peak
            peak = max(peak, status_kib(pid, "VmRSS"))

        tag = f"bench-slow-{index}"
        st = _run_async(client.streams(
            urls[t], count=s.slow_count, concurrency=s.slow_count, chunks=s.slow_chunks,
            delay_ms=s.slow_delay_ms, session_tag=tag, ramp_per_s=2000, on_tick=sample,
        )).summary()
        r[f"slow.{t}.completed"] = st["completed"]
        r[f"slow.{t}.peak_open"] = st["peak_open"]
        r[f"slow.{t}.rss_mib"] = peak / 1024
        r[f"slow.{t}.hwm_mib"] = status_kib(pids[t], "VmHWM") / 1024
        if t == "proxy":
            r["slow.proxy.rows"] = _wait_rows(db, tag, s.slow_count)
        print(f"  round {index} {s.slow_count} slow streams {t:<12} completed {st['completed']}  "
              f"open at once {st['peak_open']}  peak RSS {r[f'slow.{t}.hwm_mib']:.1f} MiB"
              + (f"  rows {r['slow.proxy.rows']}" if t == "proxy" else ""), flush=True)

    for size_mb in (2, 10):
        body = client.big_body(size_mb * 1024 * 1024)
        for t in TARGETS:
            res = _run_async(client.posts(urls[t], body, s.body_reps))
            r[f"body{size_mb}.{t}.p50_ms"] = res["p50_ms"]
            r[f"body{size_mb}.{t}.failed"] = res["failed"]
        for t in SERVERS:
            a, d = r[f"body{size_mb}.{t}.p50_ms"], r[f"body{size_mb}.direct.p50_ms"]
            r[f"body{size_mb}.{t}.added_ms"] = None if a is None or d is None else a - d
        print(f"  round {index} {size_mb} MB body  added: passthrough "
              f"{_fmt(r[f'body{size_mb}.passthrough.added_ms'])} ms  proxy {_fmt(r[f'body{size_mb}.proxy.added_ms'])} ms",
              flush=True)

    for t in TARGETS:
        r[f"errors.{t}"] = sum(
            v or 0 for k, v in r.items()
            if k.startswith(("c1.", "c16.", "c64.", "stream.", "spread.", "slow.", "body")) and f".{t}." in k
            and k.endswith((".errors", ".failed"))
        ) + (s.slow_count - r[f"slow.{t}.completed"] if t in SERVERS else 0)
    r["budget.live"] = _budget_live(ports["proxy"]) if with_budget else False
    for name in ("proxy", "passthrough", "upstream"):
        procs.stop(name)
    r["rows.total"] = _rows(db)

    rec = subprocess.run(
        ["taskset", "-c", server_core, py, "-m", "bench.recorder_bench", "--rows", str(s.recorder_rows)],
        capture_output=True, text=True, timeout=300, cwd=s.proxy_src or HERE.parent,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )
    line = next((x for x in rec.stdout.splitlines() if x.startswith("RECJSON ")), None)
    if line is None:
        raise RuntimeError(f"recorder bench failed:\n{rec.stdout}\n{rec.stderr}")
    rj = json.loads(line[8:])
    r["recorder.rows_per_s"] = rj["rows_per_s"]
    r["recorder.encode_us"] = rj["encode_us_per_row"]
    r["recorder.stored"] = rj["stored"]
    print(f"  round {index} recorder {rj['rows_per_s']} rows/s ({rj['stored']}/{s.recorder_rows} stored), "
          f"encode {rj['encode_us_per_row']} us/row", flush=True)
    db.unlink(missing_ok=True)
    return r


# --- summary and table ---------------------------------------------------------------------


def summarise(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)]
        if values:
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


# A target: the key of the measured figure (per round, so it has a spread), its text, and its test.
Target = tuple[str, str, Callable[[float], bool]]


def _rows_spec(s: Settings) -> list[tuple[str, str, tuple[str, ...], Target | None]]:
    def le(limit: float) -> Callable[[float], bool]:
        return lambda v: v <= limit

    def ge(limit: float) -> Callable[[float], bool]:
        return lambda v: v >= limit

    def eq(n: float) -> Callable[[float], bool]:
        return lambda v: v == n

    n = s.slow_count
    c = s.stream_chunks
    return [
        ("req/s, c=1", "c1.{t}.rps", TARGETS, None),
        ("req/s, c=16", "c16.{t}.rps", TARGETS, ("ratio.c16_rps", ">= 0.65x passthrough", ge(0.65))),
        ("req/s, c=64", "c64.{t}.rps", TARGETS, None),
        ("added p50 ms, c=1", "c1.{t}.added_p50_ms", SERVERS, ("c1.proxy.added_p50_ms", "<= 0.8", le(0.8))),
        ("added p99 ms, c=1", "c1.{t}.added_p99_ms", SERVERS, None),
        ("added p50 ms, c=16", "c16.{t}.added_p50_ms", SERVERS, None),
        ("added p99 ms, c=16", "c16.{t}.added_p99_ms", SERVERS, None),
        ("added p50 ms, c=64", "c64.{t}.added_p50_ms", SERVERS, None),
        ("added p99 ms, c=64", "c64.{t}.added_p99_ms", SERVERS, None),
        ("CPU us/request, c=16", "c16.{t}.cpu_us", TARGETS, ("ratio.c16_cpu", "<= 1.5x passthrough", le(1.5))),
        ("CPU us/request, c=64", "c64.{t}.cpu_us", TARGETS, None),
        (f"CPU us/stream ({c} chunks, c=16)", "stream.{t}.cpu_us", TARGETS,
         ("ratio.stream_cpu", "<= 1.3x passthrough", le(1.3))),
        ("stream TTFT p50 ms, c=16", "stream.{t}.ttft_p50_ms", TARGETS, None),
        ("stream TTFT over passthrough p50 ms", "stream.{t}.ttft_over_passthrough_ms", ("proxy",),
         ("stream.proxy.ttft_over_passthrough_ms", "<= 0.5", le(0.5))),
        ("stream TTFT p50 ms, c=16, starts spread", "spread.{t}.ttft_p50_ms", TARGETS, None),
        ("stream TTFT over passthrough p50 ms, starts spread", "spread.{t}.ttft_over_passthrough_ms", ("proxy",),
         None),
        ("stream added TTFT p50 ms", "stream.{t}.added_ttft_p50_ms", SERVERS, None),
        ("stream added TTFT p99 ms", "stream.{t}.added_ttft_p99_ms", SERVERS, None),
        (f"stream added total p50 ms ({c} chunks)", "stream.{t}.added_total_p50_ms", SERVERS,
         ("stream.proxy.added_total_p50_ms", "<= 1", le(1))),
        ("stream added total p99 ms", "stream.{t}.added_total_p99_ms", SERVERS, None),
        ("peak RSS MiB, c=64", "rss.{t}.c64_mib", SERVERS, ("rss.proxy.c64_mib", "<= 80", le(80))),
        (f"peak RSS MiB, {n} streams", "slow.{t}.hwm_mib", SERVERS, ("slow.proxy.hwm_mib", "<= 150", le(150))),
        (f"{n} streams completed", "slow.{t}.completed", SERVERS, ("slow.proxy.completed", f"= {n}", eq(n))),
        (f"{n} streams open at once", "slow.{t}.peak_open", SERVERS, None),
        (f"{n} streams rows recorded", "slow.{t}.rows", ("proxy",), ("slow.proxy.rows", f"= {n}", eq(n))),
        ("2 MB body added ms", "body2.{t}.added_ms", SERVERS, None),
        ("10 MB body added ms", "body10.{t}.added_ms", SERVERS, ("body10.proxy.added_ms", "<= 15", le(15))),
        ("failed requests (all phases)", "errors.{t}", TARGETS, ("errors.proxy", "0", eq(0))),
        ("recorder rows/s", "recorder.rows_per_s", ("proxy",), ("recorder.rows_per_s", ">= 20000", ge(20000))),
        ("recorder encode us/row", "recorder.encode_us", ("proxy",), None),
    ]


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"


def table(summary: dict[str, dict[str, float | None]], s: Settings, rounds: int) -> tuple[str, list[dict[str, Any]]]:
    """One line per figure: each server's median (min-max over rounds), and where the figure has a
    target, the measured value it is judged on (with its spread) and ✓ or ✗ for the median."""

    def med(key: str) -> float | None:
        return summary.get(key, {}).get("median")

    def cell(key: str, suffix: str = "") -> str:
        v = summary.get(key)
        if v is None or v["median"] is None:
            return "-"
        text = _fmt(v["median"]) + suffix
        if rounds > 1 and v["min"] != v["max"]:
            text += f" ({_fmt(v['min'])}–{_fmt(v['max'])}{suffix})"
        return text

    header = ["figure", "direct", "passthrough", "proxy", "proxy ÷ passthrough", "target", "measured", "met"]
    lines = []
    records = []
    for label, tmpl, who, target in _rows_spec(s):
        cols = {t: (cell(tmpl.format(t=t)) if t in who else "") for t in TARGETS}
        p, x = med(tmpl.format(t="proxy")), med(tmpl.format(t="passthrough"))
        ratio = f"{p / x:.2f}x" if p is not None and x and "passthrough" in who and x > 0 and p > 0 else ""
        met: bool | None = None
        measured = verdict = text = ""
        if target is not None:
            key, text, check = target
            value = med(key)
            met = None if value is None else check(value)
            measured = cell(key, "x" if key.startswith("ratio.") else "")
            verdict = "?" if met is None else ("✓" if met else "✗")
        lines.append([label, cols["direct"], cols["passthrough"], cols["proxy"], ratio, text, measured, verdict])
        records.append({"figure": label, "key": tmpl, "target": text or None, "met": met,
                        "measured": summary.get(target[0]) if target else None,
                        **{t: summary.get(tmpl.format(t=t)) for t in who}})
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
           "-|-".join("-" * w for w in widths)]
    out += [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    return "\n".join(out), records


# --- main ----------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import aiohttp

        aiohttp_version = aiohttp.__version__
    except ImportError:
        aiohttp_version = None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": aiohttp_version,
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="benchmark: direct vs bare passthrough vs the proxy")
    parser.add_argument("--quick", action="store_true", help="one short round (~1 minute)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 5, --quick 2)")
    parser.add_argument("--slow-streams", type=int, default=1000, help="concurrent slow streams (default 1000)")
    parser.add_argument("--stream-delay-ms", type=float, default=5.0, help="upstream delay before each SSE event (5: 200 events/s per stream, faster than any model; 16 streams then keep neither core busy)")
    parser.add_argument("--uvloop-passthrough", action="store_true", help="run the passthrough on uvloop")
    parser.add_argument("--proxy-src", type=Path, help="directory holding the proxy package to run (default: this checkout)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    s = Settings(parser.parse_args(argv))

    server_core, load_core = cores()
    if server_core == load_core:
        print("warning: one core only; nothing is pinned apart", file=sys.stderr)
    os.sched_setaffinity(0, {int(load_core)})  # this process is the stream/body load generator

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Procs(tmp)
        try:
            with_budget, said = budget_accepted(tmp, s.proxy_src)
            print(f"budget in proxy config: {'yes' if with_budget else 'NO, check-config rejected it: ' + said}")
            rounds = []
            for i in range(1, s.rounds + 1):
                print(f"round {i}/{s.rounds} (server core {server_core}, load core {load_core})", flush=True)
                rounds.append(one_round(i, s, procs, tmp, with_budget))
                procs.stop_all()
        except KeyboardInterrupt:
            print("interrupted; stopping everything", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()
    summary = summarise(rounds)
    text, records = table(summary, s, len(rounds))
    budget_live = all(r.get("budget.live") for r in rounds)
    machine = _machine()
    print()
    print(f"{started:%Y-%m-%d %H:%M} UTC, {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
          f"aiohttp {machine['aiohttp']}; {len(rounds)} round(s), medians (min–max)")
    print(f"proxy from {s.proxy_src or HERE.parent}: pricing (embedded catalog), SQLite recording, metrics on; budget configured: "
          f"{'yes' if with_budget else 'no'}, budget live in /metrics: {'yes' if budget_live else 'no'}")
    print(text)
    result = {
        "started_at": started.isoformat(),
        "machine": machine,
        "settings": vars(s),
        "budget_configured": with_budget,
        "budget_live": budget_live,
        "table": records,
        "summary": summary,
        "rounds": rounds,
    }
    s_out: Path = parser.parse_args(argv).out
    s_out.parent.mkdir(parents=True, exist_ok=True)
    s_out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nJSON: {s_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
