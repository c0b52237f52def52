"""Price one request's Usage against a catalog price at the time it ran: an exact Decimal breakdown, or
None when the price is variable or the usage unknown."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from proxy.pricing.catalog import ModelPricing, PriceOverride
from proxy.usage import Usage

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Cost:
    """USD per component before the discount; `discount` is the (non-positive) amount taken off."""

    input: Decimal  # prompt tokens neither read from nor written to the cache
    cache_read: Decimal
    cache_write: Decimal
    output: Decimal  # completion tokens other than reasoning and output images
    reasoning: Decimal
    request: Decimal
    web_search: Decimal
    images: Decimal
    audio: Decimal
    image_output: Decimal
    discount: Decimal
    total: Decimal
    # What the cache reads would have cost at the prompt rate, minus what they cost.
    cache_savings: Decimal


def applies(o: PriceOverride, prompt_tokens: int, at: datetime) -> bool:
    """True when every condition of the override holds for this request."""
    if o.unknown_condition:
        return False
    if o.min_prompt_tokens is not None and not prompt_tokens > o.min_prompt_tokens:
        return False
    utc = at.astimezone(timezone.utc) if at.tzinfo else at
    if o.utc_start is not None and o.utc_end is not None:
        hhmm = utc.hour * 100 + utc.minute
        start, end = o.utc_start, o.utc_end
        if start < end:
            inside = start <= hhmm < end
        elif start > end:  # wraps midnight, e.g. 1000 -> 100
            inside = hhmm >= start or hhmm < end
        else:  # a window as long as the day
            inside = True
        if not inside:
            return False
    if o.utc_days is not None and utc.weekday() not in o.utc_days:
        return False
    return True


def rates_at(pricing: ModelPricing, prompt_tokens: int, at: datetime) -> ModelPricing:
    """The base price with every applicable override laid over it in order (later entries win per key)."""
    if not pricing.overrides:
        # Most models have none; copying the entry would cost more than pricing the request.
        return pricing
    merged: dict[str, Decimal] = {}
    for o in pricing.overrides:
        if applies(o, prompt_tokens, at):
            merged.update(o.prices)
    if not merged:
        return dataclasses.replace(pricing, overrides=())
    variable = pricing.variable or any(v < 0 for v in merged.values())
    # An explicit "0" in an override means no separate charge, like a zero base key.
    fields = {k: (v if v or k in ("prompt", "completion") else None) for k, v in merged.items()}
    return dataclasses.replace(pricing, overrides=(), variable=variable, **fields)  # type: ignore[arg-type]


def explicit_cache_write_adds_input(model_id: str | None) -> bool:
    """Gemini's explicit cache writes are billed as input tokens plus storage; the catalog's
    `input_cache_write` is the storage part alone (OpenRouter's prompt-caching docs)."""
    return bool(model_id) and (model_id or "").startswith("google/")


def price(usage: Usage, pricing: ModelPricing, at: datetime, model_id: str | None = None) -> Cost | None:
    """Cost of one request. `usage.input_tokens` counts every prompt token (cache reads and writes
    included) and `output_tokens` includes reasoning, so each token is charged exactly once.
    `model_id` is the catalog id the pricing belongs to, for rules a price table cannot say."""
    if usage.input_tokens is None and usage.output_tokens is None:
        return None
    if pricing.variable:
        return None
    prompt_tokens = usage.input_tokens or 0
    r = rates_at(pricing, prompt_tokens, at)
    if r.variable:
        return None

    cached = usage.cached_tokens or 0
    written = usage.cache_write_tokens or 0
    # Audio and output-image tokens sit inside the prompt/completion counts; split them out only
    # when they have a rate of their own, otherwise they stay at the text rate.
    audio_tokens = (usage.input_audio_tokens or 0) if r.audio is not None else 0
    uncached = max(0, prompt_tokens - cached - written - audio_tokens)

    output_tokens = usage.output_tokens or 0
    reasoning_tokens = min(usage.reasoning_tokens or 0, output_tokens)
    image_out_tokens = 0
    if r.image_output is not None:
        image_out_tokens = min(usage.output_image_tokens or 0, output_tokens - reasoning_tokens)
    audio_out_tokens = 0
    if r.audio_output is not None:
        audio_out_tokens = min(usage.output_audio_tokens or 0, output_tokens - reasoning_tokens - image_out_tokens)
    text_out = output_tokens - reasoning_tokens - image_out_tokens - audio_out_tokens

    cache_read_rate = r.input_cache_read if r.input_cache_read is not None else r.prompt
    cache_write_rate = r.input_cache_write if r.input_cache_write is not None else r.prompt
    if r.input_cache_write is not None and explicit_cache_write_adds_input(model_id):
        cache_write_rate = r.prompt + r.input_cache_write
    # One-hour cache writes cost more than five-minute ones where the catalog says so.
    written_1h = min(usage.cache_write_1h_tokens or 0, written)
    cache_write_1h_rate = r.input_cache_write_1h if r.input_cache_write_1h is not None else cache_write_rate
    reasoning_rate = r.internal_reasoning if r.internal_reasoning is not None else r.completion

    parts = {
        "input": uncached * r.prompt,
        "cache_read": cached * cache_read_rate,
        "cache_write": (written - written_1h) * cache_write_rate + written_1h * cache_write_1h_rate,
        "output": text_out * r.completion,
        "reasoning": reasoning_tokens * reasoning_rate,
        "request": r.request or _ZERO,
        "web_search": (usage.web_search_requests or 0) * (r.web_search or _ZERO),
        "images": (usage.input_images or 0) * (r.image or _ZERO),
        "audio": audio_tokens * (r.audio or _ZERO) + audio_out_tokens * (r.audio_output or _ZERO),
        "image_output": image_out_tokens * (r.image_output or _ZERO),
    }
    subtotal = sum(parts.values(), _ZERO)
    savings = cached * (r.prompt - cache_read_rate)
    discount = _ZERO
    if r.discount:
        discount = -(subtotal * r.discount)
        savings -= savings * r.discount
    return Cost(**parts, discount=discount, total=subtotal + discount, cache_savings=savings)
