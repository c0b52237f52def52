"""account(): parsed Usage + catalog -> the UsageRecord row and its price breakdown (pure).

The cost we account is OpenRouter's own `cost` when it sent one; otherwise our catalog price.
Both are kept side by side (`cost_reported_usd`, `cost_catalog_usd`) so a stale catalog shows.
With BYOK, `cost` is only OpenRouter's fee: the provider billed the user's own key
`cost_details.upstream_inference_cost` (`upstream_cost_usd`), and the money spent is their sum.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from proxy.server.attribution import Attribution
from proxy.pricing.catalog import Catalog, ModelEntry, ModelPricing
from proxy.pricing.hints import NONE, WEB_RESULT_USD, Hints
from proxy.pricing.price import Cost, price
from proxy.store.records import BLOCKED, COST_CATALOG, COST_NONE, COST_REPORTED, OK, PROXY_ERROR, UsageRecord
from proxy.usage import Usage

# Reported and catalog cost further apart than this share means our price table is stale.
DRIFT_SHARE = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Exchange:
    """What the forwarder knows about one request once it is over."""

    request_id: str
    started_at: datetime
    finished_at: datetime
    method: str
    endpoint: str
    model_requested: str | None
    who: Attribution
    streamed: bool
    status: int
    outcome: str
    error: str | None
    ttfb_ms: float | None
    duration_ms: float
    # What the request body said that changes the price (web plugin, cache TTL, speed).
    hints: Hints = NONE


@dataclass(frozen=True, slots=True)
class Accounted:
    record: UsageRecord
    breakdown: Cost | None
    drift: bool


def account(
    exchange: Exchange,
    usage: Usage,
    catalog: Catalog | None,
    web_result_usd: Decimal = WEB_RESULT_USD,
    provider_price: Callable[[str, str | None, ModelPricing | None], ModelPricing | None] | None = None,
) -> Accounted:
    model = usage.model or exchange.model_requested
    hints = exchange.hints
    entry = catalog.resolve(usage.model, exchange.model_requested) if catalog is not None else None
    if entry is not None and catalog is not None:
        entry = _variant(catalog, entry, hints)
    breakdown = None
    if entry is not None and (usage.input_tokens is not None or usage.output_tokens is not None):
        # The provider that served the request sets the price, where its endpoint price is known.
        at_provider = provider_price(entry.id, usage.provider, entry.pricing) if provider_price is not None else None
        pricing = at_provider if at_provider is not None else entry.pricing
        breakdown = price(_with_hints(usage, hints), pricing, exchange.started_at, entry.id)
        if breakdown is not None and usage.service_tier == "flex":
            breakdown = _flex(breakdown)
        if breakdown is not None and hints.web_results:
            # The web plugin bills per result on top of the model, whatever it is.
            plugin = hints.web_results * web_result_usd
            breakdown = dataclasses.replace(
                breakdown, web_search=breakdown.web_search + plugin, total=breakdown.total + plugin
            )
    catalog_cost = breakdown.total if breakdown is not None else None
    reported = usage.cost_reported
    # A non-BYOK reply may carry upstream_inference_cost too: it is already inside `cost` then.
    upstream = usage.upstream_cost if usage.is_byok else None
    if exchange.outcome in (BLOCKED, PROXY_ERROR):
        # Never reached (or never answered by) the upstream: nothing was billed.
        cost, source = Decimal(0), COST_NONE
    elif reported is not None:
        cost, source = reported + (upstream or 0), COST_REPORTED
    elif catalog_cost is not None:
        cost, source = catalog_cost, COST_CATALOG
    else:
        cost, source = None, COST_NONE
    is_free = bool(model and model.endswith(":free")) or bool(entry and entry.is_free)
    who = exchange.who
    record = UsageRecord(
        id=exchange.request_id,
        started_at=exchange.started_at,
        finished_at=exchange.finished_at,
        method=exchange.method,
        endpoint=exchange.endpoint,
        model_requested=exchange.model_requested,
        model=model,
        provider=usage.provider,
        generation_id=usage.generation_id,
        key_fingerprint=who.key_fingerprint,
        key_alias=who.key_alias,
        project=who.project,
        session=who.session,
        client=who.client,
        streamed=exchange.streamed,
        status=exchange.status,
        outcome=exchange.outcome,
        error=exchange.error or usage.error,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=_with_hints(usage, hints).cache_write_1h_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        web_search_requests=usage.web_search_requests,
        cost_usd=cost,
        cost_reported_usd=reported,
        cost_catalog_usd=catalog_cost,
        cost_source=source,
        is_free=is_free,
        is_byok=usage.is_byok,
        upstream_cost_usd=upstream,
        ttfb_ms=exchange.ttfb_ms,
        duration_ms=exchange.duration_ms,
    )
    return Accounted(record=record, breakdown=breakdown, drift=drifted(provider_charge(record), catalog_cost))


# OpenRouter: a request served on OpenAI's flex tier is billed at half the standard token price
# (openrouter.ai/docs/guides/features/service-tiers). Other tiers have no documented ratio: a
# reported cost includes them, a catalog price does not.
FLEX_SHARE = Decimal("0.5")
_TOKEN_PARTS = ("input", "cache_read", "cache_write", "output", "reasoning", "audio", "image_output")


def _flex(cost: Cost) -> Cost:
    scaled = {part: getattr(cost, part) * FLEX_SHARE for part in _TOKEN_PARTS}
    before = sum((getattr(cost, part) for part in _TOKEN_PARTS), Decimal(0))
    others = cost.total - cost.discount - before
    subtotal = others + sum(scaled.values(), Decimal(0))
    # The discount is a share of the subtotal: it shrinks with it.
    discount = cost.discount * subtotal / (before + others) if cost.discount else cost.discount
    return dataclasses.replace(
        cost, **scaled, discount=discount, total=subtotal + discount, cache_savings=cost.cache_savings * FLEX_SHARE
    )


def _variant(catalog: Catalog, entry: ModelEntry, hints: Hints) -> ModelEntry:
    """`speed: "fast"` is billed at the model's own `-fast` entry where the catalog lists one."""
    if hints.fast and not entry.id.endswith("-fast"):
        fast = catalog.get(entry.id + "-fast")
        if fast is not None:
            return fast
    return entry


