"""The OpenRouter model catalog: parse a `GET /models` listing (2025 or 2026 schema) into priced entries
and resolve the model names requests and responses use to one entry in O(1)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

log = logging.getLogger(__name__)

# Per-token (or per-unit) price keys we model, in the order OpenRouter documents them.
PRICE_KEYS = (
    "prompt",
    "completion",
    "request",
    "image",
    "image_output",
    "web_search",
    "internal_reasoning",
    "input_cache_read",
    "input_cache_write",
    "input_cache_write_1h",
    "audio",
    "audio_output",
    "input_audio_cache",
)
CONDITION_KEYS = ("min_prompt_tokens", "utc_start", "utc_end", "utc_days")

# Catalog variants are separate entries with their own prices; routing suffixes only steer provider choice.
VARIANT_SUFFIXES = frozenset({"free", "beta", "thinking", "extended", "batch"})
ROUTING_SUFFIXES = frozenset({"nitro", "floor", "exacto", "online"})

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """One `pricing.overrides` entry: when every condition holds, `prices` replace the base keys."""

    prices: tuple[tuple[str, Decimal], ...]
    min_prompt_tokens: int | None = None
    utc_start: int | None = None  # HHMM, inclusive
    utc_end: int | None = None  # HHMM, exclusive; below utc_start means the window wraps midnight
    utc_days: tuple[int, ...] | None = None  # datetime.weekday() numbers: Monday is 0
    # Conditions we cannot evaluate, as (key, canonical JSON of the value); such an entry never applies.
    unknown_conditions: tuple[tuple[str, str], ...] = ()

    @property
    def unknown_condition(self) -> bool:
        return bool(self.unknown_conditions)


@dataclass(frozen=True, slots=True)
class ModelPricing:
    """USD per token (request, image, web_search: per unit). None means not charged separately."""

    prompt: Decimal
    completion: Decimal
    request: Decimal | None = None
    image: Decimal | None = None
    image_output: Decimal | None = None
    web_search: Decimal | None = None
    internal_reasoning: Decimal | None = None
    input_cache_read: Decimal | None = None
    input_cache_write: Decimal | None = None
    input_cache_write_1h: Decimal | None = None
    audio: Decimal | None = None
    audio_output: Decimal | None = None
    input_audio_cache: Decimal | None = None
    discount: Decimal | None = None
    overrides: tuple[PriceOverride, ...] = ()
    # A "-1" (or any negative) base price: OpenRouter picks the model or price per request.
    variable: bool = False


@dataclass(frozen=True, slots=True)
class ModelEntry:
    id: str
    name: str
    canonical_slug: str | None
    context_length: int | None
    created: int | None
    pricing: ModelPricing
    is_free: bool
    alias_target: str | None = None  # for `~vendor/x-latest` ids: the slug it points to


class Catalog:
    """An immutable set of entries with precomputed lookup tables; `get()` runs once per request."""

    __slots__ = ("models", "fetched_at", "_lookup")

    def __init__(self, models: Sequence[ModelEntry], fetched_at: datetime | None = None) -> None:
        self.models: tuple[ModelEntry, ...] = tuple(models)
        self.fetched_at = fetched_at
        self._lookup = _build_lookup(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.models)

    def __repr__(self) -> str:
        return f"<Catalog models={len(self.models)} fetched_at={self.fetched_at}>"

    def get(self, model_id: str) -> ModelEntry | None:
        hit = self._lookup.get(model_id)
        if hit is None and ":" in model_id:
            hit = self._lookup.get(strip_routing(model_id))
        if hit is None and "claude-" in model_id:
            native = anthropic_native(model_id)
            if native is not None:
                hit = self._lookup.get(native)
        return hit

    def resolve(self, served: str | None, requested: str | None) -> ModelEntry | None:
        """The entry a request was billed at. A requested catalog variant (`x:free`) wins over the
        served name, which is the base model's dated slug and would price the variant as its base."""
        if requested:
            asked = self.get(requested)
            if asked is not None and ":" in asked.id and not asked.id.startswith("~"):
                return asked
        for model_id in (served, requested):
            entry = self.get(model_id) if model_id else None
            if entry is not None:
                return entry
        return None


_CLAUDE_DATE = re.compile(r"-(\d{8}|latest)$")
_VERSION_DASH = re.compile(r"(?<=\d)-(?=\d(?:$|-))")


