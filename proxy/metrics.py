"""Metrics(registry): every Prometheus metric the proxy exports; the names are the contract with
dashboards/ and config/alerts.rules.yml, so change them only together."""

from __future__ import annotations

import dataclasses
import functools
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.aiohttp import make_aiohttp_handler

from proxy import __version__
from proxy.pricing.accounting import drifted as cost_drifted, provider_charge
from proxy.errors import error_response
from proxy.metric_tables import CounterTable, GaugeValue, HistogramTable, prometheus_scrape
from proxy.store.records import BLOCKED, UsageRecord
from proxy.window_spend import WindowSpend

PREFIX = "openrouter_proxy_"
OTHER = "other"
NONE = "none"

ENDPOINTS = ("chat/completions", "completions", "messages", "responses", "embeddings")
TOKEN_KINDS = ("input", "output", "cached", "cache_write", "reasoning")
UPSTREAM_ERROR_REASONS = ("connect", "timeout", "http_4xx", "http_5xx", "stream_error", "reset")

# LLM calls take from tens of milliseconds (a cached short reply) to many minutes (long reasoning).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
SCRAPE_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


@functools.lru_cache(maxsize=256)
def normalize_endpoint(path: str) -> str:
    """The API shape a path belongs to: `/api/v1/chat/completions` -> `chat/completions`."""
    p = path.split("?", 1)[0].strip("/")
    for name in ENDPOINTS:
        if p == name or p.endswith("/" + name):
            return name
    return OTHER


class LabelCap:
    """Bounds the live values of a label a client controls (session, project, model).

    Up to `cap` values keep their own series. A new value beyond that evicts the least recently seen
    one, but only once it has been idle for `min_idle_s`; otherwise the newcomer is folded into
    `other`. A client cycling ids can then neither exceed the cap nor churn the series of active
    sessions (every created series costs Prometheus memory until the next head compaction).
    """

    __slots__ = ("_seen", "cap", "min_idle_s")

    def __init__(self, cap: int, min_idle_s: float) -> None:
        if cap < 0:
            raise ValueError("cap must be >= 0")
        self.cap = cap
        self.min_idle_s = min_idle_s
        self._seen: OrderedDict[str, float] = OrderedDict()

    def admit(self, value: str | None, now: float) -> tuple[str, str | None]:
        """Returns (label value to use, value evicted to make room or None)."""
        if not value:
            return NONE, None
        if value in (NONE, OTHER):
            return value, None
        seen = self._seen
        if value in seen:
            seen[value] = now
            seen.move_to_end(value)
            return value, None
        if len(seen) < self.cap:
            seen[value] = now
            return value, None
        if not seen:
            return OTHER, None
        oldest, last = next(iter(seen.items()))
        if now - last < self.min_idle_s:
            return OTHER, None
        del seen[oldest]
        seen[value] = now
        return value, oldest

    def forget(self, value: str) -> None:
        self._seen.pop(value, None)

    def __len__(self) -> int:
        return len(self._seen)


def _f(x: Decimal | float) -> float:
    return float(x)


