"""account(): which cost is accounted, what is free, when reported and catalog cost have drifted."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from proxy.pricing.accounting import Exchange, account, drifted
from proxy.server.attribution import Attribution
from proxy.pricing.catalog import parse_models
from proxy.usage import Usage

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CATALOG = parse_models(
    {
        "data": [
            {"id": "acme/paid", "name": "Paid", "pricing": {"prompt": "0.000001", "completion": "0.000002"}},
            {"id": "acme/zero", "name": "Zero-priced, no suffix", "pricing": {"prompt": "0", "completion": "0"}},
        ]
    }
)


def _exchange(model: str, outcome: str = "ok", status: int = 200) -> Exchange:
    who = Attribution(None, None, None, None, None)
    return Exchange("r1", NOW, NOW, "POST", "chat/completions", model, who, False, status, outcome, None, 1.0, 2.0)


@pytest.mark.parametrize(
    ("model", "catalog", "free"),
    [
        ("acme/paid", CATALOG, False),
        ("acme/zero", CATALOG, True),  # zero-priced in the catalog, whatever its name
        ("meta-llama/x:free", None, True),  # the suffix says so even with no catalog
        ("meta-llama/x:free", CATALOG, True),  # ... or a catalog that does not list it
    ],
)
def test_free_models(model: str, catalog: object, free: bool) -> None:
    usage = Usage(model=model, input_tokens=10, output_tokens=5)
    assert account(_exchange(model), usage, catalog).record.is_free is free  # type: ignore[arg-type]


def test_reported_cost_wins_catalog_is_kept_beside_it() -> None:
    usage = Usage(model="acme/paid", input_tokens=1000, output_tokens=500, cost_reported=Decimal("0.01"))
    rec = account(_exchange("acme/paid"), usage, CATALOG).record
    assert (rec.cost_usd, rec.cost_reported_usd, rec.cost_catalog_usd, rec.cost_source) == (
        Decimal("0.01"), Decimal("0.01"), Decimal("0.002000"), "reported",
    )


@pytest.mark.parametrize(("outcome", "status"), [("proxy_error", 502), ("proxy_error", 504), ("blocked", 402)])
def test_never_billed_costs_nothing(outcome: str, status: int) -> None:
    rec = account(_exchange("acme/paid", outcome, status), Usage(), CATALOG).record
    assert (rec.cost_usd, rec.cost_source) == (Decimal(0), "none")


@pytest.mark.parametrize(
    ("reported", "catalog", "want"),
    [
        (Decimal("1.00"), Decimal("0.99"), False),  # exactly 1% apart is not drift
        (Decimal("1.00"), Decimal("0.989"), True),
        (Decimal("0.99"), Decimal("1.00"), False),
        (Decimal("0"), Decimal("0"), False),
        (None, Decimal("1"), False),
    ],
)
def test_drift_is_more_than_one_percent(reported: Decimal | None, catalog: Decimal | None, want: bool) -> None:
    assert drifted(reported, catalog) is want


# ---- BYOK: `cost` is OpenRouter's fee, the provider billed the user's own key the rest ---------


def test_byok_spend_is_fee_plus_upstream_and_no_false_drift() -> None:
    # The catalog prices this usage at $0.002000; the provider charged that to the user's key and
    # OpenRouter's fee was 5% of it.
    usage = Usage(model="acme/paid", input_tokens=1000, output_tokens=500, cost_reported=Decimal("0.0001"),
                  is_byok=True, upstream_cost=Decimal("0.002"))
    accounted = account(_exchange("acme/paid"), usage, CATALOG)
    rec = accounted.record
    assert rec.cost_usd == Decimal("0.0021") and rec.cost_reported_usd == Decimal("0.0001")
    assert rec.upstream_cost_usd == Decimal("0.002") and rec.cost_source == "reported"
    assert accounted.drift is False


def test_byok_inside_the_free_allowance_still_counts_the_provider_charge() -> None:
    usage = Usage(model="acme/paid", input_tokens=1000, output_tokens=500, cost_reported=Decimal("0"),
                  is_byok=True, upstream_cost=Decimal("0.002"))
    assert account(_exchange("acme/paid"), usage, CATALOG).record.cost_usd == Decimal("0.002")


def test_non_byok_upstream_cost_is_never_added() -> None:
    usage = Usage(model="acme/paid", input_tokens=1000, output_tokens=500, cost_reported=Decimal("0.002"),
                  is_byok=False, upstream_cost=Decimal("0.0019"))
    accounted = account(_exchange("acme/paid"), usage, CATALOG)
    assert accounted.record.cost_usd == Decimal("0.002") and accounted.record.upstream_cost_usd is None
    assert accounted.drift is False


def test_byok_drift_compares_the_provider_charge() -> None:
    usage = Usage(model="acme/paid", input_tokens=1000, output_tokens=500, cost_reported=Decimal("0.0001"),
                  is_byok=True, upstream_cost=Decimal("0.003"))
    assert account(_exchange("acme/paid"), usage, CATALOG).drift is True
