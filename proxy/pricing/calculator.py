"""The cost calculator's pure core: model rows, estimate rows, what-if re-pricing of logged requests.

Everything here takes its catalog, clock and database rows as arguments; `calculator_cli` reads
the files, calls these and prints the rows with `tables.render`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from proxy.pricing.catalog import Catalog, ModelEntry, ModelPricing, pricing_from_fingerprint
from proxy.errors import CliError
from proxy.pricing.price import Cost, price, rates_at
from proxy.tables import Row, money, plain
from proxy.usage import Usage

MILLION = Decimal(1_000_000)


# ---------------------------------------------------------------- models


def per_million(d: Decimal | None) -> Decimal | None:
    return None if d is None else (d * MILLION).normalize()


def _blended(p: ModelPricing) -> Decimal:
    # The common 3:1 input:output blend for ranking chat workloads.
    return (3 * p.prompt + p.completion) / 4


def model_rows(
    catalog: Catalog,
    *,
    search: str | None = None,
    free: bool = False,
    max_input_price: Decimal | None = None,
    sort: str = "input",
) -> list[Row]:
    """One row per model, prices in USD per 1M tokens; variable-priced models have no prices and sort last."""
    picked = []
    for m in catalog.models:
        p = m.pricing
        if search and search.lower() not in m.id.lower() and search.lower() not in m.name.lower():
            continue
        if free and not m.is_free:
            continue
        if max_input_price is not None and (p.variable or p.prompt * MILLION > max_input_price):
            continue
        picked.append(m)
    keys: dict[str, Callable[[ModelEntry], Any]] = {
        "input": lambda m: (m.pricing.variable, m.pricing.prompt, m.pricing.completion, m.id),
        "output": lambda m: (m.pricing.variable, m.pricing.completion, m.pricing.prompt, m.id),
        "blended": lambda m: (m.pricing.variable, _blended(m.pricing), m.id),
        "context": lambda m: (-(m.context_length or 0), m.id),
    }
    picked.sort(key=keys[sort])
    rows = []
    for m in picked:
        p = m.pricing
        known = not p.variable
        rows.append(
            {
                "model": m.id,
                "name": m.name,
                "context": m.context_length,
                "input_per_1m": per_million(p.prompt) if known else None,
                "output_per_1m": per_million(p.completion) if known else None,
                "cache_read_per_1m": per_million(p.input_cache_read) if known else None,
                "cache_write_per_1m": per_million(p.input_cache_write) if known else None,
                "free": m.is_free,
                "note": _note(p),
            }
        )
    return rows


def _note(p: ModelPricing) -> str:
    if p.variable:
        return "variable price"
    notes = []
    if p.overrides:
        tiers = [o.min_prompt_tokens for o in p.overrides if o.min_prompt_tokens is not None]
        if tiers:
            notes.append(f"dearer above {min(tiers):,} prompt tokens")
        if any(o.utc_start is not None for o in p.overrides):
            notes.append("price varies by time of day")
    if p.request:
        notes.append(f"{money(p.request, exact=True)} per request")
    if p.discount:
        notes.append(f"{plain(p.discount * 100)}% off")
    return "; ".join(notes)


def price_changes(history: Iterable[tuple[str, str, str]], search: str | None = None) -> list[Row]:
    """(model_id, pricing JSON, first_seen_at) rows -> one row per change, oldest first."""
    rows = []
    for model_id, versions in _versions(history, search).items():
        for (_, old), (when, new) in zip(versions, versions[1:]):
            rows.append(
                {
                    "changed_at": when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M"),
                    "model": model_id,
                    "input_per_1m_was": per_million(old.prompt),
                    "input_per_1m": per_million(new.prompt),
                    "output_per_1m_was": per_million(old.completion),
                    "output_per_1m": per_million(new.completion),
                    "changed": ", ".join(_changed_keys(old, new)),
                }
            )
    rows.sort(key=lambda r: (r["changed_at"], r["model"]))
    return rows


def _versions(
    history: Iterable[tuple[str, str, str]], search: str | None = None
) -> dict[str, list[tuple[datetime, ModelPricing]]]:
    # Each model's prices, oldest first; a row that does not parse is skipped.
    versions: dict[str, list[tuple[datetime, ModelPricing]]] = {}
    for model_id, text, seen in history:
        if search and search.lower() not in model_id.lower():
            continue
        try:
            versions.setdefault(model_id, []).append((_parse_instant(seen), pricing_from_fingerprint(text)))
        except ValueError:
            continue
    for v in versions.values():
        v.sort(key=lambda t: t[0])
    return versions


def _changed_keys(old: ModelPricing, new: ModelPricing) -> list[str]:
    names = [f for f in ModelPricing.__dataclass_fields__ if getattr(old, f) != getattr(new, f)]
    return names


# ---------------------------------------------------------------- estimate


def format_ratio(cost: Decimal, reference: Decimal) -> str:
    """How `cost` compares with `reference`: '214 times cheaper', '2.5 times dearer', 'same'."""
    if cost == reference:
        return "same"
    if cost == 0 or reference == 0:
        return "free" if cost == 0 else "n/a"
    factor = reference / cost if cost < reference else cost / reference
    if factor < Decimal("1.1"):
        # "1.0 times cheaper" says nothing; near-equal costs read better as a percentage.
        pct = abs(cost - reference) / reference * 100
        return f"{pct:.2f}% {'cheaper' if cost < reference else 'dearer'}"
    shown = f"{factor:.0f}" if factor >= 10 else f"{factor:.1f}"
    return f"{shown} times {'cheaper' if cost < reference else 'dearer'}"


def estimate_usage(input_tokens: int, output_tokens: int, cached_input: int = 0, reasoning: int = 0) -> Usage:
    """`reasoning` comes on top of the visible `output_tokens`; `cached_input` is part of `input_tokens`."""
    if min(input_tokens, output_tokens, cached_input, reasoning) < 0:
        raise CliError("token counts cannot be negative")
    if cached_input > input_tokens:
        raise CliError(f"--cached-input {cached_input} is more than --input {input_tokens}")
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens + reasoning,
        cached_tokens=cached_input,
        reasoning_tokens=reasoning,
    )


def resolve(catalog: Catalog, model_id: str) -> ModelEntry:
    entry = catalog.get(model_id)
    if entry is None:
        raise CliError(f"unknown model: {model_id} (try `openrouter-spend models --search ...`)")
    return entry


def estimate_rows(
    catalog: Catalog,
    usage: Usage,
    *,
    at: datetime,
    models: Sequence[str] = (),
    cheapest: int | None = None,
    vs: str | None = None,
    calls: int | None = None,
    per: str = "month",
) -> list[Row]:
    """Cost per call (and per period) of `usage` on each model; with `vs`, how it compares."""
    entries = [resolve(catalog, m) for m in models]
    if cheapest is not None or not entries:
        entries += _cheapest(catalog, usage, at, cheapest if cheapest is not None else 10, {e.id for e in entries})
    reference: Decimal | None = None
    if vs is not None:
        vs_entry = resolve(catalog, vs)
        if all(e.id != vs_entry.id for e in entries):
            entries.append(vs_entry)  # the reference's own row, so its cost is on the page
        vs_cost = price(usage, vs_entry.pricing, at, vs_entry.id)
        if vs_cost is None:
            raise CliError(f"--vs {vs}: the model has a variable price")
        reference = vs_cost.total
    rows = []
    for e in entries:
        cost = price(usage, e.pricing, at, e.id)
        row: Row = {"model": e.id, "name": e.name, "per_call": None if cost is None else cost.total}
        if calls is not None:
            row[f"per_{per}"] = None if cost is None else cost.total * calls
        if reference is not None:
            row[f"vs {vs}"] = "variable price" if cost is None else format_ratio(cost.total, reference)
        rows.append(row)
    return rows


def _cheapest(catalog: Catalog, usage: Usage, at: datetime, n: int, skip: set[str]) -> list[ModelEntry]:
    # Paid models only (free ones are rate-limited; `models --free` lists them); aliases duplicate their targets.
    priced: list[tuple[Decimal, str, ModelEntry]] = []
    for m in catalog.models:
        if m.id in skip or m.alias_target is not None or m.is_free:
            continue
        cost = price(usage, m.pricing, at, m.id)
        if cost is not None and cost.total > 0:
            priced.append((cost.total, m.id, m))
    priced.sort(key=lambda t: (t[0], t[1]))
    return [m for _, _, m in priced[:n]]


def summary_line(rows: Sequence[Row]) -> str | None:
    """'A is about 214 times cheaper than B' for the cheapest and dearest priced rows."""
    priced = [r for r in rows if isinstance(r.get("per_call"), Decimal) and r["per_call"] > 0]
    if len(priced) < 2:
        return None
    low = min(priced, key=lambda r: r["per_call"])
    high = max(priced, key=lambda r: r["per_call"])
    if low["per_call"] == high["per_call"]:
        return None
    return f"{low['model']} is about {format_ratio(low['per_call'], high['per_call'])} than {high['model']}"


# ---------------------------------------------------------------- whatif


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    started_at: datetime
    model: str | None
    usage: Usage
    cost_usd: Decimal | None
    cost_catalog_usd: Decimal | None


class PriceHistory:
    """The `model_prices` table: which price a model had at a given moment."""

    __slots__ = ("_versions",)

    def __init__(self, rows: Iterable[tuple[str, str, str]]) -> None:
        self._versions = _versions(rows)

    def pricings(self, model_id: str) -> list[tuple[datetime, ModelPricing]]:
        """Every price `model_id` had, oldest first, with when it was first seen."""
        return list(self._versions.get(model_id, ()))

    def at(self, model_id: str, when: datetime) -> ModelPricing | None:
        versions = self._versions.get(model_id)
        if not versions:
            return None
        current = versions[0][1]  # before the first sighting, the earliest price is the best we know
        for seen, pricing in versions:
            if seen > when:
                break
            current = pricing
        return current


def _pricing_for(catalog: Catalog, history: PriceHistory | None, model: str, when: datetime) -> ModelPricing | None:
    entry = catalog.get(model)
    if history is not None:
        found = history.at(entry.id if entry else model, when)
        if found is not None:
            return found
    return entry.pricing if entry else None


def reprice(
    requests: Sequence[LoggedRequest],
    catalog: Catalog,
    model: str,
    history: PriceHistory | None = None,
) -> tuple[Decimal, int, list[Cost | None]]:
    """Each request's real counts on `model` at the time it ran: (total, unpriced count, per-request costs)."""
    total, unpriced, costs = Decimal(0), 0, []
    for r in requests:
        pricing = _pricing_for(catalog, history, model, r.started_at)
        cost = None if pricing is None else price(r.usage, pricing, r.started_at, model)
        costs.append(cost)
        if cost is None:
            unpriced += 1
        else:
            total += cost.total
    return total, unpriced, costs