class Metrics:
    """Every metric, registered on `registry`. Methods are called on the request path: no I/O."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        session_cap: int = 50,
        project_cap: int = 50,
        model_cap: int = 500,
        budget_scope_cap: int = 50,
        label_min_idle_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        tz: ZoneInfo = ZoneInfo("UTC"),
    ) -> None:
        self._clock = clock
        self._sessions = LabelCap(session_cap, label_min_idle_s)
        self._projects = LabelCap(project_cap, label_min_idle_s)
        # Models come from the upstream response or, on errors, from the client's request body.
        self._models = LabelCap(model_cap, label_min_idle_s)
        self._budget_scope_cap = budget_scope_cap

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=registry)

        # The metrics updated on every request are plain tables (proxy.metric_tables); the rest stay
        # prometheus-client objects.
        def table(name: str, doc: str, labels: tuple[str, ...]) -> CounterTable:
            return CounterTable(registry, PREFIX + name, doc, labels)

        self.requests = table(
            "requests", "Requests handled, by API endpoint, model, provider and HTTP status.",
            ("endpoint", "model", "provider", "status"),
        )
        self.tokens = table(
            "tokens", "Tokens by kind; input includes cached and cache_write, output includes reasoning.",
            ("model", "provider", "kind"),
        )
        self.cost = table(
            "cost_usd", "Spend in US dollars as recorded per request.",
            ("model", "provider", "key", "project", "session"),
        )
        self.cache_savings = table(
            "cache_savings_usd", "Dollars saved because prompt tokens were read from cache.", ("model",)
        )
        self.reasoning_cost = table(
            "reasoning_cost_usd", "Dollars spent on reasoning tokens (part of output cost).", ("model",)
        )
        self.output_cost = table("output_cost_usd", "Dollars spent on output tokens.", ("model",))
        self.ttfb = HistogramTable(
            registry, PREFIX + "ttfb_seconds", "Time from forwarding a request to its first response byte.",
            ("endpoint", "model"), LATENCY_BUCKETS,
        )
        self.duration = HistogramTable(
            registry, PREFIX + "request_duration_seconds",
            "Time from receiving a request to its last response byte.", ("endpoint", "model"), LATENCY_BUCKETS,
        )
        self.overhead = HistogramTable(
            registry, PREFIX + "overhead_seconds", "Latency the proxy itself adds to a request.", (),
            OVERHEAD_BUCKETS,
        )
        self.in_flight = GaugeValue(registry, PREFIX + "in_flight_requests", "Requests currently being forwarded.")
        self.upstream_errors = counter(
            "upstream_errors", "Failed upstream exchanges by reason.", ("reason",)
        )
        for reason in UPSTREAM_ERROR_REASONS:
            self.upstream_errors.labels(reason)
        self.recorder_queue_depth = gauge("recorder_queue_depth", "Usage records waiting to be written.")
        self.recorder_dropped_total = counter(
            "recorder_dropped", "Usage records dropped because the write queue was full."
        )
        self.recorder_write_errors = counter(
            "recorder_write_errors", "Failed database writes of usage record batches (SQLite or PostgreSQL)."
        )
        self.recorder_rows_total = counter("recorder_rows", "Usage records written to the database.")
        self.catalog_models = gauge("catalog_models", "Models in the loaded OpenRouter catalog.")
        self.catalog_updated = gauge(
            "catalog_updated_timestamp_seconds", "Unix time the model catalog was last refreshed."
        )
        self.catalog_refresh_failures = counter(
            "catalog_refresh_failures", "Failed refreshes of the OpenRouter model catalog."
        )
        self.cost_drift = table(
            "cost_drift", "Requests whose billed cost differs from the catalog price by more than 1%.",
            ("model",),
        )
        self.cost_drift_usd = table(
            "cost_drift_usd",
            "Absolute difference between billed cost and catalog price on drifting requests; "
            "direction=over when billed was higher.",
            ("model", "direction"),
        )
        self.free_requests = table("free_requests", "Requests to free (:free) models.", ("model",))
        self.window_spend = WindowSpend(
            registry, PREFIX + "spend_usd",
            "Spend in the current calendar day, week or month (the budgets' windows and time zone).", tz,
        )
        self.free_daily_limit = gauge(
            "free_daily_limit", "OpenRouter's daily request limit for free models on this account."
        )
        budget_labels = ("budget", "scope")
        self.budget_spent = gauge("budget_spent_usd", "Spend in the budget's current window.", budget_labels)
        self.budget_limit = gauge("budget_limit_usd", "The budget's limit per window.", budget_labels)
        self.budget_window_end = gauge(
            "budget_window_end_timestamp_seconds", "Unix time the budget's current window ends.", budget_labels
        )
        self.budget_projected = gauge(
            "budget_projected_usd", "Spend projected at the window's end at the current burn rate.",
            budget_labels,
        )
        self.budget_warn_ratio = gauge(
            "budget_warn_ratio", "The budget's lowest warning threshold as a share of its limit.", ("budget",)
        )
        self.budget_blocked_total = counter("budget_blocked", "Requests refused by the budget.", ("budget",))
        self.build_info = gauge("build_info", "Always 1; the proxy's version as a label.", ("version",))
        self.build_info.labels(__version__).set(1)

        # Every cost series by its session and project value, so eviction can remove() them all.
        self._cost_by_session: dict[str, set[tuple[str, ...]]] = {}
        self._cost_by_project: dict[str, set[tuple[str, ...]]] = {}
        # Each table with a model label, and that label's position.
        self._label_series: list[tuple[CounterTable | HistogramTable, int]] = [
            (self.requests, 1), (self.tokens, 0), (self.cost, 0), (self.cache_savings, 0),
            (self.reasoning_cost, 0), (self.output_cost, 0), (self.ttfb, 1), (self.duration, 1),
            (self.cost_drift, 0), (self.cost_drift_usd, 0), (self.free_requests, 0),
        ]
        self._budget_scopes: dict[str, OrderedDict[str, None]] = {}
        self._init_reconcile(gauge, counter)

    # -- per request ---------------------------------------------------------------------------

    def observe(
        self,
        rec: UsageRecord,
        *,
        cache_savings_usd: Decimal | None = None,
        reasoning_cost_usd: Decimal | None = None,
        output_cost_usd: Decimal | None = None,
        drift: bool | None = None,
    ) -> None:
        """Counts one finished request. `drift=None` decides from the record's two costs."""
        now = self._clock()
        endpoint = normalize_endpoint(rec.endpoint)
        model = self._admit_model(rec.model or rec.model_requested, now)
        provider = rec.provider or NONE
        self.requests.inc((endpoint, model, provider, str(rec.status)))
        tokens = self.tokens
        for kind, n in (
            ("input", rec.input_tokens),
            ("output", rec.output_tokens),
            ("cached", rec.cached_tokens),
            ("cache_write", rec.cache_write_tokens),
            ("reasoning", rec.reasoning_tokens),
        ):
            if n is not None:
                tokens.inc((model, provider, kind), n)
        if rec.cost_usd:
            self._add_cost(rec, model, provider, now)
        by_model = (model,)
        if cache_savings_usd is not None and cache_savings_usd > 0:
            self.cache_savings.inc(by_model, float(cache_savings_usd))
        if reasoning_cost_usd is not None and reasoning_cost_usd > 0:
            self.reasoning_cost.inc(by_model, float(reasoning_cost_usd))
        if output_cost_usd is not None and output_cost_usd > 0:
            self.output_cost.inc(by_model, float(output_cost_usd))
        if rec.outcome != BLOCKED:
            if rec.ttfb_ms is not None:
                self.ttfb.observe((endpoint, model), rec.ttfb_ms / 1000)
            self.duration.observe((endpoint, model), rec.duration_ms / 1000)
            if rec.is_free:
                self.free_requests.inc(by_model)
        charged = provider_charge(rec)
        if drift is None:
            drift = cost_drifted(charged, rec.cost_catalog_usd)
        if drift:
            self.cost_drift.inc(by_model)
            if charged is not None and rec.cost_catalog_usd is not None:
                diff = charged - rec.cost_catalog_usd
                direction = "over" if diff > 0 else "under"
                self.cost_drift_usd.inc((model, direction), float(abs(diff)))

    def _admit_model(self, value: str | None, now: float) -> str:
        label, evicted = self._models.admit(value, now)
        if evicted is not None:
            for table, pos in self._label_series:
                table.remove_matching(pos, evicted)
            for index in (self._cost_by_session, self._cost_by_project):
                for series in index.values():
                    series.difference_update({s for s in series if s[0] == evicted})
        return label

    def _add_cost(self, rec: UsageRecord, model: str, provider: str, now: float) -> None:
        assert rec.cost_usd is not None
        project, gone_project = self._projects.admit(rec.project, now)
        if gone_project is not None:
            self._evict_cost(self._cost_by_project, gone_project, self._cost_by_session, 4)
        session, gone_session = self._sessions.admit(rec.session, now)
        if gone_session is not None:
            self._evict_cost(self._cost_by_session, gone_session, self._cost_by_project, 3)
        key = rec.key_alias or rec.key_fingerprint or NONE
        labels = (model, provider, key, project, session)
        if labels not in self.cost.series:
            self._cost_by_session.setdefault(session, set()).add(labels)
            self._cost_by_project.setdefault(project, set()).add(labels)
        self.cost.inc(labels, float(rec.cost_usd))
        self.window_spend.add((model, key, project, session), rec.cost_usd, rec.started_at)

    def _evict_cost(
        self,
        index: dict[str, set[tuple[str, ...]]],
        value: str,
        other_index: dict[str, set[tuple[str, ...]]],
        other_pos: int,
    ) -> None:
        for labels in index.pop(value, set()):
            self.cost.remove(labels)
            peers = other_index.get(labels[other_pos])
            if peers is not None:
                peers.discard(labels)
                if not peers:
                    del other_index[labels[other_pos]]

    def observe_backfill(self, before: UsageRecord, after: UsageRecord) -> None:
        """A request counted when it ended, whose cost and counts arrived later (from /generation):
        add only what `after` has beyond `before`."""
        now = self._clock()
        model = self._admit_model(after.model or after.model_requested, now)
        provider = before.provider or NONE
        for kind, had, has in (
            ("input", before.input_tokens, after.input_tokens),
            ("output", before.output_tokens, after.output_tokens),
            ("cached", before.cached_tokens, after.cached_tokens),
            ("cache_write", before.cache_write_tokens, after.cache_write_tokens),
            ("reasoning", before.reasoning_tokens, after.reasoning_tokens),
        ):
            if has is not None and has > (had or 0):
                self.tokens.inc((model, provider, kind), has - (had or 0))
        extra = (after.cost_usd or Decimal(0)) - (before.cost_usd or Decimal(0))
        if extra > 0:
            self._add_cost(dataclasses.replace(after, cost_usd=extra), model, provider, now)

    def load_window_spend(
        self,
        rows: Iterable[tuple[str | None, str | None, str | None, str | None, tuple[bool, ...], Decimal]],
        starts: tuple[datetime, ...],
    ) -> None:
        """Seeds spend today/this week/this month from the log's (model, key, project, session, in which
        windows, cost) sums for the windows starting at `starts`, labelled as observe() labels them."""
        self.window_spend.load(
            (((model or NONE, key or NONE, project or NONE, session or NONE), within, cost)
             for model, key, project, session, within, cost in rows),
            starts,
        )

    def observe_overhead(self, seconds: float) -> None:
        self.overhead.observe((), seconds)

    def upstream_error(self, reason: str) -> None:
        if reason not in UPSTREAM_ERROR_REASONS:
            raise ValueError(f"unknown upstream error reason {reason!r}")
        self.upstream_errors.labels(reason).inc()

    # -- catalog and recorder ------------------------------------------------------------------

    def set_catalog(self, models: int, updated_at: float) -> None:
        self.catalog_models.set(models)
        self.catalog_updated.set(updated_at)

    def catalog_refresh_failed(self) -> None:
        self.catalog_refresh_failures.inc()

    def set_recorder_depth_source(self, fn: Callable[[], int]) -> None:
        self.recorder_queue_depth.set_function(fn)

    def recorder_dropped(self) -> None:
        self.recorder_dropped_total.inc()

    def recorder_write_error(self) -> None:
        self.recorder_write_errors.inc()

    def recorder_rows(self, n: int) -> None:
        self.recorder_rows_total.inc(n)

    # -- budgets and limits --------------------------------------------------------------------

    @property
    def budget_scope_cap(self) -> int:
        return self._budget_scope_cap

    def set_budget(
        self,
        budget: str,
        scope: str,
        spent: Decimal | float,
        limit: Decimal | float,
        window_end_ts: float,
        projected: Decimal | float | None,
    ) -> None:
        """One budget window's state; `scope` is `total` or the key/project/session/model value."""
        scopes = self._budget_scopes.setdefault(budget, OrderedDict())
        if scope in scopes:
            scopes.move_to_end(scope)
        else:
            scopes[scope] = None
            while len(scopes) > self._budget_scope_cap:
                self.remove_budget_scope(budget, next(iter(scopes)))
        self.budget_spent.labels(budget, scope).set(_f(spent))
        self.budget_limit.labels(budget, scope).set(_f(limit))
        self.budget_window_end.labels(budget, scope).set(window_end_ts)
        if projected is not None:
            self.budget_projected.labels(budget, scope).set(_f(projected))

    def remove_budget_scope(self, budget: str, scope: str) -> None:
        scopes = self._budget_scopes.get(budget)
        if scopes is not None:
            scopes.pop(scope, None)
        for g in (self.budget_spent, self.budget_limit, self.budget_window_end, self.budget_projected):
            try:
                g.remove(budget, scope)
            except KeyError:
                pass

    def remove_budget(self, budget: str) -> None:
        """A budget deleted at runtime: drop its gauges rather than leave its last values standing."""
        for scope in list(self._budget_scopes.get(budget, ())):
            self.remove_budget_scope(budget, scope)
        try:
            self.budget_warn_ratio.remove(budget)
        except KeyError:
            pass

    def budget_blocked(self, budget: str) -> None:
        self.budget_blocked_total.labels(budget).inc()

    def set_budget_warn_ratio(self, budget: str, ratio: float) -> None:
        self.budget_warn_ratio.labels(budget).set(ratio)

    def set_free_daily_limit(self, n: int) -> None:
        self.free_daily_limit.set(n)

    # -- reconcile (serve's periodic GET /key comparison) ---------------------------------------

    def _init_reconcile(self, gauge: Callable[..., Gauge], counter: Callable[..., Counter]) -> None:
        windows = ("window",)
        self.reconcile_gap = gauge(
            "reconcile_gap_usd", "OpenRouter's spend for the proxy's key minus what the log recorded, per UTC "
            "window (day, week, month; byok_* for BYOK provider charges); positive means spend the proxy did not see.",
            windows,
        )
        self.reconcile_openrouter = gauge(
            "reconcile_openrouter_usd", "OpenRouter's own figure for the key's spend per UTC window (GET /key).", windows
        )
        self.reconcile_success = gauge(
            "reconcile_last_success_timestamp_seconds", "Unix time the last comparison with GET /key succeeded."
        )
        self.reconcile_failures = counter("reconcile_failures", "Comparisons with GET /key that failed.")

    def set_reconcile(self, lines: Any, when: float) -> None:
        """Lines from pricing.reconcile.compare_key; those not compared (gap None) are left out."""
        for line in lines:
            if line.gap is None:
                continue
            window = line.what.replace(" ", "_")
            self.reconcile_gap.labels(window).set(_f(line.gap))
            self.reconcile_openrouter.labels(window).set(_f(line.openrouter))
        self.reconcile_success.set(when)

    def reconcile_failed(self) -> None:
        self.reconcile_failures.inc()


def metrics_handler(registry: CollectorRegistry, token: str | None) -> Callable[[web.Request], Any]:
    """The /metrics handler; with a token, only `Authorization: Bearer <token>` is answered."""
    render = make_aiohttp_handler(registry)

    async def inner(request: web.Request) -> web.StreamResponse:
        # Prometheus sends this header with every scrape (so do agents built on its scrape code).
        if SCRAPE_HEADER in request.headers:
            with prometheus_scrape():
                return await render(request)
        return await render(request)

    if token is None:
        return inner
    expected = f"Bearer {token}".encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        # aiohttp keeps undecodable header bytes as surrogates: compare them as bytes, never raise.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):
            return error_response(
                401, "openrouter-spend: /metrics needs 'Authorization: Bearer <metrics token>'",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        return await inner(request)

    return handler
