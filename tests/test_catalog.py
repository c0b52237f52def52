from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from proxy.pricing.catalog import (
    Catalog,
    ModelPricing,
    PriceOverride,
    load_embedded,
    parse_models,
    pricing_fingerprint,
    pricing_from_fingerprint,
    pricing_from_json,
    pricing_to_json,
    strip_routing,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return body


@pytest.fixture(scope="module")
def c2025() -> Catalog:
    return parse_models(load("models-2025.json"))


@pytest.fixture(scope="module")
def c2026() -> Catalog:
    return parse_models(load("models-2026.json"))


def test_2025_schema_zero_keys_mean_no_separate_charge(c2025: Catalog) -> None:
    llama = c2025.get("meta-llama/llama-3.1-8b-instruct")
    assert llama is not None
    assert llama.pricing == ModelPricing(prompt=D("0.00000002"), completion=D("0.00000003"))
    assert (llama.name, llama.context_length, llama.created, llama.canonical_slug) == (
        "Meta: Llama 3.1 8B Instruct",
        16384,
        1721692800,
        None,
    )
    assert not llama.is_free


def test_2025_and_2026_forms_of_one_price_have_one_fingerprint() -> None:
    old = pricing_from_json({"prompt": "0.0000025", "completion": "0.00001", "request": "0", "image": "0",
                             "web_search": "0", "internal_reasoning": "0", "input_cache_read": "0.00000125"})
    new = pricing_from_json({"prompt": "0.0000025", "completion": "0.00001", "input_cache_read": "0.00000125"})
    assert old == new
    assert pricing_fingerprint(old) == '{"completion":"0.00001","input_cache_read":"0.00000125","prompt":"0.0000025"}'


def test_2026_schema_overrides_alias_and_canonical_slug(c2026: Catalog) -> None:
    sonnet = c2026.get("anthropic/claude-sonnet-4.5")
    assert sonnet is not None
    assert sonnet.canonical_slug == "anthropic/claude-4.5-sonnet-20250929"
    p = sonnet.pricing
    assert (p.prompt, p.completion, p.web_search, p.input_cache_read, p.input_cache_write, p.input_cache_write_1h) == (
        D("0.000003"), D("0.000015"), D("0.01"), D("0.0000003"), D("0.00000375"), D("0.000006"))
    assert p.request is None and p.internal_reasoning is None and not p.variable
    assert p.overrides == (
        PriceOverride(
            min_prompt_tokens=200000,
            prices=(("completion", D("0.0000225")), ("input_cache_read", D("0.0000006")),
                    ("input_cache_write", D("0.0000075")), ("input_cache_write_1h", D("0.000012")),
                    ("prompt", D("0.000006"))),
        ),
    )
    deepseek = c2026.get("deepseek/deepseek-v4-flash-vision-exp")
    assert deepseek is not None
    windows = [(o.utc_start, o.utc_end, dict(o.prices)["prompt"]) for o in deepseek.pricing.overrides]
    assert windows == [(1000, 100, D("0.00000022")), (100, 400, D("0.00000044")),
                       (400, 600, D("0.00000022")), (600, 1000, D("0.00000044"))]
    alias = next(m for m in c2026.models if m.id == "~anthropic/claude-sonnet-latest")
    assert alias.alias_target == "anthropic/claude-sonnet-5"
    assert c2026.fetched_at == datetime(2026, 8, 22, 8, 6, 27, 943000, tzinfo=timezone.utc)


@pytest.mark.parametrize("fixture", ["models-2025.json", "models-2026.json"])
def test_minus_one_is_variable(fixture: str) -> None:
    auto = parse_models(load(fixture)).get("openrouter/auto")
    assert auto is not None and auto.pricing.variable and not auto.is_free


@pytest.mark.parametrize(
    ("fixture", "model_id", "free"),
    [
        ("models-2025.json", "meta-llama/llama-3.1-8b-instruct:free", True),
        ("models-2025.json", "google/gemini-flash-1.5-8b-exp", True),  # priced 0/0 without the suffix
        ("models-2025.json", "openai/gpt-4o", False),
        ("models-2026.json", "thinkingmachines/inkling-small:free", True),
        ("models-2026.json", "thinkingmachines/inkling-small", False),
        ("models-2026.json", "openrouter/auto", False),
    ],
)
def test_is_free(fixture: str, model_id: str, free: bool) -> None:
    entry = parse_models(load(fixture)).get(model_id)
    assert entry is not None and entry.is_free is free


LOOKUPS_2025 = [
    ("openai/gpt-4o", "openai/gpt-4o"),
    # catalog variants are entries of their own, with their own price
    ("openai/gpt-4o:extended", "openai/gpt-4o:extended"),
    ("anthropic/claude-3.7-sonnet:beta", "anthropic/claude-3.7-sonnet:beta"),
    ("anthropic/claude-3.7-sonnet:thinking", "anthropic/claude-3.7-sonnet:thinking"),
    ("meta-llama/llama-3.1-8b-instruct:free", "meta-llama/llama-3.1-8b-instruct:free"),
    # a variant the catalog lacks is not its base model
    ("openai/gpt-4o:free", None),
    # routing suffixes are stripped, alone or after a variant, in any order
    ("openai/gpt-4o:nitro", "openai/gpt-4o"),
    ("openai/gpt-4o:floor", "openai/gpt-4o"),
    ("openai/gpt-4o:exacto", "openai/gpt-4o"),
    ("openai/gpt-4o:online", "openai/gpt-4o"),
    ("openai/gpt-4o:online:nitro", "openai/gpt-4o"),
    ("meta-llama/llama-3.1-8b-instruct:free:online", "meta-llama/llama-3.1-8b-instruct:free"),
    ("anthropic/claude-3.7-sonnet:nitro:thinking", "anthropic/claude-3.7-sonnet:thinking"),
    # a missing vendor prefix, only when one vendor has the name
    ("gpt-4o", "openai/gpt-4o"),
    ("gpt-4o:nitro", "openai/gpt-4o"),
    ("ministral-8b", None),
    ("mistral/ministral-8b", "mistral/ministral-8b"),
    ("nope/nothing", None),
    ("nope/nothing:nitro", None),
    ("", None),
]
LOOKUPS_2026 = [
    ("anthropic/claude-sonnet-4.5", "anthropic/claude-sonnet-4.5"),
    # the served model name: a dated canonical slug
    ("anthropic/claude-4.5-sonnet-20250929", "anthropic/claude-sonnet-4.5"),
    ("claude-4.5-sonnet-20250929", "anthropic/claude-sonnet-4.5"),
    # :batch shares its base's canonical slug; the served name means the base entry
    ("anthropic/claude-sonnet-5-20260630", "anthropic/claude-sonnet-5"),
    ("anthropic/claude-sonnet-5:batch", "anthropic/claude-sonnet-5:batch"),
    ("qwen/qwen-plus-2025-07-28:thinking", "qwen/qwen-plus-2025-07-28:thinking"),
    ("thinkingmachines/inkling-small:free", "thinkingmachines/inkling-small:free"),
    ("thinkingmachines/inkling-small-20260730", "thinkingmachines/inkling-small"),
    ("thinkingmachines/inkling-small:free:nitro", "thinkingmachines/inkling-small:free"),
    # ~aliases resolve through alias_target
    ("~anthropic/claude-sonnet-latest", "anthropic/claude-sonnet-5"),
    ("~anthropic/claude-sonnet-latest:nitro", "anthropic/claude-sonnet-5"),
    ("deepseek/deepseek-v4-flash-vision-exp-20260821", "deepseek/deepseek-v4-flash-vision-exp"),
    ("~anthropic/claude-opus-latest", None),
]


@pytest.mark.parametrize(("query", "expected"), LOOKUPS_2025)
def test_lookup_2025(c2025: Catalog, query: str, expected: str | None) -> None:
    entry = c2025.get(query)
    assert (entry.id if entry else None) == expected


@pytest.mark.parametrize(("query", "expected"), LOOKUPS_2026)
def test_lookup_2026(c2026: Catalog, query: str, expected: str | None) -> None:
    entry = c2026.get(query)
    assert (entry.id if entry else None) == expected


def test_served_slug_of_the_batch_variant_fixture_is_real(c2026: Catalog) -> None:
    # guards the table above: both entries really share the slug we look up
    slugs = {m.id: m.canonical_slug for m in c2026.models}
    assert slugs["anthropic/claude-sonnet-5"] == slugs["anthropic/claude-sonnet-5:batch"] == "anthropic/claude-sonnet-5-20260630"


def test_alias_without_its_target_in_the_catalog_is_its_own_entry() -> None:
    payload = {"data": [{"id": "~x/y-latest", "name": "alias", "alias_target": {"name": "Y", "slug": "x/y-2"},
                         "pricing": {"prompt": "0.000001", "completion": "0.000002"}}]}
    entry = parse_models(payload).get("~x/y-latest")
    assert entry is not None and entry.id == "~x/y-latest"


@pytest.mark.parametrize(
    ("model_id", "stripped"),
    [("a/b", "a/b"), ("a/b:nitro", "a/b"), ("a/b:free:floor", "a/b:free"), ("a/b:exacto:beta:online", "a/b:beta")],
)
def test_strip_routing(model_id: str, stripped: str) -> None:
    assert strip_routing(model_id) == stripped


GOOD = {"id": "ok/model", "name": "OK", "pricing": {"prompt": "0.000001", "completion": "0.000002"}}


@pytest.mark.parametrize(
    "bad",
    [
        "not an object",
        None,
        {"name": "no id", "pricing": {"prompt": "0", "completion": "0"}},
        {"id": "", "pricing": {"prompt": "0", "completion": "0"}},
        {"id": 7, "pricing": {"prompt": "0", "completion": "0"}},
        {"id": "x/no-pricing"},
        {"id": "x/no-completion", "pricing": {"prompt": "0.1"}},
        {"id": "x/words", "pricing": {"prompt": "cheap", "completion": "0"}},
        {"id": "x/nan", "pricing": {"prompt": "NaN", "completion": "0"}},
        {"id": "x/bool", "pricing": {"prompt": True, "completion": "0"}},
        {"id": "x/override-list", "pricing": {"prompt": "0", "completion": "0", "overrides": {"a": 1}}},
        {"id": "x/override-item", "pricing": {"prompt": "0", "completion": "0", "overrides": ["x"]}},
        {"id": "x/override-price", "pricing": {"prompt": "0", "completion": "0", "overrides": [{"prompt": "?"}]}},
        {"id": "x/discount", "pricing": {"prompt": "0", "completion": "0", "discount": 1.5}},
        {"id": "ok/model", "pricing": {"prompt": "9", "completion": "9"}},  # duplicate id: first wins
    ],
)
def test_malformed_entries_are_skipped_not_fatal(bad: Any) -> None:
    catalog = parse_models({"data": [GOOD, bad]})
    assert [m.id for m in catalog.models] == ["ok/model"]
    entry = catalog.get("ok/model")
    assert entry is not None and entry.pricing.prompt == D("0.000001")


@pytest.mark.parametrize("payload", [{}, {"data": {}}, {"data": "x"}])
def test_a_listing_without_data_is_an_error(payload: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_models(payload)


def test_numbers_as_json_numbers_and_discount() -> None:
    p = pricing_from_json({"prompt": 0.000001, "completion": "2e-6", "discount": 0.25})
    assert (p.prompt, p.completion, p.discount) == (D("0.000001"), D("0.000002"), D("0.25"))
    assert pricing_from_json({"prompt": "1", "completion": "1", "discount": 0}).discount is None


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"min_prompt_tokens": 1000, "prompt": "1"}, PriceOverride(prices=(("prompt", D(1)),), min_prompt_tokens=1000)),
        ({"utc_start": 2200, "utc_end": 600, "prompt": "1"},
         PriceOverride(prices=(("prompt", D(1)),), utc_start=2200, utc_end=600)),
        ({"utc_days": ["Sat", "sunday"], "prompt": "1"}, PriceOverride(prices=(("prompt", D(1)),), utc_days=(5, 6))),
        # conditions we cannot read: the entry is kept but never applies
        ({"min_batch_size": 10, "prompt": "1"},
         PriceOverride(prices=(("prompt", D(1)),), unknown_conditions=(("min_batch_size", "10"),))),
        ({"utc_days": [0, 6], "prompt": "1"},
         PriceOverride(prices=(("prompt", D(1)),), unknown_conditions=(("utc_days", "[0, 6]"),))),
        ({"utc_start": 2200, "prompt": "1"},
         PriceOverride(prices=(("prompt", D(1)),), unknown_conditions=(("utc_start", "2200"),))),
        ({"utc_start": 2260, "utc_end": 100, "prompt": "1"},
         PriceOverride(prices=(("prompt", D(1)),), utc_end=None,
                       unknown_conditions=(("utc_end", "100"), ("utc_start", "2260")))),
        ({"min_prompt_tokens": "many", "prompt": "1"},
         PriceOverride(prices=(("prompt", D(1)),), unknown_conditions=(("min_prompt_tokens", '"many"'),))),
    ],
)
def test_override_conditions_parse(override: dict[str, Any], expected: PriceOverride) -> None:
    p = pricing_from_json({"prompt": "0.5", "completion": "0.5", "overrides": [override]})
    assert p.overrides == (expected,)
    assert p.overrides[0].unknown_condition is bool(expected.unknown_conditions)


