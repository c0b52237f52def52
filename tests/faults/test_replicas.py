"""Replicas on one PostgreSQL database (issue 14): three proxy processes behind no balancer, the
client spreading requests over them. Rows equal answers, metrics summed over replicas equal the
database, and a budget is held at its boundary as one process holds it, alerts sent once."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.faults.conftest import KEY, ROOT, metric_value, streams_until_spent, wait_for

MODELS = ("openai/gpt-4o", "meta-llama/llama-3.1-8b-instruct")


async def _fetch(url: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


async def _rows_settled(url: str, expected: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = []
    for _ in range(200):
        rows = await _fetch(url, "SELECT * FROM requests")
        if len(rows) >= expected:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(rows)} rows of {expected}")


async def _cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def _replicas(
    spawn_proxy: Any, fake_process: Any, pg_url: str, n: int = 3, env: dict[str, str] | None = None, **config: Any
) -> list[Any]:
    # One at a time: the first migrates, the others find the schema there.
    return [await spawn_proxy(fake_process.url("/api/v1"), db=pg_url, env=env, **config) for _ in range(n)]


async def test_three_replicas_mixed_traffic_rows_and_metrics_add_up(spawn_proxy: Any, fake_process: Any, pg_url: str) -> None:
    replicas = await _replicas(spawn_proxy, fake_process, pg_url)
    answered = 0

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal answered
        proxy = replicas[i % 3]
        body: dict[str, Any] = {"model": MODELS[i % 2], "messages": [{"role": "user", "content": f"hi {i}"}]}
        headers = {"Authorization": f"Bearer {KEY}", "X-Spend-Session": f"s{i % 5}"}
        if i % 4 == 0:
            body["stream"] = True
            headers.update({"X-Fake-Chunks": "4", "X-Fake-Delay-Ms": "20"})
        async with session.post(f"{proxy.base}/chat/completions", json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            await response.read()
            answered += 1

    async with aiohttp.ClientSession() as session:
        for start in range(0, 120, 20):  # 20 at a time
            await asyncio.gather(*(one(session, i) for i in range(start, start + 20)))
    rows = await _rows_settled(pg_url, answered)
    assert len(rows) == answered == 120
    assert len({r["id"] for r in rows}) == 120
    assert sum(r["streamed"] for r in rows) == 30
    db_cost = sum((r["cost_usd"] for r in rows), Decimal(0))
    per_model = {m: sum((r["cost_usd"] for r in rows if r["model"] == m), Decimal(0)) for m in MODELS}
    # What a dashboard does: sum() over instances of each replica's /metrics.
    texts = [await p.metrics_text() for p in replicas]
    assert sum(metric_value(t, "openrouter_proxy_requests_total") for t in texts) == 120
    scraped_cost = sum(metric_value(t, "openrouter_proxy_cost_usd_total") for t in texts)
    assert abs(Decimal(str(scraped_cost)) - db_cost) < Decimal("1e-9"), (scraped_cost, db_cost)
    for model, cost in per_model.items():
        scraped = sum(
            float(line.rsplit(" ", 1)[1])
            for t in texts
            for line in t.splitlines()
            if line.startswith("openrouter_proxy_cost_usd_total{") and f'model="{model}"' in line
        )
        assert abs(Decimal(str(scraped)) - cost) < Decimal("1e-9"), (model, scraped, cost)
    # Every replica did its share.
    assert all(metric_value(t, "openrouter_proxy_requests_total") == 40 for t in texts)
    # `report` on the same database: its totals are the rows' sums, in all and per model.
    document = json.loads(await _cli("report", "--db", pg_url, "--by", "model", "--format", "json"))
    assert document["total"]["requests"] == 120 and Decimal(document["total"]["cost_usd"]) == db_cost
    assert {row["group"]: Decimal(row["cost_usd"]) for row in document["rows"]} == per_model


async def test_a_key_made_at_runtime_works_on_every_replica_and_revoke_stops_it_everywhere(
    spawn_proxy: Any, fake_process: Any, pg_url: str
) -> None:
    managed = {"managed_key_env": "TEST_MANAGED_KEY"}
    replicas = await _replicas(spawn_proxy, fake_process, pg_url, env={"TEST_MANAGED_KEY": KEY}, **managed)
    key = (await _cli("keys", "create", "--name", "alice", "--db", pg_url)).strip()

    async def status(session: aiohttp.ClientSession, base: str) -> int:
        body = {"model": MODELS[0], "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(f"{base}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as response:
            await response.read()
            return response.status

    async def every_replica_answers(session: aiohttp.ClientSession, wanted: int) -> None:
        for _ in range(80):  # the replicas poll every 2 s: well within 20 s
            if [await status(session, p.base) for p in replicas] == [wanted] * 3:
                return
            await asyncio.sleep(0.25)
        raise AssertionError(f"not every replica answered {wanted}")

    async with aiohttp.ClientSession() as session:
        await every_replica_answers(session, 200)
        await _cli("keys", "revoke", "alice", "--db", pg_url)
        await every_replica_answers(session, 401)
    # Nothing went upstream for the revoked key: every row is alice's 200s.
    rows = await _fetch(pg_url, "SELECT key_alias, status FROM requests")
    assert rows and all(r["key_alias"] == "alice" and r["status"] == 200 for r in rows)


async def test_sixty_streams_at_the_boundary_across_three_replicas(
    spawn_proxy: Any, fake_process: Any, pg_url: str, tmp_path: Path
) -> None:
    """Each request costs what it reserves ($0.05, the reserve before any cost is known), so the
    single-process bound (cost beyond reservations in flight) is zero: spend ends exactly at the limit."""
    budgets = [{"name": "team", "limit_usd": "0.5", "period": "day", "warn_at": [0.5], "action": "block"}]
    alerts = [{"type": "log", "kinds": ["warn", "spent"]}]
    replicas = await _replicas(spawn_proxy, fake_process, pg_url, budgets=budgets, alerts=alerts)
    outcomes = await streams_until_spent([p.base for p in replicas], MODELS[0])
    ok = outcomes.count("ok")
    rows = await _rows_settled(pg_url, len(outcomes))
    billed = [r for r in rows if r["status"] == 200]
    spent = sum((r["cost_usd"] for r in billed), Decimal(0))
    assert (ok, len(billed), spent) == (10, 10, Decimal("0.50")), (ok, outcomes.count("held"), spent)
    assert outcomes.count("spent") == 60
    [ledger] = await _fetch(pg_url, "SELECT spent FROM budget_spend WHERE budget = 'team'")
    assert ledger["spent"] == Decimal("0.50")
    # Each threshold's alert: one row, sent by one replica.
    kinds = sorted(r["kind"] for r in await _fetch(pg_url, "SELECT kind FROM alerts WHERE budget = 'team'"))
    # Only the highest threshold crossed since a replica's last look fires (the ledger's rule): when
    # one settle batch carries the spend from under 50% to 100% (admissions are batched too, so
    # requests end together), the warning is skipped, never sent twice.
    assert "spent:1" in kinds and len(kinds) == len(set(kinds)), kinds
    await wait_for(lambda: any("kind=spent threshold=1" in p.log_text() for p in replicas), what="alert logged")
    await asyncio.sleep(0.5)
    sent = [line for p in replicas for line in p.log_text().splitlines() if "budget alert channel=log" in line]
    assert sum("kind=warn threshold=0.5" in line for line in sent) == kinds.count("warn:0.5"), sent
    assert sum("kind=spent threshold=1" in line for line in sent) == 1, sent
    # Nothing is left held once every request has ended.
    for _ in range(100):
        if not await _fetch(pg_url, "SELECT 1 FROM budget_holds"):
            break
        await asyncio.sleep(0.05)
    assert not await _fetch(pg_url, "SELECT * FROM budget_holds")


async def test_a_killed_replica_s_holds_stop_counting_after_its_lease(spawn_proxy: Any, fake_process: Any, pg_url: str) -> None:
    budgets = [{"name": "team", "limit_usd": "0.1", "period": "day", "action": "block"}]
    lease = 2.0
    first, second = await _replicas(
        spawn_proxy, fake_process, pg_url, n=2, budgets=budgets, storage={"budget_lease_s": lease}
    )
    headers = {"Authorization": f"Bearer {KEY}", "X-Fake-Cost": "0.01", "X-Fake-Chunks": "200", "X-Fake-Delay-Ms": "100"}
    body = {"model": MODELS[0], "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        # Two long streams on the first replica reserve $0.05 each: the budget is held.
        long_streams = [await session.post(f"{first.base}/chat/completions", json=body, headers=headers) for _ in range(2)]
        assert [r.status for r in long_streams] == [200, 200]
        quick = {**headers, "X-Fake-Chunks": "1", "X-Fake-Delay-Ms": "0"}
        async with session.post(f"{second.base}/chat/completions", json=body, headers=quick) as response:
            assert response.status == 402
            assert "in flight" in (await response.json())["error"]["message"]
        first.proc.kill()
        first.proc.wait()
        for r in long_streams:
            r.close()
        killed = asyncio.get_running_loop().time()
        status = 402
        while status == 402 and asyncio.get_running_loop().time() - killed < lease + 10:
            await asyncio.sleep(0.2)
            async with session.post(f"{second.base}/chat/completions", json=body, headers=quick) as response:
                status = response.status
                await response.read()
        waited = asyncio.get_running_loop().time() - killed
    assert status == 200, second.log_text()[-2000:]
    # Not before the lease ran out (less the heartbeat's stamp, at most a quarter lease old).
    assert waited >= lease * 0.75 - 0.2, waited
    # The next heartbeat deletes them (they stopped counting when the lease ran out).
    await wait_for(lambda: "event=shared_budget_holds_expired holds=2" in second.log_text(), what="holds dropped")
