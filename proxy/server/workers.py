"""One worker of `serve --workers N`: where it sits among its siblings, and /metrics summed over them.

Each worker keeps its own registry (the request path stays as in one process: no shared memory,
no lock) and serves it raw on a Unix socket in a directory private to the run. Whichever worker a
scrape reaches reads its siblings' texts there and answers with one exposition: counters and
histograms summed per label set, gauges that count things per process (requests in flight, the
recorder's queue, spend in the day/week/month windows) summed, and every other gauge (budgets read
from the shared ledger, limits, the catalog, build info) the largest value, since each worker
reports the same one. prometheus_client's multiprocess mode was the other choice; it cannot see
this proxy's own collectors (the request tables, window spend) or callback gauges.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from proxy.metric_tables import prometheus_scrape

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Gauges that each worker counts for itself: the total is their sum.
SUMMED_GAUGES = frozenset(
    {"openrouter_proxy_in_flight_requests", "openrouter_proxy_recorder_queue_depth", "openrouter_proxy_spend_usd"}
)
_SCRAPE_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
_FETCH_S = 5.0


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    index: int
    count: int
    sockets: Path
    # Only the first start of worker 0 seeds the window-spend gauges from the log: the others
    # count their own requests from their start, so the sum counts each request once.
    seed_window_spend: bool

    def socket(self, index: int) -> Path:
        return self.sockets / f"worker-{index}.sock"


def merge(texts: Iterable[str]) -> list[Metric]:
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            table = values.setdefault(family.name, {})
            summed = family.type != "gauge" or family.name in SUMMED_GAUGES
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = table.get(key)
                if old is None:
                    table[key] = sample.value
                elif sample.name.endswith("_created"):
                    table[key] = min(old, sample.value)
                else:
                    table[key] = old + sample.value if summed else max(old, sample.value)
    out = []
    for name, family in families.items():
        family.samples = [Sample(sample, dict(labels), value) for (sample, labels), value in values[name].items()]
        out.append(family)
    return out


class _Merged:
    """A collector that yields what was merged for the scrape being answered."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return self.families


def summed_handler(own: CollectorRegistry, slot: WorkerSlot, render_with: Callable[[CollectorRegistry], Handler]) -> Handler:
    """/metrics for a worker: its own registry plus its siblings', merged (see the module doc)."""
    merged = _Merged()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(merged)
    render = render_with(registry)

    async def fetch(index: int, scrape: bool) -> str | None:
        headers = {_SCRAPE_HEADER: "10"} if scrape else {}
        try:
            connector = aiohttp.UnixConnector(path=str(slot.socket(index)))
            timeout = aiohttp.ClientTimeout(total=_FETCH_S)
            async with aiohttp.ClientSession(connector=connector) as client, client.get(
                "http://worker/metrics", headers=headers, timeout=timeout
            ) as r:
                return await r.text() if r.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # A worker being restarted: its counts are gone with its process anyway.
            log.warning("event=worker_metrics_unavailable worker=%d error=%r", index, exc)
            return None

    async def handler(request: web.Request) -> web.StreamResponse:
        scrape = _SCRAPE_HEADER in request.headers
        others = await asyncio.gather(*(fetch(i, scrape) for i in range(slot.count) if i != slot.index))
        if scrape:
            with prometheus_scrape():
                own_text = generate_latest(own).decode()
        else:
            own_text = generate_latest(own).decode()
        merged.families = merge([own_text, *(t for t in others if t is not None)])
        return await render(request)

    return handler


def own_metrics_site(registry: CollectorRegistry, slot: WorkerSlot, render: Handler):  # type: ignore[no-untyped-def]
    """Cleanup context: this worker's raw registry on its Unix socket, for its siblings to read."""

    async def serve(app: web.Application) -> AsyncIterator[None]:
        path = slot.socket(slot.index)
        path.unlink(missing_ok=True)  # left by this slot's previous (dead) process
        inner = web.Application()
        inner.router.add_get("/metrics", render)
        runner = web.AppRunner(inner, access_log=None)
        await runner.setup()
        await web.UnixSite(runner, str(path)).start()
        yield
        await runner.cleanup()

    return serve