def all_entries() -> list[Any]:
    out: list[Any] = []
    for name in ("models-2025.json", "models-2026.json"):
        out += parse_models(load(name)).models
    return out + list(load_embedded().models)


def test_every_price_survives_its_fingerprint() -> None:
    entries = all_entries()
    assert len(entries) > 400
    for m in entries:
        text = pricing_fingerprint(m)
        assert pricing_from_fingerprint(text) == m.pricing, m.id
        assert pricing_fingerprint(pricing_from_fingerprint(text)) == text
        assert json.loads(text) == pricing_to_json(m.pricing)


def test_unknown_override_survives_its_fingerprint() -> None:
    p = pricing_from_json({"prompt": "1", "completion": "1",
                           "overrides": [{"min_batch_size": {"n": 2}, "utc_days": ["mon"], "prompt": "0.5"}]})
    assert pricing_from_fingerprint(pricing_fingerprint(p)) == p


def test_embedded_snapshot() -> None:
    catalog = load_embedded()
    assert len(catalog) == 421
    assert catalog.fetched_at == datetime(2026, 8, 22, 8, 6, 27, 943000, tzinfo=timezone.utc)
    # the fixture comes from the same listing, untrimmed: the snapshot kept every price
    for m in parse_models(load("models-2026.json")).models:
        embedded = catalog.get(m.id) if not m.id.startswith("~") else next(e for e in catalog if e.id == m.id)
        assert embedded is not None
        assert (embedded.id, embedded.name, embedded.canonical_slug, embedded.context_length, embedded.created,
                embedded.pricing, embedded.is_free, embedded.alias_target) == (
            m.id, m.name, m.canonical_slug, m.context_length, m.created, m.pricing, m.is_free, m.alias_target)


