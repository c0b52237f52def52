"""UsageRecord: the one row written per forwarded request, passed to recorder, metrics and budgets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

# outcome values
OK = "ok"  # upstream answered and the exchange completed
UPSTREAM_ERROR = "upstream_error"  # non-2xx from upstream, or an error event inside a 200 stream
ABORTED = "aborted"  # the stream ended early: client left, upstream reset, or shutdown
PROXY_ERROR = "proxy_error"  # we could not reach upstream (502/504) or refused the request (413)
BLOCKED = "blocked"  # a budget refused the request (402)

# cost_source values
COST_REPORTED = "reported"  # OpenRouter's own `usage.cost`
COST_CATALOG = "catalog"  # our price of the usage against the model catalog
COST_GENERATION = "generation"  # filled in later from GET /generation
COST_ESTIMATED = "estimated"  # guessed from what streamed; the upstream never told us
COST_NONE = "none"  # nothing billed (blocked, unreachable) or nothing known


@dataclass(frozen=True, slots=True)
class UsageRecord:
    id: str
    started_at: datetime
    finished_at: datetime
    method: str
    endpoint: str
    model_requested: str | None
    model: str | None
    provider: str | None
    generation_id: str | None
    key_fingerprint: str | None
    key_alias: str | None
    project: str | None
    session: str | None
    client: str | None
    streamed: bool
    status: int
    outcome: str
    error: str | None
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    web_search_requests: int | None
    cost_usd: Decimal | None
    cost_reported_usd: Decimal | None
    cost_catalog_usd: Decimal | None
    cost_source: str
    is_free: bool
    is_byok: bool | None
    ttfb_ms: float | None
    duration_ms: float
    # Of cache_write_tokens, those cached for an hour (Anthropic's 1 h TTL); added in migration 5.
    cache_write_1h_tokens: int | None = None
    # With BYOK, what the provider charged the user's own key (`cost_details.upstream_inference_cost`);
    # `cost_reported_usd` is then OpenRouter's fee alone and `cost_usd` their sum. Added in migration 6.
    upstream_cost_usd: Decimal | None = None