def anthropic_native(model_id: str) -> str | None:
    """Anthropic's own ids, as Claude Code sends them, to OpenRouter's: `claude-sonnet-4-5-20250929`
    -> `anthropic/claude-sonnet-4.5`, `claude-opus-4-1` -> `anthropic/claude-opus-4.1`,
    `claude-3-5-haiku-latest` -> `anthropic/claude-3.5-haiku`."""
    name = model_id.removeprefix("anthropic/")
    if not name.startswith("claude-"):
        return None
    name = _CLAUDE_DATE.sub("", name)
    # Version numbers are single digits joined by a dash: 4-5 -> 4.5 (never the 8-digit date).
    name = _VERSION_DASH.sub(".", name)
    return "anthropic/" + name


def strip_routing(model_id: str) -> str:
    """`vendor/x:free:nitro` -> `vendor/x:free`: routing suffixes do not change the price entry."""
    base, *suffixes = model_id.split(":")
    return ":".join([base, *(s for s in suffixes if s not in ROUTING_SUFFIXES)])


def _build_lookup(models: Sequence[ModelEntry]) -> dict[str, ModelEntry]:
    by_id = {m.id: m for m in models}
    lookup: dict[str, ModelEntry] = {}
    # An alias resolves to the model it points at, so reports name the real model.
    for m in models:
        if m.alias_target is not None and m.alias_target in by_id:
            lookup[m.id] = by_id[m.alias_target]
    for m in models:
        lookup.setdefault(m.id, m)
    # Variants share their base model's canonical slug; a served name means the base entry.
    canonical: dict[str, ModelEntry] = {}
    for m in models:
        if m.canonical_slug is None:
            continue
        held = canonical.get(m.canonical_slug)
        if held is None or (":" in held.id and ":" not in m.id):
            canonical[m.canonical_slug] = m
    for slug, m in canonical.items():
        lookup.setdefault(slug, m)
    # A name without its `vendor/` prefix resolves only when exactly one entry claims it.
    bare: dict[str, set[str]] = {}
    bare_entry: dict[str, ModelEntry] = {}
    for key, m in [(m.id, m) for m in models] + list(canonical.items()):
        if "/" in key and not key.startswith("~"):
            short = key.split("/", 1)[1]
            bare.setdefault(short, set()).add(m.id)
            bare_entry[short] = m
    for short, ids in bare.items():
        if len(ids) == 1:
            lookup.setdefault(short, bare_entry[short])
    return lookup


def parse_models(payload: Mapping[str, Any], fetched_at: datetime | None = None) -> Catalog:
    """Build a Catalog from a listing body; malformed entries are skipped (and counted in the log)."""
    data = payload.get("data") if isinstance(payload, Mapping) else None
    if not isinstance(data, list):
        raise ValueError("model listing has no `data` array")
    entries: list[ModelEntry] = []
    seen: set[str] = set()
    skipped = 0
    for raw in data:
        entry = _parse_entry(raw)
        if entry is None or entry.id in seen:
            skipped += 1
            continue
        seen.add(entry.id)
        entries.append(entry)
    if skipped:
        log.warning("catalog skipped=%d malformed_or_duplicate_entries", skipped)
    if fetched_at is None:
        fetched_at = _parse_time(payload.get("fetchedAt"))
    return Catalog(entries, fetched_at)


# What a refreshed listing may claim before we believe it. The dearest prices listed in 2026 are
# $0.0006 a token (o1-pro output, $600 per million) and $0.22 an image; the ceilings leave more
# than 16x room for dearer models, yet stop a broken or hostile listing (a price in dollars per
# million tokens sent as per token, say) from pricing every request a million times too high.
TOKEN_PRICE_CEILING = Decimal("0.01")  # USD per token: $10,000 per million
UNIT_PRICE_CEILING = Decimal("10")  # USD per request, image or web search
_PER_UNIT = frozenset({"request", "image", "web_search"})
# OpenRouter's marker for "priced per request" (openrouter/auto); any other negative is nonsense.
_VARIABLE = Decimal(-1)


def absurd_price(pricing: ModelPricing) -> str | None:
    """The first price key that is negative (other than the -1 marker) or above its ceiling, else None."""
    prices: list[tuple[str, Decimal | None]] = [(k, getattr(pricing, k)) for k in PRICE_KEYS]
    for override in pricing.overrides:
        prices.extend(override.prices)
    for key, value in prices:
        if value is None or value == _VARIABLE:
            continue
        if value < 0 or value > (UNIT_PRICE_CEILING if key in _PER_UNIT else TOKEN_PRICE_CEILING):
            return key
    return None


