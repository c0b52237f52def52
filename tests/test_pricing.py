from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.pricing.catalog import Catalog, ModelPricing, parse_models, pricing_from_json
from proxy.pricing.price import Cost, applies, price, rates_at
from proxy.usage import Usage, parser_for

FIXTURES = Path(__file__).parent / "fixtures"
CATALOGS = {
    name: parse_models(json.loads((FIXTURES / f"models-{name}.json").read_text())) for name in ("2025", "2026")
}
NOON = datetime(2026, 8, 24, 12, 0, tzinfo=timezone.utc)  # a Monday
COMPONENTS = ("input", "cache_read", "cache_write", "output", "reasoning", "request", "web_search", "images",
              "audio", "image_output", "discount")


def pricing(listing: str, model_id: str) -> ModelPricing:
    catalog: Catalog = CATALOGS[listing]
    entry = catalog.get(model_id)
    assert entry is not None, model_id
    return entry.pricing


def breakdown(cost: Cost) -> dict[str, D]:
    return {k: getattr(cost, k) for k in COMPONENTS if getattr(cost, k) != 0}


# (listing, model, usage, expected non-zero components, total), every figure computed by hand.
CASES: list[tuple[str, str, Usage, dict[str, str], str]] = [
    ("2025", "meta-llama/llama-3.1-8b-instruct", Usage(input_tokens=1000, output_tokens=500),
     {"input": "0.00002", "output": "0.000015"}, "0.000035"),
    ("2025", "openai/gpt-4o", Usage(input_tokens=1000, output_tokens=500),
     {"input": "0.0025", "output": "0.005"}, "0.0075"),
    # cache reads at input_cache_read; reasoning without internal_reasoning at the completion rate
    ("2025", "openai/gpt-4o", Usage(input_tokens=1000, output_tokens=500, cached_tokens=800, reasoning_tokens=200),
     {"input": "0.0005", "cache_read": "0.001", "output": "0.003", "reasoning": "0.002"}, "0.0065"),
    # a variant has its own price
    ("2025", "openai/gpt-4o:extended", Usage(input_tokens=1000, output_tokens=500),
     {"input": "0.006", "output": "0.009"}, "0.015"),
    # per-request fee
    ("2025", "openai/gpt-4o-search-preview", Usage(input_tokens=100, output_tokens=100),
     {"input": "0.00025", "output": "0.001", "request": "0.035"}, "0.03625"),
    # internal_reasoning rate and web search per request
    ("2025", "perplexity/sonar-deep-research",
     Usage(input_tokens=1000, output_tokens=3000, reasoning_tokens=2000, web_search_requests=2),
     {"input": "0.002", "output": "0.008", "reasoning": "0.006", "web_search": "0.01"}, "0.026"),
    # images per input image; a "0" cache-write rate means the writes are billed as prompt tokens
    ("2025", "google/gemini-2.5-pro-preview-03-25",
     Usage(input_tokens=3000, cached_tokens=1000, cache_write_tokens=1000, input_images=2, output_tokens=100),
     {"input": "0.00125", "cache_read": "0.000625", "cache_write": "0.00125", "images": "0.01032", "output": "0.001"},
     "0.014445"),
    ("2025", "anthropic/claude-3.7-sonnet:thinking",
     Usage(input_tokens=1000, cached_tokens=800, cache_write_tokens=100, output_tokens=500),
     {"input": "0.0003", "cache_read": "0.00024", "cache_write": "0.000375", "output": "0.0075"}, "0.008415"),
    ("2025", "meta-llama/llama-3.1-8b-instruct:free", Usage(input_tokens=10_000, output_tokens=5000), {}, "0"),
    ("2026", "meta-llama/llama-3.1-8b-instruct", Usage(input_tokens=1000, output_tokens=500, cached_tokens=400),
     {"input": "0.00003", "cache_read": "0.00001", "output": "0.00004"}, "0.00008"),
    # reasoning is part of output and charged once, at the completion rate
    ("2026", "anthropic/claude-sonnet-4.5", Usage(input_tokens=1000, output_tokens=1000, reasoning_tokens=400),
     {"input": "0.003", "output": "0.009", "reasoning": "0.006"}, "0.018"),
    # cache_write_tokens are priced at input_cache_write (Usage does not tell 5-minute from 1-hour writes)
    ("2026", "anthropic/claude-sonnet-5", Usage(input_tokens=10_000, cache_write_tokens=10_000, output_tokens=0),
     {"cache_write": "0.025"}, "0.025"),
    ("2026", "anthropic/claude-sonnet-5:batch", Usage(input_tokens=1000, output_tokens=1000),
     {"input": "0.001", "output": "0.005"}, "0.006"),
    ("2026", "~anthropic/claude-sonnet-latest", Usage(input_tokens=1000, output_tokens=1000),
     {"input": "0.002", "output": "0.01"}, "0.012"),
    # audio, images, output images, reasoning and web search on one entry
    ("2026", "google/gemini-3-pro-image",
     Usage(input_tokens=2000, input_audio_tokens=500, input_images=1, output_tokens=1500, reasoning_tokens=200,
           output_image_tokens=1000, web_search_requests=1),
     {"input": "0.003", "audio": "0.001", "images": "0.000002", "output": "0.0036", "reasoning": "0.0024",
      "image_output": "0.12", "web_search": "0.014"}, "0.144002"),
    ("2026", "openai/gpt-audio", Usage(input_tokens=1000, input_audio_tokens=600, output_tokens=100),
     {"input": "0.001", "audio": "0.0192", "output": "0.001"}, "0.0212"),
    # without an audio rate, audio tokens stay prompt tokens
    ("2026", "openai/gpt-4o", Usage(input_tokens=1000, input_audio_tokens=600, output_tokens=0),
     {"input": "0.0025"}, "0.0025"),
    # without an image_output rate, image tokens stay completion tokens
    ("2026", "openai/gpt-4o", Usage(input_tokens=0, output_tokens=1000, output_image_tokens=600),
     {"output": "0.01"}, "0.01"),
    # long-context override: strictly more than min_prompt_tokens
    ("2026", "anthropic/claude-sonnet-4.5", Usage(input_tokens=200_000, output_tokens=1000),
     {"input": "0.6", "output": "0.015"}, "0.615"),
    ("2026", "anthropic/claude-sonnet-4.5", Usage(input_tokens=200_001, output_tokens=1000),
     {"input": "1.200006", "output": "0.0225"}, "1.222506"),
    # cached and written tokens count towards the threshold; web_search is not overridden and inherits
    ("2026", "anthropic/claude-sonnet-4.5",
     Usage(input_tokens=200_001, cached_tokens=100_000, cache_write_tokens=50_000, output_tokens=1000,
           web_search_requests=1),
     {"input": "0.300006", "cache_read": "0.06", "cache_write": "0.375", "output": "0.0225", "web_search": "0.01"},
     "0.767506"),
    # the override raises completion but not internal_reasoning, which keeps its base rate
    ("2026", "google/gemini-2.5-pro",
     Usage(input_tokens=200_001, cached_tokens=1000, cache_write_tokens=1000, input_audio_tokens=1000,
           output_tokens=2000, reasoning_tokens=1000),
     {"input": "0.4925025", "cache_read": "0.00025", "cache_write": "0.000375", "audio": "0.0025",
      "output": "0.015", "reasoning": "0.01"}, "0.5206275"),
    ("2026", "qwen/qwen-plus-2025-07-28:thinking", Usage(input_tokens=256_001, output_tokens=1000),
     {"input": "0.19968078", "output": "0.00234"}, "0.20202078"),
    ("2026", "thinkingmachines/inkling-small:free", Usage(input_tokens=1000, output_tokens=1000), {}, "0"),
    # a count the upstream did not report is 0 for its component only
    ("2026", "openai/gpt-4o", Usage(input_tokens=None, output_tokens=1000), {"output": "0.01"}, "0.01"),
    ("2026", "openai/gpt-4o", Usage(input_tokens=1000, output_tokens=None), {"input": "0.0025"}, "0.0025"),
    # inconsistent counts never go negative
    ("2026", "openai/gpt-4o", Usage(input_tokens=100, cached_tokens=200, output_tokens=10, reasoning_tokens=50),
     {"cache_read": "0.00025", "reasoning": "0.0001"}, "0.00035"),
]


