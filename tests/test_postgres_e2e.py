"""End to end on PostgreSQL: openai SDK traffic through the proxy, rows in Postgres; Postgres
restarting mid-traffic loses and doubles nothing while requests keep being answered; a second
proxy started on the same database begins with the budget spend so far."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import openai

from proxy.budgets.spec import parse_budgets
from proxy.server.app import RECORDER
from tests.fake_openrouter import COMPLETION_TOKENS, PROMPT_TOKENS, fake_cost
from tests.pg_cluster import Cluster

KEY = "sk-or-v1-test-" + "cd" * 20
MODELS = ("openai/gpt-4o", "meta-llama/llama-3.1-8b-instruct")


async def _rows(url: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await connection.fetch("SELECT * FROM requests ORDER BY started_at")]
    finally:
        await connection.close()


async def _written(proxy: Any, limit_s: float = 30.0) -> None:
    """Until the recorder holds nothing: it may be in a retry back-off (at most 5 s) when Postgres returns."""
    recorder = proxy.app[RECORDER]
    for _ in range(int(limit_s / 0.05)):
        if recorder.depth() == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"recorder still holds {recorder.depth()} rows")


async def _one(client: openai.AsyncOpenAI, n: int) -> None:
    model = MODELS[n % 2]
    if n % 3:
        reply = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"hi {n}"}])
        assert reply.usage is not None and reply.usage.prompt_tokens == PROMPT_TOKENS
        return
    stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], stream=True)
    async for _ in stream:
        pass


async def test_openai_traffic_lands_in_postgres(start_proxy: Any, pg_url: str) -> None:
    proxy = await start_proxy(db_url=pg_url)
    async with openai.AsyncOpenAI(base_url=proxy.base, api_key=KEY, max_retries=0) as client:
        await asyncio.gather(*(_one(client, n) for n in range(24)))
    await _written(proxy)
    rows = await _rows(pg_url)
    assert len(rows) == 24
    assert all(r["outcome"] == "ok" and r["status"] == 200 for r in rows)
    assert {r["model"] for r in rows} == set(MODELS)
    assert sum(r["streamed"] for r in rows) == 8
    assert all(r["output_tokens"] == COMPLETION_TOKENS for r in rows)
    # numeric in, Decimal out: the reported costs add up exactly.
    assert sum(r["cost_usd"] for r in rows) == 12 * (
        Decimal(str(float(fake_cost(MODELS[0])))) + Decimal(str(float(fake_cost(MODELS[1]))))
    )
    assert all(r["started_at"].tzinfo is not None for r in rows)
    assert KEY not in repr(rows)
    assert "openrouter_proxy_requests_total" in await proxy.metrics_text()


async def test_postgres_restart_mid_traffic_loses_and_doubles_nothing(
    start_proxy: Any, pg_cluster: Cluster, pg_url: str
) -> None:
    proxy = await start_proxy(db_url=pg_url)
    answered = 0
    stop = asyncio.Event()

    async def worker(client: openai.AsyncOpenAI, first: int) -> None:
        nonlocal answered
        n = first
        while not stop.is_set() and n < first + 10_000:
            await _one(client, n)
            answered += 1
            n += 4

    async with openai.AsyncOpenAI(base_url=proxy.base, api_key=KEY, max_retries=0) as client:
        workers = [asyncio.create_task(worker(client, w)) for w in range(4)]
        try:
            for _ in range(200):  # some rows written before the outage
                if answered >= 20:
                    break
                await asyncio.sleep(0.05)
            # pg_ctl blocks until the server is down: run it off the loop so the proxy keeps serving.
            await asyncio.to_thread(pg_cluster.stop, "fast")
            during_from = answered
            for _ in range(400):  # requests are answered while the database is down
                if answered >= during_from + 40:
                    break
                await asyncio.sleep(0.05)
            answered_while_down = answered - during_from
            held = proxy.app[RECORDER].depth()
            await asyncio.to_thread(pg_cluster.start)
            after_from = answered
            for _ in range(400):
                if answered >= after_from + 20:
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*workers)
    assert answered_while_down >= 40
    assert held > 0  # rows were held while Postgres was away
    await _written(proxy)
    rows = await _rows(pg_url)
    assert len(rows) == answered
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["outcome"] == "ok" for r in rows)
    assert proxy.app[RECORDER].dropped == 0


async def test_a_second_proxy_on_the_same_database_starts_with_the_spend_so_far(
    start_proxy: Any, make_config: Any, pg_url: str
) -> None:
    budgets = parse_budgets([{"name": "daily", "limit_usd": "0.01", "period": "day", "warn_at": [0.5], "action": "block"}])
    config = make_config(db_url=pg_url, budgets=budgets, timezone="Europe/Berlin")
    first = await start_proxy(config)
    headers = {"Authorization": f"Bearer {KEY}", "X-Fake-Cost": "0.003"}
    body = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(4):  # 0.012 of 0.01: spent
            async with session.post(f"{first.base}/chat/completions", json=body, headers=headers) as response:
                assert response.status == 200
        await _written(first)
        # Started while the first one still runs, on the same database: it sees the spend.
        second = await start_proxy(config)
        async with session.post(f"{second.base}/chat/completions", json=body, headers=headers) as response:
            assert response.status == 402
            assert "budget 'daily' is spent: $0.012 of $0.01" in (await response.json())["error"]["message"]
    assert 'openrouter_proxy_budget_spent_usd{budget="daily",scope="total"} 0.012' in await second.metrics_text()
    await _written(first)
    # Each alert recorded once, in timestamptz windows keyed as on SQLite.
    connection = await asyncpg.connect(pg_url)
    try:
        kinds = sorted(r["kind"] for r in await connection.fetch("SELECT kind FROM alerts"))
    finally:
        await connection.close()
    assert {"warn:0.5", "spent:1"} <= set(kinds) and len(kinds) == len(set(kinds))


async def test_on_unavailable_block_refuses_billed_calls_until_the_database_is_back(
    start_proxy: Any, make_config: Any, pg_cluster: Cluster, pg_url: str
) -> None:
    proxy = await start_proxy(make_config(db_url=pg_url, storage_on_unavailable="block"))
    body = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:

        async def chat() -> tuple[int, Any]:
            async with session.post(f"{proxy.base}/chat/completions", json=body, headers=headers) as response:
                statuses.append(response.status)
                return response.status, await response.json()

        assert (await chat())[0] == 200
        await asyncio.to_thread(pg_cluster.stop, "fast")
        try:
            refused = None
            for _ in range(200):  # the rows of the first calls find the database gone, then calls are refused
                status, reply = await chat()
                if status == 503:
                    refused = reply
                    break
                await asyncio.sleep(0.05)
            assert refused is not None, statuses
            assert "usage database is unavailable" in refused["error"]["message"]
            assert "storage.on_unavailable" in refused["error"]["message"]
        finally:
            await asyncio.to_thread(pg_cluster.start)
        for _ in range(400):  # the held rows go in once it is back, and calls are served again
            if (await chat())[0] == 200:
                break
            await asyncio.sleep(0.05)
        assert statuses[-1] == 200
    await _written(proxy)
    assert len(await _rows(pg_url)) == statuses.count(200)
    assert "openrouter_proxy_requests_total" in await proxy.metrics_text()


def test_on_unavailable_is_serve_or_block() -> None:
    from proxy.config import parse_config
    from proxy.errors import ConfigError

    assert parse_config({}).storage_on_unavailable == "serve"
    assert parse_config({"storage": {"on_unavailable": "block"}}).storage_on_unavailable == "block"
    try:
        parse_config({"storage": {"on_unavailable": "maybe"}})
    except ConfigError as exc:
        assert str(exc).startswith("storage.on_unavailable: expected one of serve, block")
    else:
        raise AssertionError("accepted storage.on_unavailable: maybe")


async def test_a_stream_cut_before_its_usage_is_filled_from_generation_on_postgres(start_proxy: Any, pg_url: str) -> None:
    proxy = await start_proxy(db_url=pg_url, backfill_delays_s=(0.05, 0.1, 0.2))
    body = {"model": "openai/gpt-4o", "stream": True, "messages": []}
    headers = {"Authorization": f"Bearer {KEY}", "X-Fake": "drop", "X-Fake-Cost": "0.0042"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.base}/chat/completions", json=body, headers=headers) as response:
            try:
                await response.read()
            except aiohttp.ClientPayloadError:
                pass  # the upstream cut the stream
    rows: list[dict[str, Any]] = []
    for _ in range(100):
        await _written(proxy)
        rows = await _rows(pg_url)
        if rows and rows[0]["cost_source"] == "generation":
            break
        await asyncio.sleep(0.05)
    [row] = rows
    assert row["outcome"] == "aborted" and row["cost_source"] == "generation"
    assert row["cost_usd"] == Decimal("0.0042") == row["cost_reported_usd"]
    assert row["input_tokens"] == PROMPT_TOKENS and row["output_tokens"] == COMPLETION_TOKENS
