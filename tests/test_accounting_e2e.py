"""Accounting through the proxy: catalog pricing when no cost is sent, /generation back-fill, metrics = SQLite."""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal
from typing import Any

import aiohttp

from tests.fake_openrouter import CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS, RECEIVED, fake_cost

KEY = "sk-or-v1-acct-" + "ef" * 20


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any], **headers: str) -> tuple[int, bytes]:
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {KEY}", **headers}) as response:
        try:
            return response.status, await response.read()
        except aiohttp.ClientPayloadError:
            return response.status, b""


async def test_no_cost_in_reply_is_priced_from_the_catalog(proxy: Any) -> None:
    async with aiohttp.ClientSession() as session:
        status, _ = await _post(session, f"{proxy.base}/chat/completions", {"model": "openai/gpt-4o", "messages": []}, **{"X-Fake": "no-cost"})
    assert status == 200
    await proxy.settle()
    [row] = proxy.rows()
    # gpt-4o in the embedded catalog: $2.50/M prompt, $1.25/M cache read, $10/M completion.
    expected = (PROMPT_TOKENS - CACHED_TOKENS) * Decimal("0.0000025") + CACHED_TOKENS * Decimal("0.00000125") + COMPLETION_TOKENS * Decimal("0.00001")
    assert Decimal(row["cost_catalog_usd"]) == expected == fake_cost("openai/gpt-4o")
    assert row["cost_reported_usd"] is None
    assert Decimal(row["cost_usd"]) == expected and row["cost_source"] == "catalog"


async def test_stream_cut_before_usage_is_filled_from_generation(start_proxy: Any) -> None:
    proxy = await start_proxy(backfill_delays_s=(0.05, 0.1, 0.2))
    async with aiohttp.ClientSession() as session:
        await _post(session, f"{proxy.base}/chat/completions", {"model": "openai/gpt-4o", "stream": True, "messages": []}, **{"X-Fake": "drop", "X-Fake-Cost": "0.0042"})
    for _ in range(100):
        await proxy.settle()
        rows = proxy.rows()
        if rows and rows[0]["cost_source"] == "generation":
            break
        await asyncio.sleep(0.05)
    [row] = proxy.rows()
    assert row["outcome"] == "aborted"
    assert row["cost_source"] == "generation"
    assert Decimal(row["cost_usd"]) == Decimal("0.0042") == Decimal(row["cost_reported_usd"])
    assert row["input_tokens"] == PROMPT_TOKENS and row["output_tokens"] == COMPLETION_TOKENS
    metrics = await proxy.metrics_text()
    assert re.search(r'openrouter_proxy_cost_usd_total\{[^}]*model="openai/gpt-4o"[^}]*\} 0\.0042', metrics)
    # The counts /generation filled in reach the token counters too, once.
    tokens = dict((labels, v) for labels, v in _samples(metrics, "openrouter_proxy_tokens_total"))
    assert sum(v for labels, v in tokens.items() if 'kind="input"' in labels) == PROMPT_TOKENS
    assert sum(v for labels, v in tokens.items() if 'kind="output"' in labels) == COMPLETION_TOKENS


def _samples(text: str, name: str) -> list[tuple[str, float]]:
    return [(m.group(1), float(m.group(2))) for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M)]


async def test_metrics_equal_sqlite_after_mixed_traffic(proxy: Any) -> None:
    calls = [
        ("chat/completions", {"model": "openai/gpt-4o", "messages": []}, {}),
        ("chat/completions", {"model": "meta-llama/llama-3.1-8b-instruct", "stream": True, "messages": []}, {"X-Spend-Session": "s1"}),
        ("chat/completions", {"model": "openai/gpt-4o", "stream": True, "messages": []}, {"X-Fake": "midstream-error", "X-Spend-Project": "acme"}),
        ("chat/completions", {"model": "openai/gpt-4o", "messages": []}, {"X-Fake": "error500"}),
        ("messages", {"model": "anthropic/claude-sonnet-4.5", "stream": True, "max_tokens": 5, "messages": []}, {"X-Claude-Code-Session-Id": "cc-1"}),
        ("responses", {"model": "openai/gpt-4o", "input": "hi"}, {"session-id": "codex-1"}),
        ("chat/completions", {"model": "thinkingmachines/inkling-small:free", "messages": []}, {"X-Fake-Cost": "0"}),
    ]
    async with aiohttp.ClientSession() as session:
        for endpoint, body, headers in calls * 3:
            await _post(session, f"{proxy.base}/{endpoint}", body, **headers)
    await proxy.settle()
    rows = proxy.rows()
    assert len(rows) == len(calls) * 3
    text = await proxy.metrics_text()
    requests = _samples(text, "openrouter_proxy_requests_total")
    assert sum(v for _, v in requests) == len(rows)
    for status in {r["status"] for r in rows}:
        assert sum(v for labels, v in requests if f'status="{status}"' in labels) == sum(1 for r in rows if r["status"] == status)
    cost = sum(v for _, v in _samples(text, "openrouter_proxy_cost_usd_total"))
    assert abs(Decimal(str(cost)) - sum(Decimal(r["cost_usd"] or 0) for r in rows)) < Decimal("1e-9")
    tokens = _samples(text, "openrouter_proxy_tokens_total")
    assert sum(v for labels, v in tokens if 'kind="input"' in labels) == sum(r["input_tokens"] or 0 for r in rows)
    assert sum(v for labels, v in tokens if 'kind="output"' in labels) == sum(r["output_tokens"] or 0 for r in rows)
    free = _samples(text, "openrouter_proxy_free_requests_total")
    assert sum(v for _, v in free) == sum(r["is_free"] for r in rows) == 3
    outcomes = {r["outcome"] for r in rows}
    assert outcomes == {"ok", "upstream_error"}
    assert {r["session"] for r in rows} >= {"s1", "cc-1", "codex-1"}