@pytest.mark.parametrize(("listing", "model_id", "usage", "expected", "total"), CASES)
def test_price_components(listing: str, model_id: str, usage: Usage, expected: dict[str, str], total: str) -> None:
    cost = price(usage, pricing(listing, model_id), NOON)
    assert cost is not None
    assert breakdown(cost) == {k: D(v) for k, v in expected.items()}
    assert cost.total == D(total)
    assert cost.total == sum((getattr(cost, k) for k in COMPONENTS), D(0))


def test_cache_savings() -> None:
    cost = price(Usage(input_tokens=1000, cached_tokens=800, output_tokens=0), pricing("2025", "openai/gpt-4o"), NOON)
    assert cost is not None and cost.cache_savings == D("0.001")
    no_cache = price(Usage(input_tokens=1000, output_tokens=0), pricing("2025", "openai/gpt-4o"), NOON)
    assert no_cache is not None and no_cache.cache_savings == 0


@pytest.mark.parametrize("listing", ["2025", "2026"])
def test_variable_price_is_never_priced(listing: str) -> None:
    assert price(Usage(input_tokens=1000, output_tokens=1000), pricing(listing, "openrouter/auto"), NOON) is None


def test_unknown_usage_is_not_priced() -> None:
    assert price(Usage(), pricing("2026", "openai/gpt-4o"), NOON) is None
    assert price(Usage(cached_tokens=5, web_search_requests=1), pricing("2026", "openai/gpt-4o"), NOON) is None


