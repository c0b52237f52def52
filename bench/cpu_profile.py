"""CPU per request that a shared machine cannot blur: instruction counts and py-spy profiles of the server.

    python -m bench.cpu_profile instructions            # callgrind: instructions per request, passthrough vs proxy
    python -m bench.cpu_profile instructions --stream   # the same per 50-event stream
    python -m bench.cpu_profile pyspy --seconds 20      # where the proxy's CPU goes under c=16, by stage

`instructions` runs each server under `valgrind --tool=callgrind` (instrumentation off during
start-up and a warm-up, then on for exactly `--requests` requests at `--conns` at a time), so the
count is the server's own work (all threads, the SQLite writer too) and does not move with the load
other processes put on the machine, unlike CPU seconds or req/s. Under valgrind a request takes
~50x longer, so the proxy's timers (the writer's 50 ms batch window, the budget gauges' tick) fire
more often per request than at full speed: a small overcount for the proxy, never an undercount.

`pyspy` samples the proxy (py-spy record --gil, raw collapsed stacks) while wrk drives it at c=16,
and prints the share of samples per stage. All traffic stays on 127.0.0.1; every process started
is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.client import AUTH, STREAM_BODY
from bench.procs import Procs, cores, free_port, wait_ready, writer_idle
from bench.run import CHAT, LUA, _proxy_config, budget_accepted
from bench.upstream import stream_length

CHAT_BODY = b'{"model":"openai/gpt-4o","messages":[{"role":"user","content":"hi"}]}'


async def _load(url: str, requests: int, conns: int, stream: bool) -> int:
    """Exactly `requests` POSTs, `conns` at a time; returns how many failed."""
    failed = 0
    left = requests
    # As bench.run's streams: 50 events, 5 ms apart, so each arrives in its own read.
    headers = {**AUTH, "X-Bench-Chunks": "50", "X-Bench-Delay-Ms": "5"} if stream else AUTH
    body = STREAM_BODY if stream else CHAT_BODY
    expect = stream_length(50) if stream else None

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left, failed
        while left > 0:
            left -= 1
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    got = await resp.read()
                    if resp.status != 200 or (expect is not None and len(got) != expect):
                        failed += 1
            except (aiohttp.ClientError, TimeoutError):
                failed += 1

    connector = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(worker(session) for _ in range(conns)))
    return failed


def _python() -> str:
    # The interpreter itself, not a shell shim in front of it (valgrind would count the shim).
    return sys.executable


def _server_argv(target: str, port: int, upstream_port: int, tmp: Path, with_budget: bool) -> list[str]:
    if target == "passthrough":
        return [_python(), "-m", "bench.passthrough", "--port", str(port), "--upstream", f"http://127.0.0.1:{upstream_port}"]
    config = _proxy_config(tmp, port, upstream_port, with_budget)
    return [_python(), "-m", "proxy", "serve", "--config", str(config)]


def _last_dump(tmp: Path, target: str, pid: int) -> dict[str, int]:
    """Instructions of the newest dump, per thread: callgrind writes one file per thread per dump
    (`callgrind.<target>.<pid>.<n>-<thread>`, thread 01 the event loop's)."""
    threads: dict[str, Path] = {}
    for dump in sorted(tmp.glob(f"callgrind.{target}.{pid}*"), key=lambda p: p.stat().st_mtime):
        threads[dump.name.rpartition("-")[2]] = dump
    return {name: _callgrind_total(path) for name, path in threads.items()}


def _callgrind_total(path: Path) -> int:
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            total = max(total, int(line.split()[1]))
    return total


def instructions(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("instructions: needs valgrind (apt-get install valgrind)")
    server_core, load_core = cores()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cg-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Procs(tmp)
        with_budget, _ = budget_accepted(tmp, args.proxy_src)
        try:
            up = free_port()
            procs.start("upstream", [_python(), "-m", "bench.upstream", "--port", str(up)], load_core)
            wait_ready(up)
            for target in args.targets:
                port = free_port()
                cg_out = tmp / f"callgrind.{target}"
                argv = [
                    "valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                    f"--callgrind-out-file={cg_out}.%p",
                    *_server_argv(target, port, up, tmp, with_budget),
                ]
                cwd = args.proxy_src if target == "proxy" else None
                procs.start(target, argv, server_core, cwd=cwd)
                wait_ready(port, "/healthz" if target == "proxy" else None, timeout_s=600)
                if target == "proxy":
                    writer_idle(port)
                url = f"http://127.0.0.1:{port}{CHAT}"
                pid = procs.pid(target)
                asyncio.run(_load(url, args.warmup, args.conns, args.stream))
                subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True, timeout=120)
                subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True, timeout=120)
                started = time.monotonic()
                failed = asyncio.run(_load(url, args.requests, args.conns, args.stream))
                if target == "proxy":
                    # The rows of these requests are part of their cost: count until they are written.
                    writer_idle(port)
                subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True, timeout=300)
                wall = time.monotonic() - started
                counts = _last_dump(tmp, target, pid)
                print(f"  {target}: load instructions by thread {counts}", flush=True)
                # What the server does with no traffic (timers: budget gauges, runtime-key polls, the
                # writer's window), for as long as the load took: under valgrind that is long enough
                # to be a share of the count, so it is also given per request and subtracted.
                idle_s = min(wall, args.idle_max_s)
                subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True, timeout=120)
                time.sleep(idle_s)
                subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True, timeout=300)
                idle_counts = _last_dump(tmp, target, pid)
                print(f"  {target}: idle instructions by thread over {idle_s:.0f} s {idle_counts}", flush=True)
                idle = sum(idle_counts.values()) / idle_s * wall
                total = sum(counts.values())
                loop_thread = counts.get("01", total)
                per = total / args.requests
                net = (total - idle) / args.requests
                out[target] = {"instructions": total, "per_request": per, "loop_per_request": loop_thread / args.requests,
                               "idle_per_request": idle / args.requests, "net_per_request": net,
                               "failed": failed, "wall_s": wall}
                what = "stream" if args.stream else "request"
                print(f"{target:<12} {per:12,.0f} instructions/{what} (event-loop thread {loop_thread / args.requests:,.0f}; "
                      f"idle background {idle / args.requests:,.0f}/{what}, net {net:,.0f}; {failed} failed, "
                      f"{wall:.0f} s under valgrind)", flush=True)
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    for dump in tmp.glob(f"callgrind.{target}.{pid}*"):
                        shutil.copy(dump, args.keep / dump.name)
                procs.stop(target, grace_s=60)
        finally:
            procs.stop_all()
    if "proxy" in out and "passthrough" in out:
        ratio = out["proxy"]["per_request"] / out["passthrough"]["per_request"]
        out["ratio"] = ratio
        loop_ratio = out["proxy"]["loop_per_request"] / out["passthrough"]["loop_per_request"]
        net_ratio = out["proxy"]["net_per_request"] / out["passthrough"]["net_per_request"]
        out["loop_ratio"], out["net_ratio"] = loop_ratio, net_ratio
        print(f"proxy / passthrough: {ratio:.2f}x all threads, {loop_ratio:.2f}x event-loop thread, "
              f"{net_ratio:.2f}x net of idle background work")
    return out


