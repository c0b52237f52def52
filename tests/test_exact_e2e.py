"""Issue 10 end to end: Claude Code streams, BYOK and web search through the real SDKs, the proxy and
the fake OpenRouter, down to the SQLite row, the /generation back-fill and the metrics."""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal
from typing import Any

import anthropic
import openai

from tests.fake_openrouter import BYOK_FEE_SHARE, CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS, WEB_SEARCHES, fake_cost

KEY = "sk-or-v1-exact-" + "cd" * 20
CLAUDE = "anthropic/claude-sonnet-4.5"
FAST_BACKFILL = (0.02, 0.05, 0.1, 0.2)


def _openai(proxy: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base, api_key=KEY, max_retries=0)


def _anthropic(proxy: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(proxy.server.make_url("/api")), auth_token=KEY, max_retries=0)


async def _row_when(proxy: Any, done: Any) -> dict[str, Any]:
    for _ in range(200):
        await proxy.settle()
        rows = proxy.rows()
        if rows and done(rows[-1]):
            return rows[-1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"row never settled: {proxy.rows()}")


async def test_claude_code_stream_with_null_delta_keeps_cache_counts_and_is_backfilled(start_proxy: Any) -> None:
    proxy = await start_proxy(backfill_delays_s=FAST_BACKFILL)
    async with _anthropic(proxy) as client:
        async with client.messages.stream(
            model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Fake": "null-delta,no-cost", "X-Fake-Cost": "0.0123"},
        ) as stream:
            final = await stream.get_final_message()
    assert final.usage.output_tokens == COMPLETION_TOKENS
    await proxy.settle()
    [row] = proxy.rows()
    # The delta's nulls left message_start's counts standing: every prompt token, cache reads included.
    assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"]) == (PROMPT_TOKENS, CACHED_TOKENS, COMPLETION_TOKENS)
    # ... so the catalog prices it right (before the fix: a quarter of this).
    assert Decimal(row["cost_catalog_usd"]) == fake_cost(CLAUDE)
    # No `cost` came with the stream: OpenRouter's bill is fetched from /generation.
    row = await _row_when(proxy, lambda r: r["cost_source"] == "generation")
    assert Decimal(row["cost_usd"]) == Decimal("0.0123") == Decimal(row["cost_reported_usd"])
    assert row["input_tokens"] == PROMPT_TOKENS and row["cached_tokens"] == CACHED_TOKENS


async def test_byok_rows_spend_fee_plus_provider_charge_without_false_drift(proxy: Any) -> None:
    async with _openai(proxy) as client:
        await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                             extra_headers={"X-Fake": "byok"})
    async with _anthropic(proxy) as client:
        async with client.messages.stream(model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "hi"}],
                                          extra_headers={"X-Fake": "byok"}) as stream:
            await stream.get_final_message()
    await proxy.settle()
    rows = proxy.rows()
    assert len(rows) == 2
    for row, model in zip(rows, ("openai/gpt-4o", CLAUDE)):
        provider = Decimal(str(float(fake_cost(model))))
        fee = Decimal(str(float(provider * BYOK_FEE_SHARE)))
        assert row["is_byok"] == 1
        assert Decimal(row["cost_reported_usd"]) == fee and Decimal(row["upstream_cost_usd"]) == provider
        assert Decimal(row["cost_usd"]) == fee + provider
    text = await proxy.metrics_text()
    assert "openrouter_proxy_cost_drift_total{" not in text
    spent = sum(float(m) for m in re.findall(r'^openrouter_proxy_cost_usd_total\{[^}]*\} (\S+)$', text, re.M))
    assert abs(spent - float(sum(Decimal(r["cost_usd"]) for r in rows))) < 1e-9


async def test_non_byok_upstream_inference_cost_is_never_added(proxy: Any) -> None:
    async with _openai(proxy) as client:
        await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}])
    await proxy.settle()
    [row] = proxy.rows()
    assert row["upstream_cost_usd"] is None and Decimal(row["cost_usd"]) == Decimal(str(float(fake_cost("openai/gpt-4o"))))


async def test_byok_stream_cut_is_backfilled_with_the_provider_charge(start_proxy: Any) -> None:
    proxy = await start_proxy(backfill_delays_s=FAST_BACKFILL)
    async with _openai(proxy) as client:
        try:
            stream = await client.chat.completions.create(
                model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True,
                extra_headers={"X-Fake": "drop,byok", "X-Fake-Cost": "0.004"})
            async for _ in stream:
                pass
        except openai.APIError:
            pass
    row = await _row_when(proxy, lambda r: r["cost_source"] == "generation")
    assert row["is_byok"] == 1 and Decimal(row["upstream_cost_usd"]) == Decimal("0.004")
    assert Decimal(row["cost_reported_usd"]) == Decimal("0.0002") and Decimal(row["cost_usd"]) == Decimal("0.0042")
    # Native counts, consistently: the prompt count matches the cache count beside it.
    assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"]) == (PROMPT_TOKENS, CACHED_TOKENS, COMPLETION_TOKENS)


async def test_web_searches_are_recorded_for_chat_responses_and_messages(proxy: Any) -> None:
    async with _openai(proxy) as client:
        await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                             extra_headers={"X-Fake": "web-search"})
        stream = await client.responses.create(model="openai/gpt-4o", input="hi", stream=True,
                                               extra_headers={"X-Fake": "web-search"})
        async for _ in stream:
            pass
    async with _anthropic(proxy) as client:
        await client.messages.create(model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "hi"}],
                                     extra_headers={"X-Fake": "web-search"})
    await proxy.settle()
    assert [r["web_search_requests"] for r in proxy.rows()] == [WEB_SEARCHES] * 3


async def test_online_model_without_a_cost_is_priced_with_its_web_plugin_results(proxy: Any) -> None:
    async with _openai(proxy) as client:
        await client.chat.completions.create(model="openai/gpt-4o:online", messages=[{"role": "user", "content": "hi"}],
                                             extra_headers={"X-Fake": "no-cost"})
        await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                             extra_body={"plugins": [{"id": "web", "max_results": 2}]},
                                             extra_headers={"X-Fake": "no-cost"})
    await proxy.settle()
    online, plugin = proxy.rows()
    assert Decimal(online["cost_usd"]) == fake_cost("openai/gpt-4o") + 5 * Decimal("0.004")
    assert Decimal(plugin["cost_usd"]) == fake_cost("openai/gpt-4o") + 2 * Decimal("0.004")
    assert online["cost_source"] == plugin["cost_source"] == "catalog"


async def test_claude_code_native_model_id_is_priced(proxy: Any) -> None:
    async with _anthropic(proxy) as client:
        await client.messages.create(model="claude-sonnet-4-5-20250929", max_tokens=100,
                                     messages=[{"role": "user", "content": "hi"}], extra_headers={"X-Fake": "no-cost"})
    await proxy.settle()
    [row] = proxy.rows()
    assert row["cost_source"] == "catalog" and Decimal(row["cost_usd"]) == fake_cost(CLAUDE)


async def test_flex_tier_without_a_cost_is_priced_at_half(proxy: Any) -> None:
    async with _openai(proxy) as client:
        reply = await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                                     extra_body={"service_tier": "flex"}, extra_headers={"X-Fake": "flex,no-cost"})
    assert reply.service_tier == "flex"
    await proxy.settle()
    [row] = proxy.rows()
    assert row["cost_source"] == "catalog" and Decimal(row["cost_usd"]) == fake_cost("openai/gpt-4o") / 2
