"""Metrics: names, values after observe(), label caps, budget gauges and the protected handler."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from proxy.metric_tables import CounterTable, GaugeValue, HistogramTable
from proxy.metrics import (
    NONE,
    OTHER,
    LabelCap,
    Metrics,
    cost_drifted,
    metrics_handler,
    normalize_endpoint,
)
from proxy.store.records import BLOCKED, COST_REPORTED, OK, UsageRecord

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def rec(**kw: Any) -> UsageRecord:
    base: dict[str, Any] = dict(
        id="r1", started_at=T0, finished_at=T0, method="POST", endpoint="/api/v1/chat/completions",
        model_requested="anthropic/claude-sonnet-4", model="anthropic/claude-sonnet-4", provider="Anthropic",
        generation_id="gen-1", key_fingerprint="fp-abc", key_alias=None, project="acme", session="s1",
        client="claude-code", streamed=True, status=200, outcome=OK, error=None,
        input_tokens=1000, output_tokens=200, cached_tokens=800, cache_write_tokens=0, reasoning_tokens=50,
        web_search_requests=None, cost_usd=Decimal("0.0123"), cost_reported_usd=Decimal("0.0123"),
        cost_catalog_usd=Decimal("0.0123"), cost_source=COST_REPORTED, is_free=False, is_byok=False,
        ttfb_ms=350.0, duration_ms=4200.0,
    )
    base.update(kw)
    return UsageRecord(**base)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def reg() -> CollectorRegistry:
    return CollectorRegistry()


def val(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def label_values(reg: CollectorRegistry, sample_name: str, label: str) -> set[str]:
    return {s.labels[label] for m in reg.collect() for s in m.samples if s.name == sample_name}


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/api/v1/chat/completions", "chat/completions"),
        ("chat/completions", "chat/completions"),
        ("/api/v1/completions", "completions"),
        ("/api/v1/messages", "messages"),
        ("/api/v1/messages?beta=true", "messages"),
        ("/api/v1/messages/count_tokens", "other"),
        ("/api/v1/responses", "responses"),
        ("/api/v1/embeddings/", "embeddings"),
        ("/api/v1/models", "other"),
        ("", "other"),
    ],
)
def test_normalize_endpoint(path: str, want: str) -> None:
    assert normalize_endpoint(path) == want


@pytest.mark.parametrize(
    ("reported", "catalog", "want"),
    [
        (Decimal("1.00"), Decimal("1.00"), False),
        (Decimal("1.00"), Decimal("1.009"), False),
        (Decimal("1.00"), Decimal("1.02"), True),
        (Decimal("1.02"), Decimal("1.00"), True),
        (Decimal("0"), Decimal("0"), False),
        (Decimal("0"), Decimal("0.001"), True),
        (None, Decimal("1"), False),
        (Decimal("1"), None, False),
    ],
)
def test_cost_drifted(reported: Decimal | None, catalog: Decimal | None, want: bool) -> None:
    assert cost_drifted(reported, catalog) is want


def test_label_cap_admits_up_to_cap_then_folds_active_newcomers() -> None:
    cap = LabelCap(2, min_idle_s=60)
    assert cap.admit("a", 0) == ("a", None)
    assert cap.admit("b", 1) == ("b", None)
    assert cap.admit("c", 2) == (OTHER, None)
    assert cap.admit("a", 3) == ("a", None)
    assert cap.admit(None, 3) == (NONE, None)
    assert cap.admit("", 3) == (NONE, None)
    assert len(cap) == 2


def test_label_cap_evicts_least_recently_seen_once_idle() -> None:
    cap = LabelCap(2, min_idle_s=60)
    cap.admit("a", 0)
    cap.admit("b", 10)
    cap.admit("a", 20)  # b is now the least recently seen
    assert cap.admit("c", 69) == (OTHER, None)  # b idle 59 s
    assert cap.admit("c", 70) == ("c", "b")
    assert cap.admit("b", 200) == ("b", "a")


def test_label_cap_zero_idle_is_plain_lru() -> None:
    cap = LabelCap(1, min_idle_s=0)
    assert cap.admit("a", 0) == ("a", None)
    assert cap.admit("b", 0) == ("b", "a")


CONTRACT = {
    "requests": "counter", "tokens": "counter", "cost_usd": "counter", "cache_savings_usd": "counter",
    "reasoning_cost_usd": "counter", "output_cost_usd": "counter", "ttfb_seconds": "histogram",
    "request_duration_seconds": "histogram", "overhead_seconds": "histogram", "in_flight_requests": "gauge",
    "upstream_errors": "counter", "recorder_queue_depth": "gauge", "recorder_dropped": "counter",
    "recorder_write_errors": "counter", "recorder_rows": "counter", "catalog_models": "gauge",
    "catalog_updated_timestamp_seconds": "gauge", "catalog_refresh_failures": "counter",
    "cost_drift": "counter", "cost_drift_usd": "counter", "free_requests": "counter",
    "free_daily_limit": "gauge", "budget_spent_usd": "gauge", "budget_limit_usd": "gauge",
    "budget_window_end_timestamp_seconds": "gauge", "budget_projected_usd": "gauge",
    "budget_warn_ratio": "gauge", "budget_blocked": "counter", "build_info": "gauge", "spend_usd": "gauge",
}
# serve's periodic comparison with OpenRouter's GET /key (reconcile.interval_minutes)
CONTRACT.update({"reconcile_gap_usd": "gauge", "reconcile_openrouter_usd": "gauge",
                 "reconcile_last_success_timestamp_seconds": "gauge", "reconcile_failures": "counter"})


def test_metric_names_are_the_documented_contract(reg: CollectorRegistry) -> None:
    Metrics(reg)
    got = {m.name: m.type for m in reg.collect()}
    assert got == {"openrouter_proxy_" + k: v for k, v in CONTRACT.items()}
    assert val(reg, "openrouter_proxy_build_info", version="0.1.0") == 1


def test_observe_counts_request_tokens_cost_and_latency(reg: CollectorRegistry) -> None:
    m = Metrics(reg)
    m.observe(rec(), cache_savings_usd=Decimal("0.004"), reasoning_cost_usd=Decimal("0.001"),
              output_cost_usd=Decimal("0.003"))
    m.observe(rec(id="r2", cost_usd=Decimal("0.0077"), input_tokens=10, output_tokens=None))
    model, prov = "anthropic/claude-sonnet-4", "Anthropic"
    assert val(reg, "openrouter_proxy_requests_total", endpoint="chat/completions", model=model,
               provider=prov, status="200") == 2
    assert val(reg, "openrouter_proxy_tokens_total", model=model, provider=prov, kind="input") == 1010
    assert val(reg, "openrouter_proxy_tokens_total", model=model, provider=prov, kind="output") == 200
    assert val(reg, "openrouter_proxy_tokens_total", model=model, provider=prov, kind="cached") == 1600
    assert val(reg, "openrouter_proxy_tokens_total", model=model, provider=prov, kind="reasoning") == 100
    cost = val(reg, "openrouter_proxy_cost_usd_total", model=model, provider=prov, key="fp-abc",
               project="acme", session="s1")
    assert cost == pytest.approx(0.02)
    assert val(reg, "openrouter_proxy_cache_savings_usd_total", model=model) == pytest.approx(0.004)
    assert val(reg, "openrouter_proxy_reasoning_cost_usd_total", model=model) == pytest.approx(0.001)
    assert val(reg, "openrouter_proxy_output_cost_usd_total", model=model) == pytest.approx(0.003)
    lbl = {"endpoint": "chat/completions", "model": model}
    assert reg.get_sample_value("openrouter_proxy_ttfb_seconds_count", lbl) == 2
    assert reg.get_sample_value("openrouter_proxy_ttfb_seconds_sum", lbl) == pytest.approx(0.7)
    assert reg.get_sample_value("openrouter_proxy_ttfb_seconds_bucket", {**lbl, "le": "0.5"}) == 2
    assert reg.get_sample_value("openrouter_proxy_request_duration_seconds_bucket", {**lbl, "le": "2.5"}) == 0
    assert reg.get_sample_value("openrouter_proxy_request_duration_seconds_bucket", {**lbl, "le": "5.0"}) == 2
    assert reg.get_sample_value("openrouter_proxy_request_duration_seconds_bucket", {**lbl, "le": "600.0"}) == 2


def test_key_alias_wins_and_missing_labels_become_none(reg: CollectorRegistry) -> None:
    m = Metrics(reg)
    m.observe(rec(key_alias="laptop", project=None, session="", provider=None, model=None, model_requested=None))
    assert val(reg, "openrouter_proxy_cost_usd_total", model=NONE, provider=NONE, key="laptop",
               project=NONE, session=NONE) == pytest.approx(0.0123)


def test_unknown_tokens_and_cost_create_no_series(reg: CollectorRegistry) -> None:
    m = Metrics(reg)
    m.observe(rec(input_tokens=None, output_tokens=None, cached_tokens=None, cache_write_tokens=None,
                  reasoning_tokens=None, cost_usd=None, ttfb_ms=None, status=502))
    assert label_values(reg, "openrouter_proxy_tokens_total", "kind") == set()
    assert label_values(reg, "openrouter_proxy_cost_usd_total", "session") == set()
    assert label_values(reg, "openrouter_proxy_ttfb_seconds_count", "model") == set()
    assert label_values(reg, "openrouter_proxy_requests_total", "status") == {"502"}


def test_blocked_request_counts_but_has_no_latency(reg: CollectorRegistry) -> None:
    m = Metrics(reg)
    m.observe(rec(status=402, outcome=BLOCKED, cost_usd=Decimal("0"), input_tokens=None, output_tokens=None,
                  is_free=True, ttfb_ms=None, duration_ms=0.3))
    assert val(reg, "openrouter_proxy_requests_total", endpoint="chat/completions",
               model="anthropic/claude-sonnet-4", provider="Anthropic", status="402") == 1
    assert label_values(reg, "openrouter_proxy_request_duration_seconds_count", "model") == set()
    assert label_values(reg, "openrouter_proxy_free_requests_total", "model") == set()
    m.budget_blocked("daily")
    assert val(reg, "openrouter_proxy_budget_blocked_total", budget="daily") == 1


def test_free_requests_and_limit(reg: CollectorRegistry) -> None:
    m = Metrics(reg)
    m.observe(rec(model="x/y:free", is_free=True, cost_usd=Decimal("0")))
    m.observe(rec(model="x/y:free", is_free=True, cost_usd=Decimal("0")))
    m.set_free_daily_limit(1000)
    assert val(reg, "openrouter_proxy_free_requests_total", model="x/y:free") == 2
    assert val(reg, "openrouter_proxy_free_daily_limit") == 1000


def test_drift_from_record_or_caller(reg: CollectorRegistry) -> None:
    m = Metrics(reg)
    m.observe(rec(cost_reported_usd=Decimal("0.0110"), cost_catalog_usd=Decimal("0.0100")))
    m.observe(rec(cost_reported_usd=Decimal("0.0090"), cost_catalog_usd=Decimal("0.0100")))
    m.observe(rec(cost_reported_usd=Decimal("0.0100"), cost_catalog_usd=Decimal("0.0100")))
    m.observe(rec(cost_reported_usd=Decimal("0.0100"), cost_catalog_usd=Decimal("0.0100")), drift=True)
    model = "anthropic/claude-sonnet-4"
    assert val(reg, "openrouter_proxy_cost_drift_total", model=model) == 3
    assert val(reg, "openrouter_proxy_cost_drift_usd_total", model=model, direction="over") == pytest.approx(0.001)
    assert val(reg, "openrouter_proxy_cost_drift_usd_total", model=model, direction="under") == pytest.approx(0.001)


def test_ten_thousand_sessions_stay_within_cap(reg: CollectorRegistry) -> None:
    m = Metrics(reg, session_cap=50, project_cap=5)
    for i in range(10_000):
        m.observe(rec(id=f"r{i}", session=f"sess-{i}", project=f"proj-{i % 13}"))
    sessions = label_values(reg, "openrouter_proxy_cost_usd_total", "session")
    projects = label_values(reg, "openrouter_proxy_cost_usd_total", "project")
    assert len(sessions) == 51 and OTHER in sessions
    assert len(projects) == 6 and OTHER in projects
    total = sum(s.value for mf in reg.collect() for s in mf.samples if s.name == "openrouter_proxy_cost_usd_total")
    assert total == pytest.approx(10_000 * 0.0123)


def test_idle_session_is_evicted_with_all_its_series(reg: CollectorRegistry) -> None:
    clock = Clock()
    m = Metrics(reg, session_cap=2, label_min_idle_s=60, clock=clock)
    m.observe(rec(session="a", model="m1"))
    m.observe(rec(session="a", model="m2"))
    m.observe(rec(session="a", model="m2", key_alias="ci"))
    clock.t += 30
    m.observe(rec(session="b"))
    clock.t += 31
    m.observe(rec(session="c"))  # a idle 61 s: evicted, its three series removed
    assert label_values(reg, "openrouter_proxy_cost_usd_total", "session") == {"b", "c"}
    m.observe(rec(session="d"))  # b idle 31 s: d folds into other
    assert label_values(reg, "openrouter_proxy_cost_usd_total", "session") == {"b", "c", OTHER}
    clock.t += 100
    m.observe(rec(session="a", model="m1"))  # a comes back as a fresh series
    assert val(reg, "openrouter_proxy_cost_usd_total", model="m1", provider="Anthropic", key="fp-abc",
               project="acme", session="a") == pytest.approx(0.0123)


def test_evicting_a_project_keeps_session_index_consistent(reg: CollectorRegistry) -> None:
    clock = Clock()
    m = Metrics(reg, session_cap=10, project_cap=1, label_min_idle_s=0, clock=clock)
    m.observe(rec(project="p1", session="s"))
    m.observe(rec(project="p2", session="s"))  # evicts p1's series (session s keeps p2's)
    assert label_values(reg, "openrouter_proxy_cost_usd_total", "project") == {"p2"}
    assert label_values(reg, "openrouter_proxy_cost_usd_total", "session") == {"s"}
    m.observe(rec(project="p2", session="t"))
    m.observe(rec(project="p3", session="t"))  # evicts p2, whose series was s's only one
    assert label_values(reg, "openrouter_proxy_cost_usd_total", "session") == {"t"}
    assert val(reg, "openrouter_proxy_cost_usd_total", model="anthropic/claude-sonnet-4", provider="Anthropic",
               key="fp-abc", project="p3", session="t") == pytest.approx(0.0123)


def test_model_label_is_capped_too(reg: CollectorRegistry) -> None:
    m = Metrics(reg, model_cap=3)
    for i in range(100):
        m.observe(rec(model=None, model_requested=f"made-up/{i}", status=400, cost_usd=None))
    models = label_values(reg, "openrouter_proxy_requests_total", "model")
    assert len(models) == 4 and OTHER in models


def test_evicting_a_model_drops_it_from_every_table(reg: CollectorRegistry) -> None:
    clock = Clock()
    m = Metrics(reg, model_cap=1, label_min_idle_s=0, clock=clock)
    m.observe(rec(model="m1", is_free=True, cost_reported_usd=Decimal("1"), cost_catalog_usd=Decimal("2")),
              cache_savings_usd=Decimal("0.1"), reasoning_cost_usd=Decimal("0.1"), output_cost_usd=Decimal("0.1"))
    m.observe(rec(model="m2"))
    for fam in reg.collect():
        for s in fam.samples:
            assert s.labels.get("model") != "m1", s


def _masked_exposition(reg: CollectorRegistry) -> str:
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", generate_latest(reg).decode())


def test_tables_render_exactly_as_prometheus_client_does() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = CounterTable(ours, "x_requests", "Requests.", ("a", "b"))
    p_counter = Counter("x_requests", "Requests.", ("a", "b"), registry=theirs)
    hist = HistogramTable(ours, "x_seconds", "Latency.", ("a",), (0.1, 1.0, 1e7))
    p_hist = Histogram("x_seconds", "Latency.", ("a",), buckets=(0.1, 1.0, 1e7), registry=theirs)
    plain = HistogramTable(ours, "x_overhead", "Overhead.", (), (0.001,))
    p_plain = Histogram("x_overhead", "Overhead.", buckets=(0.001,), registry=theirs)
    gauge = GaugeValue(ours, "x_in_flight", "In flight.")
    p_gauge = Gauge("x_in_flight", "In flight.", registry=theirs)
    t0 = time.time()
    for a, b, n in [("1", "2", 3), ("1", "3", 0.25), ("2", "2", 1), ("1", "2", 4)]:
        counter.inc((a, b), n)
        p_counter.labels(a, b).inc(n)
    for a, v in [("p", 0.05), ("p", 0.1), ("p", 0.5), ("q", 2.0), ("p", 2e7), ("r", 1.0)]:
        hist.observe((a,), v)
        p_hist.labels(a).observe(v)
    plain.observe((), 0.0004)
    p_plain.observe(0.0004)
    counter.remove(("2", "2"))
    p_counter.remove("2", "2")
    counter.remove_matching(1, "3")
    p_counter.remove("1", "3")
    hist.remove_matching(0, "r")
    p_hist.remove("r")
    gauge.inc()
    gauge.inc()
    gauge.dec()
    p_gauge.inc()
    p_gauge.inc()
    p_gauge.dec()
    assert _masked_exposition(ours) == _masked_exposition(theirs)
    assert 'x_seconds_bucket{a="p",le="1e+07"} 3.0' in _masked_exposition(ours)
    created = [s.value for fam in ours.collect() for s in fam.samples if s.name.endswith("_created")]
    assert len(created) == 1 + 2 + 1  # one counter series, two labelled histogram series, the plain one
    assert all(t0 - 5 <= c <= time.time() for c in created)


def test_upstream_errors_are_seeded_and_validated(reg: CollectorRegistry) -> None:
    m = Metrics(reg)
    assert val(reg, "openrouter_proxy_upstream_errors_total", reason="timeout") == 0
    m.upstream_error("timeout")
    m.upstream_error("timeout")
    assert val(reg, "openrouter_proxy_upstream_errors_total", reason="timeout") == 2
    with pytest.raises(ValueError):
        m.upstream_error("gremlins")


def test_catalog_recorder_overhead_and_in_flight(reg: CollectorRegistry) -> None:
    m = Metrics(reg)
    depth = [7]
    m.set_recorder_depth_source(lambda: depth[0])
    m.set_catalog(312, 1_790_000_000.0)
    m.catalog_refresh_failed()
    m.recorder_dropped()
    m.recorder_write_error()
    m.recorder_rows(200)
    m.recorder_rows(3)
    m.observe_overhead(0.0004)
    m.in_flight.inc()
    m.in_flight.inc()
    m.in_flight.dec()
    assert val(reg, "openrouter_proxy_recorder_queue_depth") == 7
    depth[0] = 0
    assert val(reg, "openrouter_proxy_recorder_queue_depth") == 0
    assert val(reg, "openrouter_proxy_catalog_models") == 312
    assert val(reg, "openrouter_proxy_catalog_updated_timestamp_seconds") == 1_790_000_000.0
    assert val(reg, "openrouter_proxy_catalog_refresh_failures_total") == 1
    assert val(reg, "openrouter_proxy_recorder_dropped_total") == 1
    assert val(reg, "openrouter_proxy_recorder_write_errors_total") == 1
    assert val(reg, "openrouter_proxy_recorder_rows_total") == 203
    assert val(reg, "openrouter_proxy_overhead_seconds_bucket", le="0.0005") == 1
    assert val(reg, "openrouter_proxy_overhead_seconds_bucket", le="0.00025") == 0
    assert val(reg, "openrouter_proxy_in_flight_requests") == 1


def test_budget_gauges_set_remove_and_cap(reg: CollectorRegistry) -> None:
    m = Metrics(reg, budget_scope_cap=3)
    m.set_budget("daily", "total", Decimal("4.20"), Decimal("5"), 1_790_000_000.0, Decimal("6.5"))
    m.set_budget_warn_ratio("daily", 0.5)
    assert val(reg, "openrouter_proxy_budget_spent_usd", budget="daily", scope="total") == pytest.approx(4.2)
    assert val(reg, "openrouter_proxy_budget_limit_usd", budget="daily", scope="total") == 5
    assert val(reg, "openrouter_proxy_budget_projected_usd", budget="daily", scope="total") == 6.5
    assert val(reg, "openrouter_proxy_budget_window_end_timestamp_seconds", budget="daily",
               scope="total") == 1_790_000_000.0
    assert val(reg, "openrouter_proxy_budget_warn_ratio", budget="daily") == 0.5
    m.remove_budget_scope("daily", "total")
    assert val(reg, "openrouter_proxy_budget_spent_usd", budget="daily", scope="total") is None
    for i in range(10):
        m.set_budget("per-session", f"s{i}", 1, 2, 0.0, None)
    assert label_values(reg, "openrouter_proxy_budget_spent_usd", "scope") == {"s7", "s8", "s9"}
    assert label_values(reg, "openrouter_proxy_budget_projected_usd", "scope") == set()


async def test_metrics_handler_requires_bearer_token(aiohttp_client: Any, reg: CollectorRegistry) -> None:
    m = Metrics(reg)
    m.recorder_rows(5)
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(reg, "s3cret"))
    app.router.add_get("/open", metrics_handler(reg, None))
    client = await aiohttp_client(app)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        r = await client.get("/metrics", headers=headers)
        assert r.status == 401
        body = await r.json()
        assert body["error"]["code"] == 401 and "Bearer" in body["error"]["message"]
    r = await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert r.status == 200
    assert "openrouter_proxy_recorder_rows_total 5.0" in await r.text()
    r = await client.get("/open")
    assert r.status == 200 and "openrouter_proxy_build_info" in await r.text()

