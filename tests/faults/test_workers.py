"""`serve --workers 2` (issue 15) as a real process tree on one SQLite file: rows equal answers and
one scrape of /metrics sums both workers; a budget is held at its boundary across workers as one
process holds it (alerts sent once); a killed worker is replaced; SIGTERM stops everything with 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.faults.conftest import (
    KEY,
    ProxyProcess,
    free_port,
    metric_value,
    read_rows,
    streams_until_spent,
    wait_for,
)

MODELS = ("openai/gpt-4o", "meta-llama/llama-3.1-8b-instruct")


@pytest.fixture
def spawn_workers(tmp_path: Path, started: Any) -> Any:
    async def spawn(upstream: str, workers: int = 2, **config: Any) -> ProxyProcess:
        port = free_port()
        db = tmp_path / "proxy.db"
        settings = {"host": "127.0.0.1", "port": port, "upstream": upstream, "db": str(db), "catalog": {"refresh_hours": 0}, **config}
        config_path = tmp_path / "proxy.yaml"
        config_path.write_text(yaml.safe_dump(settings))
        log_path = tmp_path / "proxy.log"
        argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config_path), "--workers", str(workers)]
        proc = started.start(argv, log_path)
        process = ProxyProcess(proc=proc, port=port, log_path=log_path, db=db, config_path=config_path)
        await process.wait_ready("/healthz")
        await wait_for(lambda: _children(proc.pid) and len(_children(proc.pid)) == workers, what="workers forked")
        # Every worker listening: fresh connections reach each of them.
        await wait_for_workers(process, workers)
        return process

    return spawn


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


async def _answering(process: ProxyProcess, tries: int = 40) -> set[int]:
    seen: set[int] = set()
    for _ in range(tries):  # a new connection each time: the kernel picks a worker per connection
        try:
            async with aiohttp.ClientSession() as session, session.get(process.url("/healthz")) as response:
                seen.add((await response.json())["worker"])
        except aiohttp.ClientError:
            pass
    return seen


async def wait_for_workers(process: ProxyProcess, workers: int) -> None:
    for _ in range(100):
        if len(await _answering(process)) == workers:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not every worker answers:\n{process.log_text()[-3000:]}")


async def _rows_settled(db: Path, expected: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for _ in range(200):
        rows = read_rows(db)
        if len(rows) >= expected:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(rows)} rows of {expected}")


async def test_two_workers_mixed_traffic_rows_and_one_scrape_add_up(spawn_workers: Any, fake_process: Any) -> None:
    proxy = await spawn_workers(fake_process.url("/api/v1"))
    answered = 0

    async def one(i: int) -> None:
        nonlocal answered
        body: dict[str, Any] = {"model": MODELS[i % 2], "messages": [{"role": "user", "content": f"hi {i}"}]}
        headers = {"Authorization": f"Bearer {KEY}", "X-Spend-Session": f"s{i % 5}"}
        if i % 4 == 0:
            body["stream"] = True
            headers.update({"X-Fake-Chunks": "4", "X-Fake-Delay-Ms": "20"})
        # A session per request: new connections, so both workers take a share.
        async with aiohttp.ClientSession() as session, session.post(f"{proxy.base}/chat/completions", json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            await response.read()
            answered += 1

    for start in range(0, 120, 20):
        await asyncio.gather(*(one(i) for i in range(start, start + 20)))
    rows = await _rows_settled(proxy.db, answered)
    assert len(rows) == answered == 120
    assert len({r["id"] for r in rows}) == 120
    assert sum(r["streamed"] for r in rows) == 30
    db_cost = sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0))
    # One scrape, whichever worker takes it, answers for both; the same from the other worker.
    for _ in range(4):
        text = await proxy.metrics_text()
        assert metric_value(text, "openrouter_proxy_requests_total") == 120
        assert abs(Decimal(str(metric_value(text, "openrouter_proxy_cost_usd_total"))) - db_cost) < Decimal("1e-9")
        assert metric_value(text, "openrouter_proxy_recorder_rows_total") == 120
        day = sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("openrouter_proxy_spend_usd{") and 'window="day"' in line
        )
        assert abs(Decimal(str(day)) - db_cost) < Decimal("1e-9"), (day, db_cost)
        assert metric_value(text, "openrouter_proxy_build_info") == 1  # a gauge every worker reports: not summed


async def test_sixty_streams_at_the_boundary_across_two_workers(spawn_workers: Any, fake_process: Any) -> None:
    """Each request costs what it reserves ($0.05), so the single-process bound is zero: spend ends
    exactly at the limit, as in tests/faults/test_replicas.py on PostgreSQL."""
    budgets = [{"name": "team", "limit_usd": "0.5", "period": "day", "warn_at": [0.5], "action": "block"}]
    alerts = [{"type": "log", "kinds": ["warn", "spent"]}]
    proxy = await spawn_workers(fake_process.url("/api/v1"), budgets=budgets, alerts=alerts)
    outcomes = await streams_until_spent([proxy.base], MODELS[0])
    rows = await _rows_settled(proxy.db, len(outcomes))
    billed = [r for r in rows if r["status"] == 200]
    spent = sum((Decimal(r["cost_usd"]) for r in billed), Decimal(0))
    assert (outcomes.count("ok"), len(billed), spent) == (10, 10, Decimal("0.50")), (outcomes.count("held"), spent)
    assert outcomes.count("spent") == 60
    db = sqlite3.connect(proxy.db)
    try:
        await wait_for(lambda: not db.execute("SELECT 1 FROM budget_holds").fetchall(), what="holds released")
        assert [Decimal(r[0]) for r in db.execute("SELECT spent FROM budget_spend WHERE budget = 'team'")] == [Decimal("0.50")]
        kinds = sorted(r[0] for r in db.execute("SELECT kind FROM alerts WHERE budget = 'team'"))
    finally:
        db.close()
    # Only the highest threshold crossed since a worker's last look fires (the ledger's rule): when
    # one settle batch carries the spend from under 50% to 100%, the warning is skipped, not doubled.
    assert "spent:1" in kinds and len(kinds) == len(set(kinds)), kinds  # (a projection alert may come too)
    await wait_for(lambda: "kind=spent threshold=1" in proxy.log_text(), what="alert logged")
    await asyncio.sleep(0.5)
    sent = [line for line in proxy.log_text().splitlines() if "budget alert channel=log" in line]
    assert sum("kind=warn threshold=0.5" in line for line in sent) == kinds.count("warn:0.5"), sent
    assert sum("kind=spent threshold=1" in line for line in sent) == 1, sent
    # Budget gauges come from the shared ledger in each worker (published every 5 s): the same
    # number in both, so never summed.
    for _ in range(150):
        text = await proxy.metrics_text()
        if metric_value(text, "openrouter_proxy_budget_spent_usd") > 0:
            break
        await asyncio.sleep(0.1)
    assert metric_value(text, "openrouter_proxy_budget_spent_usd") == pytest.approx(0.5)
    assert metric_value(text, "openrouter_proxy_budget_limit_usd") == pytest.approx(0.5)


async def test_a_killed_worker_is_replaced_and_sigterm_stops_all_with_zero(spawn_workers: Any, fake_process: Any) -> None:
    proxy = await spawn_workers(fake_process.url("/api/v1"))
    before = _children(proxy.pid)
    os.kill(before[0], signal.SIGKILL)
    await wait_for(lambda: len(_children(proxy.pid)) == 2 and before[0] not in _children(proxy.pid), what="worker replaced")
    await wait_for_workers(proxy, 2)
    assert "event=worker_died worker=" in proxy.log_text()
    assert proxy.log_text().count("listening on http://") == 1  # one banner, not one per (re)start
    assert "workers:                 2 processes on one port" in proxy.log_text()
    workers = _children(proxy.pid)
    proxy.proc.send_signal(signal.SIGTERM)
    assert await proxy.wait_exit(30) == 0, proxy.log_text()[-3000:]
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    assert "event=workers_stopped exitcodes=0,0" in proxy.log_text()


@pytest.mark.parametrize(
    ("config", "flag", "line"),
    [
        ("host: 0.0.0.0\n", "2", "openrouter-spend: metrics.token_env: required when /metrics is served on a non-loopback address (0.0.0.0)"),
        ("", "0", "openrouter-spend: --workers: expected 1 or more processes, got 0"),
    ],
)
def test_a_bad_setting_is_one_line_before_any_worker_starts(tmp_path: Path, config: str, flag: str, line: str) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(config + f"port: {free_port()}\ndb: {tmp_path / 'u.db'}\ncatalog: {{refresh_hours: 0}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(path), "--workers", flag],
        cwd=Path(__file__).resolve().parents[2], check=False, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert [x for x in proc.stderr.strip().splitlines() if "event=exposed" not in x] == [line]


async def test_a_dead_worker_s_holds_are_released_at_once_not_after_the_lease(spawn_workers: Any, fake_process: Any) -> None:
    budgets = [{"name": "team", "limit_usd": "0.1", "period": "day", "action": "block"}]
    proxy = await spawn_workers(fake_process.url("/api/v1"), budgets=budgets)  # lease: 30 s
    headers = {"Authorization": f"Bearer {KEY}", "X-Fake-Cost": "0.01", "X-Fake-Chunks": "200", "X-Fake-Delay-Ms": "100"}
    body = {"model": MODELS[0], "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    db = sqlite3.connect(proxy.db)
    async with aiohttp.ClientSession() as session:
        stream = await session.post(f"{proxy.base}/chat/completions", json=body, headers=headers)
        assert stream.status == 200
        [(replica,)] = db.execute("SELECT replica FROM budget_holds").fetchall()
        os.kill(int(replica.split(":")[1]), signal.SIGKILL)  # the worker holding it
        stream.close()
        loop = asyncio.get_running_loop()
        killed = loop.time()
        try:
            await wait_for(lambda: not db.execute("SELECT 1 FROM budget_holds").fetchall(), timeout=10, what="holds released")
        finally:
            db.close()
        assert loop.time() - killed < 10
    assert "event=dead_worker_holds_released" in proxy.log_text() and "holds=1" in proxy.log_text()


async def test_day_spend_counts_the_log_once_after_a_restart(spawn_workers: Any, fake_process: Any) -> None:
    """Only the first worker seeds the spend gauges from the log; the other counts from its start."""
    headers = {"Authorization": f"Bearer {KEY}", "X-Fake-Cost": "0.01"}
    body = {"model": MODELS[0], "messages": [{"role": "user", "content": "hi"}]}

    async def send(proxy: ProxyProcess, n: int) -> None:
        for _ in range(n):
            async with aiohttp.ClientSession() as session, session.post(f"{proxy.base}/chat/completions", json=body, headers=headers) as r:
                assert r.status == 200

    first = await spawn_workers(fake_process.url("/api/v1"))
    await send(first, 10)
    first.proc.send_signal(signal.SIGTERM)
    assert await first.wait_exit(30) == 0
    second = await spawn_workers(fake_process.url("/api/v1"))
    await send(second, 6)
    await _rows_settled(second.db, 16)
    text = await second.metrics_text()
    day = sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("openrouter_proxy_spend_usd{") and 'window="day"' in line
    )
    assert day == pytest.approx(0.16), text
