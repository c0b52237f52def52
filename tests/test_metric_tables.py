"""Metric tables: a series a scraper has not seen yet is shown to Prometheus at 0 once (issue 12).

increase() and rate() take the first sample of a series as its start, so a series first scraped at its
first request's value loses that value. Each new series is therefore shown to a Prometheus scrape (which
sends X-Prometheus-Scrape-Timeout-Seconds) at 0 first, and with its value from the next scrape on.
Anyone else reading /metrics (curl, tests) sees the values and leaves the zero for Prometheus.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.metric_tables import CounterTable, HistogramTable
from proxy.metrics import metrics_handler

PROMETHEUS = {"X-Prometheus-Scrape-Timeout-Seconds": "10"}


@pytest.fixture
def reg() -> CollectorRegistry:
    return CollectorRegistry()


async def scraper(aiohttp_client: Any, reg: CollectorRegistry, token: str | None = None) -> Any:
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(reg, token))
    return await aiohttp_client(app)


def sample(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


async def get(client: Any, headers: dict[str, str] | None = None) -> str:
    r = await client.get("/metrics", headers=headers or {})
    assert r.status == 200
    return str(await r.text())


async def test_a_new_counter_series_is_zero_for_its_first_prometheus_scrape(
    aiohttp_client: Any, reg: CollectorRegistry
) -> None:
    t = CounterTable(reg, "x_cost_usd", "doc", ("session",))
    client = await scraper(aiohttp_client, reg)
    t.inc(("old",), 1.5)
    assert sample(await get(client, PROMETHEUS), "x_cost_usd_total", session="old") == 0.0
    t.inc(("old",), 1.0)
    t.inc(("new",), 0.25)
    text = await get(client, PROMETHEUS)
    assert sample(text, "x_cost_usd_total", session="old") == 2.5  # seen before: its value at once
    assert sample(text, "x_cost_usd_total", session="new") == 0.0
    text = await get(client, PROMETHEUS)
    assert sample(text, "x_cost_usd_total", session="new") == 0.25
    assert sample(text, "x_cost_usd_total", session="old") == 2.5


async def test_other_readers_see_values_and_leave_the_zero_for_prometheus(
    aiohttp_client: Any, reg: CollectorRegistry
) -> None:
    t = CounterTable(reg, "x_cost_usd", "doc", ("session",))
    client = await scraper(aiohttp_client, reg, token="tok")
    t.inc(("s",), 0.5)
    auth = {"Authorization": "Bearer tok"}
    assert sample(await get(client, auth), "x_cost_usd_total", session="s") == 0.5
    assert reg.get_sample_value("x_cost_usd_total", {"session": "s"}) == 0.5
    assert sample(await get(client, {**auth, **PROMETHEUS}), "x_cost_usd_total", session="s") == 0.0
    assert sample(await get(client, {**auth, **PROMETHEUS}), "x_cost_usd_total", session="s") == 0.5


async def test_a_removed_series_is_new_again_when_it_comes_back(aiohttp_client: Any, reg: CollectorRegistry) -> None:
    t = CounterTable(reg, "x_requests", "doc", ("model", "status"))
    client = await scraper(aiohttp_client, reg)
    t.inc(("a", "200"))
    t.inc(("b", "200"))
    await get(client, PROMETHEUS)
    t.remove(("a", "200"))
    t.remove_matching(0, "b")
    t.inc(("a", "200"), 3)
    t.inc(("b", "200"), 4)
    text = await get(client, PROMETHEUS)
    assert sample(text, "x_requests_total", model="a", status="200") == 0.0
    assert sample(text, "x_requests_total", model="b", status="200") == 0.0
    assert t.fresh == set()
    t.inc(("c", "200"))
    t.remove(("c", "200"))
    assert t.fresh == set()  # nothing kept for series that are gone, however long nobody scrapes


async def test_a_new_histogram_series_is_empty_for_its_first_prometheus_scrape(
    aiohttp_client: Any, reg: CollectorRegistry
) -> None:
    h = HistogramTable(reg, "x_seconds", "doc", ("model",), (1.0, 5.0))
    plain = HistogramTable(reg, "x_overhead_seconds", "doc", (), (0.1,))
    client = await scraper(aiohttp_client, reg)
    h.observe(("m",), 2.0)
    plain.observe((), 0.05)  # before the first scrape: must not be lost either
    text = await get(client, PROMETHEUS)
    assert sample(text, "x_seconds_bucket", model="m", le="5.0") == 0.0
    assert sample(text, "x_seconds_count", model="m") == 0.0
    assert sample(text, "x_seconds_sum", model="m") == 0.0
    assert re.search(r"^x_overhead_seconds_count 0\.0$", text, re.M)
    text = await get(client, PROMETHEUS)
    assert sample(text, "x_seconds_bucket", model="m", le="1.0") == 0.0
    assert sample(text, "x_seconds_bucket", model="m", le="5.0") == 1.0
    assert sample(text, "x_seconds_sum", model="m") == 2.0
    assert re.search(r"^x_overhead_seconds_count 1\.0$", text, re.M)