def _parse(endpoint: str, body: dict[str, Any]) -> Usage:
    parser = parser_for(endpoint, False)
    parser.feed(json.dumps(body).encode())
    return parser.finish()


# The same exchange (1000 prompt tokens of which 800 cache reads, 500 output of which 200 reasoning)
# as each API shape reports it: the parser normalises, so pricing charges each token once.
SHAPES = [
    ("chat/completions", {"model": "openai/gpt-4o", "usage": {
        "prompt_tokens": 1000, "completion_tokens": 500,  # prompt_tokens includes cached_tokens
        "prompt_tokens_details": {"cached_tokens": 800}, "completion_tokens_details": {"reasoning_tokens": 200}}}),
    ("responses", {"object": "response", "model": "openai/gpt-4o", "usage": {
        "input_tokens": 1000, "output_tokens": 500,  # input_tokens includes cached_tokens
        "input_tokens_details": {"cached_tokens": 800}, "output_tokens_details": {"reasoning_tokens": 200}}}),
]


@pytest.mark.parametrize(("endpoint", "body"), SHAPES)
def test_openai_shapes_charge_cached_tokens_once(endpoint: str, body: dict[str, Any]) -> None:
    usage = _parse(endpoint, body)
    cost = price(usage, pricing("2026", "openai/gpt-4o"), NOON)
    assert cost is not None
    assert breakdown(cost) == {"input": D("0.0005"), "cache_read": D("0.001"), "output": D("0.003"),
                               "reasoning": D("0.002")}
    assert cost.total == D("0.0065")