# --- py-spy ----------------------------------------------------------------------------------

# First match wins: a sample is charged to the innermost frame that names one of these.
STAGES: list[tuple[str, str]] = [
    ("metrics", r"proxy/metrics\.py|prometheus_client"),
    ("recorder/storage", r"proxy/store/|aiosqlite|sqlite3"),
    ("budgets", r"proxy/server/guard\.py|proxy/budgets/"),
    ("pricing/accounting", r"proxy/pricing/"),
    ("usage parser", r"proxy/usage/"),
    ("routing/attribution/body", r"proxy/server/(routing|attribution|body|intake)\.py"),
    ("handler (forward.py)", r"proxy/server/(forward|app)\.py"),
    ("aiohttp client", r"aiohttp/client|aiohttp/connector|aiohttp/streams|yarl|multidict"),
    ("aiohttp server", r"aiohttp/"),
    ("asyncio", r"asyncio/"),
]


def _stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in STAGES:
            if re.search(pattern, frame):
                return name
    return "other"


def pyspy(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("py-spy") is None:
        raise SystemExit("pyspy: needs py-spy (pip install py-spy)")
    server_core, load_core = cores()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-spy-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Procs(tmp)
        with_budget, _ = budget_accepted(tmp, args.proxy_src)
        try:
            up = free_port()
            procs.start("upstream", [_python(), "-m", "bench.upstream", "--port", str(up)], load_core)
            wait_ready(up)
            for target in args.targets:
                port = free_port()
                cwd = args.proxy_src if target == "proxy" else None
                procs.start(target, _server_argv(target, port, up, tmp, with_budget), server_core, cwd=cwd)
                wait_ready(port, "/healthz" if target == "proxy" else None)
                if target == "proxy":
                    writer_idle(port)
                url = f"http://127.0.0.1:{port}{CHAT}"
                subprocess.run(["wrk", "-t1", "-c16", "-d2s", "-s", str(LUA), url], capture_output=True, timeout=60, check=False)
                raw = tmp / f"{target}.raw"
                spy = subprocess.Popen(
                    ["py-spy", "record", "--gil", "--nonblocking", "-r", "250", "-d", str(args.seconds), "-f", "raw",
                     "-o", str(raw), "--pid", str(procs.pid(target))],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
                if args.stream:
                    # 50-event streams, 16 at a time, until py-spy has its samples (bounded by count).
                    deadline = time.monotonic() + args.seconds + 1
                    while time.monotonic() < deadline and spy.poll() is None:
                        asyncio.run(_load(url, 64, 16, True))
                else:
                    subprocess.run(["taskset", "-c", load_core, "wrk", "-t1", "-c16", f"-d{args.seconds + 1}s",
                                    "-s", str(LUA), url], capture_output=True, timeout=args.seconds + 60, check=False)
                spy.wait(args.seconds + 60)
                results[target] = _shares(raw, args.top)
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(raw, args.keep / f"pyspy.{target}.raw")
                procs.stop(target)
        finally:
            procs.stop_all()
    return results


def _shares(raw: Path, top: int) -> dict[str, Any]:
    stages: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        stages[_stage_of(frames)] += count
        own[frames[-1]] += count
        for frame in set(frames):
            if "proxy/" in frame:
                inclusive[frame] += count
    print(f"{total} samples")
    print("by stage (innermost frame that names one):")
    for name, n in stages.most_common():
        print(f"  {name:<28} {100 * n / max(1, total):5.1f}%")
    print(f"top {top} own-time frames:")
    for frame, n in own.most_common(top):
        print(f"  {100 * n / max(1, total):5.1f}%  {frame}")
    print(f"top {top} proxy frames, inclusive:")
    for frame, n in inclusive.most_common(top):
        print(f"  {100 * n / max(1, total):5.1f}%  {frame}")
    return {"samples": total, "stages": {k: v / max(1, total) for k, v in stages.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="instruction counts and py-spy profiles, passthrough vs proxy")
    sub = parser.add_subparsers(dest="mode", required=True)
    ins = sub.add_parser("instructions", help="callgrind instruction counts per request")
    ins.add_argument("--requests", type=int, default=2000)
    ins.add_argument("--warmup", type=int, default=300)
    ins.add_argument("--conns", type=int, default=16)
    ins.add_argument("--stream", action="store_true", help="50-event streams instead of single replies")
    ins.add_argument("--idle-max-s", type=float, default=60.0, help="longest idle measurement (default 60 s)")
    spy = sub.add_parser("pyspy", help="py-spy shares under wrk c=16")
    spy.add_argument("--seconds", type=int, default=20)
    spy.add_argument("--top", type=int, default=25)
    spy.add_argument("--stream", action="store_true", help="50-event streams instead of wrk's single replies")
    for p in (ins, spy):
        p.add_argument("--targets", nargs="+", default=["passthrough", "proxy"], choices=["passthrough", "proxy"])
        p.add_argument("--proxy-src", type=Path, help="directory holding the proxy package to run")
        p.add_argument("--keep", type=Path, help="copy the raw profiles to this directory")
    args = parser.parse_args(argv)
    if args.mode == "instructions":
        instructions(args)
    else:
        pyspy(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
