"""proxy/server/workers.py: how one worker's /metrics adds up its siblings' expositions."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from proxy.server.workers import merge


def _worker(requests: int, in_flight: int, budget: float, latency: float) -> str:
    registry = CollectorRegistry()
    Counter("openrouter_proxy_requests", "r", ("model",), registry=registry).labels("m").inc(requests)
    Gauge("openrouter_proxy_in_flight_requests", "f", registry=registry).set(in_flight)
    Gauge("openrouter_proxy_budget_spent_usd", "b", ("budget",), registry=registry).labels("team").set(budget)
    Histogram("openrouter_proxy_overhead_seconds", "o", buckets=(0.1, 1.0), registry=registry).observe(latency)
    return generate_latest(registry).decode()


def _value(text: str, line_start: str) -> float:
    [value] = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return value


def _rendered(texts: list[str]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    families = merge(texts)

    class Fixed:
        def collect(self):  # type: ignore[no-untyped-def]
            return families

    registry.register(Fixed())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_counters_histograms_and_per_process_gauges_add_up_shared_gauges_do_not() -> None:
    text = _rendered([_worker(3, 2, 0.4, 0.05), _worker(4, 1, 0.5, 0.5)])
    assert _value(text, 'openrouter_proxy_requests_total{model="m"}') == 7
    assert _value(text, "openrouter_proxy_in_flight_requests ") == 3
    # Each worker reads the budget from the shared ledger: the newest (largest) number, not 0.9.
    assert _value(text, 'openrouter_proxy_budget_spent_usd{budget="team"}') == 0.5
    assert _value(text, 'openrouter_proxy_overhead_seconds_bucket{le="0.1"}') == 1
    assert _value(text, 'openrouter_proxy_overhead_seconds_bucket{le="+Inf"}') == 2
    assert _value(text, "openrouter_proxy_overhead_seconds_count ") == 2
    assert _value(text, "openrouter_proxy_overhead_seconds_sum ") == 0.55
    # A creation time is the earliest, never a sum of timestamps.
    created = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("openrouter_proxy_requests_created")]
    assert len(created) == 1 and created[0] < 1e10


def test_one_worker_alone_is_its_own_exposition() -> None:
    text = _rendered([_worker(5, 0, 0.1, 0.2)])
    assert _value(text, 'openrouter_proxy_requests_total{model="m"}') == 5
    assert _value(text, 'openrouter_proxy_budget_spent_usd{budget="team"}') == 0.1