def _with_hints(usage: Usage, hints: Hints) -> Usage:
    # chat/completions and responses report no TTL split: when every cache_control the request
    # named asked for an hour, every cache write was a one-hour write.
    if hints.cache_ttl_1h and usage.cache_write_1h_tokens is None and usage.cache_write_tokens:
        return dataclasses.replace(usage, cache_write_1h_tokens=usage.cache_write_tokens)
    return usage


def estimate(
    record: UsageRecord,
    catalog: Catalog | None,
    request_bytes: int,
    stream_events: int,
    cache_share: CacheShare | None = None,
) -> Decimal | None:
    """A rough cost for a billed request whose usage never arrived: about 4 bytes of request JSON
    per prompt token, and one token per streamed event. A coding agent's prompt is mostly cache
    reads, so the recent cache share of its session (or model) splits the prompt the same way.
    Marked `estimated` wherever it is used."""
    entry = catalog.resolve(record.model, record.model_requested) if catalog is not None else None
    if entry is None:
        return None
    prompt = request_bytes // 4
    cached = written = 0
    if cache_share is not None:
        cached = int(prompt * cache_share.read)
        written = min(prompt - cached, int(prompt * cache_share.written))
    guess = Usage(
        input_tokens=prompt, cached_tokens=cached, cache_write_tokens=written, output_tokens=stream_events, complete=True
    )
    cost = price(guess, entry.pricing, record.started_at, entry.id)
    return cost.total if cost is not None else None


@dataclass(frozen=True, slots=True)
class CacheShare:
    read: Decimal  # share of prompt tokens read from the cache
    written: Decimal  # share written to it


class CacheShares:
    """The cache share of the last complete request per session and per model, in memory (bounded):
    what an estimate for a cut stream of the same session or model assumes.

    Every request is observed but only a cut stream asks, so the counts are kept and the share
    (two Decimal divisions) is worked out when asked."""

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        # (kind, value) -> (cached, written, input) tokens of its last complete request
        self._counts: OrderedDict[tuple[str, str], tuple[int, int, int]] = OrderedDict()

    def observe(self, rec: UsageRecord) -> None:
        if not rec.input_tokens or rec.outcome != OK:
            return
        counts = (rec.cached_tokens or 0, rec.cache_write_tokens or 0, rec.input_tokens)
        shares = self._counts
        if rec.session:
            key = ("session", rec.session)
            shares[key] = counts
            shares.move_to_end(key)
        if rec.model:
            key = ("model", rec.model)
            shares[key] = counts
            shares.move_to_end(key)
        while len(shares) > self._limit:
            shares.popitem(last=False)

    def share(self, rec: UsageRecord) -> CacheShare | None:
        for key in _share_keys(("session", rec.session), ("model", rec.model), ("model", rec.model_requested)):
            found = self._counts.get(key)
            if found is not None:
                cached, written, total = found
                return CacheShare(read=Decimal(cached) / total, written=Decimal(written) / total)
        return None


def _share_keys(*pairs: tuple[str, str | None]) -> list[tuple[str, str]]:
    return [(kind, value) for kind, value in pairs if value]


def provider_charge(rec: UsageRecord) -> Decimal | None:
    """What the catalog price should match: OpenRouter's cost, or with BYOK the provider's own charge
    (the fee on top is not in any catalog price)."""
    return rec.upstream_cost_usd if rec.is_byok else rec.cost_reported_usd


def drifted(reported: Decimal | None, catalog: Decimal | None) -> bool:
    """Reported and catalog cost differ by more than DRIFT_SHARE of the larger one."""
    if reported is None or catalog is None:
        return False
    largest = max(reported, catalog)
    return largest > 0 and abs(reported - catalog) > largest * DRIFT_SHARE