def test_anthropic_shape_adds_cache_tokens_to_input_once() -> None:
    # Anthropic's input_tokens (100) excludes the 800 cache reads and 100 cache writes.
    usage = _parse("messages", {"type": "message", "model": "anthropic/claude-4.5-sonnet-20250929", "usage": {
        "input_tokens": 100, "cache_read_input_tokens": 800, "cache_creation_input_tokens": 100,
        "output_tokens": 500}})
    assert (usage.input_tokens, usage.cached_tokens, usage.cache_write_tokens) == (1000, 800, 100)
    cost = price(usage, pricing("2026", usage.model or ""), NOON)
    assert cost is not None
    assert breakdown(cost) == {"input": D("0.0003"), "cache_read": D("0.00024"), "cache_write": D("0.000375"),
                               "output": D("0.0075")}
    # the same request reported OpenAI-style prices the same
    openai_style = _parse("chat/completions", {"model": "anthropic/claude-sonnet-4.5", "usage": {
        "prompt_tokens": 1000, "completion_tokens": 500,
        "prompt_tokens_details": {"cached_tokens": 800, "cache_write_tokens": 100}}})
    again = price(openai_style, pricing("2026", "anthropic/claude-sonnet-4.5"), NOON)
    assert again is not None and again.total == cost.total == D("0.008415")


DEEPSEEK_NORMAL, DEEPSEEK_CHEAP = D("1.76"), D("0.88")  # 1M in + 1M out at 0.44/1.32 or 0.22/0.66 per 1M


@pytest.mark.parametrize(
    ("hhmm", "total"),
    [
        ("00:00", DEEPSEEK_CHEAP),  # the 1000 -> 100 window wraps midnight
        ("00:59", DEEPSEEK_CHEAP),
        ("01:00", DEEPSEEK_NORMAL),  # utc_end is exclusive
        ("03:59", DEEPSEEK_NORMAL),
        ("04:00", DEEPSEEK_CHEAP),  # utc_start is inclusive
        ("05:59", DEEPSEEK_CHEAP),
        ("06:00", DEEPSEEK_NORMAL),
        ("09:59", DEEPSEEK_NORMAL),
        ("10:00", DEEPSEEK_CHEAP),
        ("23:59", DEEPSEEK_CHEAP),
    ],
)
def test_time_of_day_overrides(hhmm: str, total: D) -> None:
    h, m = map(int, hhmm.split(":"))
    at = datetime(2026, 8, 24, h, m, 59, tzinfo=timezone.utc)
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    cost = price(usage, pricing("2026", "deepseek/deepseek-v4-flash-vision-exp"), at)
    assert cost is not None and cost.total == total


@pytest.mark.parametrize(
    ("at", "total"),
    [
        (datetime(2026, 8, 24, 11, 0, tzinfo=timezone(timedelta(hours=2))), DEEPSEEK_NORMAL),  # 09:00 UTC
        (datetime(2026, 8, 24, 1, 30, tzinfo=timezone(timedelta(hours=-9))), DEEPSEEK_CHEAP),  # 10:30 UTC
        (datetime(2026, 8, 24, 10, 30), DEEPSEEK_CHEAP),  # naive means UTC
    ],
)
def test_time_windows_are_utc(at: datetime, total: D) -> None:
    cost = price(Usage(input_tokens=1_000_000, output_tokens=1_000_000),
                 pricing("2026", "deepseek/deepseek-v4-flash-vision-exp"), at)
    assert cost is not None and cost.total == total


