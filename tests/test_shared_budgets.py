"""Budgets shared through the database (proxy/server/shared.py, proxy/store/holds.py and
sqlite_holds.py), with two proxies in this process on one database (PostgreSQL, or one SQLite file
as `serve --workers 2` runs): rolling and per-session windows, the model that served paying, and a
replica whose database is away deciding on its own."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from proxy.budgets.spec import parse_budgets
from proxy.server.app import GUARD
from tests.pg_cluster import Cluster

KEY = "sk-or-v1-test-" + "ef" * 20
BODY = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


async def _post(session: aiohttp.ClientSession, proxy: Any, headers: dict[str, str], body: dict[str, Any] = BODY) -> tuple[int, str]:
    async with session.post(f"{proxy.base}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}", **headers}) as r:
        text = await r.text()
        return r.status, text


async def _settled(*proxies: Any) -> None:
    for _ in range(750):  # a retry after an outage backs off up to 5 s
        if all(p.app[GUARD].shared.depth() == 0 for p in proxies):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("settles still queued")


async def _spend(url: str) -> list[tuple[str, str, str]]:
    connection = await asyncpg.connect(url)
    try:
        return [(r["budget"], r["scope"], str(r["spent"])) for r in await connection.fetch("SELECT * FROM budget_spend ORDER BY budget, scope")]
    finally:
        await connection.close()


Engine = tuple[dict[str, Any], Callable[[], Awaitable[list[tuple[str, str, str]]]]]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """Config changes that share budgets, and a reader of the shared spend rows."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        return {"db_url": url}, lambda: _spend(url)
    db = tmp_path / "usage.db"

    async def spend() -> list[tuple[str, str, str]]:
        connection = sqlite3.connect(db)
        try:
            return [tuple(r) for r in connection.execute("SELECT budget, scope, spent FROM budget_spend ORDER BY budget, scope")]
        finally:
            connection.close()

    return {"db": db, "workers": 2}, spend


async def test_a_rolling_budget_spent_on_one_proxy_blocks_the_other(start_proxy: Any, make_config: Any, engine: Engine) -> None:
    budgets = parse_budgets([{"name": "hourly", "limit_usd": "0.01", "period": "rolling:1h", "action": "block"}])
    config = make_config(budgets=budgets, **engine[0])
    a, b = await start_proxy(config), await start_proxy(config)
    assert a.app[GUARD].shared is not None and b.app[GUARD].shared is not None
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # $0.012 of $0.01
            assert (await _post(session, a, {"X-Fake-Cost": "0.004"}))[0] == 200
        await _settled(a)
        status, text = await _post(session, b, {"X-Fake-Cost": "0.004"})
    assert status == 402 and "is spent: $0.012 of $0.01 in the last 1h" in text, text
    # One slice row for the three requests (they fall in the same 15-second slice, or two).
    spend = await engine[1]()
    assert {s[0] for s in spend} == {"hourly"} and sum(float(s[2]) for s in spend) == 0.012


async def test_per_session_windows_are_shared_and_kept_apart(start_proxy: Any, make_config: Any, engine: Engine) -> None:
    budgets = parse_budgets([{"name": "per-session", "limit_usd": "0.01", "period": "day", "scope": "session", "action": "block"}])
    config = make_config(budgets=budgets, **engine[0])
    a, b = await start_proxy(config), await start_proxy(config)
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            assert (await _post(session, a, {"X-Fake-Cost": "0.006", "X-Spend-Session": "s1"}))[0] == 200
        await _settled(a)
        assert (await _post(session, b, {"X-Fake-Cost": "0.006", "X-Spend-Session": "s1"}))[0] == 402
        assert (await _post(session, b, {"X-Fake-Cost": "0.006", "X-Spend-Session": "s2"}))[0] == 200
    await _settled(b)
    assert await engine[1]() == [("per-session", "s1", "0.012"), ("per-session", "s2", "0.006")]


async def test_the_model_that_served_pays_its_own_budget_across_proxies(start_proxy: Any, make_config: Any, engine: Engine) -> None:
    budgets = parse_budgets(
        [{"name": "claude", "limit_usd": "0.01", "period": "day", "match": {"model": "anthropic/*"}, "action": "block"}]
    )
    config = make_config(budgets=budgets, **engine[0])
    a, b = await start_proxy(config), await start_proxy(config)
    auto = {"model": "openrouter/auto", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # asked for auto, served by claude: claude's budget pays
            assert (await _post(session, a, {"X-Fake-Cost": "0.006", "X-Fake-Serve": "anthropic/claude-sonnet-4"}, auto))[0] == 200
        await _settled(a)
        claude = {"model": "anthropic/claude-sonnet-4", "messages": [{"role": "user", "content": "hi"}]}
        status, text = await _post(session, b, {"X-Fake-Cost": "0.006"}, claude)
    assert status == 402 and "budget 'claude' is spent" in text, text


async def test_a_proxy_whose_database_is_away_decides_alone_then_catches_up(
    start_proxy: Any, make_config: Any, pg_cluster: Cluster, pg_url: str
) -> None:
    budgets = parse_budgets([{"name": "daily", "limit_usd": "1", "period": "day", "action": "block"}])
    proxy = await start_proxy(make_config(db_url=pg_url, budgets=budgets))
    async with aiohttp.ClientSession() as session:
        assert (await _post(session, proxy, {"X-Fake-Cost": "0.01"}))[0] == 200
        await _settled(proxy)
        await asyncio.to_thread(pg_cluster.stop, "fast")
        try:
            # Admission cannot reach the database: served on the replica's own view, not refused.
            assert (await _post(session, proxy, {"X-Fake-Cost": "0.02"}))[0] == 200
        finally:
            await asyncio.to_thread(pg_cluster.start)
        await _settled(proxy)  # the queued settle is written once the database is back
    for _ in range(200):
        if await _spend(pg_url) == [("daily", "", "0.03")]:
            break
        await asyncio.sleep(0.05)
    assert await _spend(pg_url) == [("daily", "", "0.03")]