async def test_report_totals_and_free_usage(proxy: Any, capsys: Any) -> None:
    from proxy.cli.main import main

    async with aiohttp.ClientSession() as session:
        for model, cost in (("openai/gpt-4o", "0.004"), ("thinkingmachines/inkling-small:free", "0"), ("thinkingmachines/inkling-small:free", "0")):
            await _post(session, f"{proxy.base}/chat/completions", {"model": model, "messages": []}, **{"X-Fake-Cost": cost})
    await proxy.settle()
    assert main(["report", "--db", str(proxy.db_path), "--by", "model", "--format", "json", "--free-daily-limit", "50"]) == 0
    import json

    document = json.loads(capsys.readouterr().out)
    assert document["free"] == {"requests_today": 2, "daily_limit": 50, "busiest_minute": 2, "per_minute_limit": 20}
    by_model = {r["group"]: r for r in document["rows"]}
    assert by_model["thinkingmachines/inkling-small:free"]["free_requests"] == 2
    assert Decimal(document["total"]["cost_usd"]) == sum(Decimal(r["cost_usd"]) for r in document["rows"]) == Decimal("0.004")
    assert main(["report", "--db", str(proxy.db_path)]) == 0
    assert "free models today (UTC): 2 of 50 requests/day (4%)" in capsys.readouterr().out


async def test_stream_cut_and_unknown_to_generation_is_estimated(start_proxy: Any) -> None:
    proxy = await start_proxy(backfill_delays_s=(0.02, 0.02))
    body = {"model": "openai/gpt-4o", "stream": True, "messages": [{"role": "user", "content": "x" * 3990}]}
    async with aiohttp.ClientSession() as session:
        await _post(session, f"{proxy.base}/chat/completions", body, **{"X-Fake": "drop,no-generation"})
    for _ in range(100):
        await proxy.settle()
        rows = proxy.rows()
        if rows and rows[0]["cost_source"] == "estimated":
            break
        await asyncio.sleep(0.05)
    [row] = proxy.rows()
    assert row["outcome"] == "aborted" and row["cost_source"] == "estimated"
    # About 4 bytes of request per prompt token, one token per streamed event (3 before the cut).
    import json

    prompt_tokens = len(json.dumps(body).encode()) // 4
    assert Decimal(row["cost_usd"]) == prompt_tokens * Decimal("0.0000025") + 3 * Decimal("0.00001")
    assert row["cost_reported_usd"] is None


async def test_whatif_on_proxied_traffic_reproduces_the_logged_cost(proxy: Any, capsys: Any) -> None:
    import json

    from proxy.cli.main import main

    async with aiohttp.ClientSession() as session:
        for endpoint, body in (
            ("chat/completions", {"model": "openai/gpt-4o", "messages": []}),
            ("chat/completions", {"model": "openai/gpt-4o", "stream": True, "messages": []}),
            ("responses", {"model": "openai/gpt-4o", "input": "hi", "stream": True}),
        ):
            await _post(session, f"{proxy.base}/{endpoint}", body, **{"X-Fake": "no-cost"})
    await proxy.settle()
    rows = proxy.rows()
    logged = sum(Decimal(r["cost_usd"]) for r in rows)
    assert {r["cost_source"] for r in rows} == {"catalog"} and len(rows) == 3
    assert main(["whatif", "--db", str(proxy.db_path), "--model", "openai/gpt-4o", "--model", "meta-llama/llama-3.1-8b-instruct", "--format", "json"]) == 0
    scenarios = {r["scenario"]: r for r in json.loads(capsys.readouterr().out)}
    assert Decimal(scenarios["actual (as logged)"]["cost"]) == logged
    assert Decimal(scenarios["all on openai/gpt-4o"]["cost"]) == logged
    llama = (PROMPT_TOKENS - CACHED_TOKENS) * Decimal("0.00000005") + CACHED_TOKENS * Decimal("0.000000025") + COMPLETION_TOKENS * Decimal("0.00000008")
    assert Decimal(scenarios["all on meta-llama/llama-3.1-8b-instruct"]["cost"]) == 3 * llama