def screen(catalog: Catalog, previous: Catalog) -> tuple[Catalog, tuple[str, ...]]:
    """`catalog` with every entry at an absurd price replaced by `previous`'s (dropped if it had none).

    Returns the screened catalog and the ids whose new prices were refused.
    """
    kept: list[ModelEntry] = []
    refused: list[str] = []
    for entry in catalog:
        if absurd_price(entry.pricing) is None:
            kept.append(entry)
            continue
        refused.append(entry.id)
        old = previous.get(entry.id)
        if old is not None and old.id == entry.id:
            kept.append(old)
    return Catalog(kept, catalog.fetched_at), tuple(refused)


def load_embedded() -> Catalog:
    """The snapshot shipped in the package, so the first start works offline."""
    text = resources.files("proxy").joinpath("data/catalog.json").read_text(encoding="utf-8")
    return parse_models(json.loads(text))


def _parse_entry(raw: Any) -> ModelEntry | None:
    if not isinstance(raw, Mapping):
        return None
    model_id = raw.get("id")
    if not isinstance(model_id, str) or not model_id.strip():
        return None
    try:
        pricing = pricing_from_json(raw.get("pricing"))
    except ValueError:
        return None
    name = raw.get("name")
    slug = raw.get("canonical_slug")
    target = raw.get("alias_target")
    target_slug = target.get("slug") if isinstance(target, Mapping) else None
    return ModelEntry(
        id=model_id,
        name=name if isinstance(name, str) else model_id,
        canonical_slug=slug if isinstance(slug, str) and slug else None,
        context_length=_opt_int(raw.get("context_length")),
        created=_opt_int(raw.get("created")),
        pricing=pricing,
        is_free=model_id.endswith(":free") or _all_zero(pricing),
        alias_target=target_slug if isinstance(target_slug, str) and target_slug else None,
    )


def _all_zero(p: ModelPricing) -> bool:
    return not p.variable and not p.prompt and not p.completion and all(
        getattr(p, k) is None for k in PRICE_KEYS[2:]
    )


def _opt_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _parse_time(v: Any) -> datetime | None:
    if not isinstance(v, str):
        return None
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _price(v: Any, where: str) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise ValueError(f"{where}: not a price: {v!r}")
    try:
        d = Decimal(str(v).strip())
    except InvalidOperation:
        raise ValueError(f"{where}: not a price: {v!r}") from None
    if not d.is_finite():
        raise ValueError(f"{where}: not a price: {v!r}")
    return d


def pricing_from_json(obj: Any) -> ModelPricing:
    """A `pricing` object in either schema (or our canonical form) -> ModelPricing; ValueError if malformed."""
    if not isinstance(obj, Mapping):
        raise ValueError("pricing is not an object")
    if "prompt" not in obj or "completion" not in obj:
        raise ValueError("pricing lacks prompt or completion")
    values: dict[str, Decimal | None] = {}
    variable = False
    for key in PRICE_KEYS:
        if key not in obj or obj[key] is None:
            continue
        d = _price(obj[key], key)
        if d < 0:
            variable = True
        # 2025 listings send "0" where 2026 ones omit the key; both mean no separate charge.
        values[key] = d if d or key in ("prompt", "completion") else None
    discount = None
    if obj.get("discount") is not None:
        discount = _price(obj["discount"], "discount")
        if not 0 <= discount <= 1:
            raise ValueError(f"discount out of range: {discount}")
        discount = discount or None
    raw_overrides = obj.get("overrides") or []
    if not isinstance(raw_overrides, list):
        raise ValueError("overrides is not a list")
    overrides = tuple(_parse_override(o, i) for i, o in enumerate(raw_overrides))
    prompt, completion = values.pop("prompt"), values.pop("completion")
    assert prompt is not None and completion is not None
    return ModelPricing(
        prompt=prompt,
        completion=completion,
        discount=discount,
        overrides=overrides,
        variable=variable,
        **values,
    )