@dataclass(frozen=True, slots=True)
class Route:
    cheap: str
    flagship: str
    escalate: Decimal


def whatif_rows(
    requests: Sequence[LoggedRequest],
    catalog: Catalog,
    models: Sequence[str],
    route: Route | None = None,
    history: PriceHistory | None = None,
) -> list[Row]:
    """The logged traffic as it was billed, then re-priced on each model (and the routing scenario)."""
    actual = sum((r.cost_usd for r in requests if r.cost_usd is not None), Decimal(0))
    logged_catalog = sum((r.cost_catalog_usd for r in requests if r.cost_catalog_usd is not None), Decimal(0))
    rows: list[Row] = [
        {
            "scenario": "actual (as logged)",
            "requests": len(requests),
            "unpriced": sum(1 for r in requests if r.cost_usd is None),
            "cost": actual,
            "vs actual": "",
        },
        {
            "scenario": "actual at catalog prices",
            "requests": len(requests),
            "unpriced": sum(1 for r in requests if r.cost_catalog_usd is None),
            "cost": logged_catalog,
            "vs actual": format_ratio(logged_catalog, actual) if actual else "",
        },
    ]
    for m in models:
        entry = resolve(catalog, m)
        total, unpriced, _ = reprice(requests, catalog, entry.id, history)
        rows.append(_scenario_row(f"all on {entry.id}", len(requests), unpriced, total, actual))
    if route is not None:
        cheap, flagship = resolve(catalog, route.cheap), resolve(catalog, route.flagship)
        _, _, cheap_costs = reprice(requests, catalog, cheap.id, history)
        _, _, flag_costs = reprice(requests, catalog, flagship.id, history)
        total, unpriced = Decimal(0), 0
        for c, f in zip(cheap_costs, flag_costs):
            if c is None or f is None:
                unpriced += 1
                continue
            # Expected cost when a fixed share of calls is escalated to the flagship.
            total += c.total * (1 - route.escalate) + f.total * route.escalate
        label = f"route {cheap.id}, {plain(route.escalate * 100)}% to {flagship.id}"
        rows.append(_scenario_row(label, len(requests), unpriced, total, actual))
    return rows