async def test_cost_drift_is_logged_and_counted(proxy: Any, caplog: Any) -> None:
    import logging

    caplog.set_level(logging.WARNING, logger="proxy.server.forward")
    async with aiohttp.ClientSession() as session:
        # The catalog prices this usage at $0.00575; OpenRouter "bills" 10% more, then the same.
        await _post(session, f"{proxy.base}/chat/completions", {"model": "openai/gpt-4o", "messages": []}, **{"X-Fake-Cost": "0.006325"})
        await _post(session, f"{proxy.base}/chat/completions", {"model": "openai/gpt-4o", "messages": []}, **{"X-Fake-Cost": "0.00575"})
    drift_lines = [r.getMessage() for r in caplog.records if "event=cost_drift" in r.getMessage()]
    assert len(drift_lines) == 1 and "reported_usd=0.006325 catalog_usd=0.00575" in drift_lines[0]
    text = await proxy.metrics_text()
    assert re.search(r'openrouter_proxy_cost_drift_total\{model="openai/gpt-4o"\} 1\.0', text)
    assert re.search(r'openrouter_proxy_cost_drift_usd_total\{direction="over",model="openai/gpt-4o"\} 0\.000575', text)


async def test_price_changes_are_kept_and_requests_priced_at_the_price_of_their_time(
    start_proxy: Any, make_config: Any, upstream: Any, capsys: Any
) -> None:
    import json

    from proxy.server.app import CATALOG
    from proxy.cli.main import main
    from tests.fake_openrouter import PRICE_CHANGES

    proxy = await start_proxy(make_config(catalog_refresh_s=0.1))

    async def catalog_price() -> str | None:
        entry = proxy.server.app[CATALOG].current.get("openai/gpt-4o")
        return None if entry is None else str(entry.pricing.prompt)

    async def wait_for_prompt_price(value: str) -> None:
        for _ in range(200):
            if await catalog_price() == value and proxy.server.app[CATALOG].source.startswith("http"):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"catalog never showed prompt price {value}")

    await wait_for_prompt_price("0.0000025")
    async with aiohttp.ClientSession() as session:
        await _post(session, f"{proxy.base}/chat/completions", {"model": "openai/gpt-4o", "messages": []}, **{"X-Fake": "no-cost"})
        upstream.app[PRICE_CHANGES]["openai/gpt-4o"] = {"prompt": "0.000005"}  # OpenRouter doubles the input price
        await wait_for_prompt_price("0.000005")
        await _post(session, f"{proxy.base}/chat/completions", {"model": "openai/gpt-4o", "messages": []}, **{"X-Fake": "no-cost"})
    await proxy.settle()
    before, after = proxy.rows()
    assert Decimal(after["cost_catalog_usd"]) - Decimal(before["cost_catalog_usd"]) == (PROMPT_TOKENS - CACHED_TOKENS) * Decimal("0.0000025")
    assert main(["models", "--changes", "--db", str(proxy.db_path), "--search", "openai/gpt-4o", "--format", "json"]) == 0
    changes = json.loads(capsys.readouterr().out)
    gpt4o = [c for c in changes if c["model"] == "openai/gpt-4o"]
    assert [(c["input_per_1m_was"], c["input_per_1m"]) for c in gpt4o] == [("2.5", "5")], gpt4o
    # whatif prices each request at the price in force when it ran: it reproduces both rows.
    assert main(["whatif", "--db", str(proxy.db_path), "--model", "openai/gpt-4o", "--format", "json"]) == 0
    scenarios = {r["scenario"]: r for r in json.loads(capsys.readouterr().out)}
    assert Decimal(scenarios["all on openai/gpt-4o"]["cost"]) == Decimal(before["cost_usd"]) + Decimal(after["cost_usd"])


async def test_backfill_retries_until_generation_knows_the_request_with_the_clients_key(start_proxy: Any, upstream: Any) -> None:
    proxy = await start_proxy(backfill_delays_s=(0.02, 0.02, 0.02, 0.02))
    async with aiohttp.ClientSession() as session:
        await _post(session, f"{proxy.base}/chat/completions", {"model": "openai/gpt-4o", "stream": True, "messages": []}, **{"X-Fake": "drop,late-generation", "X-Fake-Cost": "0.0031"})
    for _ in range(100):
        await proxy.settle()
        rows = proxy.rows()
        if rows and rows[0]["cost_source"] != "none" and rows[0]["cost_source"] != "catalog":
            break
        await asyncio.sleep(0.05)
    [row] = proxy.rows()
    assert row["cost_source"] == "generation" and Decimal(row["cost_usd"]) == Decimal("0.0031")
    lookups = [r for r in upstream.app[RECEIVED] if r["path"].startswith("/api/v1/generation")]
    assert len(lookups) == 3  # two 404s while OpenRouter lags, then the answer
    assert {r["headers"]["Authorization"] for r in lookups} == {f"Bearer {KEY}"}