def _build_script() -> Any:
    spec = importlib.util.spec_from_file_location("build_catalog", ROOT / "scripts" / "build_catalog.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_snapshot_round_trips() -> None:
    payload = load("models-2026.json")
    text = _build_script().build_snapshot(payload, None)
    assert parse_models(json.loads(text)).models == parse_models(payload).models
    assert "description" not in text and "top_provider" not in text


def test_build_script_fixture_ids_cover_the_rules() -> None:
    script = _build_script()
    for name, ids in (("models-2025.json", script.FIXTURE_IDS_2025), ("models-2026.json", script.FIXTURE_IDS_2026)):
        assert [m["id"] for m in load(name)["data"]] == list(ids)


@pytest.mark.timeout(300)
def test_embedded_snapshot_loads_from_an_installed_package(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copytree(ROOT / "proxy", src / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "README.md").write_text("test build\n")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(src)],
        check=True, cwd=tmp_path, capture_output=True,
    )
    assert (target / "proxy" / "data" / "catalog.json").is_file()
    out = subprocess.run(
        [sys.executable, "-I", "-c",
         f"import sys; sys.path.insert(0, {str(target)!r}); import proxy.pricing.catalog as c; "
         "print(c.__file__); print(len(c.load_embedded()))"],
        check=True, cwd=tmp_path, capture_output=True, text=True,
    )
    location, count = out.stdout.split()
    assert location.startswith(str(target)) and count == "421"


