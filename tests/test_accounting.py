"""account(): which cost is accounted, what is free, when reported and catalog cost have drifted."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from proxy.pricing.accounting import CacheShare, CacheShares, Exchange, account, drifted
from proxy.server.attribution import Attribution
from proxy.pricing.catalog import parse_models
from proxy.store.records import UsageRecord
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
    assert account(_exchange(model), usage, catalog).record.is_free is free


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


# ---- issue 10: what the request body says (web plugin, cache TTL, speed) -----------------------

import dataclasses as _dc  # noqa: E402

from proxy.config import parse_config  # noqa: E402
from proxy.pricing.hints import WEB_RESULT_USD, Hints, read_hints  # noqa: E402

HINT_CATALOG = parse_models(
    {
        "data": [
            {"id": "acme/paid", "name": "Paid", "pricing": {"prompt": "0.000001", "completion": "0.000002"}},
            {"id": "acme/cached", "name": "Cached", "pricing": {
                "prompt": "0.000003", "completion": "0.000015", "input_cache_write": "0.00000375",
                "input_cache_write_1h": "0.000006"}},
            {"id": "acme/opus", "name": "Opus", "pricing": {"prompt": "0.000005", "completion": "0.000025"}},
            {"id": "acme/opus-fast", "name": "Opus fast", "pricing": {"prompt": "0.00001", "completion": "0.00005"}},
        ]
    }
)


def _hinted(model: str, body: bytes) -> Exchange:
    return _dc.replace(_exchange(model), hints=read_hints(body, model))


@pytest.mark.parametrize(
    ("model", "body", "results"),
    [
        ("acme/paid:online", b'{"model":"acme/paid:online","messages":[]}', 5),
        ("acme/paid", b'{"model":"acme/paid","plugins":[{"id":"web","max_results":3}],"messages":[]}', 3),
        ("acme/paid", b'{"model":"acme/paid","plugins":[{"id":"web","engine":"native"}]}', 0),
        ("acme/paid", b'{"model":"acme/paid","messages":[{"role":"user","content":"\\"plugins\\": [{\\"id\\": \\"web\\"}]"}]}', 0),
    ],
)
def test_web_plugin_is_priced_per_result(model: str, body: bytes, results: int) -> None:
    usage = Usage(model="acme/paid", input_tokens=1000, output_tokens=500)
    accounted = account(_hinted(model, body), usage, HINT_CATALOG)
    assert accounted.breakdown is not None
    assert accounted.breakdown.web_search == results * WEB_RESULT_USD == results * Decimal("0.004")
    assert accounted.record.cost_catalog_usd == Decimal("0.002") + results * WEB_RESULT_USD


def test_web_result_price_comes_from_config() -> None:
    config = parse_config({"catalog": {"web_search_result_usd": 0.01}})
    assert config.web_search_result_usd == Decimal("0.01")
    usage = Usage(model="acme/paid", input_tokens=0, output_tokens=0)
    rec = account(_hinted("acme/paid:online", b"{}"), usage, HINT_CATALOG, config.web_search_result_usd).record
    assert rec.cost_catalog_usd == Decimal("0.05")


def test_one_hour_ttl_named_in_the_body_prices_chat_cache_writes_at_the_1h_rate() -> None:
    body = b'{"model":"acme/cached","messages":[{"role":"user","content":[{"type":"text","text":"x","cache_control":{"type":"ephemeral","ttl":"1h"}}]}]}'
    usage = Usage(model="acme/cached", input_tokens=1000, output_tokens=0, cache_write_tokens=1000)
    accounted = account(_hinted("acme/cached", body), usage, HINT_CATALOG)
    assert accounted.record.cache_write_1h_tokens == 1000
    assert accounted.breakdown is not None and accounted.breakdown.cache_write == 1000 * Decimal("0.000006")
    # Without a TTL in the body (or with a mix), writes stay five-minute ones.
    for plain in (b'{"model":"acme/cached"}', b'{"a":{"ttl":"1h"},"b":{"ttl":"5m"}}'):
        assert account(_hinted("acme/cached", plain), usage, HINT_CATALOG).breakdown.cache_write == 1000 * Decimal("0.00000375")  # type: ignore[union-attr]


def test_fast_speed_is_priced_at_the_fast_entry() -> None:
    usage = Usage(model="acme/opus", input_tokens=1000, output_tokens=1000)
    assert account(_hinted("acme/opus", b'{"model":"acme/opus","speed":"fast"}'), usage, HINT_CATALOG).record.cost_catalog_usd == Decimal("0.06")
    assert account(_hinted("acme/opus", b'{"model":"acme/opus"}'), usage, HINT_CATALOG).record.cost_catalog_usd == Decimal("0.03")


def test_hints_of_a_plain_body_are_none() -> None:
    assert read_hints(b'{"model":"x","messages":[]}', "x") == Hints()


def test_flex_tier_is_billed_at_half_the_token_price() -> None:
    usage = Usage(model="acme/paid", input_tokens=1000, output_tokens=500, service_tier="flex")
    assert account(_exchange("acme/paid"), usage, CATALOG).record.cost_catalog_usd == Decimal("0.001")
    for tier in (None, "default", "priority"):
        plain = _dc.replace(usage, service_tier=tier)
        assert account(_exchange("acme/paid"), plain, CATALOG).record.cost_catalog_usd == Decimal("0.002")


def test_a_large_body_is_scanned_only_when_the_catalog_sets_the_cost() -> None:
    from proxy.pricing.hints import SCAN_WHEN_REPORTED, hints_for

    body = b'{"model":"acme/paid","speed":"fast","messages":"' + b"x" * SCAN_WHEN_REPORTED + b'"}'
    assert hints_for(body, "acme/paid", cost_reported=False).fast
    assert not hints_for(body, "acme/paid", cost_reported=True).fast
    assert hints_for(body, "acme/paid:online", cost_reported=True).web_results == 5  # from the name alone
    assert hints_for(b'{"speed":"fast"}', "acme/paid", cost_reported=True).fast


def _seen(session: str | None, model: str | None, inputs: int | None, cached: int, written: int, outcome: str = "ok") -> UsageRecord:
    who = Attribution(None, None, None, session, None)
    exchange = Exchange("r1", NOW, NOW, "POST", "chat/completions", model, who, False, 200, outcome, None, 1.0, 2.0)
    usage = Usage(model=model, input_tokens=inputs, output_tokens=10, cached_tokens=cached, cache_write_tokens=written)
    return account(exchange, usage, CATALOG).record


def test_cache_shares_session_first_then_model_and_bounded() -> None:
    shares = CacheShares(limit=3)
    shares.observe(_seen("s1", "acme/paid", 1000, 600, 100))
    shares.observe(_seen("s2", "acme/paid", 1000, 300, 0))
    shares.observe(_seen("s3", "acme/paid", None, 0, 0))  # no usage: not a share
    shares.observe(_seen("s4", "acme/paid", 1000, 0, 0, outcome="aborted"))
    assert shares.share(_seen("s1", "acme/other", 1, 0, 0)) == CacheShare(Decimal("0.6"), Decimal("0.1"))
    assert shares.share(_seen("s9", "acme/paid", 1, 0, 0)) == CacheShare(Decimal("0.3"), Decimal(0))
    assert shares.share(_seen("s9", "acme/other", 1, 0, 0)) is None
    shares.observe(_seen("s5", "acme/zero", 3, 1, 1))  # 4 keys past a limit of 3: s1 goes
    assert shares.share(_seen("s1", "acme/other", 1, 0, 0)) is None
    assert shares.share(_seen("s5", None, 1, 0, 0)) == CacheShare(Decimal(1) / 3, Decimal(1) / 3)