async def test_unreachable_upstream_rows_cost_nothing(start_proxy: Any, make_config: Any) -> None:
    proxy = await start_proxy(make_config(upstream="http://127.0.0.1:9/api/v1"))
    async with aiohttp.ClientSession() as session:
        status, _ = await _post(session, f"{proxy.base}/chat/completions", {"model": "openai/gpt-4o", "messages": []})
    assert status == 502
    await proxy.settle()
    [row] = proxy.rows()
    assert (row["outcome"], Decimal(row["cost_usd"]), row["cost_source"]) == ("proxy_error", Decimal(0), "none")


async def test_a_price_that_returns_to_an_earlier_value_is_read_again(start_proxy: Any, make_config: Any, upstream: Any, capsys: Any) -> None:
    import json

    from proxy.server.app import CATALOG
    from proxy.cli.main import main
    from tests.fake_openrouter import PRICE_CHANGES

    proxy = await start_proxy(make_config(catalog_refresh_s=0.1))

    async def wait_for_prompt_price(value: str) -> None:
        for _ in range(200):
            entry = proxy.server.app[CATALOG].current.get("openai/gpt-4o")
            if entry is not None and str(entry.pricing.prompt) == value and proxy.server.app[CATALOG].source.startswith("http"):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"catalog never showed prompt price {value}")

    async with aiohttp.ClientSession() as session:
        for prompt in ("0.0000025", "0.000005", "0.0000025"):  # A -> B -> A
            upstream.app[PRICE_CHANGES]["openai/gpt-4o"] = {"prompt": prompt}
            await wait_for_prompt_price(prompt)
            await proxy.settle()  # the price change is written before the request that follows it
            await asyncio.sleep(0.01)
            await _post(session, f"{proxy.base}/chat/completions", {"model": "openai/gpt-4o", "messages": []}, **{"X-Fake": "no-cost"})
    await proxy.settle()
    rows = proxy.rows()
    assert rows[0]["cost_catalog_usd"] == rows[2]["cost_catalog_usd"] != rows[1]["cost_catalog_usd"]
    assert main(["models", "--changes", "--db", str(proxy.db_path), "--search", "openai/gpt-4o", "--format", "json"]) == 0
    changes = [c for c in json.loads(capsys.readouterr().out) if c["model"] == "openai/gpt-4o"]
    assert [(c["input_per_1m_was"], c["input_per_1m"]) for c in changes] == [("2.5", "5"), ("5", "2.5")], changes
    # whatif prices the third request at A again, not at B forever.
    assert main(["whatif", "--db", str(proxy.db_path), "--model", "openai/gpt-4o", "--format", "json"]) == 0
    scenarios = {r["scenario"]: r for r in json.loads(capsys.readouterr().out)}
    assert Decimal(scenarios["all on openai/gpt-4o"]["cost"]) == sum(Decimal(r["cost_usd"]) for r in rows)


async def test_cut_stream_estimate_uses_the_sessions_recent_cache_share(start_proxy: Any) -> None:
    import json

    proxy = await start_proxy(backfill_delays_s=(0.02, 0.02))
    body = {"model": "openai/gpt-4o", "stream": True, "messages": [{"role": "user", "content": "x" * 3990}]}
    async with aiohttp.ClientSession() as session:
        # A complete turn of the session: 200 of its 1200 prompt tokens were cache reads.
        await _post(session, f"{proxy.base}/chat/completions", {"model": "openai/gpt-4o", "messages": []}, **{"Session-Id": "s1"})
        await _post(session, f"{proxy.base}/chat/completions", body, **{"X-Fake": "drop,no-generation", "Session-Id": "s1"})
    for _ in range(100):
        await proxy.settle()
        rows = proxy.rows()
        if len(rows) == 2 and rows[1]["cost_source"] == "estimated":
            break
        await asyncio.sleep(0.05)
    _, row = proxy.rows()
    assert row["cost_source"] == "estimated"
    prompt_tokens = len(json.dumps(body).encode()) // 4
    cached = int(prompt_tokens * Decimal(CACHED_TOKENS) / PROMPT_TOKENS)
    expected = (prompt_tokens - cached) * Decimal("0.0000025") + cached * Decimal("0.00000125") + 3 * Decimal("0.00001")
    assert Decimal(row["cost_usd"]) == expected