@pytest.mark.parametrize(
    ("served", "requested", "expected"),
    [
        # a variant was asked for: the served name is its base's dated slug, but the variant was billed
        ("thinkingmachines/inkling-small-20260730", "thinkingmachines/inkling-small:free",
         "thinkingmachines/inkling-small:free"),
        ("thinkingmachines/inkling-small-20260730", "thinkingmachines/inkling-small:free:nitro",
         "thinkingmachines/inkling-small:free"),
        ("anthropic/claude-sonnet-5-20260630", "anthropic/claude-sonnet-5:batch", "anthropic/claude-sonnet-5:batch"),
        # otherwise the served name says which model answered
        ("anthropic/claude-4.5-sonnet-20250929", "~anthropic/claude-sonnet-latest", "anthropic/claude-sonnet-4.5"),
        ("anthropic/claude-4.5-sonnet-20250929", "openrouter/auto", "anthropic/claude-sonnet-4.5"),
        (None, "openai/gpt-4o:nitro", "openai/gpt-4o"),
        ("nope/unknown", "openai/gpt-4o", "openai/gpt-4o"),
        (None, None, None),
        ("nope/a", "nope/b", None),
    ],
)
def test_resolve_served_and_requested(c2026: Catalog, served: str | None, requested: str | None,
                                      expected: str | None) -> None:
    entry = c2026.resolve(served, requested)
    assert (entry.id if entry else None) == expected


