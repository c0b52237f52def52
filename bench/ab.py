"""A/B of proxy sources against the passthrough, in alternating rounds of the same minutes.

    python -m bench.ab /tmp/main-copy /work/wt/branch          # wrk c=16, 4 rounds of 5 s each
    ROUNDS=6 STREAMS=160 python -m bench.ab DIR1 DIR2           # plus 160 streams of 50 events per round

Each DIR holds a `proxy` package (a copy of main, a branch, a scratch change). All proxies and the
passthrough run side by side on the server core (taskset), the upstream and the load on the other;
each round drives every target in turn, so a loaded machine weighs on all of them alike. Prints CPU
us/request and req/s per round, then medians with the ratio to the passthrough of the same round
(min-max). bench.run stays the reference for the table; this is for deciding between two versions.
All traffic is to 127.0.0.1; every process started is stopped on exit.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench import client
from bench.procs import Procs, cores, cpu_seconds, free_port, wait_ready, writer_idle
from bench.run import CHAT, _proxy_config, _run_async, _wrk


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    rounds = int(os.environ.get("ROUNDS", "4"))
    duration = int(os.environ.get("DUR", "5"))
    conns = int(os.environ.get("CONNS", "16"))
    streams = int(os.environ.get("STREAMS", "0"))
    server_core, load_core = cores()
    os.sched_setaffinity(0, {int(load_core)})
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Procs(tmp)
        try:
            up = free_port()
            procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(up)], load_core)
            wait_ready(up)
            urls: dict[str, str] = {}
            pids: dict[str, int] = {}
            port = free_port()
            procs.start("pt", [sys.executable, "-m", "bench.passthrough", "--port", str(port), "--upstream", f"http://127.0.0.1:{up}"], server_core)
            wait_ready(port)
            urls["pt"], pids["pt"] = f"http://127.0.0.1:{port}{CHAT}", procs.pid("pt")
            for i, src in enumerate(argv):
                port = free_port()
                work = tmp / f"v{i}"
                work.mkdir()
                config = _proxy_config(work, port, up, with_budget=True)
                procs.start(f"v{i}", [sys.executable, "-m", "proxy", "serve", "--config", str(config)], server_core, cwd=Path(src).resolve())
                wait_ready(port, "/healthz")
                writer_idle(port)
                name = f"v{i}:{Path(src).name}"
                urls[name], pids[name] = f"http://127.0.0.1:{port}{CHAT}", procs.pid(f"v{i}")
            for url in urls.values():
                _wrk(procs, load_core, url, conns, 1)
            cpu: dict[str, list[float]] = {k: [] for k in urls}
            rps: dict[str, list[float]] = {k: [] for k in urls}
            stream_cpu: dict[str, list[float]] = {k: [] for k in urls}
            ttft: dict[str, list[float]] = {k: [] for k in urls}
            for r in range(rounds):
                for name, url in urls.items():
                    before = cpu_seconds(pids[name])
                    w = _wrk(procs, load_core, url, conns, duration)
                    cpu[name].append((cpu_seconds(pids[name]) - before) / max(1, w["requests"]) * 1e6)
                    rps[name].append(w["requests"] / (w["duration_us"] / 1e6))
                    line = f"round {r} {name:<24} {rps[name][-1]:7.0f} req/s  cpu {cpu[name][-1]:6.0f} us/req"
                    if streams:
                        before = cpu_seconds(pids[name])
                        st = _run_async(client.streams(url, count=streams, concurrency=16, chunks=50, delay_ms=5, session_tag=f"ab-{r}")).summary()
                        stream_cpu[name].append((cpu_seconds(pids[name]) - before) / max(1, st["completed"]) * 1e6)
                        ttft[name].append(st["ttft_p50_ms"])
                        line += f"  stream cpu {stream_cpu[name][-1]:6.0f} us  ttft p50 {ttft[name][-1]:.2f} ms"
                    print(line, flush=True)
            print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
            for name in urls:
                c = [a / b for a, b in zip(cpu[name], cpu["pt"], strict=True)]
                q = [a / b for a, b in zip(rps[name], rps["pt"], strict=True)]
                line = (f"median {name:<24} {statistics.median(rps[name]):7.0f} req/s ({statistics.median(q):.2f}x pt, "
                        f"{min(q):.2f}-{max(q):.2f})  cpu {statistics.median(cpu[name]):6.0f} us/req "
                        f"({statistics.median(c):.2f}x pt, {min(c):.2f}-{max(c):.2f})")
                if streams:
                    s = [a / b for a, b in zip(stream_cpu[name], stream_cpu["pt"], strict=True)]
                    t = [a - b for a, b in zip(ttft[name], ttft["pt"], strict=True)]
                    line += (f"  stream cpu {statistics.median(s):.2f}x pt ({min(s):.2f}-{max(s):.2f})  "
                             f"ttft over pt {statistics.median(t):.2f} ms ({min(t):.2f}-{max(t):.2f})")
                print(line)
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
