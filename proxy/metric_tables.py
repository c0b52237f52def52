"""Counters, histograms and a gauge kept as plain floats in dicts keyed by label tuples, rendered as
Prometheus families only when /metrics is scraped; they render as prometheus-client's own would, except
that a new series is shown to its first Prometheus scrape at zero (see `prometheus_scrape`)."""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import prometheus_client.metrics
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

# No locks: every update and every scrape runs on the event loop thread (the proxy is single-threaded
# asyncio and make_aiohttp_handler renders synchronously), and prometheus-client's per-child lock
# plus method dispatch was about a tenth of the proxy's CPU per request.

Labels = tuple[str, ...]
_NONE_FRESH: set[Labels] = set()  # shared and never written to

# The `le` text prometheus-client gives a bucket bound (it ships no type hints for it).
_le_text: Callable[[float], str] = floatToGoString


# increase() and rate() take a series' first sample as its start, so a series first scraped at its first
# request's value never counts that value: new sessions, models and projects went missing from every
# panel (issue 12). A series is therefore shown at zero to the first Prometheus scrape after it appears
# and with its value from then on; Prometheus then counts 0 -> value. Only scrapes made by Prometheus
# (and agents using its scrape code) consume that zero, so a person or a test reading /metrics neither
# sees it nor takes it away. Created timestamps would do the same, but Prometheus 2.42 ignores them.
_for_prometheus: ContextVar[bool] = ContextVar("for_prometheus", default=False)


@contextmanager
def prometheus_scrape() -> Iterator[None]:
    """Collections inside this block are a Prometheus scrape: new series show 0 once."""
    token = _for_prometheus.set(True)
    try:
        yield
    finally:
        _for_prometheus.reset(token)


def _created_enabled() -> bool:
    # Follow PROMETHEUS_DISABLE_CREATED_SERIES / disable_created_metrics() like the library's metrics.
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


class _Table:
    """Series of one labelled metric; subclasses say what a series holds."""

    __slots__ = ("doc", "fresh", "labelnames", "name", "series")

    def __init__(self, name: str, doc: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self.series: dict[Labels, list[float]] = {}
        # Series no Prometheus scrape has seen yet (always a subset of `series`).
        self.fresh: set[Labels] = set()

    def remove(self, labels: Labels) -> None:
        self.series.pop(labels, None)
        self.fresh.discard(labels)

    def remove_matching(self, pos: int, value: str) -> None:
        """Drops every series whose label at `pos` is `value`."""
        for labels in [k for k in self.series if k[pos] == value]:
            del self.series[labels]
            self.fresh.discard(labels)

    def _take_fresh(self) -> set[Labels]:
        """The series to show at zero in this collection: the fresh ones, if Prometheus is scraping."""
        if not self.fresh or not _for_prometheus.get():
            return _NONE_FRESH
        fresh, self.fresh = self.fresh, set()
        return fresh

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def _family(self) -> Metric:
        raise NotImplementedError


class CounterTable(_Table):
    """A labelled counter: each series is [value, created unix time]."""

    __slots__ = ()

    def __init__(self, registry: CollectorRegistry, name: str, doc: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, doc, labelnames)
        registry.register(self)

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        s = self.series.get(labels)
        if s is None:
            self.series[labels] = [float(amount), time.time()]
            self.fresh.add(labels)
        else:
            s[0] += amount

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.doc, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        fam = self._family()
        created = _created_enabled()
        fresh = self._take_fresh()
        for labels, (value, ts) in self.series.items():
            fam.add_metric(labels, 0.0 if labels in fresh else value, ts if created else None)
        yield fam


class HistogramTable(_Table):
    """A histogram: each series is one count per bucket (not cumulative), then the sum, then the
    created unix time. An unlabelled histogram exports its one series from the start."""

    __slots__ = ("_le", "bounds")

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        doc: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
    ) -> None:
        super().__init__(name, doc, labelnames)
        self.bounds = tuple(float(b) for b in buckets) + (math.inf,)
        self._le = tuple(_le_text(b) for b in self.bounds)
        if not self.labelnames:
            self.series[()] = self._new()
            self.fresh.add(())
        registry.register(self)

    def _new(self) -> list[float]:
        return [0.0] * len(self.bounds) + [0.0, time.time()]

    def observe(self, labels: Labels, amount: float) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = self._new()
            self.fresh.add(labels)
        # The first bucket whose upper bound is >= amount, as prometheus-client's `amount <= bound`.
        s[bisect_left(self.bounds, amount)] += 1
        s[-2] += amount

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        fam = self._family()
        created = _created_enabled()
        n = len(self.bounds)
        fresh = self._take_fresh()
        for labels, s in self.series.items():
            if labels in fresh:
                fam.add_metric(labels, [(le, 0.0) for le in self._le], 0.0)
            else:
                acc = 0.0
                buckets: list[tuple[str, float]] = []
                for le, count in zip(self._le, s[:n], strict=True):
                    acc += count
                    buckets.append((le, acc))
                fam.add_metric(labels, buckets, s[n])
            if created:
                fam.samples.append(
                    Sample(self.name + "_created", dict(zip(self.labelnames, labels, strict=True)), s[n + 1], None)
                )
        yield fam


class GaugeValue:
    """An unlabelled gauge with Gauge's inc()/dec()/set()."""

    __slots__ = ("doc", "name", "value")

    def __init__(self, registry: CollectorRegistry, name: str, doc: str) -> None:
        self.name = name
        self.doc = doc
        self.value = 0.0
        registry.register(self)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.doc, labels=())

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.doc, value=self.value)