# Entries as in the real 2026 listing (ids and canonical slugs).
CLAUDES = parse_models({"data": [
    {"id": "anthropic/claude-haiku-4.5", "canonical_slug": "anthropic/claude-4.5-haiku-20251001", "name": "Claude Haiku 4.5", "pricing": {"prompt": "0.000001", "completion": "0.000005"}},
    {"id": "anthropic/claude-sonnet-4.5", "canonical_slug": "anthropic/claude-4.5-sonnet-20250929", "name": "Claude Sonnet 4.5", "pricing": {"prompt": "0.000003", "completion": "0.000015"}},
    {"id": "anthropic/claude-opus-4.1", "canonical_slug": "anthropic/claude-4.1-opus-20250805", "name": "Claude Opus 4.1", "pricing": {"prompt": "0.000015", "completion": "0.000075"}},
    {"id": "anthropic/claude-sonnet-4", "canonical_slug": "anthropic/claude-4-sonnet-20250522", "name": "Claude Sonnet 4", "pricing": {"prompt": "0.000003", "completion": "0.000015"}},
    {"id": "anthropic/claude-3-haiku", "canonical_slug": "anthropic/claude-3-haiku", "name": "Claude 3 Haiku", "pricing": {"prompt": "0.00000025", "completion": "0.00000125"}},
]})


@pytest.mark.parametrize(
    ("native", "want"),
    [
        ("claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4.5"),
        ("claude-sonnet-4-5", "anthropic/claude-sonnet-4.5"),
        ("claude-opus-4-1", "anthropic/claude-opus-4.1"),
        ("claude-opus-4-1-20250805", "anthropic/claude-opus-4.1"),
        ("claude-sonnet-4-20250514", "anthropic/claude-sonnet-4"),
        ("claude-haiku-4-5-latest", "anthropic/claude-haiku-4.5"),
        ("claude-3-haiku-20240307", "anthropic/claude-3-haiku"),
    ],
)
def test_anthropic_native_ids_resolve_to_the_openrouter_model(native: str, want: str) -> None:
    entry = CLAUDES.get(native)
    assert entry is not None and entry.id == want
    resolved = CLAUDES.resolve(None, native)
    assert resolved is not None and resolved.id == want


def test_unknown_claude_name_stays_unknown() -> None:
    assert CLAUDES.get("claude-nonexistent-9-9") is None
