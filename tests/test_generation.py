"""parse_generation and needs_backfill: the documented /generation shape, native counts, BYOK."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from proxy.pricing.generation import needs_backfill, parse_generation
from proxy.store.records import UsageRecord

# OpenRouter's documented example (GET /api/v1/generation), trimmed to what billing needs.
DOCUMENTED: dict[str, Any] = {
    "data": {
        "id": "gen-3bhGkxlo4XFrqiabUM7NDtwDzWwG",
        "total_cost": 0.0015,
        "cache_discount": 0.0002,
        "upstream_inference_cost": 0.0012,
        "model": "sao10k/l3-stheno-8b",
        "provider_name": "Infermatic",
        "tokens_prompt": 10,
        "tokens_completion": 25,
        "native_tokens_prompt": 12,
        "native_tokens_completion": 27,
        "native_tokens_reasoning": 5,
        "native_tokens_cached": 3,
        "num_search_results": 5,
        "is_byok": False,
    }
}


def test_native_counts_are_used_consistently() -> None:
    filled = parse_generation(DOCUMENTED)
    assert filled is not None
    assert (filled.input_tokens, filled.output_tokens, filled.cached_tokens, filled.reasoning_tokens) == (12, 27, 3, 5)
    assert filled.provider == "Infermatic"


def test_non_byok_upstream_cost_is_inside_total_cost() -> None:
    filled = parse_generation(DOCUMENTED)
    assert filled is not None
    assert filled.cost == filled.reported == Decimal("0.0015") and filled.upstream is None and filled.is_byok is False


def test_byok_generation_spends_fee_plus_upstream() -> None:
    body = {"data": {**DOCUMENTED["data"], "is_byok": True, "total_cost": 0.00006}}
    filled = parse_generation(body)
    assert filled is not None and filled.is_byok is True
    assert filled.reported == Decimal("0.00006") and filled.upstream == Decimal("0.0012")
    assert filled.cost == Decimal("0.00126")


@pytest.mark.parametrize("body", [{}, {"data": {}}, {"data": {"total_cost": None}}, {"data": {"total_cost": "abc"}}, None])
def test_no_usable_cost_yet(body: Any) -> None:
    assert parse_generation(body) is None


NOW = datetime(2026, 12, 1, tzinfo=UTC)
ROW = UsageRecord(
    id="r", started_at=NOW, finished_at=NOW, method="POST", endpoint="messages", model_requested="m", model="m",
    provider=None, generation_id="gen-1", key_fingerprint=None, key_alias=None, project=None, session=None,
    client=None, streamed=True, status=200, outcome="ok", error=None, input_tokens=11000, output_tokens=300,
    cached_tokens=9000, cache_write_tokens=2000, reasoning_tokens=None, web_search_requests=None,
    cost_usd=Decimal("0.01"), cost_reported_usd=None, cost_catalog_usd=Decimal("0.01"), cost_source="catalog",
    is_free=False, is_byok=None, ttfb_ms=1.0, duration_ms=2.0,
)


@pytest.mark.parametrize(
    ("changes", "want"),
    [
        ({}, True),  # a complete stream priced from the catalog: OpenRouter's bill is asked for
        ({"streamed": False}, False),  # a JSON reply without cost: nothing more to learn
        ({"cost_reported_usd": Decimal("0.01"), "cost_source": "reported"}, False),
        ({"is_byok": True, "cost_reported_usd": Decimal("0.0005"), "cost_source": "reported"}, True),  # no provider part
        ({"is_byok": True, "cost_reported_usd": Decimal("0.0005"), "upstream_cost_usd": Decimal("0.01")}, False),
        ({"generation_id": None}, False),
        ({"status": 429, "outcome": "upstream_error"}, False),
        ({"outcome": "aborted", "streamed": False}, True),
    ],
)
def test_needs_backfill(changes: dict[str, Any], want: bool) -> None:
    assert needs_backfill(dataclasses.replace(ROW, **changes)) is want