@dataclass(frozen=True, slots=True)
class TokenSums:
    """Logged requests that every target prices alike (same price version, tier and time-of-day
    rule): their counts summed, with price()'s per-request clamps applied to each request first
    (uncached = max(0, input - cached - written), reasoning <= output, 1 h writes <= writes)."""

    at: datetime  # when one of them started
    prompt_tokens: int  # one of their prompt sizes
    requests: int
    priced: bool  # False: no token counts at all, which price() cannot price
    uncached: int
    cached: int
    written: int
    written_1h: int
    output: int
    reasoning: int
    web_search: int


def price_sums(sums: TokenSums, pricing: ModelPricing, model_id: str) -> Decimal | None:
    """What price() gives summed over the requests of `sums` (exact: it is linear once clamped)."""
    if not sums.priced or pricing.variable:
        return None
    rates = rates_at(pricing, sums.prompt_tokens, sums.at)
    usage = Usage(
        input_tokens=sums.uncached + sums.cached + sums.written, output_tokens=sums.output,
        cached_tokens=sums.cached, cache_write_tokens=sums.written, cache_write_1h_tokens=sums.written_1h,
        reasoning_tokens=sums.reasoning, web_search_requests=sums.web_search,
    )
    cost = price(usage, rates, sums.at, model_id)
    if cost is None:
        return None
    # price() charges the per-request fee once; the others pay it too, less the same discount.
    fee = (rates.request or Decimal(0)) * (sums.requests - 1)
    return cost.total + fee - (fee * rates.discount if rates.discount else 0)