SYNTHETIC = pricing_from_json({
    "prompt": "1", "completion": "10", "input_cache_read": "0.5",
    "overrides": [
        {"min_prompt_tokens": 100, "prompt": "2", "completion": "20"},
        {"min_prompt_tokens": 1000, "prompt": "3"},  # later entries win per key
        {"utc_days": ["sat", "sun"], "input_cache_read": "0.25"},
        {"min_prompt_tokens": 50, "utc_start": 2200, "utc_end": 600, "completion": "7"},  # both must hold
        {"min_batch_size": 1, "prompt": "999"},  # a condition we do not know: skipped
        {"utc_days": [5, 6], "prompt": "999"},  # numbered days have no known convention: skipped
    ],
})
MONDAY_NOON = datetime(2026, 8, 24, 12, 0, tzinfo=timezone.utc)
SATURDAY_NOON = datetime(2026, 8, 22, 12, 0, tzinfo=timezone.utc)
MONDAY_NIGHT = datetime(2026, 8, 24, 23, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("prompt_tokens", "at", "expected"),
    [
        (100, MONDAY_NOON, ("1", "10", "0.5")),
        (101, MONDAY_NOON, ("2", "20", "0.5")),
        (1000, MONDAY_NOON, ("2", "20", "0.5")),
        (1001, MONDAY_NOON, ("3", "20", "0.5")),
        (100, SATURDAY_NOON, ("1", "10", "0.25")),
        (1001, SATURDAY_NOON, ("3", "20", "0.25")),
        (50, MONDAY_NIGHT, ("1", "10", "0.5")),
        (51, MONDAY_NIGHT, ("1", "7", "0.5")),
        (101, MONDAY_NIGHT, ("2", "7", "0.5")),  # the night entry comes later than the 100-token one
        (101, datetime(2026, 8, 25, 5, 59, tzinfo=timezone.utc), ("2", "7", "0.5")),
        (101, datetime(2026, 8, 25, 6, 0, tzinfo=timezone.utc), ("2", "20", "0.5")),
    ],
)
def test_override_rules(prompt_tokens: int, at: datetime, expected: tuple[str, str, str]) -> None:
    r = rates_at(SYNTHETIC, prompt_tokens, at)
    assert (r.prompt, r.completion, r.input_cache_read) == tuple(D(x) for x in expected)
    assert r.overrides == () and not r.variable


def test_unknown_conditions_never_apply() -> None:
    assert [o.unknown_condition for o in SYNTHETIC.overrides] == [False, False, False, False, True, True]
    assert not applies(SYNTHETIC.overrides[4], 10**9, SATURDAY_NOON)
    assert not applies(SYNTHETIC.overrides[5], 10**9, SATURDAY_NOON)


def test_window_as_long_as_the_day() -> None:
    p = pricing_from_json({"prompt": "1", "completion": "1", "overrides": [{"utc_start": 0, "utc_end": 0, "prompt": "2"}]})
    assert rates_at(p, 0, MONDAY_NIGHT).prompt == D(2)


def test_an_override_to_a_variable_price_is_not_priced() -> None:
    p = pricing_from_json({"prompt": "1", "completion": "1", "overrides": [{"min_prompt_tokens": 10, "prompt": "-1"}]})
    assert price(Usage(input_tokens=10, output_tokens=1), p, NOON) is not None
    assert price(Usage(input_tokens=11, output_tokens=1), p, NOON) is None


def test_discount_multiplies_everything_by_one_minus_discount() -> None:
    p = pricing_from_json({"prompt": "0.000002", "completion": "0.00001", "input_cache_read": "0.0000005",
                           "request": "0.001", "discount": 0.25})
    cost = price(Usage(input_tokens=1000, cached_tokens=400, output_tokens=100), p, NOON)
    assert cost is not None
    # 0.0012 input + 0.0002 cache + 0.001 output + 0.001 request = 0.0034, less 25%
    assert cost.discount == D("-0.00085")
    assert cost.total == D("0.00255")
    assert cost.cache_savings == D("0.00045")  # 400 x 0.0000015, less 25%


RATE = D("0.0000037")


@given(
    prompt=st.integers(0, 10**7),
    cached_share=st.integers(0, 100),
    written_share=st.integers(0, 100),
    output=st.integers(0, 10**6),
    reasoning_share=st.integers(0, 100),
)
def test_each_token_is_charged_exactly_once(
    prompt: int, cached_share: int, written_share: int, output: int, reasoning_share: int
) -> None:
    # With every token rate equal, any split of the same tokens costs the same.
    cached = prompt * cached_share // 100
    written = (prompt - cached) * written_share // 100
    reasoning = output * reasoning_share // 100
    flat = ModelPricing(prompt=RATE, completion=RATE, input_cache_read=RATE, input_cache_write=RATE,
                        internal_reasoning=RATE)
    usage = Usage(input_tokens=prompt, cached_tokens=cached, cache_write_tokens=written, output_tokens=output,
                  reasoning_tokens=reasoning)
    cost = price(usage, flat, NOON)
    assert cost is not None
    assert cost.total == (prompt + output) * RATE
    assert cost.total == sum((getattr(cost, k) for k in COMPONENTS), D(0))