def _parse_override(raw: Any, i: int) -> PriceOverride:
    if not isinstance(raw, Mapping):
        raise ValueError(f"overrides[{i}] is not an object")
    prices: list[tuple[str, Decimal]] = []
    unknown: list[tuple[str, str]] = []
    cond: dict[str, Any] = {}
    for key, v in raw.items():
        if key in PRICE_KEYS:
            prices.append((key, _price(v, f"overrides[{i}].{key}")))
        elif key in ("min_prompt_tokens", "utc_start", "utc_end") and _opt_int(v) is not None:
            cond[key] = v
        elif key == "utc_days" and (days := _parse_days(v)) is not None:
            cond[key] = days
        else:
            unknown.append((str(key), json.dumps(v, sort_keys=True)))
    for key in ("utc_start", "utc_end"):
        hhmm = cond.get(key)
        if hhmm is not None and not (0 <= hhmm <= 2400 and hhmm % 100 < 60):
            unknown.append((key, json.dumps(cond.pop(key))))
    # Half a window is a condition we cannot read the same way OpenRouter does.
    if ("utc_start" in cond) != ("utc_end" in cond):
        for key in ("utc_start", "utc_end"):
            if key in cond:
                unknown.append((key, json.dumps(cond.pop(key))))
    return PriceOverride(prices=tuple(sorted(prices)), unknown_conditions=tuple(sorted(unknown)), **cond)


def _parse_days(v: Any) -> tuple[int, ...] | None:
    if not isinstance(v, list) or not v:
        return None
    days: set[int] = set()
    for d in v:
        if not isinstance(d, str) or d.strip().lower()[:3] not in _DAY_NAMES:
            # Numbered days have no documented convention (Sunday 0 or Monday 0?), so we do not guess.
            return None
        days.add(_DAY_NAMES.index(d.strip().lower()[:3]))
    return tuple(sorted(days))


def _fmt(d: Decimal) -> str:
    s = format(d.normalize(), "f")
    return "0" if s in ("-0", "0") else s


def pricing_to_json(p: ModelPricing) -> dict[str, Any]:
    """The 2026 wire form, zero keys omitted; `pricing_from_json` reads it back to an equal ModelPricing."""
    out: dict[str, Any] = {}
    for key in PRICE_KEYS:
        v = getattr(p, key)
        if v is not None:
            out[key] = _fmt(v)
    if p.discount is not None:
        out["discount"] = _fmt(p.discount)
    if p.overrides:
        out["overrides"] = [_override_to_json(o) for o in p.overrides]
    return out


def _override_to_json(o: PriceOverride) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if o.min_prompt_tokens is not None:
        out["min_prompt_tokens"] = o.min_prompt_tokens
    if o.utc_start is not None:
        out["utc_start"] = o.utc_start
    if o.utc_end is not None:
        out["utc_end"] = o.utc_end
    if o.utc_days is not None:
        out["utc_days"] = [_DAY_NAMES[d] for d in o.utc_days]
    for key, raw in o.unknown_conditions:
        out[key] = json.loads(raw)
    for key, v in o.prices:
        out[key] = _fmt(v)
    return out


def pricing_fingerprint(entry: ModelEntry | ModelPricing) -> str:
    """Canonical JSON of a price: equal prices give equal text (the `model_prices.pricing` column)."""
    p = entry.pricing if isinstance(entry, ModelEntry) else entry
    return json.dumps(pricing_to_json(p), sort_keys=True, separators=(",", ":"))


def pricing_from_fingerprint(text: str) -> ModelPricing:
    return pricing_from_json(json.loads(text))


def entry_to_json(m: ModelEntry) -> dict[str, Any]:
    """The fields the embedded snapshot keeps, in listing form."""
    out: dict[str, Any] = {"id": m.id, "name": m.name}
    if m.canonical_slug is not None:
        out["canonical_slug"] = m.canonical_slug
    if m.alias_target is not None:
        out["alias_target"] = {"slug": m.alias_target}
    if m.created is not None:
        out["created"] = m.created
    if m.context_length is not None:
        out["context_length"] = m.context_length
    out["pricing"] = pricing_to_json(m.pricing)
    return out


def catalog_to_json(models: Iterable[ModelEntry], fetched_at: datetime | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if fetched_at is not None:
        out["fetchedAt"] = fetched_at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    out["data"] = [entry_to_json(m) for m in models]
    return out


__all__ = [
    "Catalog",
    "ModelEntry",
    "ModelPricing",
    "PriceOverride",
    "catalog_to_json",
    "entry_to_json",
    "load_embedded",
    "parse_models",
    "pricing_fingerprint",
    "pricing_from_fingerprint",
    "pricing_from_json",
    "pricing_to_json",
    "strip_routing",
]