def whatif_sum_rows(
    logged: Sequence[tuple[int, int, Decimal]],
    groups: Sequence[TokenSums],
    catalog: Catalog,
    models: Sequence[str],
    history: PriceHistory | None = None,
) -> list[Row]:
    """whatif_rows() from sums: `logged` is (requests, unpriced, cost) as logged and at catalog
    prices, `groups` the traffic as TokenSums. The same rows, without a Python step per request."""
    (count, unpriced_logged, actual), (_, unpriced_catalog, logged_catalog) = logged
    rows: list[Row] = [
        {"scenario": "actual (as logged)", "requests": count, "unpriced": unpriced_logged, "cost": actual, "vs actual": ""},
        {
            "scenario": "actual at catalog prices",
            "requests": count,
            "unpriced": unpriced_catalog,
            "cost": logged_catalog,
            "vs actual": format_ratio(logged_catalog, actual) if actual else "",
        },
    ]
    for m in models:
        entry = resolve(catalog, m)
        total, unpriced = Decimal(0), 0
        for sums in groups:
            pricing = _pricing_for(catalog, history, entry.id, sums.at)
            cost = None if pricing is None else price_sums(sums, pricing, entry.id)
            if cost is None:
                unpriced += sums.requests
            else:
                total += cost
        rows.append(_scenario_row(f"all on {entry.id}", count, unpriced, total, actual))
    return rows


def _scenario_row(label: str, n: int, unpriced: int, total: Decimal, actual: Decimal) -> Row:
    return {
        "scenario": label,
        "requests": n,
        "unpriced": unpriced,
        "cost": total,
        "vs actual": format_ratio(total, actual) if actual else "",
    }


def _parse_instant(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _opt_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _opt_decimal(v: Any) -> Decimal | None:
    if v is None or v == "":
        return None
    try:
        return Decimal(str(v))
    except InvalidOperation:
        return None


def logged_request(row: Mapping[str, Any]) -> LoggedRequest:
    """One `requests` table row (column names as in UsageRecord) -> LoggedRequest."""
    return LoggedRequest(
        started_at=_parse_instant(row["started_at"]),
        model=row["model"] or row.get("model_requested"),
        usage=Usage(
            model=row["model"],
            input_tokens=_opt_int(row["input_tokens"]),
            output_tokens=_opt_int(row["output_tokens"]),
            cached_tokens=_opt_int(row["cached_tokens"]),
            cache_write_tokens=_opt_int(row["cache_write_tokens"]),
            cache_write_1h_tokens=_opt_int(row["cache_write_1h_tokens"]) if "cache_write_1h_tokens" in row.keys() else None,
            reasoning_tokens=_opt_int(row["reasoning_tokens"]),
            web_search_requests=_opt_int(row["web_search_requests"]),
        ),
        cost_usd=_opt_decimal(row["cost_usd"]),
        cost_catalog_usd=_opt_decimal(row["cost_catalog_usd"]),
    )
