"""Per-provider prices from /models/{author}/{slug}/endpoints: parsing, lazy fetch, last good on failure,
and a row priced at the provider that served it."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from proxy.pricing.endpoints import ProviderPrices, parse_endpoints
from tests.fake_openrouter import ENDPOINT_FETCHES, ENDPOINT_MARKUP, FAULTS, fake_cost

MARKUP = 2

KEY = "sk-or-v1-endp-" + "12" * 20

# The documented shape (openrouter.ai/docs/api/api-reference/endpoints/list-endpoints), trimmed.
LISTING = {
    "data": {
        "id": "anthropic/claude-sonnet-4.5",
        "name": "Anthropic: Claude Sonnet 4.5",
        "endpoints": [
            {"name": "Anthropic | anthropic/claude-sonnet-4.5", "provider_name": "Anthropic", "tag": "anthropic",
             "context_length": 1000000, "quantization": None, "status": 0,
             "pricing": {"prompt": "0.000003", "completion": "0.000015", "input_cache_read": "0.0000003",
                         "input_cache_write": "0.00000375"}},
            {"name": "Google | anthropic/claude-sonnet-4.5", "provider_name": "Google", "tag": "google-vertex",
             "pricing": {"prompt": "0.0000033", "completion": "0.0000165"}},
            {"name": "broken", "provider_name": "Broken", "pricing": {"prompt": "cheap"}},
            {"name": "nameless", "pricing": {"prompt": "0", "completion": "0"}},
        ],
    }
}


def test_parse_endpoints_keys_prices_by_provider() -> None:
    prices = parse_endpoints(LISTING)
    assert sorted(prices) == ["anthropic", "google"]
    assert prices["google"].prompt == Decimal("0.0000033")
    assert prices["anthropic"].input_cache_write == Decimal("0.00000375")


@pytest.mark.parametrize("bad", [{}, {"data": []}, {"data": {"endpoints": "x"}}, [], None])
def test_parse_endpoints_rejects_a_listing_without_endpoints(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_endpoints(bad)


async def test_fetched_once_lazily_and_last_good_kept_on_failure(upstream: Any) -> None:
    now = [0.0]
    upstream.app[ENDPOINT_MARKUP]["openai/gpt-4o"] = MARKUP
    async with aiohttp.ClientSession() as session:
        prices = ProviderPrices(session, str(upstream.make_url("/api/v1")), max_age_s=60, clock=lambda: now[0])
        assert prices.lookup("openai/gpt-4o", "FakeProvider") is None  # not known yet: asks for it
        await prices.wait()
        found = prices.lookup("openai/gpt-4o", "fakeprovider")
        assert found is not None and found.prompt == Decimal("0.0000025") * MARKUP
        prices.lookup("openai/gpt-4o", "FakeProvider")
        await prices.wait()
        assert upstream.app[ENDPOINT_FETCHES] == ["openai/gpt-4o"]  # fresh: not asked again
        upstream.app[FAULTS].add("endpoints-down")
        now[0] = 61  # stale: asked again, fails, the last good prices stay
        prices.lookup("openai/gpt-4o", "FakeProvider")
        await prices.wait()
        assert len(upstream.app[ENDPOINT_FETCHES]) == 2
        assert prices.lookup("openai/gpt-4o", "FakeProvider") == found
        assert prices.lookup("openai/gpt-4o", None) is None
        # A catalog price that moved makes the endpoint prices stale: not used, fetched again.
        moved = dataclasses.replace(found, prompt=Decimal(1))
        upstream.app[FAULTS].discard("endpoints-down")
        assert prices.lookup("openai/gpt-4o", "FakeProvider", moved) is None  # the last try failed: not yet
        await prices.wait()
        assert len(upstream.app[ENDPOINT_FETCHES]) == 2
        now[0] = 61 + 300
        assert prices.lookup("openai/gpt-4o", "FakeProvider", moved) is None
        await prices.wait()
        assert len(upstream.app[ENDPOINT_FETCHES]) == 3
        assert prices.lookup("openai/gpt-4o", "FakeProvider", moved) == found
        # Variants and aliases have no endpoints path of their own.
        prices.lookup("openai/gpt-4o:free", "FakeProvider")
        prices.lookup("~openai/gpt-latest", "FakeProvider")
        await prices.wait()
        assert len(upstream.app[ENDPOINT_FETCHES]) == 3
        await prices.close()


async def test_row_is_priced_at_the_provider_that_served_it(start_proxy: Any, make_config: Any, upstream: Any) -> None:
    from proxy.server.app import PROVIDER_PRICES

    upstream.app[ENDPOINT_MARKUP]["openai/gpt-4o"] = MARKUP
    proxy = await start_proxy(make_config(catalog_refresh_s=3600))
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(f"{proxy.base}/chat/completions", json={"model": "openai/gpt-4o", "messages": []},
                                    headers={"Authorization": f"Bearer {KEY}", "X-Fake": "no-cost"}) as response:
                assert response.status == 200
                await response.read()
            await proxy.server.app[PROVIDER_PRICES].wait()
    await proxy.settle()
    first, second = proxy.rows()
    # The first request asked for the endpoints and was priced at the catalog; the second at FakeProvider's.
    assert Decimal(first["cost_usd"]) == fake_cost("openai/gpt-4o")
    assert Decimal(second["cost_usd"]) == MARKUP * fake_cost("openai/gpt-4o")
    assert second["provider"] == "FakeProvider" and second["cost_source"] == "catalog"
    assert upstream.app[ENDPOINT_FETCHES] == ["openai/gpt-4o"]