def test_cost_is_a_frozen_value() -> None:
    cost = price(Usage(input_tokens=1, output_tokens=1), pricing("2026", "openai/gpt-4o"), NOON)
    assert cost is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cost.total = D(0)  # type: ignore[misc]


def test_one_hour_cache_writes_are_priced_at_their_own_rate() -> None:
    sonnet = pricing("2026", "anthropic/claude-sonnet-4.5")  # 5 min write $3.75/M, 1 h write $6/M
    usage = Usage(input_tokens=3000, output_tokens=0, cache_write_tokens=2000, cache_write_1h_tokens=500)
    cost = price(usage, sonnet, NOON)
    assert cost is not None
    # 1,000 uncached at $3/M; 1,500 five-minute writes at $3.75/M; 500 one-hour writes at $6/M.
    assert cost.input == D("0.003")
    assert cost.cache_write == D("0.005625") + D("0.003")
    assert cost.total == D("0.011625")
    # Without a 1 h price the writes fall back to the 5 min rate.
    plain = price(usage, dataclasses.replace(sonnet, input_cache_write_1h=None), NOON)
    assert plain is not None and plain.cache_write == 2000 * D("0.00000375")


def test_anthropic_stream_reports_one_hour_cache_writes() -> None:
    parser = parser_for("messages", True)
    start = {"type": "message_start", "message": {"id": "gen-1", "model": "anthropic/claude-sonnet-4.5", "usage": {
        "input_tokens": 1000, "output_tokens": 1, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 2000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500}}}}
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 10}}
    for event in (start, delta):
        parser.feed(b"data: " + json.dumps(event).encode() + b"\n\n")
    usage = parser.finish()
    assert (usage.input_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens) == (3000, 2000, 500)


def test_one_hour_writes_beyond_all_writes_are_capped() -> None:
    sonnet = pricing("2026", "anthropic/claude-sonnet-4.5")
    cost = price(Usage(input_tokens=100, output_tokens=0, cache_write_tokens=10, cache_write_1h_tokens=50), sonnet, NOON)
    assert cost is not None and cost.cache_write == 10 * D("0.000006")


# ---- issue 10: prices a price table alone does not say ------------------------------------------


def test_gemini_explicit_cache_writes_cost_input_plus_storage() -> None:
    p = pricing("2026", "google/gemini-2.5-pro")
    usage = Usage(input_tokens=10_000, output_tokens=0, cache_write_tokens=8_000)
    cost = price(usage, p, NOON, "google/gemini-2.5-pro")
    assert cost is not None
    # $1.25/M input + $0.375/M storage per written token; the other 2,000 at the input price.
    assert cost.cache_write == 8_000 * (D("0.00000125") + D("0.000000375"))
    assert cost.input == 2_000 * D("0.00000125")


def test_anthropic_cache_writes_stay_at_their_own_rate() -> None:
    p = pricing("2026", "anthropic/claude-sonnet-4.5")
    cost = price(Usage(input_tokens=1000, output_tokens=0, cache_write_tokens=1000), p, NOON, "anthropic/claude-sonnet-4.5")
    assert cost is not None and cost.cache_write == 1000 * D("0.00000375")


def test_output_audio_tokens_at_the_audio_output_rate() -> None:
    p = pricing("2026", "openai/gpt-audio")
    chat = parser_for("chat/completions", False)
    chat.feed(json.dumps({"model": "openai/gpt-audio", "usage": {
        "prompt_tokens": 100, "completion_tokens": 1000,
        "completion_tokens_details": {"audio_tokens": 800, "reasoning_tokens": 0}}}).encode())
    usage = chat.finish()
    assert usage.output_audio_tokens == 800
    cost = price(usage, p, NOON, "openai/gpt-audio")
    assert cost is not None
    assert cost.audio == 800 * D("0.000064") and cost.output == 200 * D("0.00001")
